"""Performance model of the accelerator: a program's cycles without RTL.

One module per idea: :mod:`.ddr` (the named DDR models the RTL testbench shares),
:mod:`.dma` (bursts, DDR latency and bandwidth, realignment), :mod:`.gemm` (the GEMM
controller and matrix engine by shape), :mod:`.units` (every other compute opcode's
controller cycles), :mod:`.scheduler` (the fetcher, the queues and their tokens, as an event
simulation over the instruction stream). ``docs/perf_model.md`` gives each formula and where
in the RTL it comes from, and the measured error against RTL.
"""

from __future__ import annotations

from vitaccel.hw.spec.config import AccelConfig

from .ddr import BOARD_DDR_MODEL, DDR_MODELS, VERIFY_DDR_MODEL, DdrModel, ddr_model
from .scheduler import PerfModelError, PerfResult, simulate_program

__all__ = ["estimate", "PerfResult", "PerfModelError", "DdrModel", "DDR_MODELS", "BOARD_DDR_MODEL", "VERIFY_DDR_MODEL", "ddr_model"]


def estimate(config: AccelConfig, words: list[int], ddr_size: int, *, ddr: DdrModel | str = BOARD_DDR_MODEL) -> PerfResult:
    """Estimated counters of one run of ``words`` with a DDR window of ``ddr_size`` bytes,
    laid out as the runtime does (:func:`vitaccel.hw.spec.driver.program_layout`)."""
    from vitaccel.hw.spec.driver import program_layout

    model = ddr_model(ddr) if isinstance(ddr, str) else ddr
    layout = program_layout(ddr_size, len(words))
    return simulate_program(config, list(words), model, program_addr=layout["program_addr"],
                            ddr_base=layout["ddr_base"])
