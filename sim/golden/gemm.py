"""Golden GEMM kernels: exact integer matrix products and the quantized linear layer.

:func:`matmul` is exact. Its fast path, for 8/16-bit operands (the machine's int8/uint8),
is float32 BLAS over K-chunks: **exactness proof.** Every integer ``|x| <= 2^24`` is a
float32. With ``|a| <= A`` and ``|b| <= B`` (the dtypes' bounds: 128 for int8, 255 for
uint8), each product is an integer of magnitude ``<= A*B`` and every partial sum BLAS forms
over a chunk of ``c`` products, in whatever order or blocking and with or without FMA, is a
sum of a subset of them, an integer of magnitude ``<= c*A*B``. With ``c <= 2^24 // (A*B)``
(1024 for int8 x int8, 514 for uint8 x int8) each such sum is a float32, so every addition
(and every FMA) rounds nothing: the chunk's float32 result is its exact integer sum. Chunk
sums are added in float64, exact below 2^53 (``K*A*B`` is far below for any K the hardware
has). Other narrow operands (int16, or chunks that would be too short) take float64 BLAS,
exact while ``K*A*B < 2^53``; wide operands int64, and products that could overflow int64
are refused.

:func:`linear` is what the matrix engine computes, in this order (see ``hw/spec/matrix.py``):

1. ``acc = A @ W`` (exact),
2. ``biased = saturate(acc + bias, 32)`` (the requantizer takes a 32-bit input),
3. ``q = requantize(biased, multiplier, shift, out_bits)`` (round half up, saturate),
4. if a residual is given: ``q = saturate(q + residual, out_bits)``.

Its fast path does steps 2-3 in float64, exactly (see :func:`_requantize_float`).
"""

from __future__ import annotations

import numpy as np

from vitaccel.hw.spec.matrix import BIAS_BITS
from vitaccel.hw.spec.numerics import MULTIPLIER_BITS, int_range, requantize, saturate

__all__ = ["matmul", "linear", "exact_product", "product_bound"]

_FLOAT_EXACT = 1 << 53
#: Every integer of magnitude up to 2^24 is a float32.
_FLOAT32_EXACT = 1 << 24
#: Shorter exact float32 chunks (16-bit operands) cost more calls than float64 saves.
_FLOAT32_MIN_CHUNK = 256
_INT64_LIMIT = 1 << 63
#: Largest requantization shift the float64 path is exact for (see _requantize_float).
_FLOAT_MAX_SHIFT = 44


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


