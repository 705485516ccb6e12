"""Bit-accurate golden kernels of the non-linear units: softmax, GELU, LayerNorm, residual add.

Every kernel is vectorised NumPy over any leading shape (rows along the last axis), uses
only integer arithmetic in ``int64``, the tables of :mod:`vitaccel.hw.spec.luts`, the
parameters of :mod:`vitaccel.hw.spec.nonlinear` and the one rounding/saturation rule of
:mod:`vitaccel.hw.spec.numerics`. The hardware in :mod:`vitaccel.hw.nonlinear` computes the
same integers step by step; the helpers :func:`exp2_neg`, :func:`reciprocal` and
:func:`inv_sqrt` are the stages it shares with other units (sparse attention).
"""

from __future__ import annotations

import numpy as np

from vitaccel.hw.spec.luts import (EXP_FRAC_BITS, EXP_ZERO_SHIFT, RECIP_FRAC_BITS,
                                   RECIP_MANTISSA_FRAC_BITS, RSQRT_FRAC_BITS,
                                   RSQRT_MANTISSA_FRAC_BITS, exp2_table, reciprocal_table,
                                   rsqrt_table)
from vitaccel.hw.spec.nonlinear import (LAYERNORM_NORM_FRAC_BITS, SOFTMAX_DIFF_BITS,
                                        SOFTMAX_OUTPUT_BITS, AddParams, GeluInt16Params,
                                        LayerNormParams, SoftmaxParams)
from vitaccel.hw.spec.numerics import int_range, round_shift, saturate
from vitaccel.sim.golden.fused import kernels

__all__ = ["softmax", "gelu", "gelu_int16", "layernorm", "add", "exp2_neg", "reciprocal",
           "inv_sqrt", "leading_one", "normalize"]


