"""Golden top-k and the token-pruning helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitaccel.hw.spec.sparse import TOPK_SCORE_BITS
from vitaccel.sim.golden.topk import package_token, prune_tokens, topk, topk_threshold


@st.composite
def scores_and_k(draw):
    n = draw(st.integers(1, 70))
    # A small value range forces many ties.
    top = draw(st.sampled_from([2, 5, 1 << TOPK_SCORE_BITS]))
    scores = np.array(draw(st.lists(st.integers(0, top - 1), min_size=n, max_size=n)), dtype=np.int64)
    return scores, draw(st.integers(0, n))


def brute_force_topk(scores: np.ndarray, k: int) -> list[int]:
    """Selection by repeatedly taking the first maximum of what is left."""
    left = list(range(scores.size))
    kept = []
    for _ in range(k):
        best = max(left, key=lambda i: (scores[i], -i))
        kept.append(best)
        left.remove(best)
    return sorted(kept)


@settings(max_examples=150, deadline=None)
@given(scores_and_k())
def test_topk_equals_brute_force(case):
    scores, k = case
    indices, keep = topk(scores, k)
    assert indices.dtype == np.int64 and keep.dtype == bool
    assert indices.tolist() == brute_force_topk(scores, k)
    assert keep.sum() == k and np.array_equal(np.nonzero(keep)[0], indices)


@settings(max_examples=100, deadline=None)
@given(scores_and_k())
def test_threshold_explains_the_selection(case):
    scores, k = case
    threshold, ties = topk_threshold(scores, k)
    indices, _ = topk(scores, k)
    above = np.nonzero(scores > threshold)[0]
    equal = np.nonzero(scores == threshold)[0][:ties]
    assert indices.tolist() == sorted(above.tolist() + equal.tolist())


def test_topk_edges_and_errors():
    assert topk(np.array([3, 3, 3]), 0)[0].size == 0
    assert topk(np.array([3, 3, 3]), 3)[0].tolist() == [0, 1, 2]
    assert topk(np.array([1, 5, 5, 2]), 1)[0].tolist() == [1]
    with pytest.raises(ValueError, match="k must be"):
        topk(np.array([1, 2]), 3)
    with pytest.raises(ValueError, match="integers"):
        topk(np.array([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="one-dimensional"):
        topk(np.zeros((2, 2), dtype=np.int64), 1)
    with pytest.raises(ValueError, match="unsigned"):
        topk_threshold(np.array([-1, 2]), 1)


def test_prune_tokens_keeps_cls_and_the_most_attended():
    x = np.arange(6 * 2).reshape(6, 2)
    attention = np.array([9, 1, 7, 7, 0, 3])  # entry 0 (CLS to itself) is ignored
    kept_x, kept = prune_tokens(x, attention, 2)
    assert kept.tolist() == [0, 2, 3]
    assert np.array_equal(kept_x, x[[0, 2, 3]])
    _, kept = prune_tokens(x, attention[1:], 0)
    assert kept.tolist() == [0]
    with pytest.raises(ValueError, match="cls_attention"):
        prune_tokens(x, attention[:3], 1)


def test_package_token_is_the_score_weighted_mean():
    x = np.array([[10, -4], [20, 8], [0, 0], [5, 5]])
    scores = np.array([1, 3, 9, 0])
    # (10*1 + 20*3) / 4 = 17.5 -> 18 (half up); (-4*1 + 8*3) / 4 = 5
    assert package_token(x, scores, np.array([0, 1, 3])).tolist() == [18, 5]
    assert package_token(x, scores, np.array([3])).tolist() == [0, 0]
    with pytest.raises(ValueError, match="non-negative"):
        package_token(x, -scores, np.array([0]))
