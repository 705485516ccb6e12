"""Fused element-wise stages of the golden kernels, compiled with Numba when it is installed.

NumPy runs each step of an exact requantization, LayerNorm or softmax as its own pass over
the batch (scale, offset, floor, clip, re-centre): on digits-vit those passes cost more than
the GEMMs. The loops here do the same float64 operations on each element in one pass, in the
same order, so they return the same integers as the NumPy steps they replace (every product
and sum involved is exact; see the callers' proofs, which is also why a fused multiply-add
could not change a result). The callers keep their NumPy code and use it where these
kernels are not available: :func:`kernels` returns None without Numba, or when
``VITACCEL_NO_NUMBA`` is set in the environment, or with :data:`ENABLED` set to False (tests
compare the two). Compiled kernels are cached next to this file (``cache=True``); the first
call in a fresh checkout compiles them (a few seconds, once).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

__all__ = ["kernels", "ENABLED"]

#: Switch for tests and comparisons: False makes every caller take its NumPy path.
ENABLED = True
_KERNELS: Any = None   # None: not tried yet; False: Numba missing


def kernels() -> SimpleNamespace | None:
    """The compiled kernels, or None (Numba missing or switched off)."""
    global _KERNELS
    if not ENABLED or os.environ.get("VITACCEL_NO_NUMBA"):
        return None
    if _KERNELS is None:
        try:
            _KERNELS = _build()
        except ImportError:
            _KERNELS = False
    return _KERNELS or None


def _build() -> SimpleNamespace:
    import numba
    import numpy as np

    jit = numba.njit(cache=True, nogil=True)

    @jit
    def centred_uint8(v):
        """``clip(floor(v), 0, 255) - 128`` for a float ``v``: the int8 both requantizations
        end in (truncating a positive value is its floor)."""
        if v <= 0.0:
            return -128
        if v >= 255.0:
            return 127
        return np.int32(v) - 128

    @jit
    def requantize(product, scale, offset, out):
        """``out = clip(floor(product scale + offset), 0, 255) - 128`` as int8, (G, M, N)."""
        images, rows, cols = product.shape
        for g in range(images):
            for i in range(rows):
                for j in range(cols):
                    out[g, i, j] = centred_uint8(product[g, i, j] * scale[j] + offset[j])

    @jit
    def row_sums(x, sum_x, sum_xx):
        """Per row of int8 ``x`` (G, M, N): the sum and the sum of squares, in int64."""
        images, rows, cols = x.shape
        for g in range(images):
            for i in range(rows):
                s = 0
                q = 0
                for j in range(cols):
                    v = np.int64(x[g, i, j])
                    s += v
                    q += v * v
                sum_x[g, i, 0] = s
                sum_xx[g, i, 0] = q

    @jit
    def layernorm(x, row_scale, row_offset, gamma, beta, out):
        """``z = floor(x row_scale + row_offset)``, ``out = clip(floor(z gamma + beta), 0, 255) -
        128`` as int8 (``beta`` already holds the + 128.5 of the rounding and re-centring)."""
        images, rows, cols = x.shape
        for g in range(images):
            for i in range(rows):
                a = row_scale[g, i, 0]
                b = row_offset[g, i, 0]
                for j in range(cols):
                    z = np.floor(np.float64(x[g, i, j]) * a + b)
                    out[g, i, j] = centred_uint8(z * gamma[j] + beta[j])

    @jit
    def softmax_exp(scores, table, e, total):
        """Per row of ``scores`` (G, M, N): ``e = table[min(max - s, len - 1)]`` and the row's
        sum of ``e`` (integers, exact in ``e``'s and ``total``'s float types)."""
        images, rows, cols = scores.shape
        last = table.shape[0] - 1
        for g in range(images):
            for i in range(rows):
                top = np.int64(scores[g, i, 0])
                for j in range(1, cols):
                    top = max(top, np.int64(scores[g, i, j]))
                s = np.int64(0)
                for j in range(cols):
                    d = min(top - np.int64(scores[g, i, j]), last)
                    v = np.int64(table[d])
                    e[g, i, j] = v
                    s += v
                total[g, i, 0] = s

    @jit
    def softmax_out(e, factor, out):
        """``out = min(floor(e factor + 1/2), 255)`` as uint8 (``e factor >= 0``)."""
        images, rows, cols = e.shape
        for g in range(images):
            for i in range(rows):
                f = factor[g, i, 0]
                for j in range(cols):
                    v = e[g, i, j] * f + 0.5
                    out[g, i, j] = 255 if v >= 255.0 else np.int32(v)

    @jit
    def lookup(x, table, out):
        """``out = table[byte of x]`` element-wise, (G, M, N)."""
        images, rows, cols = x.shape
        for g in range(images):
            for i in range(rows):
                for j in range(cols):
                    out[g, i, j] = table[np.int32(x[g, i, j]) & 0xFF]

    @jit
    def lookup_pair(a, b, table, out):
        """``out = table[(byte of a) * 256 + byte of b]`` element-wise, (G, M, N)."""
        images, rows, cols = a.shape
        for g in range(images):
            for i in range(rows):
                for j in range(cols):
                    out[g, i, j] = table[((np.int32(a[g, i, j]) & 0xFF) << 8) | (np.int32(b[g, i, j]) & 0xFF)]

    return SimpleNamespace(lookup=lookup, lookup_pair=lookup_pair, requantize=requantize, row_sums=row_sums, layernorm=layernorm,
                           softmax_exp=softmax_exp, softmax_out=softmax_out)
