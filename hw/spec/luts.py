"""Integer lookup tables shared by the non-linear hardware and the golden model.

Every table is a NumPy ``int64`` array built from the formats below; the hardware
initialises its memories from these arrays and the golden kernels index the same arrays,
so the two cannot disagree. Formats (``Qi.f`` = ``i`` integer bits, ``f`` fractional bits):

* **exp** (:func:`exp2_table`): ``2^exp_lut_bits`` entries, entry ``j`` =
  ``round(2^(-j / 2^exp_lut_bits) * 2^EXP_FRAC_BITS)``, i.e. ``2^-f`` for the fractional
  part ``f`` of a base-2 exponent, in unsigned Q1.15 (``2^15`` means 1.0). Range reduction:
  ``exp(-x) = 2^-(x log2 e)``; the integer part of ``x log2 e`` becomes a right shift.
* **reciprocal** (:func:`reciprocal_table`): ``2^recip_lut_bits`` entries for a mantissa
  ``m`` in ``[1, 2)`` whose leading one is dropped; entry ``i`` =
  ``round(2^RECIP_FRAC_BITS / (1 + (i + 1/2) / 2^recip_lut_bits))`` (seed for one Newton step).
* **inverse square root** (:func:`rsqrt_table`): ``2^rsqrt_lut_bits`` entries over a mantissa
  ``m`` in ``[0, 4)`` indexed by its top ``rsqrt_lut_bits`` bits (``m`` is always at least 1,
  so the first quarter is unused and repeats the first used entry); entry ``i`` =
  ``round(2^RSQRT_FRAC_BITS / sqrt((i + 1/2) * 4 / 2^rsqrt_lut_bits))``.
* **GELU** (built per layer by :func:`vitaccel.hw.spec.nonlinear.gelu_table`): 256 signed
  8-bit entries addressed by the raw two's-complement code of the int8 input.

Rounding is always :func:`vitaccel.hw.spec.numerics.quantize`'s round-half-up.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EXP_FRAC_BITS", "EXP_VALUE_BITS", "EXP_ZERO_SHIFT", "RECIP_FRAC_BITS",
    "RECIP_MANTISSA_FRAC_BITS", "RSQRT_FRAC_BITS", "RSQRT_MANTISSA_FRAC_BITS",
    "exp2_table", "reciprocal_table", "rsqrt_table", "round_half_up",
]

#: Fractional bits of an exp table entry (and of every exp value in the softmax datapath).
EXP_FRAC_BITS = 15
#: Width of an exp value: the largest is ``2^EXP_FRAC_BITS`` (exactly 1.0).
EXP_VALUE_BITS = EXP_FRAC_BITS + 1
#: A right shift at least this large turns every exp table entry into 0 under round-half-up
#: (``round(2^15 / 2^17) = 0``), so the hardware clamps larger shifts to a plain zero.
EXP_ZERO_SHIFT = EXP_FRAC_BITS + 2
#: Fractional bits of a reciprocal (seed and Newton result), value in ``(1/2, 1]``.
RECIP_FRAC_BITS = 16
#: Fractional bits of the normalised mantissa ``m`` in ``[1, 2]`` fed to the Newton step.
RECIP_MANTISSA_FRAC_BITS = 16
#: Fractional bits of an inverse square root (seed and Newton result), value in ``(1/2, 1]``.
RSQRT_FRAC_BITS = 16
#: Fractional bits of the normalised mantissa ``m`` in ``[1, 4]`` fed to the Newton step.
RSQRT_MANTISSA_FRAC_BITS = 16


def round_half_up(x: np.ndarray | float) -> np.ndarray:
    """``floor(x + 1/2)`` of real values as ``int64``: the one rounding rule, for tables."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def _check_bits(name: str, bits: int, low: int, high: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not low <= bits <= high:
        raise ValueError(f"{name}: must be an integer in {low}..{high}, got {bits!r}")


def exp2_table(lut_bits: int) -> np.ndarray:
    """``2^-f`` for ``f = j / 2^lut_bits``, ``j = 0 .. 2^lut_bits - 1``, in Q1.EXP_FRAC_BITS."""
    _check_bits("exp_lut_bits", lut_bits, 1, 12)
    j = np.arange(1 << lut_bits, dtype=np.float64)
    return round_half_up(np.exp2(-j / (1 << lut_bits)) * (1 << EXP_FRAC_BITS))


def reciprocal_table(lut_bits: int) -> np.ndarray:
    """Seeds ``1/m`` for ``m`` in ``[1, 2)`` at the centre of each of ``2^lut_bits`` bins."""
    _check_bits("recip_lut_bits", lut_bits, 1, 12)
    i = np.arange(1 << lut_bits, dtype=np.float64)
    return round_half_up((1 << RECIP_FRAC_BITS) / (1.0 + (i + 0.5) / (1 << lut_bits)))


def rsqrt_table(lut_bits: int) -> np.ndarray:
    """Seeds ``1/sqrt(m)`` for ``m`` in ``[0, 4)`` at the centre of each of ``2^lut_bits`` bins.

    Mantissas are at least 1, so bins below ``2^(lut_bits-2)`` are never read; they repeat the
    first used entry so that the table stays monotonic.
    """
    _check_bits("rsqrt_lut_bits", lut_bits, 2, 12)
    i = np.maximum(np.arange(1 << lut_bits), 1 << (lut_bits - 2)).astype(np.float64)
    return round_half_up((1 << RSQRT_FRAC_BITS) / np.sqrt((i + 0.5) * 4.0 / (1 << lut_bits)))