def _chunks(k: int, chunk: int) -> list[slice]:
    """``k`` split into the fewest near-equal slices of at most ``chunk``."""
    count = -(-k // chunk)
    size = -(-k // count)
    return [slice(start, min(start + size, k)) for start in range(0, k, size)]


def _flat_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` with a stack of ``a`` against one 2-D ``b`` as one BLAS call (NumPy would
    call BLAS once per matrix of the stack)."""
    if a.ndim > 2 and b.ndim == 2:
        return np.matmul(a.reshape(-1, a.shape[-1]), b).reshape(*a.shape[:-1], b.shape[-1])
    return np.matmul(a, b)


def product_bound(a: np.ndarray, b: np.ndarray) -> int:
    """A bound on ``|a @ b|`` from the dtypes alone (K times the largest product); 0 when an
    operand is not an 8- or 16-bit integer array."""
    return a.shape[-1] * _dtype_bound(a) * _dtype_bound(b) if a.ndim else 0


def exact_product(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Exact ``a @ b`` of narrow integer arrays as a float32 or float64 array holding integers
    (see the module docstring for the proof), or None when the operands are not narrow or
    the float paths cannot prove the sums exact."""
    bound_a, bound_b = _dtype_bound(a), _dtype_bound(b)
    if not (bound_a and bound_b):
        return None
    if a.ndim < 1 or b.ndim < 1 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not chain")
    k, product = a.shape[-1], bound_a * bound_b
    if k * product >= _FLOAT_EXACT:
        return None
    chunk = _FLOAT32_EXACT // product
    if a.ndim < 2 or b.ndim < 2 or (k > chunk and chunk < _FLOAT32_MIN_CHUNK):
        return _flat_matmul(a.astype(np.float64), b.astype(np.float64))
    if k <= chunk:
        return _flat_matmul(a.astype(np.float32), b.astype(np.float32))
    total = None
    for part in _chunks(k, chunk):
        partial = _flat_matmul(a[..., part].astype(np.float32), b[..., part, :].astype(np.float32))
        total = partial.astype(np.float64) if total is None else np.add(total, partial, out=total)
    return total


def matmul(a, b) -> np.ndarray:
    """Exact ``a @ b`` of integer arrays as int64 (NumPy matmul broadcasting rules).

    Raises
    ------
    ValueError
        If the inputs are not integer arrays, shapes do not chain, or a sum could overflow int64.
    """
    a, b = np.asarray(a), np.asarray(b)
    exact = exact_product(a, b)
    if exact is not None:
        return exact.astype(np.int64)
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


def _requantize_float(product: np.ndarray, product_bound: int, bias, multiplier, shift, out_bits: int
                      ) -> np.ndarray | None:
    """Steps 2-3 of :func:`linear` (``sat(requantize(sat32(product + bias)))``) in float64 on
    an exact float ``product``, or None where this path does not apply (the generic path then
    computes, or raises its errors).

    Exactness: ``v = product + bias`` is an integer below 2^53, exact. ``c = multiplier *
    2^-shift`` is exact (a 31-bit multiplier times a power of two). Where the result does not
    saturate, ``x = v * multiplier / 2^shift`` has ``|x| < 2^out_bits`` and is a multiple of
    2^-shift, so it needs at most ``out_bits + shift <= 52`` significant bits: ``v * c`` is
    exact, and so is ``z = x + 2^(out_bits-1) + 1/2`` (``|z| < 2^(out_bits+1)``, 53 bits).
    Then ``floor(z) - 2^(out_bits-1) = floor(x + 1/2)``, the round-half-up shift, and clipping
    ``z`` to ``[0, 2^out_bits - 1]`` before truncating (floor, ``z >= 0``) saturates. Where the
    exact ``|x| >= 2^out_bits``, ``v * c`` is within a relative 2^-53 of it, so ``z`` is
    clipped to the same end as the exact value would be.
    """
    if not (2 <= out_bits <= 8):
        return None
    multiplier, shift = np.asarray(multiplier), np.asarray(shift)
    if multiplier.dtype.kind not in "iu" or shift.dtype.kind not in "iu":
        return None
    if (multiplier.size and (multiplier.min() < 0 or multiplier.max() >= 1 << MULTIPLIER_BITS)) or (
            shift.size and (shift.min() < 1 or shift.max() > _FLOAT_MAX_SHIFT)):
        return None
    bias_bound = 0
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype.kind not in "iu" or np.broadcast_shapes(product.shape, bias.shape) != product.shape:
            return None
        bias_bound = int(np.abs(bias).max()) if bias.size else 0
        if bias_bound >= 1 << 52:
            return None
    scale = np.ldexp(multiplier.astype(np.float64), -shift.astype(np.int64))
    offset = (1 << (out_bits - 1)) + 0.5
    largest = int(multiplier.max()) if multiplier.size else 0
    if product_bound + bias_bound < 1 << (BIAS_BITS - 1) and (product_bound + bias_bound) * largest < 1 << 52:
        # Step 2 cannot saturate, and ``product * c`` and ``bias * c + offset`` are exact
        # (numerators below 2^53); their exact sum ``(v M + offset 2^shift) 2^-shift`` is a
        # double wherever the result does not saturate: one rounding-free add.
        v = np.multiply(product, scale, dtype=np.float64)
        v += offset if bias is None else np.asarray(bias, dtype=np.float64) * scale + offset
    else:
        v = product.astype(np.float64) if bias is None else np.add(product, bias, dtype=np.float64)
        if product_bound + bias_bound >= 1 << (BIAS_BITS - 1):   # step 2 can saturate
            lo, hi = int_range(BIAS_BITS)
            np.clip(v, lo, hi, out=v)
        np.multiply(v, scale, out=v)
        np.add(v, offset, out=v)
    # Clipped into [0, 2^out_bits - 1] and truncated (= floor: non-negative) by the cast on output.
    codes = np.clip(v, 0, (1 << out_bits) - 1, out=np.empty(v.shape, np.uint8), casting="unsafe")
    codes -= np.uint8(1 << (out_bits - 1))   # wraps: the code minus the offset, as two's complement
    return codes.view(np.int8)


def linear(a, w, bias, multiplier, shift, *, residual=None, out_bits: int = 8, dtype=np.int64) -> np.ndarray:
    """Quantized linear layer ``sat(requantize(sat32(a @ w + bias)) + residual)`` as ``dtype``.

    Parameters
    ----------
    a : array of int, shape (..., M, K)
    w : array of int, shape (K, N), or (..., K, N) broadcast against ``a``
    bias : array of int broadcast along the last axis (N), or None for no bias
    multiplier, shift : int or array of int broadcast along the last axis
        Requantization scale ``multiplier * 2^-shift`` per output channel.
    residual : array of int broadcast to the output, optional
        Added after requantization, then saturated again.
    out_bits : int
        Signed width of the result.
    dtype : NumPy integer dtype
        Of the result (default int64); int8 saves a conversion for 8-bit results.
    """
    a, w = np.asarray(a), np.asarray(w)
    product = exact_product(a, w)
    if product is not None:
        bound = a.shape[-1] * _dtype_bound(a) * _dtype_bound(w)
        out = _requantize_float(product, bound, bias, multiplier, shift, out_bits)
        if out is not None and (residual is None or np.asarray(residual).dtype.kind in "iu"):
            if residual is not None:
                out = saturate(out.astype(np.int32) + np.asarray(residual), out_bits)
            return out.astype(dtype, copy=False)
    acc = matmul(a, w) if product is None else product.astype(np.int64)
    if bias is not None:
        acc = acc + _as_int_array("bias", bias)
    biased = saturate(acc, BIAS_BITS)
    out = requantize(biased, _as_int_array("multiplier", multiplier), _as_int_array("shift", shift), out_bits)
    if residual is not None:
        out = saturate(out + _as_int_array("residual", residual), out_bits)
    return out.astype(dtype)
