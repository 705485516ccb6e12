"""Matrix engine RTL under cocotb (Verilator, plus one Icarus case) against the golden kernels."""

from __future__ import annotations

import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.sim.runner import simulator_available

TINY = PRESETS["tiny"]
B1 = TINY.replace(name="b1", block_rows=2, block_cols=3, block_size=1)

pytestmark = pytest.mark.cocotb


def _run(config, simulator="verilator", **kwargs):
    from vitaccel.sim.cases.matrix_engine import run_case

    reason = simulator_available(simulator)
    if reason:
        pytest.skip(reason)
    result = run_case(config, simulator=simulator, **kwargs)
    assert result["mismatch"] is None, result["mismatch"]
    assert result["passed"]
    return result


def test_b1_output_stationary_extremes_unsigned_a_stalls():
    _run(B1, seed=22, M=5, K=9, N=7, extremes=True, unsigned_a=True, stall_prob=0.25)


def test_tiny_back_to_back_stalls_extremes_and_overlapped_loading():
    from vitaccel.hw.matrix import PostProcessor
    from vitaccel.hw.matrix.block_unit import block_unit_latency
    from vitaccel.hw.spec.matrix import plan_gemm
    from vitaccel.sim.cases.matrix_engine import run_cases

    if simulator_available("verilator"):
        pytest.skip(simulator_available("verilator"))
    # Overlap case: two B blocks (16 + 2 tile columns), 5 bands. Only the first B block's
    # load may be exposed; every later A panel and B block loads while the grid computes.
    plan = plan_gemm(TINY, 20, 256, 72)
    assert plan.n_blocks == 2
    broken, stalls, extremes, overlap = run_cases(TINY, [
        dict(seed=20, M=3, K=3, N=3, break_reference=True),
        dict(seed=21, M=11, K=37, N=14, stall_prob=0.3),
        dict(seed=22, M=6, K=10, N=5, extremes=True, unsigned_a=True, residual=False),
        dict(seed=24, M=20, K=256, N=72),
    ])
    assert not broken["passed"] and broken["mismatch"]["position"] == [0, 0]
    assert broken["mismatch"]["got"] == broken["mismatch"]["expected"] - 1
    for result in (stalls, extremes, overlap):
        assert result["mismatch"] is None and result["passed"], result
    assert stalls["cycles"] > stalls["ideal_cycles"]
    first_block_words = plan.block_tiles * plan.k_words
    # the last tile's drain: the block units' and the post-processor's pipelines, its rows
    pipelines = block_unit_latency(TINY.block_size, TINY.dsp_packing) - 1 + PostProcessor.LATENCY - 1
    assert overlap["cycles"] <= plan.compute_cycles + first_block_words + 2 * TINY.tile_rows + 8 + pipelines


def test_icarus_cross_check():
    _run(TINY, simulator="icarus", seed=25, M=6, K=10, N=9, stall_prob=0.2)


def test_bench_quick_records():
    from vitaccel.sim.bench import gemm

    if simulator_available("verilator"):
        pytest.skip(simulator_available("verilator"))
    records = gemm.run(TINY, quick=True)
    assert [r["name"].split()[0] for r in records] == [c[0] for c in gemm.DEIT_S_GEMMS]
    for record in records:
        assert record["bit_exact"] is True
        assert record["utilization"] == pytest.approx(record["ideal_cycles"] / record["cycles"], abs=1e-4)
        assert set(record) >= {"name", "M", "K", "N", "cycles", "ideal_cycles", "utilization", "bit_exact",
                               "simulator"}


def test_nm_sparse_mode_with_dense_commands():
    """2:4 sparse GEMMs and a dense one on one sparse-capable engine's RTL, with stalls."""
    from vitaccel.sim.cases.matrix_engine import run_cases

    if simulator_available("verilator"):
        pytest.skip(simulator_available("verilator"))
    config = TINY.replace(name="tiny-nm24", nm_sparsity=(2, 4))
    results = run_cases(config, [
        dict(seed=30, M=7, K=22, N=11, stall_prob=0.3, nm=True),
        dict(seed=31, M=5, K=9, N=6, stall_prob=0.2),
        dict(seed=32, M=6, K=13, N=5, extremes=True, unsigned_a=True, residual=False, nm=True),
    ])
    for result in results:
        assert result["mismatch"] is None and result["passed"], result


def test_packed_dsp_engine_edges_and_random():
    """dsp_packing 2 on zcu102's b = 8 unit (two separations per k-step): edge operands on
    every lane, signed and unsigned A, K of one bound's worth and long, odd shapes, random
    values with stalls; outputs and raw accumulators bit-exact against the golden kernels."""
    from vitaccel.sim.cases.matrix_engine import run_cases

    if simulator_available("verilator"):
        pytest.skip(simulator_available("verilator"))
    config = TINY.replace(name="packed-b8", block_rows=1, block_cols=1, block_size=8, dsp_packing=2, max_k=1024)
    results = run_cases(config, [
        dict(seed=80, M=9, K=4, N=7, pattern="min_min", residual=False),
        dict(seed=81, M=9, K=8, N=7, pattern="min_max"),
        dict(seed=82, M=9, K=61, N=7, pattern="max_min", unsigned_a=True),
        dict(seed=86, M=9, K=8, N=7, pattern="max_max", unsigned_a=True),
        dict(seed=83, M=9, K=37, N=7, pattern="alternating", unsigned_a=True),
        dict(seed=84, M=9, K=1024, N=7, pattern="alternating"),
        dict(seed=85, M=17, K=29, N=13, stall_prob=0.3),
    ])
    for result in results:
        assert result["mismatch"] is None and result["passed"], result
