"""Matrix engine in Amaranth's simulator: bit-exact against the golden ``linear``.

Random shapes (non-multiples of the tile geometry), -128/127 extremes, saturating
requantization, unsigned A, int16 operands, b = 1 and b > 1, and random stalls on every
input and output stream.
"""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable

from vitaccel.hw.matrix import BlockUnit, EngineLayouts, MatrixEngine
from vitaccel.hw.spec.config import PRESETS, ConfigError
from vitaccel.hw.spec.matrix import a_half_words, a_stream, b_half_words, check_engine_config, plan_gemm
from vitaccel.sim.cases.matrix_engine import first_mismatch, make_case
from vitaccel.sim.cases.matrix_engine import simulate as run_amaranth

TINY = PRESETS["tiny"]
B1 = TINY.replace(name="b1", block_rows=2, block_cols=3, block_size=1)
INT16 = TINY.replace(name="int16", operand_width=16, acc_width=48, block_rows=1, block_cols=2,
                     block_size=2, input_spad_kib=32, weight_spad_kib=32)
SMALL_SPAD = TINY.replace(name="small_spad", weight_spad_kib=1, input_spad_kib=1, max_k=128)


def simulate(config, case, *, stall_prob: float = 0.0, seed: int = 0, raw: bool = False):
    """Drive one case through the engine; returns the output matrix (with ``raw``: the
    ``output_acc`` accumulators instead)."""
    return run_amaranth(config, [case], stall_prob=stall_prob, seed=seed, raw=raw)[0][0]


def check(config, *, seed, M, K, N, stall_prob=0.0, **kwargs):
    case = make_case(config, seed=seed, M=M, K=K, N=N, **kwargs)
    got = simulate(config, case, stall_prob=stall_prob, seed=seed)
    assert first_mismatch(case.expected, got) is None, first_mismatch(case.expected, got)
    return case


@pytest.mark.parametrize("config", [TINY, B1], ids=["b2", "b1"])
@pytest.mark.parametrize("seed,shape", [(1, (5, 7, 9)), (2, (4, 4, 4)), (3, (1, 1, 1)), (4, (9, 13, 6))])
def test_random_shapes_bit_exact(config, seed, shape):
    M, K, N = shape
    check(config, seed=seed, M=M, K=K, N=N)


@pytest.mark.parametrize("config", [TINY, B1], ids=["b2", "b1"])
def test_random_stalls_on_every_stream(config):
    check(config, seed=11, M=7, K=10, N=11, stall_prob=0.4)


def test_extremes_and_saturation():
    case = check(TINY, seed=5, M=6, K=12, N=8, extremes=True)
    assert {-128, 127} <= set(case.a.ravel()) and {-128, 127} <= set(np.unique(case.expected))


@pytest.mark.parametrize("unsigned_a", [False, True])
def test_raw_accumulators_bit_exact(unsigned_a):
    """``output_acc`` carries the unbiased int32 accumulators (raw GEMMs), edges included."""
    case = make_case(TINY, seed=7, M=6, K=11, N=9, unsigned_a=unsigned_a)
    got = simulate(TINY, case, stall_prob=0.2, seed=7, raw=True)
    expected = case.a.astype(np.int64) @ case.b.astype(np.int64)
    assert first_mismatch(expected, got) is None, first_mismatch(expected, got)


def test_unsigned_a_mode():
    case = check(TINY, seed=6, M=5, K=9, N=7, unsigned_a=True, extremes=True)
    assert case.a.max() == 255


def test_no_residual():
    check(TINY, seed=7, M=5, K=6, N=5, residual=False)


def test_int16_operands():
    case = check(INT16, seed=8, M=3, K=5, N=6, stall_prob=0.2)
    assert np.abs(case.b).max() > 127


def test_several_weight_blocks_and_a_panel_reloads():
    # 1 KiB spads hold 128 words per half: a K=100 panel (50 words) leaves room for 2 tile
    # columns per B block, so N=13 (4 tile columns) needs 2 B blocks and reloads every A panel.
    case = check(SMALL_SPAD, seed=9, M=9, K=100, N=13, stall_prob=0.1)
    assert case.plan.n_blocks > 1 and case.plan.m_tiles > 1


def test_back_to_back_commands():
    for seed in (12, 13):
        check(TINY, seed=seed, M=3, K=3, N=3)


def test_bad_configs_and_shapes_are_rejected():
    with pytest.raises(ConfigError, match="acc_width"):
        MatrixEngine(TINY.replace(acc_width=32, operand_width=16, max_k=2))
    with pytest.raises(ValueError, match="max_k"):
        plan_gemm(TINY, 4, TINY.max_k + 1, 4)
    with pytest.raises(ValueError, match="positive"):
        plan_gemm(TINY, 0, 4, 4)
    with warnings.catch_warnings():  # the half-built unit is garbage, not a forgotten design
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match="acc_width"):
            BlockUnit(block_size=2, a_width=9, b_width=8, acc_width=16)
        gc.collect()
    plan = plan_gemm(TINY, 2, 2, 2)
    with pytest.raises(ValueError, match="outside"):
        a_stream(plan, np.full((2, 2), 128))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_an_engine_within_budget(name):
    config = PRESETS[name]
    check_engine_config(config)
    layouts = EngineLayouts(config)
    assert a_half_words(config) * layouts.a_word.size <= config.input_spad_kib * 8192
    assert b_half_words(config) * layouts.b_word.size <= config.weight_spad_kib * 8192
    assert config.engine_dsp48e2 <= 2016  # zcu102: leave DSP48E2 for the other units
