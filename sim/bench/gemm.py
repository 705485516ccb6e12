"""GEMM benchmark of the matrix engine: DeiT-S block GEMMs in RTL simulation.

Every record's cycles are measured in the RTL (Verilator or Icarus) from the first operand
write to the last output read, scratchpad loading included; ``bit_exact`` is the
testbench's comparison with the golden ``linear``. A GEMM that would simulate more than
:data:`MAX_SIMULATED_CYCLES` ideal cycles is scaled down along N (the name says so); scaling
N keeps the per-tile schedule (K, panel reloads) of the full layer. The full DeiT-S block
stays below the limit on ``tiny`` (about 2 minutes of Verilator on an idle 2-core machine).
"""

from __future__ import annotations

from typing import Any, Callable

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.sim.cases.matrix_engine import run_case, run_cases

__all__ = ["DEIT_S_GEMMS", "MAX_SIMULATED_CYCLES", "cases", "run"]

#: (name, M, K, N) of one DeiT-S block (197 tokens, dim 384, MLP 1536, head dim 64).
DEIT_S_GEMMS = (
    ("qkv", 197, 384, 1152),
    ("proj", 197, 384, 384),
    ("mlp_fc1", 197, 384, 1536),
    ("mlp_fc2", 197, 1536, 384),
    ("scores", 197, 64, 197),
    ("attn_v", 197, 197, 64),
)
#: Ideal cycles one case may simulate before N is divided (by powers of two).
MAX_SIMULATED_CYCLES = 4_000_000
_QUICK_SHAPES = {"qkv": (9, 40, 24), "proj": (9, 40, 8), "mlp_fc1": (9, 40, 32), "mlp_fc2": (9, 160, 8),
                 "scores": (9, 16, 9), "attn_v": (9, 9, 16)}


def cases(config: AccelConfig, *, quick: bool = False) -> list[tuple[str, int, int, int]]:
    """``(name, M, K, N)`` of every benchmark case for ``config``, with scaling in the name."""
    out = []
    for name, M, K, N in DEIT_S_GEMMS:
        if quick:
            m, k, n = _QUICK_SHAPES[name]
            out.append((f"{name} quick (M={m},K={k},N={n})", m, k, n))
            continue
        divisor = 1
        while M * K * (N // divisor) > MAX_SIMULATED_CYCLES * config.macs_per_cycle and N // divisor > 64:
            divisor *= 2
        if divisor == 1:
            out.append((f"{name} ({M}x{K}x{N})", M, K, N))
        else:
            n = N // divisor
            out.append((f"{name} (M={M},K={K},N={n}: N/{divisor} of {N})", M, K, n))
    return out


def run(config: AccelConfig, *, simulator: str = "verilator", quick: bool = False,
        progress: Callable[[str, float], None] | None = None) -> list[dict[str, Any]]:
    """Run every case on the engine RTL; one JSON-serialisable record per case."""
    records = []
    todo = cases(config, quick=quick)
    if quick:  # one simulation for all the small cases: start-up dominates them
        results = run_cases(config, [dict(seed=1000 + i, M=M, K=K, N=N) for i, (_, M, K, N) in enumerate(todo)],
                            simulator=simulator)
    for index, (name, M, K, N) in enumerate(todo):
        if progress:
            progress(f"gemm {name}", index / len(todo))
        if quick:
            result = results[index]
        else:
            result = run_case(config, seed=1000 + index, simulator=simulator, M=M, K=K, N=N)
        records.append({
            "name": name, "M": M, "K": K, "N": N, "cycles": result["cycles"],
            "ideal_cycles": result["ideal_cycles"],
            "utilization": round(result["ideal_cycles"] / result["cycles"], 4),
            "bit_exact": result["passed"], "simulator": simulator, "config": config.name,
        })
    if progress:
        progress("gemm done", 1.0)
    return records


if __name__ == "__main__":  # manual use: python -m vitaccel.sim.bench.gemm [CONFIG] [--quick]
    import json
    import sys

    from vitaccel.hw.spec.config import load_config

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print(json.dumps(run(load_config(args[0] if args else "tiny"), quick="--quick" in sys.argv), indent=1))
