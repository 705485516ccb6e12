"""The one rounding rule and the one saturation rule, and requantization built on them."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vitaccel.hw.spec.numerics import (MAX_SHIFT, dequantize, quantize, quantize_multiplier,
                                       requantize, round_shift, saturate)

int32s = st.integers(-(1 << 31), (1 << 31) - 1)


def _round_half_up(value: Fraction) -> int:
    return int((value + Fraction(1, 2)).__floor__())


@given(int32s, st.integers(0, 40))
def test_round_shift_is_round_half_up(x, shift):
    assert int(round_shift(np.int64(x), shift)) == _round_half_up(Fraction(x, 1 << shift))


def test_round_shift_ties_go_up_for_both_signs():
    assert list(round_shift(np.array([1, 3, -1, -3, 2, -2]), 1)) == [1, 2, 0, -1, 1, -1]


def test_saturate_clamps_never_wraps():
    assert list(saturate(np.array([-1000, -129, -128, 127, 128, 1000]), 8)) == [-128, -128, -128, 127, 127, 127]
    assert list(saturate(np.array([-5, 0, 255, 256]), 8, signed=False)) == [0, 0, 255, 255]


@given(int32s, st.integers(0, (1 << 31) - 1), st.integers(1, MAX_SHIFT))
def test_requantize_matches_exact_rational_arithmetic(acc, multiplier, shift):
    expected = max(-128, min(127, _round_half_up(Fraction(acc * multiplier, 1 << shift))))
    assert int(requantize(np.int64(acc), multiplier, shift)) == expected


def test_requantize_broadcasts_per_channel():
    acc = np.array([[100, 100, 100], [-100, -100, -100]])
    mult = np.array([1 << 30, 1 << 29, 1 << 28])
    out = requantize(acc, mult, 31)
    assert out.tolist() == [[50, 25, 13], [-50, -25, -12]]


@pytest.mark.parametrize("bad", [dict(multiplier=-1, shift=4), dict(multiplier=1 << 31, shift=4),
                                 dict(multiplier=1, shift=0), dict(multiplier=1, shift=MAX_SHIFT + 1)])
def test_requantize_rejects_out_of_range_parameters(bad):
    with pytest.raises(ValueError):
        requantize(np.array([1]), **bad)


@given(st.floats(min_value=1e-12, max_value=0.99, allow_nan=False))
def test_quantize_multiplier_is_close(real):
    q = quantize_multiplier(real)
    assert 0 <= q.multiplier < (1 << 31) and 1 <= q.shift <= MAX_SHIFT
    assert abs(q.value - real) <= real * 2.0 ** -30 + 2.0 ** -MAX_SHIFT


def test_quantize_multiplier_errors_and_zero():
    assert quantize_multiplier(0.0).multiplier == 0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            quantize_multiplier(bad)


def test_quantize_round_trip_within_half_a_step():
    x = np.linspace(-1, 1, 101)
    q = quantize(x, 1 / 100)
    assert np.max(np.abs(dequantize(q, 1 / 100) - x)) <= 0.5 / 100 + 1e-12
    assert quantize(np.array([10.0, -10.0]), 0.01).tolist() == [127, -128]
