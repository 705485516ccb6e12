"""The accelerator top: instruction fetch, decode, three token-synchronised queues,
on-chip buffers, DMA and the AXI4-Lite register file (see ``docs/architecture.md``)."""

from .decode import InstructionChecker, field_slice, first_failure, instruction_view
from .gemm import GemmController, engine_supported
from .requant import RequantController
from .tokens import TOKEN_OPCODES, TokenController
from .vector import VECTOR_OPCODES, VectorController
from .core import (ACCEL_TOP_NAME, IMPLEMENTED_OPCODES, QUEUE_DEPTH, UNSUPPORTED_OPCODES, AcceleratorCore,
                   accelerator_top)

__all__ = ["InstructionChecker", "field_slice", "AcceleratorCore", "accelerator_top", "ACCEL_TOP_NAME",
           "IMPLEMENTED_OPCODES", "UNSUPPORTED_OPCODES", "QUEUE_DEPTH", "GemmController", "engine_supported",
           "RequantController", "TokenController", "TOKEN_OPCODES", "VectorController", "VECTOR_OPCODES",
           "first_failure", "instruction_view"]
