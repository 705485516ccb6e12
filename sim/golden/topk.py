"""Golden top-k selection and the token-pruning helpers built on it (EViT, SPViT).

The selection rule is the contract of the hardware top-k engine (``hw/topk.py``): keep the
``k`` largest scores, break ties by the lowest index, report the kept indices in ascending
order. ``k = 0`` keeps nothing and ``k = n`` keeps everything.
"""

from __future__ import annotations

import numpy as np

from vitaccel.hw.spec.sparse import TOPK_SCORE_BITS

__all__ = ["topk", "topk_rows", "topk_threshold", "prune_tokens", "package_token"]


def _check_scores(scores: np.ndarray, k: int) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"topk: scores must be one-dimensional, got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.integer):
        raise ValueError(f"topk: scores must be integers, got {scores.dtype}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= scores.size:
        raise ValueError(f"topk: k must be an integer in 0..{scores.size}, got {k!r}")
    return scores.astype(np.int64)


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ascending, int64) and keep mask (bool) of the ``k`` largest ``scores``.

    Ties are broken by the lowest index: a stable sort by descending score.
    """
    scores = _check_scores(scores, k)
    order = np.argsort(-scores, kind="stable")
    indices = np.sort(order[:k]).astype(np.int64)
    keep = np.zeros(scores.size, dtype=bool)
    keep[indices] = True
    return indices, keep


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """:func:`topk`'s indices of every row (last axis) of integer ``scores`` at once, int64 ``(..., k)``."""
    scores = np.asarray(scores)
    if scores.ndim < 1 or not np.issubdtype(scores.dtype, np.integer):
        raise ValueError(f"topk: scores must be integer rows, got {scores.dtype} of shape {scores.shape}")
    n = scores.shape[-1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise ValueError(f"topk: k must be an integer in 0..{n}, got {k!r}")
    order = np.argsort(-scores.astype(np.int64), axis=-1, kind="stable")
    return np.sort(order[..., :k], axis=-1).astype(np.int64)


def topk_threshold(scores: np.ndarray, k: int) -> tuple[int, int]:
    """``(threshold, ties_kept)`` the hardware search finds for unsigned scores.

    ``threshold`` is the k-th largest score (the largest representable score for ``k = 0``);
    every score above it is kept and so are the first ``ties_kept`` scores equal to it.
    """
    scores = _check_scores(scores, k)
    if np.any(scores < 0) or np.any(scores >= 1 << TOPK_SCORE_BITS):
        raise ValueError(f"topk_threshold: scores must be unsigned {TOPK_SCORE_BITS}-bit values")
    if k == 0:
        return (1 << TOPK_SCORE_BITS) - 1, 0
    threshold = int(np.sort(scores)[::-1][k - 1])
    return threshold, k - int(np.count_nonzero(scores > threshold))


def prune_tokens(x: np.ndarray, cls_attention: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """EViT token pruning: keep the CLS token (row 0) and the ``keep`` tokens of the rest with the
    highest CLS attention, in ascending token order.

    Parameters
    ----------
    x : array, shape (n, dim)
        Tokens, CLS first.
    cls_attention : integer array, shape (n - 1,) or (n,)
        Attention of CLS to every other token (if length ``n``, entry 0, CLS to itself, is ignored).
    keep : int
        Tokens kept besides CLS.

    Returns
    -------
    kept_x : array, shape (keep + 1, dim)
    kept_indices : int64 array, shape (keep + 1,), starting with 0
    """
    x = np.asarray(x)
    n = x.shape[0]
    att = np.asarray(cls_attention)
    if att.shape == (n,):
        att = att[1:]
    if att.shape != (n - 1,):
        raise ValueError(f"prune_tokens: cls_attention must have shape ({n - 1},) or ({n},), got {att.shape}")
    rest, _ = topk(att, keep)
    kept = np.concatenate([[0], rest + 1]).astype(np.int64)
    return x[kept], kept


def package_token(x: np.ndarray, scores: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    """SPViT's package token (eq. 8): ``P = sum_i(n_i * m_i) / sum_i(m_i)`` over the pruned tokens.

    ``x`` holds integer tokens and ``scores`` their non-negative integer keep scores ``m_i``;
    the division rounds half up, so ``P`` has the tokens' integer type and scale. With no
    pruned token or an all-zero score the package token is zero.
    """
    x = np.asarray(x, dtype=np.int64)
    m = np.asarray(scores, dtype=np.int64)
    pruned = np.asarray(pruned, dtype=np.int64)
    if np.any(m < 0):
        raise ValueError("package_token: scores must be non-negative")
    weights = m[pruned]
    total = int(weights.sum())
    if total == 0:
        return np.zeros(x.shape[1:], dtype=np.int64)
    numerator = (x[pruned] * weights[:, None]).sum(axis=0)
    # floor((num + total/2) / total): round half up, in integers.
    return np.floor_divide(2 * numerator + total, 2 * total)
