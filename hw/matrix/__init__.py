"""Output-block-stationary matrix engine (issue 3): block units, block grid, engine."""

from .block_unit import BlockUnit
from .engine import MatrixEngine
from .grid import BlockGrid
from .layouts import EngineLayouts
from .postprocess import PostProcessor

__all__ = ["BlockUnit", "BlockGrid", "EngineLayouts", "MatrixEngine", "PostProcessor"]
