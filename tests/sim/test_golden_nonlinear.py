"""Golden non-linear kernels: properties, edge cases and accuracy against float64."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vitaccel.hw.spec.luts import (EXP_FRAC_BITS, exp2_table, reciprocal_table, round_half_up,
                                   rsqrt_table)
from vitaccel.hw.spec.nonlinear import (SOFTMAX_OUTPUT_SCALE, add_params, gelu_int16_params,
                                        gelu_reference, gelu_table, layernorm_params,
                                        softmax_params)
from vitaccel.sim.golden.nonlinear import (add, gelu, gelu_int16, inv_sqrt, layernorm,
                                           reciprocal, softmax)

INT32 = (-(1 << 31), (1 << 31) - 1)
SCALES = st.sampled_from([1e-3, 2e-3, 5e-3, 2e-2, 0.1])


def float_softmax(scores, scale, mask=None):
    x = np.asarray(scores, dtype=np.float64) * scale
    mask = np.ones(x.shape, bool) if mask is None else mask
    x = np.where(mask, x, -np.inf)
    top = np.max(x, axis=-1, keepdims=True)
    e = np.where(mask, np.exp(x - np.where(np.isfinite(top), top, 0)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


# -- tables ----------------------------------------------------------------------------------

def test_table_formats():
    exp = exp2_table(6)
    assert exp.shape == (64,) and exp[0] == 1 << EXP_FRAC_BITS and np.all(np.diff(exp) < 0)
    assert exp[32] == round_half_up(2 ** -0.5 * (1 << EXP_FRAC_BITS))
    recip = reciprocal_table(8)
    assert recip.shape == (256,) and np.all(np.diff(recip) <= 0) and recip[0] <= 1 << 16
    rsqrt = rsqrt_table(8)
    assert rsqrt.shape == (256,) and np.all(np.diff(rsqrt) <= 0)
    with pytest.raises(ValueError, match="exp_lut_bits"):
        exp2_table(0)


def test_reciprocal_and_inv_sqrt_are_accurate():
    s = np.unique(np.geomspace(1 << 15, 1 << 27, 5000).astype(np.int64))
    y, k = reciprocal(s, 8)
    assert np.max(np.abs(y / 2.0 ** (16 + k) * s - 1)) < 4e-5
    v = np.unique(np.geomspace(1, 1 << 35, 5000).astype(np.int64))
    y, k = inv_sqrt(v, 8)
    assert np.max(np.abs(y / 2.0 ** (16 + k) * np.sqrt(v) - 1)) < 6e-5


# -- softmax ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(*INT32), SCALES)
def test_softmax_all_equal_rows_are_uniform(width, value, scale):
    out = softmax(np.full((2, width), value), softmax_params(scale))
    expected = min(255, math.floor(256 / width + 0.5))
    assert np.all(np.abs(out.astype(int) - expected) <= 1) and np.all(out == out[0, 0])


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 300), st.data(), SCALES)
def test_softmax_one_dominant_element_takes_everything(width, data, scale):
    p = softmax_params(scale)
    scores = np.array(data.draw(hnp.arrays(np.int64, width, elements=st.integers(-1000, 1000))))
    where = data.draw(st.integers(0, width - 1))
    scores[where] = scores.max() + int(60 / scale)  # exp(-60) rounds to 0
    out = softmax(scores, p)
    assert out[where] == 255 and np.all(np.delete(out, where) == 0)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 256), st.data(), SCALES)
def test_softmax_within_one_step_of_float(width, data, scale):
    lo, hi = data.draw(st.sampled_from([(-128, 127), (-20000, 20000), INT32, (INT32[1] - 5000, INT32[1])]))
    scores = data.draw(hnp.arrays(np.int64, (3, width), elements=st.integers(lo, hi)))
    out = softmax(scores, softmax_params(scale))
    error = np.abs(out * SOFTMAX_OUTPUT_SCALE - float_softmax(scores, scale)) / SOFTMAX_OUTPUT_SCALE
    # On realistic attention rows the error stays below one output step (bench: 0.84), but
    # adversarial rows (hundreds of equal scores plus one to three dominant ones) reach
    # 1.39 steps: the exp-table and reciprocal errors add to the final rounding's half step.
    # Hypothesis found such a row (1.0011 steps); a random search found 1.39. Bound: 1.5.
    assert error.max() <= 1.5


def test_softmax_rows_of_minus_128_and_large_positive():
    p = softmax_params(0.05)
    assert np.all(softmax(np.full((1, 197), -128), p) == 1)  # round(256/197)
    big = np.full((1, 8), INT32[1])
    assert np.all(softmax(big, p) == 32)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.data())
def test_softmax_masks(width, data):
    p = softmax_params(5e-3)
    scores = data.draw(hnp.arrays(np.int64, (2, width), elements=st.integers(-5000, 5000)))
    mask = data.draw(hnp.arrays(bool, (2, width)))
    out = softmax(scores, p, mask)
    assert np.all(out[~mask] == 0)
    for row in range(2):  # masked-out entries take no part: same as the row of kept entries
        if mask[row].any():
            assert np.array_equal(out[row, mask[row]], softmax(scores[row, mask[row]], p))
    assert np.array_equal(softmax(scores, p, np.ones_like(mask)), softmax(scores, p))
    assert np.all(softmax(scores, p, np.zeros_like(mask)) == 0)


def test_softmax_rejects_bad_input():
    p = softmax_params(1e-2)
    with pytest.raises(ValueError, match="signed 32 bits"):
        softmax(np.array([1 << 31]), p)
    with pytest.raises(ValueError, match="mask"):
        softmax(np.zeros((2, 3), np.int64), p, np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="integer array"):
        softmax(np.zeros(3), p)
    with pytest.raises(ValueError, match="input_scale"):
        softmax_params(0.0)
    with pytest.raises(ValueError, match="too small"):
        softmax_params(1e-12)


# -- GELU ------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.floats(1e-3, 0.2), st.floats(1e-3, 0.2))
def test_gelu_table_is_the_best_int8_output(in_scale, out_scale):
    table = gelu_table(in_scale, out_scale)
    codes = np.arange(-128, 128)
    out = gelu(codes, table).astype(np.int64)
    target = np.clip(gelu_reference(codes * in_scale) / out_scale, -128, 127)
    candidates = np.arange(-128, 128)
    best = np.abs(candidates[None, :] - target[:, None]).min(axis=1)
    assert np.allclose(np.abs(out - target), best)


def test_gelu_rejects_bad_table_and_input():
    table = gelu_table(0.05, 0.05)
    with pytest.raises(ValueError, match="256 entries"):
        gelu(np.zeros(3, np.int64), table[:255])
    with pytest.raises(ValueError, match="signed 8 bits"):
        gelu(np.array([128]), table)


def test_gelu_int16_follows_ibert_accuracy():
    scale = 8 / 32768
    params = gelu_int16_params(scale, scale)
    x = np.arange(-32768, 32768)
    error = np.abs(gelu_int16(x, params) * scale - gelu_reference(x * scale))
    assert error.max() < 0.025  # I-BERT's polynomial erf is within ~0.02 of GELU


# -- LayerNorm -------------------------------------------------------------------------------

def float_layernorm(x, in_scale, gamma, beta, out_scale, eps=1e-6):
    xf = x * in_scale
    mean = xf.mean(axis=-1, keepdims=True)
    var = xf.var(axis=-1, keepdims=True)
    return np.clip(((xf - mean) / np.sqrt(var + eps) * gamma + beta) / out_scale, -128, 127)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([192, 384, 768, 100, 1, 2]), st.integers(0, 2**32 - 1))
def test_layernorm_within_one_step_of_float(width, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (4, width))
    x[1] = rng.integers(-128, 128)  # zero variance
    x[2] = -128
    gamma, beta = rng.normal(1, 0.5, width), rng.normal(0, 0.5, width)
    in_scale, out_scale = rng.uniform(0.01, 0.1), rng.uniform(0.01, 0.1)
    out = layernorm(x, layernorm_params(in_scale, gamma, beta, out_scale))
    assert np.abs(out - float_layernorm(x, in_scale, gamma, beta, out_scale)).max() <= 1.0


def test_layernorm_zero_variance_rows_output_beta():
    gamma, beta = np.linspace(0.5, 2, 384), np.linspace(-1, 1, 384)
    params = layernorm_params(0.05, gamma, beta, 0.02)
    for value in (-128, 0, 127):
        out = layernorm(np.full((1, 384), value), params)
        assert np.array_equal(out[0], np.clip(round_half_up(beta / 0.02), -128, 127))


def test_layernorm_rejects_bad_input():
    params = layernorm_params(0.05, np.ones(8), np.zeros(8), 0.05)
    with pytest.raises(ValueError, match="8 channels"):
        layernorm(np.zeros((2, 7), np.int64), params)
    with pytest.raises(ValueError, match="gamma and beta"):
        layernorm_params(0.05, np.ones(8), np.zeros(7), 0.05)
    with pytest.raises(ValueError, match="gamma and beta"):
        layernorm_params(0.05, np.ones(769), np.zeros(769), 0.05)


# -- residual add ----------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.floats(1e-3, 1.0), st.floats(1e-3, 1.0), st.floats(1e-3, 1.0))
def test_add_is_rounded_float(a_scale, b_scale, out_scale):
    params = add_params(a_scale, b_scale, out_scale)
    a = np.arange(-128, 128)[:, None]
    b = np.array([-128, -1, 0, 1, 127])[None, :]
    target = np.clip((a * a_scale + b * b_scale) / out_scale, -128, 127)
    # rounding (1/2 step) plus each 16-bit multiplier's own rounding (<= 2^-(shift+1)) times 128
    assert np.abs(add(a, b, params) - target).max() <= 0.5 + 128 / 2 ** params.shift + 1e-9


def test_add_rejects_huge_ratio():
    with pytest.raises(ValueError, match="too large"):
        add_params(1e6, 1.0, 1e-3)
