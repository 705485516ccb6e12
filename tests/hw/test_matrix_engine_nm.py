"""Sparse (N:M) mode of the matrix engine in Amaranth's simulator, bit-exact against the
golden :func:`vitaccel.sim.golden.nm.nm_linear` (and ``matmul`` for raw accumulators).

2:4 and 1:4, b = 1, 2 and 4, shapes that are no multiple of the tile nor K of M, -128/127
extremes with saturating requantization, unsigned A, random stalls on every stream, groups
with fewer than N non-zeros, int16 activations, several B blocks, and dense commands on a
sparse-capable engine; plus the measured-cycles function of ``sim/bench/nm_cycles.py``.
"""

from __future__ import annotations

import gc
import json
import warnings

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable

from vitaccel.hw.matrix import EngineLayouts, MatrixEngine
from vitaccel.hw.spec.config import PRESETS, ConfigError
from vitaccel.hw.spec.matrix import b_meta_stream, b_stream, check_engine_config, plan_gemm
from vitaccel.hw.spec.nm import compress
from vitaccel.sim.cases.matrix_engine import case_streams, first_mismatch, make_case, simulate

TINY = PRESETS["tiny"]
NM24 = TINY.replace(name="tiny-nm24", nm_sparsity=(2, 4))
NM14 = TINY.replace(name="tiny-nm14", nm_sparsity=(1, 4))
B1_NM14 = TINY.replace(name="b1-nm14", block_rows=2, block_cols=3, block_size=1, nm_sparsity=(1, 4))
B4_NM24 = TINY.replace(name="b4-nm24", block_rows=1, block_cols=1, block_size=4, nm_sparsity=(2, 4))
SMALL_NM24 = NM24.replace(name="small-nm24", weight_spad_kib=1, input_spad_kib=1, max_k=128)


def run(config, cases, **kwargs):
    """Simulate ``cases`` back to back and assert each is bit-exact; returns the cycles."""
    results = simulate(config, cases, **kwargs)
    for case, (got, _) in zip(cases, results):
        mismatch = first_mismatch(case.expected, got)
        assert mismatch is None, (case.plan, mismatch)
    return [cycles for _, cycles in results]


