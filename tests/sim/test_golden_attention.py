"""Golden sparse attention: mask prediction, packing, scheduling, masked attention."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitaccel.hw.spec.nonlinear import softmax_params
from vitaccel.hw.spec.numerics import quantize_multiplier, requantize
from vitaccel.hw.spec.sparse import MaskPredictParams
from vitaccel.sim.cases.sparse import MASK_KINDS, make_mask
from vitaccel.sim.golden.attention import (masked_attention, pack_mask, predict_mask,
                                           schedule_waves)
from vitaccel.sim.golden.gemm import matmul
from vitaccel.sim.golden.nonlinear import softmax

SM = softmax_params(1.0 / 2000.0)
OUT = quantize_multiplier(1.0 / 256.0)


@st.composite
def masks(draw):
    n = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(MASK_KINDS))
    density = draw(st.sampled_from([0.0, 0.05, 0.25, 0.5, 0.9, 1.0]))
    return make_mask(np.random.default_rng(draw(st.integers(0, 2**16))), n, density, kind)


@settings(max_examples=120, deadline=None)
@given(masks(), st.integers(1, 9), st.integers(1, 5))
def test_packing_is_lossless_and_balanced(mask, width, capacity):
    packed = pack_mask(mask, width, capacity)
    assert np.array_equal(packed.to_mask(), mask)
    used = (packed.keys >= 0).sum(axis=1)
    assert np.all(used >= 1) and np.all(used <= capacity)          # no empty packed row
    valid = packed.keys >= 0
    assert np.all((packed.keys // width == packed.block[:, None])[valid])  # one block per row
    # Exactly ceil(nnz / capacity) packed rows per non-empty sub-row.
    n = mask.shape[0]
    for q in range(n):
        for b in range(-(-n // width)):
            nnz = int(mask[q, b * width:(b + 1) * width].sum())
            rows = np.count_nonzero((packed.query == q) & (packed.block == b))
            assert rows == -(-nnz // capacity)


@settings(max_examples=60, deadline=None)
@given(masks(), st.integers(1, 5))
def test_schedule_runs_each_packed_row_once_on_its_pe_row(mask, pe_rows):
    packed = pack_mask(mask, 8, 2)
    schedule = schedule_waves(packed, pe_rows)
    assigned = schedule[schedule >= 0]
    assert sorted(assigned.tolist()) == list(range(packed.rows))
    for r in range(pe_rows):
        column = schedule[:, r]
        assert np.all(packed.query[column[column >= 0]] % pe_rows == r)


def _qkv(rng, n, d):
    return (rng.integers(-128, 128, (n, d)) for _ in range(3))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 16), st.integers(0, 2**16))
def test_all_ones_mask_equals_dense_attention(n, d, seed):
    q, k, v = _qkv(np.random.default_rng(seed), n, d)
    dense = requantize(matmul(softmax(matmul(q, k.T), SM).astype(np.int64), v), OUT.multiplier, OUT.shift)
    got = masked_attention(q, k, v, np.ones((n, n), dtype=bool), SM, OUT.multiplier, OUT.shift)
    assert got.dtype == np.int8
    assert np.array_equal(got, dense)


@settings(max_examples=40, deadline=None)
@given(masks(), st.integers(0, 2**16))
def test_masked_out_keys_do_not_matter(mask, seed):
    n = mask.shape[0]
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(rng, n, 4)
    base = masked_attention(q, k, v, mask, SM, OUT.multiplier, OUT.shift)
    unused = ~mask.any(axis=0)                   # keys no query attends to
    k2, v2 = k.copy(), v.copy()
    k2[unused] = rng.integers(-128, 128, (int(unused.sum()), 4))
    v2[unused] = rng.integers(-128, 128, (int(unused.sum()), 4))
    assert np.array_equal(masked_attention(q, k2, v2, mask, SM, OUT.multiplier, OUT.shift), base)
    empty_rows = ~mask.any(axis=1)
    assert np.all(base[empty_rows] == 0)


def test_predicted_mask_keeps_row_max_and_grows_with_margin():
    rng = np.random.default_rng(1)
    q, k, _ = _qkv(rng, 20, 8)
    tight = predict_mask(q, k, MaskPredictParams(0))
    loose = predict_mask(q, k, MaskPredictParams(40))
    assert tight.any(axis=1).all()
    assert np.all(loose >= tight) and loose.sum() > tight.sum()
    q4 = np.clip(np.floor(q / 16 + 0.5), -8, 7)
    k4 = np.clip(np.floor(k / 16 + 0.5), -8, 7)
    pred = q4 @ k4.T
    assert np.array_equal(loose, pred >= pred.max(axis=1, keepdims=True) - 40)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="margin"):
        MaskPredictParams(-1)
    with pytest.raises(ValueError, match="square bool"):
        pack_mask(np.ones((2, 3), dtype=bool), 4, 2)
    with pytest.raises(ValueError, match="pe_row_capacity"):
        pack_mask(np.ones((2, 2), dtype=bool), 4, 0)
    with pytest.raises(ValueError, match="int8"):
        masked_attention(np.full((2, 2), 300), np.zeros((2, 2), int), np.zeros((2, 2), int),
                         np.ones((2, 2), bool), SM, OUT.multiplier, OUT.shift)
    with pytest.raises(ValueError, match="mask"):
        masked_attention(np.zeros((2, 2), int), np.zeros((2, 2), int), np.zeros((2, 2), int),
                         np.ones((3, 3), bool), SM, OUT.multiplier, OUT.shift)
    with pytest.raises(ValueError, match="density"):
        make_mask(np.random.default_rng(0), 4, 1.5)
