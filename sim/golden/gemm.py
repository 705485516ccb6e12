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

import threading

import numpy as np

from vitaccel.hw.spec.matrix import BIAS_BITS
from vitaccel.hw.spec.numerics import MULTIPLIER_BITS, int_range, requantize, saturate
from vitaccel.sim.golden.fused import kernels

__all__ = ["matmul", "linear", "linear_into", "exact_product", "product_bound", "scratch"]

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


#: Output elements per block of :func:`linear_into`: its float32 product and float64 scaled block
#: (12 bytes an element) stay in a core's L2 cache between passes.
_BLOCK_ELEMENTS = 1 << 16
_SCRATCH = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reusable uninitialised work array of ``shape`` and ``dtype``, one per ``name`` and thread.

    Fresh temporaries of a few MB each cost page faults on every call (glibc maps and unmaps
    them); the blocked kernels work in these instead. The caller owns its contents until it
    asks for the same ``name`` again."""
    size = 1
    for extent in shape:
        size *= extent
    dtype = np.dtype(dtype)
    buffers = _SCRATCH.__dict__
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.size < size:
        buffer = buffers[(name, dtype)] = np.empty(max(size, 1), dtype)
    return buffer[:size].reshape(shape)


def _float_scale(multiplier, shift, out_bits: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(multiplier, shift)`` as integer arrays where the float64 requantization takes them
    (an 8-bit or narrower result, multipliers of MULTIPLIER_BITS, shifts 1..44), else None."""
    if not (2 <= out_bits <= 8):
        return None
    multiplier, shift = np.asarray(multiplier), np.asarray(shift)
    if multiplier.dtype.kind not in "iu" or shift.dtype.kind not in "iu":
        return None
    if (multiplier.size and (multiplier.min() < 0 or multiplier.max() >= 1 << MULTIPLIER_BITS)) or (
            shift.size and (shift.min() < 1 or shift.max() > _FLOAT_MAX_SHIFT)):
        return None
    return multiplier, shift


def _requant_terms(product_bound: int, bias, multiplier, shift, out_bits: int, n: int
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(c, d)`` per output channel with ``requantize(sat32(p + bias))`` = ``clip(floor(p c + d)) -
    2^(out_bits-1)`` for every exact ``|p| <= product_bound``, with ``p c`` and ``p c + d`` exact
    (see :func:`_requantize_float`, its first branch); None where that does not hold."""
    scaled = _float_scale(multiplier, shift, out_bits)
    if scaled is None or scaled[0].shape not in ((), (n,)) or scaled[1].shape not in ((), (n,)):
        return None
    multiplier, shift = scaled
    bias_bound = 0
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype.kind not in "iu" or bias.shape not in ((), (n,)):
            return None
        bias_bound = int(np.abs(bias).max()) if bias.size else 0
    largest = int(multiplier.max()) if multiplier.size else 0
    if not (product_bound + bias_bound < 1 << (BIAS_BITS - 1) and (product_bound + bias_bound) * largest < 1 << 52):
        return None
    scale = np.broadcast_to(np.ldexp(multiplier.astype(np.float64), -shift.astype(np.int64)), (n,))
    offset = (1 << (out_bits - 1)) + 0.5
    terms = np.broadcast_to(offset if bias is None else bias.astype(np.float64) * scale + offset, (n,))
    return np.ascontiguousarray(scale), np.ascontiguousarray(terms)


def linear_into(out: np.ndarray, a: np.ndarray, w: np.ndarray, bias, multiplier, shift) -> bool:
    """:func:`linear` (8-bit result, no residual) written into ``out``, or False (``out``
    untouched) where this path does not apply; then :func:`linear` computes, or raises.

    ``a`` is int8 or uint8 ``(G, M, K)``, ``w`` int8 ``(K, N)`` or ``(G, K, N)``, ``out`` int8
    ``(G, M, N)`` (any strides; it must not overlap ``a`` or ``w``). The same integers as
    :func:`linear`, computed in blocks of images whose float32 product (one exact BLAS call
    per K-chunk, ``chunk * max|a| * 128 <= 2^24``, chunks summed in float64) and float64
    requantization (:func:`_requant_terms`) stay in cache, in :func:`scratch` arrays: the
    unblocked passes over fresh multi-MB temporaries cost more than the product.
    """
    if (out.dtype != np.int8 or a.ndim != 3 or w.dtype != np.int8 or w.ndim not in (2, 3)
            or a.dtype not in (np.dtype(np.int8), np.dtype(np.uint8))):
        return False
    images, m, k = a.shape
    n = w.shape[-1]
    if w.shape[-2] != k or out.shape != (images, m, n) or (w.ndim == 3 and w.shape[0] != images):
        return False
    product = _dtype_bound(a) * _dtype_bound(w)
    bound = k * product
    chunk = _FLOAT32_EXACT // product
    if m * n == 0 or images == 0 or bound >= _FLOAT_EXACT or (k > chunk and chunk < _FLOAT32_MIN_CHUNK):
        return False
    # K beyond one exact float32 chunk: chunk products (exact) summed in float64 (exact below 2^53).
    parts = _chunks(k, chunk) if k > chunk else None
    terms = _requant_terms(bound, bias, multiplier, shift, 8, n)
    if terms is None:
        return False
    scale, offset = terms
    fused = kernels()
    group = max(1, min(images, _BLOCK_ELEMENTS // (m * n)))
    a32 = scratch("linear.a", (group, m, k), np.float32)
    p32 = scratch("linear.p", (group, m, n), np.float32)
    v64 = scratch("linear.v", (group, m, n), np.float64)
    w32 = w.astype(np.float32)
    codes = out.view(np.uint8)
    for first in range(0, images, group):
        last = min(first + group, images)
        count = last - first
        a_block, p_block, v_block = a32[:count], p32[:count], v64[:count]
        np.copyto(a_block, a[first:last], casting="unsafe")   # integers: exact
        for index, part in enumerate(parts or (slice(None),)):
            a_part, w_part = (a_block, w32) if parts is None else (a_block[..., part], w32[..., part, :])
            if w32.ndim == 2:   # one BLAS call for the block's stacked rows
                np.matmul(a_part.reshape(count * m, -1), w_part, out=p_block.reshape(count * m, n))
            else:
                np.matmul(a_part, w_part[first:last], out=p_block)
            if parts is not None:
                if index == 0:
                    np.copyto(v_block, p_block)
                else:
                    v_block += p_block
        product_block = p_block if parts is None else v_block
        if fused is not None:   # the four passes below in one
            fused.requantize(product_block, scale, offset, out[first:last])
            continue
        np.multiply(product_block, scale, out=v_block)
        v_block += offset
        block = codes[first:last]
        np.clip(v_block, 0, 255, out=block, casting="unsafe")   # floor (non-negative), saturate
        np.bitwise_xor(block, 0x80, out=block)                  # the code minus 128, as int8
    return True


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
    scaled = _float_scale(multiplier, shift, out_bits)
    if scaled is None:
        return None
    multiplier, shift = scaled
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
