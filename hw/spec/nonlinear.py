"""Parameter contract of the non-linear units (softmax, GELU, LayerNorm, residual add).

The compiler turns each layer's float scales into one of the frozen dataclasses below; they
hold integers only, so that the instruction stream and the hardware registers can carry
them, and the golden kernels in :mod:`vitaccel.sim.golden.nonlinear` read the same fields.
Fixed-point formats of the datapaths are module constants (used to size the hardware).

Softmax
    Input: ``int32`` scores whose real value is ``score * input_scale``. The difference to the
    row maximum (saturated to :data:`SOFTMAX_DIFF_BITS` unsigned bits) times
    ``multiplier * 2^-shift`` (= ``input_scale * log2(e) * 2^exp_lut_bits``) is the base-2
    exponent in fixed point with ``exp_lut_bits`` fractional bits. Output: ``uint8``
    probabilities at the fixed scale :data:`SOFTMAX_OUTPUT_SCALE`.
GELU (int8)
    A 256-entry ``int8`` table per layer (:func:`gelu_table`), addressed by the input code.
GELU (int16)
    I-BERT's second-order ``erf`` polynomial (:class:`GeluInt16Params`).
LayerNorm
    Integer statistics over the channels, inverse square root from a table plus one Newton
    step, per-channel ``gamma`` and ``beta`` folded with the output scale
    (:class:`LayerNormParams`).
Residual add
    ``sat8(round((a * a_multiplier + b * b_multiplier) / 2^shift))`` (:class:`AddParams`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import AccelConfig
from .luts import EXP_ZERO_SHIFT, round_half_up
from .numerics import MAX_SHIFT, QuantScale, quantize_multiplier, round_shift, saturate

__all__ = [
    "SOFTMAX_OUTPUT_BITS", "SOFTMAX_OUTPUT_SCALE", "SOFTMAX_DIFF_BITS", "SOFTMAX_MULT_BITS",
    "ADD_MULT_BITS", "GELU_INT16_MULT_BITS", "GELU_INT16_CONST_BITS", "IBERT_A", "IBERT_B",
    "LAYERNORM_MAX_CHANNELS", "LAYERNORM_NORM_FRAC_BITS", "LAYERNORM_GAMMA_BITS",
    "LAYERNORM_BETA_BITS", "LAYERNORM_EPS_BITS",
    "SoftmaxParams", "softmax_params", "GeluInt16Params", "gelu_int16_params",
    "gelu_reference", "gelu_table", "LayerNormParams", "layernorm_params", "AddParams",
    "add_params", "scale_to_multiplier",
]

_DEFAULTS = AccelConfig()

#: Softmax output: unsigned 8-bit probabilities, real value ``code * SOFTMAX_OUTPUT_SCALE``.
SOFTMAX_OUTPUT_BITS = 8
SOFTMAX_OUTPUT_SCALE = 1.0 / 256.0
#: ``max - score`` saturates to this many unsigned bits before the scale multiplier.
SOFTMAX_DIFF_BITS = 31
#: Width of the softmax scale multiplier (unsigned, normalised into ``[2^15, 2^16)``).
SOFTMAX_MULT_BITS = 16
#: Width of the residual-add multipliers (unsigned).
ADD_MULT_BITS = 16
#: Width of the int16 GELU output multiplier (unsigned).
GELU_INT16_MULT_BITS = 16
#: Signed width of the int16 GELU constants ``q_b``, ``q_c``, ``q_one`` (hardware ports).
GELU_INT16_CONST_BITS = 34
#: I-BERT: ``erf(x) ~ sgn(x) [a (min(|x|, -b) + b)^2 + 1]`` (REFERENCE.md).
IBERT_A = -0.2888
IBERT_B = -1.769
#: Longest LayerNorm row (channels) the hardware buffers: DeiT-B's 768.
LAYERNORM_MAX_CHANNELS = 768
#: Fractional bits of the normalised value ``(x - mean) / std`` inside LayerNorm.
LAYERNORM_NORM_FRAC_BITS = 12
#: Signed width of a folded ``gamma / out_scale`` multiplier.
LAYERNORM_GAMMA_BITS = 18
#: Signed width of a folded ``beta / out_scale`` addend (pre-shift).
LAYERNORM_BETA_BITS = 48
#: Unsigned width of the ``eps`` term added to ``n * sum(x^2) - sum(x)^2``.
LAYERNORM_EPS_BITS = 32


def scale_to_multiplier(real: float, bits: int) -> QuantScale:
    """``real`` as ``multiplier * 2^-shift`` with an unsigned ``bits``-wide multiplier.

    Derived from :func:`~vitaccel.hw.spec.numerics.quantize_multiplier` by dropping low bits
    with the one rounding rule. Raises ``ValueError`` if ``real`` needs a negative shift.
    """
    full = quantize_multiplier(real)
    drop = 31 - bits
    multiplier = int(round_shift(full.multiplier, drop))
    shift = full.shift - drop
    if multiplier == 1 << bits:
        multiplier >>= 1
        shift -= 1
    if shift < 0:
        raise ValueError(f"scale {real} is too large for a {bits}-bit multiplier")
    return QuantScale(multiplier, shift)


def _check_scale(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite positive number, got {value!r}")
    return float(value)


# -- softmax ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SoftmaxParams:
    """Integer parameters of one softmax.

    Attributes
    ----------
    multiplier, shift : int
        ``input_scale * log2(e) * 2^exp_lut_bits ~ multiplier * 2^-shift``;
        ``multiplier < 2^SOFTMAX_MULT_BITS``.
    exp_lut_bits, recip_lut_bits : int
        Index widths of the exp and reciprocal tables (``AccelConfig`` fields of the same
        names; the hardware is built with them).
    """

    multiplier: int
    shift: int
    exp_lut_bits: int = _DEFAULTS.exp_lut_bits
    recip_lut_bits: int = _DEFAULTS.recip_lut_bits


def softmax_params(input_scale: float, *, exp_lut_bits: int = _DEFAULTS.exp_lut_bits,
                   recip_lut_bits: int = _DEFAULTS.recip_lut_bits) -> SoftmaxParams:
    """Parameters for a softmax over int32 scores whose real value is ``score * input_scale``.

    Raises
    ------
    ValueError
        If the scale is not positive, or so small that a saturated score difference
        (``2^31 - 1``) would not yet drive ``exp`` to zero (then saturation would be visible).
    """
    input_scale = _check_scale("input_scale", input_scale)
    real = input_scale * math.log2(math.e) * (1 << exp_lut_bits)
    if real * ((1 << SOFTMAX_DIFF_BITS) - 1) < EXP_ZERO_SHIFT * (1 << exp_lut_bits) * 2:
        raise ValueError(f"input_scale: {input_scale} is too small: a score difference of "
                         f"2^{SOFTMAX_DIFF_BITS} must reach exp(x) = 0")
    try:
        q = scale_to_multiplier(real, SOFTMAX_MULT_BITS)
    except ValueError:
        raise ValueError(f"input_scale: {input_scale} is too large for the softmax multiplier") from None
    if q.shift > MAX_SHIFT:
        raise ValueError(f"input_scale: {input_scale} needs shift {q.shift} > {MAX_SHIFT}")
    return SoftmaxParams(q.multiplier, q.shift, exp_lut_bits, recip_lut_bits)


# -- GELU ------------------------------------------------------------------------------------

def gelu_reference(x: np.ndarray) -> np.ndarray:
    """Exact GELU ``x/2 (1 + erf(x / sqrt 2))`` in float64 (the accuracy reference)."""
    from scipy.special import erf

    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_table(in_scale: float, out_scale: float) -> np.ndarray:
    """The 256-entry int8 GELU table of one layer: the best possible int8 output per input.

    Entry ``c`` (the raw two's-complement code of the input, 0..255) is
    ``sat8(round(gelu(x * in_scale) / out_scale))`` with ``x`` the signed value of ``c``.
    """
    in_scale = _check_scale("in_scale", in_scale)
    out_scale = _check_scale("out_scale", out_scale)
    codes = np.arange(256)
    x = np.where(codes < 128, codes, codes - 256)
    return saturate(round_half_up(gelu_reference(x * in_scale) / out_scale), 8).astype(np.int8)


@dataclass(frozen=True)
class GeluInt16Params:
    """I-BERT integer GELU for int16 operands.

    ``q_erf = sgn(q) ((min(|q|, clip) + q_b)^2 + q_c)`` approximates ``erf(q S) / S_L`` with
    ``S = in_scale / sqrt 2`` and ``S_L = IBERT_A * S^2 < 0``;
    ``out = sat16(round(-q (q_erf + q_one) * multiplier / 2^shift))`` with ``q_one = round(1/S_L)``.
    """

    clip: int
    q_b: int
    q_c: int
    q_one: int
    multiplier: int
    shift: int


def gelu_int16_params(in_scale: float, out_scale: float) -> GeluInt16Params:
    """I-BERT GELU constants for int16 input at ``in_scale`` and int16 output at ``out_scale``."""
    in_scale = _check_scale("in_scale", in_scale)
    out_scale = _check_scale("out_scale", out_scale)
    s = in_scale / math.sqrt(2.0)
    q_b = int(round_half_up(IBERT_B / s))
    q_c = int(round_half_up(1.0 / (IBERT_A * s * s)))
    s_l = IBERT_A * s * s
    q_one = int(round_half_up(1.0 / s_l))
    q = scale_to_multiplier(in_scale * abs(s_l) / 2.0 / out_scale, GELU_INT16_MULT_BITS)
    bound = (1 << 15) * (q_b * q_b + abs(q_c) + abs(q_one)) * q.multiplier
    if bound >= 1 << 62 or q.shift > MAX_SHIFT or max(abs(q_c), abs(q_one)) >= 1 << (GELU_INT16_CONST_BITS - 1):
        raise ValueError(f"in_scale: {in_scale} is too small for int16 GELU (products overflow 63 bits)")
    return GeluInt16Params(-q_b, q_b, q_c, q_one, q.multiplier, q.shift)


# -- LayerNorm -------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerNormParams:
    """Integer parameters of one LayerNorm over ``channels`` int8 channels.

    With ``Sx = sum(x)``, ``Sxx = sum(x^2)``, ``n = channels``:
    ``V = max(n Sxx - Sx^2 + eps_term, 1)``, ``r ~ 2^(RSQRT_FRAC_BITS + k) / sqrt(V)`` (table +
    Newton), ``z = round((n x - Sx) r / 2^(RSQRT_FRAC_BITS + k - LAYERNORM_NORM_FRAC_BITS))``,
    ``out = sat8(round((z gamma + beta) / 2^out_shift))``.

    Attributes
    ----------
    channels : int
        Row length ``n``.
    eps_term : int
        ``round(n^2 eps / in_scale^2)``.
    gamma, beta : tuple of int
        ``round(gamma / out_scale * 2^(out_shift - LAYERNORM_NORM_FRAC_BITS))`` and
        ``round(beta / out_scale * 2^out_shift)`` per channel.
    out_shift : int
        Final right shift.
    rsqrt_lut_bits : int
        Index width of the inverse-square-root table.
    """

    channels: int
    eps_term: int
    gamma: tuple[int, ...]
    beta: tuple[int, ...]
    out_shift: int
    rsqrt_lut_bits: int = _DEFAULTS.rsqrt_lut_bits


def layernorm_params(in_scale: float, gamma: np.ndarray, beta: np.ndarray, out_scale: float,
                     eps: float = 1e-6, *,
                     rsqrt_lut_bits: int = _DEFAULTS.rsqrt_lut_bits) -> LayerNormParams:
    """Fold a LayerNorm's float ``gamma``, ``beta``, ``eps`` and scales into integers."""
    in_scale = _check_scale("in_scale", in_scale)
    out_scale = _check_scale("out_scale", out_scale)
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if gamma.ndim != 1 or gamma.shape != beta.shape or not 1 <= gamma.size <= LAYERNORM_MAX_CHANNELS:
        raise ValueError(f"gamma and beta: must be 1-D of equal length 1..{LAYERNORM_MAX_CHANNELS}, "
                         f"got shapes {gamma.shape} and {beta.shape}")
    if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(beta))):
        raise ValueError("gamma and beta: must be finite")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps: must be a finite non-negative number, got {eps!r}")
    n = gamma.size
    eps_term = int(round_half_up(n * n * eps / (in_scale * in_scale)))
    if eps_term >= 1 << LAYERNORM_EPS_BITS:
        raise ValueError(f"eps: {eps} is too large against in_scale {in_scale} (eps term {eps_term})")
    ratio = gamma / out_scale
    largest = float(np.max(np.abs(ratio)))
    limit = 1 << (LAYERNORM_GAMMA_BITS - 1)
    gamma_shift = 30 if largest == 0 else min(30, LAYERNORM_GAMMA_BITS - 1 - math.frexp(largest)[1])
    while int(np.max(np.abs(round_half_up(ratio * 2.0 ** gamma_shift)))) >= limit:
        gamma_shift -= 1
    out_shift = LAYERNORM_NORM_FRAC_BITS + gamma_shift
    if not 1 <= out_shift <= MAX_SHIFT:
        raise ValueError(f"gamma: |gamma / out_scale| up to {largest} cannot be represented")
    gamma_q = round_half_up(ratio * 2.0 ** gamma_shift)
    beta_q = round_half_up(beta / out_scale * 2.0 ** out_shift)
    if np.any(np.abs(beta_q) >= 1 << (LAYERNORM_BETA_BITS - 1)):
        raise ValueError(f"beta: |beta / out_scale| up to {np.max(np.abs(beta / out_scale))} is too large")
    return LayerNormParams(n, eps_term, tuple(int(g) for g in gamma_q), tuple(int(b) for b in beta_q),
                           out_shift, rsqrt_lut_bits)


# -- residual add ----------------------------------------------------------------------------

@dataclass(frozen=True)
class AddParams:
    """``out = sat8(round((a * a_multiplier + b * b_multiplier) / 2^shift))``."""

    a_multiplier: int
    b_multiplier: int
    shift: int


def add_params(a_scale: float, b_scale: float, out_scale: float) -> AddParams:
    """Residual add of int8 ``a`` (scale ``a_scale``) and ``b`` into int8 at ``out_scale``."""
    a_ratio = _check_scale("a_scale", a_scale) / _check_scale("out_scale", out_scale)
    b_ratio = _check_scale("b_scale", b_scale) / out_scale
    try:
        shift = scale_to_multiplier(max(a_ratio, b_ratio), ADD_MULT_BITS).shift
    except ValueError:
        raise ValueError(f"add: input/output scale ratio {max(a_ratio, b_ratio)} is too large") from None
    shift = min(shift, MAX_SHIFT)
    a_mult = int(round_half_up(a_ratio * 2.0 ** shift))
    b_mult = int(round_half_up(b_ratio * 2.0 ** shift))
    return AddParams(a_mult, b_mult, shift)
