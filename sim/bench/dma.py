"""DMA throughput benchmark: bytes per cycle of long aligned reads and writes, measured in RTL.

Each record is one transfer through the emitted DMA under cocotb, with cocotbext-axi's
``AxiRam`` as DDR: without back-pressure (goal: at least 0.9 x the bus width in bytes per
cycle) and with a random 50% pause on every AXI channel and on the stream side.
"""

from __future__ import annotations

from typing import Callable

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.sim.cases.axi import run_dma_throughput

__all__ = ["run", "GOAL_FRACTION"]

#: Goal for unstalled transfers, as a fraction of the bus width in bytes per cycle.
GOAL_FRACTION = 0.9


def run(config: AccelConfig, *, simulator: str = "verilator", quick: bool = False,
        progress: Callable[[str, float], None] | None = None) -> list[dict]:
    """Read and write throughput of the DMA of ``config``, measured in RTL simulation.

    Returns one record per (direction, back-pressure): ``bytes``, ``cycles``,
    ``bytes_per_cycle``, ``peak_bytes_per_cycle``, ``efficiency``, ``meets_goal`` (``None``
    for the stalled runs, which have no goal) and ``passed`` (data compared byte for byte).
    """
    total = 4096 if quick else 32768
    lane_bytes = config.dma_data_width // 8
    points = [(d, bp) for d in ("read", "write") for bp in (0.0, 0.5)]
    records = []
    for index, (direction, backpressure) in enumerate(points):
        if progress:
            progress(f"DMA {direction}, {int(backpressure * 100)}% back-pressure", index / len(points))
        result = run_dma_throughput(config, simulator=simulator, direction=direction,
                                    total_bytes=total, backpressure=backpressure, seed=index)
        rate = result.get("bytes_per_cycle", 0.0)
        records.append({
            "benchmark": "dma", "config": config.name, "simulator": simulator,
            "direction": direction, "backpressure": backpressure, "bytes": total,
            "cycles": result["cycles"], "bytes_per_cycle": round(rate, 4),
            "peak_bytes_per_cycle": lane_bytes, "efficiency": round(rate / lane_bytes, 4),
            "meets_goal": (rate >= GOAL_FRACTION * lane_bytes) if backpressure == 0 else None,
            "passed": result["passed"],
        })
    if progress:
        progress("done", 1.0)
    return records
