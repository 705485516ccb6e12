"""The N:M compressed format (hw/spec/nm.py) and its golden kernels (sim/golden/nm.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitaccel.hw.spec.config import PRESETS, AccelConfig, ConfigError
from vitaccel.hw.spec.nm import (NMWeights, compress, decompress, index_bits, magnitude_keep_mask,
                                 metadata_word_bits, pack_index_rows, unpack_index_rows)
from vitaccel.sim.golden import gemm
from vitaccel.sim.golden.nm import nm_linear, nm_matmul

PATTERNS = [(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 16)]


@st.composite
def sparse_case(draw):
    """A random N:M-sparse int8 matrix (K any size, padding exercised) and activations."""
    n, m = draw(st.sampled_from(PATTERNS))
    k = draw(st.integers(1, 3 * m + 3))
    cols = draw(st.integers(1, 9))
    rows = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    extreme = draw(st.booleans())
    low, high = (-128, 128) if not extreme else (-128, -127)
    dense = rng.integers(low, high, (k, cols))
    # Random magnitudes, so the kept positions vary; sometimes extra zeros inside kept slots.
    w = dense * magnitude_keep_mask(rng.normal(size=(k, cols)), n, m)
    if draw(st.booleans()):
        w = w * (rng.random((k, cols)) < 0.7)
    a = rng.integers(-128, 128, (rows, k)) if not extreme else np.full((rows, k), -128)
    return n, m, w, a


@settings(max_examples=150, deadline=None)
@given(sparse_case())
def test_round_trip_and_matmul_match_dense(case):
    n, m, w, a = case
    nmw = compress(w, n, m)
    assert nmw.values.shape == (-(-w.shape[0] // m) * n, w.shape[1])
    assert nmw.values.dtype == np.int8 and nmw.indices.dtype == np.uint8
    np.testing.assert_array_equal(decompress(nmw), w)
    np.testing.assert_array_equal(nm_matmul(a, nmw), gemm.matmul(a, w))
    # Canonical form: compressing the decompressed matrix gives the same slots.
    again = compress(decompress(nmw), n, m)
    np.testing.assert_array_equal(again.indices, nmw.indices)


@settings(max_examples=60, deadline=None)
@given(sparse_case(), st.integers(0, 2**32 - 1))
def test_nm_linear_matches_dense_linear(case, seed):
    n, m, w, a = case
    rng = np.random.default_rng(seed)
    cols = w.shape[1]
    bias = rng.integers(-2**31, 2**31, cols)
    multiplier = rng.integers(1, 2**15, cols)
    shift = rng.integers(1, 31, cols)
    residual = rng.integers(-128, 128, (a.shape[0], cols))
    nmw = compress(w, n, m)
    np.testing.assert_array_equal(nm_linear(a, nmw, bias, multiplier, shift, residual=residual),
                                  gemm.linear(a, w, bias, multiplier, shift, residual=residual))
    np.testing.assert_array_equal(nm_linear(a, nmw, None, 1 << 14, 14),
                                  gemm.linear(a, w, None, 1 << 14, 14))


def test_batched_and_vector_activations():
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (16, 6)) * magnitude_keep_mask(rng.normal(size=(16, 6)), 1, 4)
    nmw = compress(w, 1, 4)
    a = rng.integers(-128, 128, (2, 3, 5, 16))
    np.testing.assert_array_equal(nm_matmul(a, nmw), gemm.matmul(a, w))
    np.testing.assert_array_equal(nm_matmul(a[0, 0, 0], nmw), gemm.matmul(a[0, 0, 0], w))


def test_compressed_slots_are_ordered_positions_and_padding_documented():
    w = np.array([[0, 5], [7, 0], [0, 0], [-3, 0], [0, 0], [9, 0]])  # K=6, groups of 4: pad 2 rows
    nmw = compress(w, 2, 4)
    # Column 0 group 0 non-zeros at 1 and 3; column 1 group 0 one non-zero at 0, filled with position 1.
    np.testing.assert_array_equal(nmw.indices[:2], [[1, 0], [3, 1]])
    np.testing.assert_array_equal(nmw.values[:2], [[7, 5], [-3, 0]])
    # Group 1 (rows 4, 5 and two padding rows): column 0 keeps row 5 (position 1).
    np.testing.assert_array_equal(nmw.indices[2:], [[0, 0], [1, 1]])
    np.testing.assert_array_equal(nmw.values[2:], [[0, 0], [9, 0]])
    assert nmw.k == 6 and nmw.groups == 2


def test_magnitude_mask_keeps_largest_ties_lowest_position():
    w = np.array([[1.0], [-4.0], [2.0], [-2.0]])
    np.testing.assert_array_equal(magnitude_keep_mask(w, 2, 4)[:, 0], [False, True, True, False])
    np.testing.assert_array_equal(magnitude_keep_mask(np.zeros((4, 1)), 1, 4)[:, 0], [True, False, False, False])
    mask = magnitude_keep_mask(np.ones((5, 3)), 2, 4)  # partial last group keeps its only row
    assert mask.shape == (5, 3) and mask[:4].sum(axis=0).tolist() == [2, 2, 2] and mask[4].all()


def test_too_many_nonzeros_names_the_group():
    w = np.zeros((8, 3), dtype=np.int8)
    w[4:7, 2] = 1  # group 1 of column 2 holds three non-zeros
    with pytest.raises(ValueError, match=r"group 1 \(rows 4\.\.7\) of column 2 has 3 non-zeros, more than 2 of 4"):
        compress(w, 2, 4)


@pytest.mark.parametrize("n, m", [(0, 4), (4, 4), (2, 3), (2, 32), (True, 4)])
def test_invalid_patterns_raise(n, m):
    with pytest.raises(ValueError, match="N:M sparsity"):
        compress(np.zeros((4, 1), dtype=np.int8), n, m)


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="int8 values"):
        compress(np.full((4, 1), 200), 2, 4)
    with pytest.raises(ValueError, match="integers"):
        compress(np.zeros((4, 1), dtype=np.float32), 2, 4)
    with pytest.raises(ValueError, match="2-D"):
        compress(np.zeros(4, dtype=np.int8), 2, 4)
    nmw = compress(np.zeros((8, 2), dtype=np.int8), 2, 4)
    with pytest.raises(ValueError, match="K=7"):
        nm_matmul(np.zeros((1, 7), dtype=np.int8), nmw)
    with pytest.raises(ValueError, match="integers"):
        nm_matmul(np.zeros((1, 8)), nmw)
    bad = nmw.indices.copy()
    bad[1, 0] = bad[0, 0]
    with pytest.raises(ValueError, match="group 0 .* column 0 uses a position twice"):
        NMWeights(values=nmw.values, indices=bad, n=2, m=4, k=8)
    bad[1, 0] = 4
    with pytest.raises(ValueError, match="outside the group of 4"):
        NMWeights(values=nmw.values, indices=bad, n=2, m=4, k=8)
    with pytest.raises(ValueError, match="4 rows"):
        NMWeights(values=nmw.values[:3], indices=nmw.indices[:3], n=2, m=4, k=8)


def test_metadata_packing_layout():
    assert [index_bits(m) for m in (2, 4, 8, 16)] == [1, 2, 3, 4]
    assert metadata_word_bits(4, 4, rows_per_word=2) == 16
    indices = np.array([[1, 2, 3, 0], [0, 3, 2, 1]], dtype=np.uint8)
    [word] = pack_index_rows(indices, 4, rows_per_word=2)
    # Element [r][c] at bits (r*4 + c)*2, LSB first.
    assert word == sum(int(v) << (2 * i) for i, v in enumerate(indices.reshape(-1)))
    assert (word >> ((1 * 4 + 1) * 2)) & 3 == 3
    np.testing.assert_array_equal(unpack_index_rows([word], 4, 4, rows_per_word=2), indices)
    with pytest.raises(ValueError, match="0..3"):
        pack_index_rows(np.array([[4]]), 4)
    with pytest.raises(ValueError, match="multiple of rows_per_word"):
        pack_index_rows(indices, 4, rows_per_word=3)
    with pytest.raises(ValueError, match="does not fit"):
        unpack_index_rows([1 << 16], 4, 4, rows_per_word=2)


def test_spec_rule_agrees_with_config_rule():
    from vitaccel.hw.spec.nm import check_nm

    for n in range(0, 18):
        for m in range(0, 18):
            try:
                AccelConfig(**{**PRESETS["tiny"].to_dict(), "nm_sparsity": [n, m]})
                config_ok = True
            except ConfigError:
                config_ok = False
            try:
                check_nm(n, m)
                spec_ok = True
            except ValueError:
                spec_ok = False
            assert config_ok == spec_ok, (n, m)
