"""Benchmark of the top-k engine and the sparse attention unit (``vitaccel bench sparse``).

Every cycle count is measured in RTL simulation of the emitted Verilog, and every record says
whether the outputs matched the golden kernels bit for bit. The attention's ``dense_cycles``
is the same unit (same multipliers) running the same attention with an all-ones mask, which
packs into the most waves; ``speedup = dense_cycles / sparse_cycles``.
"""

from __future__ import annotations

from typing import Any, Callable

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.sim.cases.sparse import run_attention_case, run_topk_case

__all__ = ["run", "TOPK_CASES", "DENSITIES", "TOKENS", "HEAD_DIM"]

#: ``(n, k)`` of the top-k records: ViT's 197 tokens at several keep ratios, a full 256.
TOPK_CASES = ((197, 98), (197, 49), (197, 0), (197, 197), (64, 16), (256, 128))
#: Mask densities of the attention records.
DENSITIES = (0.1, 0.25, 0.5, 1.0)
#: DeiT's sequence length and head dimension.
TOKENS = 197
HEAD_DIM = 64


def run(config: AccelConfig, *, simulator: str = "verilator", quick: bool = False,
        progress: Callable[[str, float], None] | None = None) -> list[dict[str, Any]]:
    """Measure top-k and attention cycles; ``quick`` keeps n = 197 top-k and densities 0.25 and 1.0."""
    topk_cases = [c for c in TOPK_CASES if c[0] <= config.max_tokens and (not quick or c[0] == 197)]
    densities = (0.25, 1.0) if quick else DENSITIES
    tokens = min(TOKENS, config.max_tokens)
    steps = len(topk_cases) + len(densities)
    records: list[dict[str, Any]] = []

    def report(text: str) -> None:
        if progress is not None:
            progress(text, len(records) / steps)

    for seed, (n, k) in enumerate(topk_cases):
        report(f"top-k n={n} k={k}")
        result = run_topk_case(config, seed=seed, simulator=simulator, n=n, k=k, kind="ties")
        records.append({"unit": "topk", "n": n, "k": k, "cycles": result["cycles"],
                        "bit_exact": bool(result["passed"])})

    report(f"attention tokens={tokens} dense")
    dense = run_attention_case(config, seed=100, simulator=simulator, tokens=tokens, head_dim=HEAD_DIM,
                               density=1.0, mask_kind="full")
    for seed, density in enumerate(densities):
        report(f"attention tokens={tokens} density={density}")
        if density == 1.0:
            sparse = dense
        else:
            sparse = run_attention_case(config, seed=200 + seed, simulator=simulator, tokens=tokens,
                                        head_dim=HEAD_DIM, density=density, mask_kind="random")
        speedup = dense["cycles"] / sparse["cycles"] if dense["cycles"] and sparse["cycles"] else None
        records.append({"unit": "attention", "tokens": tokens, "head_dim": HEAD_DIM, "density": density,
                        "measured_density": round(sparse["nnz"] / tokens ** 2, 4),
                        "packed_rows": sparse["packed_rows"], "sparse_cycles": sparse["cycles"],
                        "dense_cycles": dense["cycles"],
                        "speedup": round(speedup, 3) if speedup is not None else None,
                        "bit_exact": bool(sparse["passed"] and dense["passed"])})
    if progress is not None:
        progress("done", 1.0)
    return records
