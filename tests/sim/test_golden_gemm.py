"""Property tests of the golden GEMM kernels against plain Python integer arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vitaccel.hw.spec.numerics import requantize, saturate
from vitaccel.sim.golden.gemm import linear, matmul


def _pairs(max_value: int):
    dims = st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 6))
    return dims.flatmap(lambda d: st.tuples(
        hnp.arrays(np.int64, (d[0], d[1]), elements=st.integers(-max_value, max_value)),
        hnp.arrays(np.int64, (d[1], d[2]), elements=st.integers(-max_value, max_value))))


def _reference_matmul(a, b):
    return [[sum(int(a[i, k]) * int(b[k, j]) for k in range(a.shape[1])) for j in range(b.shape[1])]
            for i in range(a.shape[0])]


@settings(max_examples=60, deadline=None)
@given(_pairs(128))
def test_matmul_int8_exact(pair):
    a, b = pair
    got = matmul(a, b)
    assert got.dtype == np.int64 and got.tolist() == _reference_matmul(a, b)


@settings(max_examples=30, deadline=None)
@given(_pairs(2**28))
def test_matmul_wide_operands_exact_on_int64_path(pair):
    a, b = pair  # sums up to 9 * 2^56: past float64's 53 bits, inside int64
    assert matmul(a, b).tolist() == _reference_matmul(a, b)


def test_matmul_refuses_int64_overflow():
    a = np.full((1, 4), 2**31, dtype=np.int64)
    with pytest.raises(ValueError, match="overflows int64"):
        matmul(a, a.T)


def _requant_reference(acc, mult, shift, bits):
    x = acc * mult
    rounded = (x + (1 << (shift - 1))) >> shift if shift else x  # Python >> is floor: round half up
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return min(max(rounded, lo), hi)


@settings(max_examples=40, deadline=None)
@given(_pairs(128), st.data())
def test_linear_order_bias_requant_residual_saturate(pair, data):
    a, w = pair
    n = w.shape[1]
    bias = np.array(data.draw(st.lists(st.integers(-2**31, 2**31 - 1), min_size=n, max_size=n)), dtype=np.int64)
    mult = np.array(data.draw(st.lists(st.integers(0, 2**31 - 1), min_size=n, max_size=n)), dtype=np.int64)
    shift = np.array(data.draw(st.lists(st.integers(1, 62), min_size=n, max_size=n)), dtype=np.int64)
    residual = data.draw(hnp.arrays(np.int64, (a.shape[0], n), elements=st.integers(-128, 127)))
    got = linear(a, w, bias, mult, shift, residual=residual)
    acc = _reference_matmul(a, w)
    for i in range(a.shape[0]):
        for j in range(n):
            biased = min(max(acc[i][j] + int(bias[j]), -2**31), 2**31 - 1)
            q = _requant_reference(biased, int(mult[j]), int(shift[j]), 8)
            assert got[i, j] == min(max(q + int(residual[i, j]), -128), 127)


def test_linear_matches_spec_requantize_without_residual():
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (4, 16))
    w = rng.integers(-128, 128, (16, 5))
    got = linear(a, w, None, 1 << 30, 38, out_bits=8)
    assert np.array_equal(got, requantize(saturate(a @ w, 32), 1 << 30, 38))


def test_linear_int16_output_width():
    a = np.array([[30000, -30000]])
    w = np.array([[30000], [30000]])
    assert linear(a, w, None, 1 << 30, 31, out_bits=16).tolist() == [[0]]
    assert linear(a, w, [2**31 - 1], 1 << 30, 16, out_bits=16).tolist() == [[32767]]


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="do not chain"):
        matmul(np.zeros((2, 3), dtype=int), np.zeros((2, 3), dtype=int))
    with pytest.raises(ValueError, match="integers"):
        matmul(np.array([[0.5]]), np.array([[1]]))
