"""Golden GEMM kernels: exact integer matrix products and the quantized linear layer.

:func:`matmul` is exact: it uses float64 BLAS when every partial sum provably fits in the
53-bit mantissa (always true for int8/int16 operands with K below a few million), int64
otherwise, and refuses products that could overflow int64.

:func:`linear` is what the matrix engine computes, in this order (see ``hw/spec/matrix.py``):

1. ``acc = A @ W`` (exact),
2. ``biased = saturate(acc + bias, 32)`` (the requantizer takes a 32-bit input),
3. ``q = requantize(biased, multiplier, shift, out_bits)`` (round half up, saturate),
4. if a residual is given: ``q = saturate(q + residual, out_bits)``.
"""

from __future__ import annotations

import numpy as np

from vitaccel.hw.spec.matrix import BIAS_BITS
from vitaccel.hw.spec.numerics import requantize, saturate

__all__ = ["matmul", "linear"]

_FLOAT_EXACT = 1 << 53
_INT64_LIMIT = 1 << 63


def _as_int_array(name: str, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


#: Largest ``|value|`` of the narrow integer dtypes whose bound alone can prove a product exact.
_NARROW_BOUNDS = {np.dtype(t): max(-int(np.iinfo(t).min), int(np.iinfo(t).max))
                  for t in (np.int8, np.uint8, np.int16, np.uint16)}


def _dtype_bound(arr: np.ndarray) -> int:
    """Largest ``|value|`` an 8- or 16-bit integer array can hold; 0 for any other dtype."""
    return _NARROW_BOUNDS.get(arr.dtype, 0)


def matmul(a, b) -> np.ndarray:
    """Exact ``a @ b`` of integer arrays as int64 (NumPy matmul broadcasting rules).

    Raises
    ------
    ValueError
        If the inputs are not integer arrays, shapes do not chain, or a sum could overflow int64.
    """
    a, b = np.asarray(a), np.asarray(b)
    if _dtype_bound(a) and _dtype_bound(b):
        # Narrow integer operands (the machine's int8/uint8): their dtype bounds the sums,
        # so an exact float path is chosen without scanning the values.
        if a.ndim < 1 or b.ndim < 1 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not chain")
        k, product = a.shape[-1], _dtype_bound(a) * _dtype_bound(b)
        if k * product < _FLOAT_EXACT:
            return np.rint(np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(np.int64)
    a = _as_int_array("a", a)
    b = _as_int_array("b", b)
    if a.ndim < 1 or b.ndim < 1 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not chain")
    k = a.shape[-1]
    max_a = int(np.abs(a).max()) if a.size else 0
    max_b = int(np.abs(b).max()) if b.size else 0
    bound = k * max_a * max_b
    if bound < _FLOAT_EXACT:
        # Every product and partial sum is an integer below 2^53: float64 BLAS is exact.
        return np.rint(np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(np.int64)
    if bound < _INT64_LIMIT:
        return np.matmul(a, b)
    raise ValueError(f"matmul: sums may reach {bound}, which overflows int64")


def linear(a, w, bias, multiplier, shift, *, residual=None, out_bits: int = 8) -> np.ndarray:
    """Quantized linear layer ``sat(requantize(sat32(a @ w + bias)) + residual)`` as int64.

    Parameters
    ----------
    a : array of int, shape (..., M, K)
    w : array of int, shape (K, N)
    bias : array of int broadcast along the last axis (N), or None for no bias
    multiplier, shift : int or array of int broadcast along the last axis
        Requantization scale ``multiplier * 2^-shift`` per output channel.
    residual : array of int broadcast to the output, optional
        Added after requantization, then saturated again.
    out_bits : int
        Signed width of the result.
    """
    acc = matmul(a, w)
    if bias is not None:
        acc = acc + _as_int_array("bias", bias)
    biased = saturate(acc, BIAS_BITS)
    out = requantize(biased, _as_int_array("multiplier", multiplier), _as_int_array("shift", shift), out_bits)
    if residual is not None:
        out = saturate(out + _as_int_array("residual", residual), out_bits)
    return out.astype(np.int64)