def _as_int(x: np.ndarray, bits: int, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: must be an integer array, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    lo, hi = int_range(bits)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ValueError(f"{name}: values must fit in signed {bits} bits ({lo}..{hi})")
    return arr


_TABLES: dict[tuple, np.ndarray] = {}


def _table(build, lut_bits) -> np.ndarray:
    """``build(lut_bits)``, built once per width: the tables are constants, and rebuilding
    them was a large share of a small kernel call. Non-integer widths go to ``build`` to raise."""
    if isinstance(lut_bits, bool) or not isinstance(lut_bits, (int, np.integer)):
        return build(lut_bits)  # raises its own error
    key = (build, type(lut_bits), lut_bits)
    table = _TABLES.get(key)
    if table is None:
        table = build(lut_bits)
        table.flags.writeable = False
        _TABLES[key] = table
    return table


def leading_one(x: np.ndarray) -> np.ndarray:
    """``floor(log2(x))`` of positive integers below ``2^53`` (a priority encoder)."""
    x = np.asarray(x, dtype=np.int64)
    if np.any(x <= 0):
        raise ValueError("leading_one: values must be positive")
    return (np.frexp(x.astype(np.float64))[1] - 1).astype(np.int64)


def normalize(x: np.ndarray, exponent: np.ndarray, frac_bits: int) -> np.ndarray:
    """``x * 2^(frac_bits - exponent)``: a right shift rounds (round half up), a left shift is exact."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(exponent, dtype=np.int64) - frac_bits
    largest = int(np.abs(x).max()) if x.size else 0
    if (x.size and shift.size and largest < 1 << 51 and int(shift.max()) <= 62
            and largest << max(0, -int(shift.min())) < 1 << 51):
        # floor(x 2^-shift + 1/2) for a right shift, x 2^-shift for a left one (an integer
        # below 2^51): every step exact in float64, no per-element variable shift.
        scaled = np.ldexp(x.astype(np.float64), -shift)
        scaled += np.where(shift > 0, 0.5, 0.0)
        return np.floor(scaled, out=scaled).astype(np.int64)
    return np.where(shift >= 0, round_shift(x, np.maximum(shift, 0)),
                    np.left_shift(x, np.maximum(-shift, 0)))


def exp2_neg(t: np.ndarray, lut_bits: int) -> np.ndarray:
    """``2^(-t / 2^lut_bits)`` in Q1.EXP_FRAC_BITS for non-negative fixed-point ``t``.

    The fractional bits of ``t`` index :func:`~vitaccel.hw.spec.luts.exp2_table`, the integer
    part is a rounding right shift; shifts of ``EXP_ZERO_SHIFT`` or more give exactly 0.
    """
    t = np.asarray(t, dtype=np.int64)
    table = _table(exp2_table, lut_bits)
    whole = t >> lut_bits
    value = table[t & ((1 << lut_bits) - 1)]
    return np.where(whole >= EXP_ZERO_SHIFT, 0, round_shift(value, np.minimum(whole, EXP_ZERO_SHIFT)))


def reciprocal(s: np.ndarray, lut_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y, k)`` with ``y ~ 2^(RECIP_FRAC_BITS + k) / s`` for positive ``s``: table + one Newton step.

    ``k = floor(log2 s)``; ``m = s / 2^k`` in Q1.RECIP_MANTISSA_FRAC_BITS; the seed
    ``y0 = table[top lut_bits bits of m after its leading one]``; Newton:
    ``y = y0 (2 - m y0)`` with each product rounded back to its format.
    """
    k = leading_one(s)
    mb, y_bits = RECIP_MANTISSA_FRAC_BITS, RECIP_FRAC_BITS
    m = normalize(s, k, mb)
    index = np.minimum((m >> (mb - lut_bits)) - (1 << lut_bits), (1 << lut_bits) - 1)
    y0 = _table(reciprocal_table, lut_bits)[index]
    error = (1 << (y_bits + 1)) - round_shift(m * y0, mb)
    return round_shift(y0 * error, y_bits), k


def inv_sqrt(v: np.ndarray, lut_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y, k)`` with ``y ~ 2^(RSQRT_FRAC_BITS + k) / sqrt(v)`` for positive ``v``.

    ``k = floor(log2 v) // 2``; ``m = v / 4^k`` in Q2.RSQRT_MANTISSA_FRAC_BITS; seed from the top
    ``lut_bits`` bits of ``m``; Newton: ``y = y0 (3 - m y0^2) / 2``, products rounded.
    """
    k = leading_one(v) >> 1
    mb, y_bits = RSQRT_MANTISSA_FRAC_BITS, RSQRT_FRAC_BITS
    m = normalize(v, 2 * k, mb)
    index = np.minimum(m >> (mb + 2 - lut_bits), (1 << lut_bits) - 1)
    y0 = _table(rsqrt_table, lut_bits)[index]
    square = round_shift(y0 * y0, y_bits)
    error = 3 * (1 << y_bits) - round_shift(m * square, mb)
    return round_shift(y0 * error, y_bits + 1), k


def softmax(scores: np.ndarray, params: SoftmaxParams, mask: np.ndarray | None = None) -> np.ndarray:
    """Softmax of int32 ``scores`` along the last axis as ``uint8`` probabilities (scale 1/256).

    Parameters
    ----------
    scores : int array
        Values within int32; real value ``score * input_scale`` (see ``softmax_params``).
    params : SoftmaxParams
    mask : bool array, optional
        Same shape as ``scores``. Masked-out entries take no part in the max or the sum and
        output 0; a row with no entry outputs zeros. ``None`` means all entries take part.
    """
    fast = _softmax_unmasked(scores, params) if mask is None else None
    if fast is not None:
        return fast
    s = _as_int(scores, 32, "scores")
    if mask is None:
        valid = np.ones(s.shape, dtype=bool)
    else:
        valid = np.asarray(mask)
        if valid.dtype != bool or valid.shape != s.shape:
            raise ValueError(f"mask: must be a bool array of shape {s.shape}, got {valid.dtype} {valid.shape}")
    lo, _ = int_range(32)
    row_max = np.max(np.where(valid, s, lo), axis=-1, keepdims=True)
    diff = np.minimum(row_max - s, (1 << SOFTMAX_DIFF_BITS) - 1)
    exponent = round_shift(np.where(valid, diff, 0) * params.multiplier, params.shift)
    e = np.where(valid, exp2_neg(exponent, params.exp_lut_bits), 0)
    total = np.sum(e, axis=-1, keepdims=True)
    y, k = reciprocal(np.maximum(total, 1), params.recip_lut_bits)
    out = round_shift(e * y, RECIP_FRAC_BITS + k - SOFTMAX_OUTPUT_BITS)
    out = np.where(total > 0, saturate(out, SOFTMAX_OUTPUT_BITS, signed=False), 0)
    return out.astype(np.uint8)


def _valid_int(value, lo: int, hi: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and lo <= value <= hi


def _exp_lut(lut_bits: int) -> np.ndarray:
    """:func:`exp2_neg` of every ``t`` in ``0 .. EXP_ZERO_SHIFT * 2^lut_bits`` (the last entry,
    and every larger ``t``, is 0): one gather instead of the shift and rounding per element."""
    key = (_exp_lut, lut_bits)
    table = _TABLES.get(key)
    if table is None:
        table = exp2_neg(np.arange((EXP_ZERO_SHIFT << lut_bits) + 1, dtype=np.int64), lut_bits)
        table.flags.writeable = False
        _TABLES[key] = table
    return table


#: Largest score-difference table :func:`_exp_of_diff` builds (entries).
_DIFF_TABLE_MAX = 1 << 17


def _exp_of_diff(params: SoftmaxParams) -> np.ndarray | None:
    """The exp stage as a function of the score difference ``d`` (``exp2_neg`` of
    ``round_shift(d * multiplier, shift)``) for ``d = 0 .. D``, where ``D`` is the smallest
    difference whose exponent reaches the zero of :func:`_exp_lut` (so every ``d >= D`` gives
    the last entry, 0): one clamp and one gather instead of five passes. None when ``D``
    exceeds :data:`_DIFF_TABLE_MAX`. Cached per parameters."""
    key = (_exp_of_diff, params.multiplier, params.shift, params.exp_lut_bits)
    if key in _TABLES:
        return _TABLES[key]
    exp_lut = _exp_lut(params.exp_lut_bits)
    zero_at = (exp_lut.size - 1) << params.shift   # d * multiplier + half >= zero_at: exponent at the zero
    half = (1 << (params.shift - 1)) if params.shift else 0
    last = -(-(zero_at - half) // params.multiplier) if params.multiplier else _DIFF_TABLE_MAX + 1
    table = None
    if 0 <= last <= _DIFF_TABLE_MAX:
        exponent = round_shift(np.arange(last + 1, dtype=np.int64) * params.multiplier, params.shift)
        table = exp_lut[np.minimum(exponent, exp_lut.size - 1)].astype(np.float64)
        table.flags.writeable = False
    if len(_TABLES) > 256:
        _TABLES.clear()
    _TABLES[key] = table
    return table


#: Score dtypes whose every value fits the 32-bit input of the softmax unit.
_SCORE_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32))


def _softmax_unmasked(scores, params: SoftmaxParams) -> np.ndarray | None:
    """:func:`softmax` without a mask by :func:`softmax_into`; None where its preconditions do
    not hold (then the general code computes, or raises)."""
    s = np.asarray(scores)
    if s.ndim == 0 or s.shape[-1] == 0:
        return None
    return _by_rows(softmax_into, s, np.uint8, params)


def _by_rows(into, x: np.ndarray, dtype, params) -> np.ndarray | None:
    """``into(out, x, params)`` on ``x`` seen as ``(rows, 1, last axis)``, into a fresh array of
    ``dtype`` shaped like ``x``; None where ``into`` declines."""
    last = x.shape[-1]
    out = np.empty(x.shape, dtype)
    return out if into(out.reshape(-1, 1, last), x.reshape(-1, 1, last), params) else None


def softmax_into(out: np.ndarray, scores: np.ndarray, params: SoftmaxParams) -> bool:
    """:func:`softmax` without a mask of ``scores`` ``(G, M, cols)`` (an integer dtype within
    int32) written into uint8 ``out`` of its shape (any strides), or False (nothing written)
    where its preconditions do not hold; then :func:`softmax` computes, or raises.

    The same integers with fewer passes: the exp stage as one gather from the score
    difference (:func:`_exp_of_diff`, else :func:`_exp_lut`), no mask selects, the output
    rounding ``round_shift(e y, shift) = floor(e (y 2^-shift) + 1/2)`` in float64 (``e y`` is
    an integer below 2^52: the product and the sum are exact; the value is non-negative, so
    the truncating cast into ``out`` is the floor).
    """
    from vitaccel.sim.golden.gemm import scratch

    if (scores.dtype not in _SCORE_DTYPES or scores.ndim != 3 or out.dtype != np.uint8 or out.shape != scores.shape
            or scores.size == 0 or not isinstance(params, SoftmaxParams)
            or not _valid_int(params.multiplier, 0, (1 << 31) - 1) or not _valid_int(params.shift, 0, 62)
            or not _valid_int(params.exp_lut_bits, 1, 12) or not _valid_int(params.recip_lut_bits, 1, 12)):
        return False
    images, m, cols = scores.shape
    fused = kernels()
    by_diff = _exp_of_diff(params)
    if fused is not None and by_diff is not None:
        e = scratch("softmax.e", scores.shape, np.float32)   # integers below 2^16: exact
        total = np.empty((images, m, 1), np.float64)
        fused.softmax_exp(scores, _narrow_table(by_diff), e, total)
        factor = _softmax_factor(total, params)
        if factor is None:
            return False
        fused.softmax_out(e, factor, out)
        return True
    # Short rows (digits-vit: 17 scores) are worked on transposed, (cols, G, M): every
    # per-row operand then broadcasts along a long inner loop instead of a 17-long one.
    if cols <= 64 and images * m >= 256:
        axis, s = 0, scratch("softmax.s", (cols, images, m), np.int32)
        np.copyto(s, scores.transpose(2, 0, 1))   # one strided pass; the rest runs contiguous
        dest = out.transpose(2, 0, 1)
    else:
        axis, s, dest = -1, scores, out
    row_max = s.max(axis=axis, keepdims=True).astype(np.int64)
    diff = scratch("softmax.diff", s.shape, np.int64)
    np.subtract(row_max, s, out=diff)   # in [0, 2^32): exact in int64
    if by_diff is None:   # the exponent, then the table of every exponent
        np.minimum(diff, (1 << SOFTMAX_DIFF_BITS) - 1, out=diff)
        diff *= params.multiplier
        if params.shift:
            diff += 1 << (params.shift - 1)
            diff >>= params.shift
        by_diff = _exp_lut(params.exp_lut_bits).astype(np.float64)
    np.minimum(diff, by_diff.size - 1, out=diff)
    e = by_diff.take(diff)
    factor = _softmax_factor(e.sum(axis=axis, keepdims=True), params)   # exact sums (below 2^53)
    if factor is None:
        return False
    e *= factor
    e += 0.5
    codes = scratch("softmax.out", s.shape, np.uint8)
    np.clip(e, 0, (1 << SOFTMAX_OUTPUT_BITS) - 1, out=codes, casting="unsafe")
    np.copyto(dest, codes)
    return True


def _narrow_table(table: np.ndarray) -> np.ndarray:
    """``table`` (float64 holding integers below 2^16) as uint16, cached: a quarter of the bytes
    for a gather that misses the cache less."""
    key = (_narrow_table, id(table))
    narrow = _TABLES.get(key)
    if narrow is None or narrow[0] is not table:
        narrow = _TABLES[key] = (table, table.astype(np.uint16))
    return narrow[1]


def _softmax_factor(total: np.ndarray, params: SoftmaxParams) -> np.ndarray | None:
    """Per row, ``y 2^-shift`` of the output rounding ``round_shift(e y, shift)`` (``y`` the
    reciprocal of the row's ``total``), or None where the float64 rounding is not exact or a
    total is not positive (the row maximum's ``exp2_neg(0) > 0`` makes every total positive)."""
    if not (total > 0).all():
        return None
    y, k = reciprocal(total.astype(np.int64), params.recip_lut_bits)
    shift = RECIP_FRAC_BITS + k - SOFTMAX_OUTPUT_BITS
    if shift.min() < 0 or shift.max() > 62 or (1 << EXP_FRAC_BITS) * int(y.max()) >= 1 << 52:
        return None
    return np.ldexp(y.astype(np.float64), -shift)


def gelu(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """int8 GELU: ``table[code of x]`` with the 256-entry table of ``gelu_table``."""
    x, table = np.asarray(x), np.asarray(table)
    if x.dtype == np.int8 and table.dtype == np.int8 and table.shape == (256,):
        return np.take(table, x.view(np.uint8))   # the code of x is its byte
    x = _as_int(x, 8, "x")
    if table.shape != (256,):
        raise ValueError(f"table: must have 256 entries, got shape {table.shape}")
    table = _as_int(table, 8, "table")
    return table[x & 0xFF].astype(np.int8)


def gelu_into(out: np.ndarray, x: np.ndarray, table: np.ndarray) -> bool:
    """:func:`gelu` of int8 ``x`` ``(G, M, N)`` written into int8 ``out`` (the same elements as
    ``x`` or none of them) in one compiled pass, or False (nothing written) where that does
    not apply (no Numba, other dtypes or shapes)."""
    fused = kernels()
    if (fused is None or x.dtype != np.int8 or out.dtype != np.int8 or x.ndim != 3 or out.shape != x.shape
            or table.dtype != np.int8 or table.shape != (256,) or not _same_or_disjoint(out, x)):
        return False
    fused.lookup(x, table, out)
    return True


def add_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, params: AddParams) -> bool:
    """:func:`add` of int8 ``a`` and ``b`` ``(G, M, N)`` written into int8 ``out`` (the same
    elements as each input or none of them) in one compiled pass over the table of every
    byte pair (built by :func:`add`'s int32 code), or False (nothing written) where that does
    not apply."""
    fused = kernels()
    if (fused is None or a.dtype != np.int8 or b.dtype != np.int8 or out.dtype != np.int8 or a.ndim != 3
            or a.shape != b.shape or out.shape != a.shape or not isinstance(params, AddParams)
            or not _valid_int(params.a_multiplier, -(1 << 20), 1 << 20)
            or not _valid_int(params.b_multiplier, -(1 << 20), 1 << 20) or not _valid_int(params.shift, 0, 29)
            or not (_same_or_disjoint(out, a) and _same_or_disjoint(out, b))):
        return False
    fused.lookup_pair(a, b, _add_table(params), out)
    return True


def gelu_int16(x: np.ndarray, params: GeluInt16Params) -> np.ndarray:
    """I-BERT integer GELU of int16 ``x`` as int16 (see ``GeluInt16Params``)."""
    q = _as_int(x, 16, "x")
    clipped = np.minimum(np.abs(q), params.clip)
    q_erf = np.sign(q) * ((clipped + params.q_b) ** 2 + params.q_c)
    product = -q * (q_erf + params.q_one)
    return saturate(round_shift(product * params.multiplier, params.shift), 16).astype(np.int16)


def layernorm(x: np.ndarray, params: LayerNormParams) -> np.ndarray:
    """LayerNorm of int8 ``x`` over its last axis (``params.channels`` long) as int8.

    Integer statistics ``Sx``, ``Sxx``; ``V = n Sxx - Sx^2 + eps_term`` (at least 1); inverse
    square root by :func:`inv_sqrt`; see ``LayerNormParams`` for the remaining steps.
    """
    fast = _layernorm_float(x, params)
    if fast is not None:
        return fast
    x = _as_int(x, 8, "x")
    n = params.channels
    if x.ndim == 0 or x.shape[-1] != n:
        raise ValueError(f"x: last axis must have {n} channels, got shape {x.shape}")
    sum_x = np.sum(x, axis=-1, keepdims=True)
    sum_xx = np.sum(x * x, axis=-1, keepdims=True)
    variance = np.maximum(n * sum_xx - sum_x * sum_x + params.eps_term, 1)
    y, k = inv_sqrt(variance, params.rsqrt_lut_bits)
    z = round_shift((n * x - sum_x) * y, RSQRT_FRAC_BITS + k - LAYERNORM_NORM_FRAC_BITS)
    gamma = np.asarray(params.gamma, dtype=np.int64)
    beta = np.asarray(params.beta, dtype=np.int64)
    return saturate(round_shift(z * gamma + beta, params.out_shift), 8).astype(np.int8)


def _layernorm_float(x, params: LayerNormParams) -> np.ndarray | None:
    """:func:`layernorm` of int8 ``x`` in float64, the same integers: None where the bounds of
    :func:`layernorm_into` do not hold (then the integer code computes, or raises)."""
    x = np.asarray(x)
    if x.dtype != np.int8 or x.ndim == 0 or x.size == 0 or not isinstance(params, LayerNormParams):
        return None
    return _by_rows(layernorm_into, x, np.int8, params)


#: Elements per block of the blocked kernels: their float64 work arrays stay in a core's L2 cache.
_BLOCK_ELEMENTS = 1 << 16


def _same_or_disjoint(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` (one shape and dtype) are the same elements or share no byte.
    Stacks of dense blocks at one stride (the golden machine's batch views) are decided from
    their addresses; anything else by NumPy's exact test."""
    if not np.may_share_memory(a, b):   # their extents do not meet
        return True
    offset = a.__array_interface__["data"][0] - b.__array_interface__["data"][0]
    if a.strides == b.strides:
        if offset == 0:
            return True
        block = a[0].nbytes if a.ndim else a.nbytes
        if a.ndim == 3 and a.strides[2] == a.itemsize and a.strides[1] == a.shape[2] * a.itemsize \
                and a.strides[0] >= block:
            d = offset % a.strides[0]   # a's image i against b's image j: a distance of d + (i - j) stride
            return a.shape[0] == 1 and abs(offset) >= block or (d >= block and a.strides[0] - d >= block)
    return not np.shares_memory(a, b)


def layernorm_into(out: np.ndarray, x: np.ndarray, params: LayerNormParams) -> bool:
    """:func:`layernorm` of int8 ``x`` ``(G, M, n)`` written into int8 ``out`` of its shape (any
    strides; the same memory as ``x`` or none of it), or False (nothing written) where the
    bounds below do not hold; then :func:`layernorm` computes, or raises.

    In blocks of ``G`` whose work arrays stay in cache (:func:`~vitaccel.sim.golden.gemm.scratch`).
    Exactness: the row statistics (float32 sums of integers below 2^24 for ``n <= 1024``) and
    the inverse square root are the integer code's. Per element, ``c = n x - Sx`` is a small
    integer; ``p = c r`` is an integer below 2^51 (checked), so ``z = floor(x (n r 2^-s) + (1/2 -
    Sx r 2^-s))`` with ``s = RSQRT_FRAC_BITS + k - NORM_FRAC_BITS`` is the rounding shift
    exactly: both terms are exact (integers below 2^51 times a power of two, the second plus
    1/2 within 53 bits) and their exact sum ``(p + 2^(s-1)) 2^-s`` is a double. Likewise ``w =
    z gamma + beta`` is an integer below 2^52 (checked) and, with ``o = out_shift <= 44``,
    ``z (gamma 2^-o) + (beta 2^-o + 1/2 + 128)`` adds two exact terms whose exact sum ``(w +
    2^(o-1) + 2^(o+7)) 2^-o`` (numerator below 2^53) is a double: its floor is
    ``round_shift(w, o) + 128``. Clipped into ``[0, 255]`` and truncated (non-negative: the
    floor) into the output's bytes, minus 128 (as a byte: ``^ 0x80``), it is the saturated int8.
    """
    from vitaccel.sim.golden.gemm import scratch

    if (x.dtype != np.int8 or out.dtype != np.int8 or x.ndim != 3 or out.shape != x.shape or x.size == 0
            or not isinstance(params, LayerNormParams)):
        return False
    if not _same_or_disjoint(out, x):
        return False
    images, m, n = x.shape
    if (not _valid_int(params.channels, 1, 1024) or n != params.channels or len(params.gamma) != n
            or len(params.beta) != n or not _valid_int(params.out_shift, 0, 44)
            or not _valid_int(params.eps_term, -(1 << 62), 1 << 62) or not _valid_int(params.rsqrt_lut_bits, 2, 12)):
        return False
    gamma = np.asarray(params.gamma, dtype=np.int64)
    beta = np.asarray(params.beta, dtype=np.int64)
    fused = kernels()
    group = max(1, min(images, _BLOCK_ELEMENTS // (m * n)))
    sum_x = np.empty((images, m, 1), np.int64)
    sum_xx = np.empty((images, m, 1), np.int64)
    if fused is not None:
        fused.row_sums(x, sum_x, sum_xx)
    else:
        work32 = scratch("layernorm.x", (group, m, n), np.float32)
        for first in range(0, images, group):   # row sums, exact in float32 (integers below 1024 * 2^14)
            last = min(first + group, images)
            xs = work32[:last - first]
            np.copyto(xs, x[first:last], casting="unsafe")
            sum_x[first:last] = xs.sum(axis=-1, keepdims=True)
            np.square(xs, out=xs)
            sum_xx[first:last] = xs.sum(axis=-1, keepdims=True)
    variance = np.maximum(n * sum_xx - sum_x * sum_x + params.eps_term, 1)
    r, k = inv_sqrt(variance, params.rsqrt_lut_bits)
    shift = RSQRT_FRAC_BITS + k - LAYERNORM_NORM_FRAC_BITS
    if shift.min() < 0 or shift.max() > 52:
        return False
    r_max = int(r.max())
    p_bound = 2 * n * 128 * r_max
    z_bound = (p_bound >> int(shift.min())) + 1
    if (p_bound >= 1 << 51 or n * 128 * r_max >= 1 << 51
            or z_bound * int(np.abs(gamma).max()) + int(np.abs(beta).max()) >= 1 << 52):
        return False
    scale = np.ldexp(r.astype(np.float64), -shift)
    row_scale = n * scale
    row_offset = 0.5 - sum_x * scale
    g = np.ldexp(gamma.astype(np.float64), -params.out_shift)
    b = np.ldexp(beta.astype(np.float64), -params.out_shift) + 128.5
    if fused is not None:   # the passes below in one
        fused.layernorm(x, row_scale, row_offset, g, b, out)
        return True
    work64 = scratch("layernorm.c", (group, m, n), np.float64)
    codes = out.view(np.uint8)
    for first in range(0, images, group):
        last = min(first + group, images)
        c = work64[:last - first]
        np.multiply(x[first:last], row_scale[first:last], out=c)
        c += row_offset[first:last]
        np.floor(c, out=c)                                   # z
        c *= g
        c += b
        block = codes[first:last]
        np.clip(c, 0, 255, out=block, casting="unsafe")
        np.bitwise_xor(block, 0x80, out=block)
    return True


#: Inputs from this many elements on look :func:`add` up in a table of all 65536 byte pairs.
_ADD_TABLE_MIN = 1 << 18


def _add_table(params: AddParams) -> np.ndarray:
    """:func:`add` of every int8 pair, indexed by ``(a byte << 8) | b byte``; cached per parameters."""
    key = (_add_table, params.a_multiplier, params.b_multiplier, params.shift)
    table = _TABLES.get(key)
    if table is None:
        codes = np.arange(1 << 16, dtype=np.uint16)
        a = (codes >> 8).astype(np.uint8).view(np.int8)
        b = (codes & 0xFF).astype(np.uint8).view(np.int8)
        table = add(a, b, params)   # below _ADD_TABLE_MIN: the int32 path
        table.flags.writeable = False
        if len(_TABLES) > 256:
            _TABLES.clear()
        _TABLES[key] = table
    return table


def add(a: np.ndarray, b: np.ndarray, params: AddParams) -> np.ndarray:
    """Residual add of int8 ``a`` and ``b`` (different scales) into int8."""
    a, b = np.asarray(a), np.asarray(b)
    if (a.dtype == np.int8 and b.dtype == np.int8 and isinstance(params, AddParams)
            and _valid_int(params.a_multiplier, -(1 << 20), 1 << 20) and _valid_int(params.b_multiplier, -(1 << 20), 1 << 20)
            and _valid_int(params.shift, 0, 29)):
        if a.size >= _ADD_TABLE_MIN and a.shape == b.shape:
            # Every (a, b) byte pair's result from a table built by the int32 code below.
            index = a.view(np.uint8).astype(np.uint16)
            index <<= 8
            index |= b.view(np.uint8)
            return np.take(_add_table(params), index)
        # |a*am + b*bm| + 2^(shift-1) < 2^29 + 2^28: int32 holds every step.
        total = a.astype(np.int32)
        total *= params.a_multiplier
        total += b.astype(np.int32) * np.int32(params.b_multiplier)
        if params.shift:
            total += np.int32(1 << (params.shift - 1))
            total >>= params.shift
        np.clip(total, -128, 127, out=total)
        return total.astype(np.int8)
    a = _as_int(a, 8, "a")
    b = _as_int(b, 8, "b")
    total = a * params.a_multiplier + b * params.b_multiplier
    return saturate(round_shift(total, params.shift), 8).astype(np.int8)
