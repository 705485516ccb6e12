"""Top-k engine and sparse attention unit in cocotb on the emitted Verilog (Verilator; one
Icarus cross-check each). Small configs keep builds and runs short; the benchmark runs the
tiny config at 197 tokens."""

from __future__ import annotations

import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.sim.cases.sparse import run_attention_case, run_attention_cases, run_topk_case
from vitaccel.sim.runner import simulator_available

TINY = PRESETS["tiny"]
SMALL = TINY.replace(name="sparse_small", max_tokens=24, sparse_pe_rows=2, sparse_pe_cols=2)
HEAD_DIM = 4


def _need(simulator: str) -> None:
    reason = simulator_available(simulator)
    if reason:
        pytest.skip(reason)


@pytest.mark.cocotb
@pytest.mark.parametrize("n,k,kind,seed", [(197, 98, "ties", 1), (13, 0, "random", 2), (13, 13, "edges", 3),
                                           (30, 7, "constant", 4)])
def test_topk_rtl_matches_golden(n, k, kind, seed):
    _need("verilator")
    result = run_topk_case(TINY, seed=seed, n=n, k=k, kind=kind)
    assert result["passed"], result["mismatch"]
    if n == 197:
        assert result["cycles"] <= 394, result["cycles"]


@pytest.mark.cocotb
def test_topk_rtl_icarus():
    _need("icarus")
    result = run_topk_case(TINY, seed=5, simulator="icarus", n=21, k=6, kind="ties")
    assert result["passed"], result["mismatch"]


@pytest.mark.cocotb
def test_attention_rtl_every_mask_kind():
    _need("verilator")
    cases = [dict(seed=1, tokens=17, density=0.3, mask_kind="random"),
             dict(seed=2, tokens=9, density=0.0, mask_kind="empty"),
             dict(seed=3, tokens=11, density=1.0, mask_kind="full"),
             dict(seed=4, tokens=19, density=0.2, mask_kind="diagonal"),
             dict(seed=5, tokens=15, density=0.15, mask_kind="dense_row"),
             dict(seed=6, tokens=24, density=0.6, mask_kind="random")]
    for kwargs, result in zip(cases, run_attention_cases(SMALL, cases=cases, head_dim=HEAD_DIM)):
        assert result["passed"], (kwargs, result["mismatch"])


@pytest.mark.cocotb
def test_attention_rtl_icarus_and_dense_cycles():
    _need("icarus")
    result = run_attention_case(SMALL, seed=7, simulator="icarus", tokens=16, head_dim=HEAD_DIM, density=0.25,
                                mask_kind="random", measure_dense=True)
    assert result["passed"], result["mismatch"]
    assert result["cycles"] < result["dense_cycles"]


@pytest.mark.cocotb
@pytest.mark.slow
def test_attention_rtl_tiny_speedup_at_quarter_density():
    _need("verilator")
    result = run_attention_case(TINY, seed=3, tokens=197, head_dim=16, density=0.25, measure_dense=True)
    assert result["passed"], result["mismatch"]
    assert result["dense_cycles"] / result["cycles"] >= 3.0