@pytest.mark.parametrize("config", [NM24, NM14, B1_NM14, B4_NM24], ids=["2:4", "1:4", "b1-1:4", "b4-2:4"])
@pytest.mark.parametrize("seed,shape", [(1, (5, 13, 9)), (2, (4, 8, 4)), (3, (1, 1, 1)), (4, (9, 22, 6))])
def test_random_shapes_bit_exact(config, seed, shape):
    M, K, N = shape
    case = make_case(config, seed=seed, M=M, K=K, N=N, nm=True)
    n, m = config.nm_sparsity
    assert case.plan.k_words == -(-(-(-K // m) * n) // config.block_size)
    run(config, [case])


@pytest.mark.parametrize("config", [NM24, NM14], ids=["2:4", "1:4"])
def test_stalls_on_every_stream(config):
    run(config, [make_case(config, seed=11, M=7, K=30, N=11, nm=True)], stall_prob=0.4, seed=11)


def test_extremes_and_saturation():
    case = make_case(NM24, seed=5, M=6, K=18, N=8, nm=True, extremes=True, nm_sparser=0.0)
    assert {-128, 127} <= set(case.a.ravel()) and -128 in case.weights.values
    assert {-128, 127} <= set(np.unique(case.expected))
    run(NM24, [case])


def test_unsigned_a():
    case = make_case(NM14, seed=6, M=5, K=17, N=7, nm=True, unsigned_a=True, extremes=True)
    assert case.a.max() == 255
    run(NM14, [case])


def test_groups_with_fewer_than_n_nonzeros():
    case = make_case(NM24, seed=7, M=5, K=21, N=9, nm=True, nm_sparser=0.6)
    nonzeros = (case.weights.grouped_values() != 0).sum(axis=1)
    assert {0, 1, 2} <= set(np.unique(nonzeros))
    run(NM24, [case], stall_prob=0.1, seed=7)


def test_int16_activations():
    """16-bit operands: A spans int16, the compressed weights stay int8 (hw/spec/nm.py)."""
    config = TINY.replace(name="int16-nm24", operand_width=16, acc_width=48, block_rows=1, block_cols=2,
                          block_size=2, input_spad_kib=32, weight_spad_kib=32, nm_sparsity=(2, 4))
    case = make_case(config, seed=10, M=3, K=10, N=6, nm=True)
    assert np.abs(case.a).max() > 127
    run(config, [case], stall_prob=0.2, seed=10)


def test_raw_accumulators():
    case = make_case(NM24, seed=8, M=6, K=11, N=9, nm=True, unsigned_a=True)
    (got, _), = simulate(NM24, [case], raw=True, stall_prob=0.2, seed=8)
    expected = case.a.astype(np.int64) @ case.b.astype(np.int64)
    assert first_mismatch(expected, got) is None


def test_dense_and_sparse_commands_share_the_engine():
    """Dense GEMMs (attention scores) and sparse ones back to back on one sparse-capable engine."""
    cases = [make_case(NM24, seed=12, M=5, K=9, N=7, nm=True),
             make_case(NM24, seed=13, M=7, K=10, N=6),  # dense, B not sparse
             make_case(NM24, seed=14, M=3, K=4, N=5, nm=True, residual=False),
             make_case(NM24, seed=15, M=4, K=3, N=4, extremes=True, unsigned_a=True)]
    assert cases[1].plan.nm is None and np.count_nonzero(cases[1].b) > cases[1].b.size // 2
    run(NM24, cases, stall_prob=0.2, seed=12)


def test_several_weight_blocks_and_a_panel_reloads():
    case = make_case(SMALL_NM24, seed=9, M=9, K=128, N=40, nm=True)
    assert case.plan.n_blocks > 1 and case.plan.m_tiles > 1
    run(SMALL_NM24, [case], stall_prob=0.1, seed=9)


def test_sparse_steps_halve_the_cycles():
    """Full-rate streams: a 2:4 GEMM issues half the k-steps and takes about half the cycles."""
    dense = make_case(NM24, seed=16, M=8, K=64, N=32)
    sparse = make_case(NM24, seed=16, M=8, K=64, N=32, nm=True)
    assert sparse.plan.compute_cycles * 2 == dense.plan.compute_cycles
    dense_cycles, sparse_cycles = run(NM24, [dense, sparse])
    assert sparse_cycles <= 0.6 * dense_cycles, (sparse_cycles, dense_cycles)


def test_wrong_metadata_is_caught():
    """The engine really selects by the metadata: shifted indices give a different result."""
    case = make_case(NM24, seed=17, M=4, K=8, N=4, nm=True, nm_sparser=0.0)
    streams = case_streams(case)
    assert streams["b_meta"] == b_meta_stream(case.plan, case.weights) and any(streams["b_meta"])
    mirrored = (3 - case.weights.indices).astype(np.uint8)  # positions mirrored inside each group
    case.weights = type(case.weights)(values=case.weights.values, indices=mirrored, n=2, m=4, k=8)
    (got, _), = simulate(NM24, [case])
    assert first_mismatch(case.expected, got) is not None


def test_dense_only_engine_has_no_sparse_hardware():
    layouts = EngineLayouts(TINY)
    assert layouts.meta_word is None and layouts.a_span == TINY.block_size
    with warnings.catch_warnings():  # built only to look at their ports
        warnings.simplefilter("ignore", UnusedElaboratable)
        assert "b_meta" not in MatrixEngine(TINY).signature.members
        assert "b_meta" in MatrixEngine(NM24).signature.members
        gc.collect()
    assert EngineLayouts(NM14).a_span == 4 * TINY.block_size


def test_bad_configs_and_operands_are_rejected():
    with pytest.raises(ConfigError, match="N a power of two dividing block_size"):
        check_engine_config(TINY.replace(block_size=1, block_rows=2, block_cols=2, nm_sparsity=(2, 4)))
    with pytest.raises(ConfigError, match="N a power of two"):
        check_engine_config(TINY.replace(block_size=3, block_rows=1, block_cols=1, nm_sparsity=(3, 4)))
    with pytest.raises(ValueError, match="no nm_sparsity"):
        plan_gemm(TINY, 4, 8, 4, nm=True)
    dense_plan, sparse_plan = plan_gemm(NM24, 2, 8, 2), plan_gemm(NM24, 2, 8, 2, nm=True)
    with pytest.raises(ValueError, match="not a sparse-mode"):
        b_meta_stream(dense_plan, np.zeros((8, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="more than 2 of 4"):
        b_stream(sparse_plan, np.ones((8, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="do not match"):
        b_stream(sparse_plan, compress(np.zeros((8, 2), dtype=np.int64), 1, 4))


def test_measured_cycles_function_and_cache(tmp_path, monkeypatch):
    """``nm_cycles.gemm_cycles`` (Amaranth's simulator here) measures, then answers from its cache."""
    from vitaccel.sim.bench import nm_cycles

    monkeypatch.setenv("VITACCEL_NM_CYCLES_CACHE", str(tmp_path / "cycles.json"))
    # K = 64: 16 sparse k-steps per tile outlast a tile's capture and drain into the
    # post-processor (the pipelined block units and post-processor, docs/timing.md), so the
    # GEMM is compute-bound and 2:4 halves it; at K = 32 the tiles' fixed cost dominates.
    dense = nm_cycles.gemm_cycles(TINY, 9, 64, 16, simulator="amaranth")
    sparse = nm_cycles.gemm_cycles(TINY, 9, 64, 16, (2, 4), simulator="amaranth")
    assert 0.4 * dense <= sparse <= 0.6 * dense
    cache = json.loads((tmp_path / "cycles.json").read_text())
    assert len(cache) == 2
    (tmp_path / "cycles.json").write_text(json.dumps({key: 7 for key in cache}))
    assert nm_cycles.gemm_cycles(TINY, 9, 64, 16, (2, 4), simulator="amaranth") == 7  # cached
    with pytest.raises(ValueError, match="simulator"):
        nm_cycles.gemm_cycles(TINY, 9, 32, 16, simulator="spice")
    with pytest.raises(ValueError, match="nm_sparsity"):
        nm_cycles.gemm_cycles(TINY, 9, 32, 16, (2, 3), simulator="amaranth")
