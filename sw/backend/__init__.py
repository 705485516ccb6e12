"""The compiler back end: QGraph -> instruction stream + DDR image + manifest.

``compile_qgraph(qgraph, config)`` runs the passes (one class per file):
:class:`~.lower.Lowering` (tiling, buffer slots, DDR allocation, layout views) on top of
:class:`~.emitter.Pipeline` (double-buffered scheduling with dependency tokens) and emits
through :func:`vitaccel.hw.spec.isa.encode`.
"""

from __future__ import annotations

from typing import Any, Callable

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.sw.backend.lower import BackendError, Lowering
from vitaccel.sw.program import CompiledProgram
from vitaccel.sw.qgraph import QGraph

__all__ = ["compile_qgraph", "BackendError"]


def compile_qgraph(qgraph: QGraph, config: AccelConfig, *,
                   progress: Callable[[str, float], Any] | None = None,
                   meta: dict[str, Any] | None = None, reuse_ddr: bool = True) -> CompiledProgram:
    """Compile a verified QGraph for ``config``.

    ``reuse_ddr=False`` gives every tensor its own DDR block, so that all intermediate values
    can be inspected after a run (manifest ``tensors`` entries say ``kept``).

    Raises
    ------
    BackendError
        For an operation the back end cannot map (the message names it and its source).
    """
    qgraph.verify()
    try:
        lowering = Lowering(qgraph, config, reuse_ddr=reuse_ddr).run(progress)
    except BackendError:
        # On-chip activations take half of VECTOR from the tile slots: an op whose tiles need
        # all of it (a small vector buffer) compiles with every activation in DDR instead.
        lowering = Lowering(qgraph, config, reuse_ddr=reuse_ddr, onchip=False).run(progress)
    return CompiledProgram.from_lowering(lowering, qgraph, config, meta or {})
