"""Fixed-point numerics shared by the hardware, the golden model and the compiler.

One rounding rule and one saturation rule, used everywhere:

* **Rounding**: round half up, i.e. ``floor(x + 1/2)``. In hardware a right shift by
  ``s`` bits rounds as ``(x + (1 << (s - 1))) >> s`` with an arithmetic shift. It is one
  adder and costs nothing in a DSP's post-adder; round-half-even would need a sticky bit.
* **Saturation**: clamp to the target's two's-complement range (``[-2^(w-1), 2^(w-1)-1]``)
  or unsigned range (``[0, 2^w - 1]``). Never wrap.

Requantization of an ``int32`` accumulator to ``int8`` is gemmlowp-style: multiply by a
31-bit unsigned multiplier and shift right with rounding,
``out = sat8((acc * multiplier + 2^(shift-1)) >> shift)``, which approximates
``acc * real_scale`` with ``real_scale = multiplier * 2^-shift``. The product needs 63 bits,
so all golden code computes it in ``int64``.

Every function is vectorised NumPy and broadcasts per-channel parameters along the last axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MULTIPLIER_BITS", "MAX_SHIFT", "QuantScale", "int_range", "saturate", "round_shift",
    "requantize", "quantize_multiplier", "quantize", "dequantize",
]

#: Width of a requantization multiplier (unsigned; normalised into [2^30, 2^31)).
MULTIPLIER_BITS = 31
#: Largest right shift a requantization may use.
MAX_SHIFT = 62


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """Inclusive range of a ``bits``-wide integer."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def saturate(x: np.ndarray, bits: int, signed: bool = True) -> np.ndarray:
    """Clamp ``x`` to the range of a ``bits``-wide integer (the one saturation rule)."""
    lo, hi = int_range(bits, signed)
    return np.clip(x, lo, hi)


def round_shift(x: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """``floor(x / 2^shift + 1/2)`` for integer ``x`` (the one rounding rule).

    ``shift`` may be 0 (no rounding) or an array broadcast against ``x``. Computed in int64.
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if np.any(shift < 0) or np.any(shift > MAX_SHIFT):
        raise ValueError(f"shift must be in 0..{MAX_SHIFT}")
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return np.right_shift(x + half, shift)


def requantize(acc: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int,
               out_bits: int = 8) -> np.ndarray:
    """``sat(round_shift(acc * multiplier, shift))`` as ``int64``; see the module docstring.

    Parameters
    ----------
    acc : array of int
        Accumulator values; must fit in 32 bits so that the product fits in 63.
    multiplier : int or array
        Unsigned multipliers below ``2^31`` (per channel along the last axis, or scalar).
    shift : int or array
        Right shifts in ``1..MAX_SHIFT``.
    out_bits : int
        Width of the signed result.
    """
    acc = np.asarray(acc, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    if np.any(multiplier < 0) or np.any(multiplier >= (1 << MULTIPLIER_BITS)):
        raise ValueError(f"multiplier must be in 0..2^{MULTIPLIER_BITS}-1")
    if np.any(np.asarray(shift) < 1):
        raise ValueError(f"requantize: shift must be in 1..{MAX_SHIFT}")
    if np.any(np.abs(acc) > (1 << 31)):
        raise ValueError("requantize: accumulator does not fit in 32 bits")
    return saturate(round_shift(acc * multiplier, shift), out_bits)


@dataclass(frozen=True)
class QuantScale:
    """A real scale factor expressed as ``multiplier * 2^-shift``."""

    multiplier: int
    shift: int

    @property
    def value(self) -> float:
        return self.multiplier / float(1 << self.shift)


def quantize_multiplier(real_scale: float) -> QuantScale:
    """The ``(multiplier, shift)`` pair nearest to ``real_scale``.

    The multiplier is normalised into ``[2^30, 2^31)`` for the most precision, unless the
    scale is so small that the shift would pass ``MAX_SHIFT``, or zero.
    """
    if not math.isfinite(real_scale) or real_scale < 0:
        raise ValueError(f"scale must be a finite non-negative number, got {real_scale}")
    if real_scale == 0:
        return QuantScale(0, 1)
    mantissa, exponent = math.frexp(real_scale)  # real = mantissa * 2^exponent, 0.5 <= m < 1
    shift = MULTIPLIER_BITS - exponent
    multiplier = round(mantissa * (1 << MULTIPLIER_BITS))
    if multiplier == 1 << MULTIPLIER_BITS:
        multiplier //= 2
        shift -= 1
    if shift > MAX_SHIFT:
        multiplier = round(real_scale * (1 << MAX_SHIFT))
        shift = MAX_SHIFT
    if shift < 1:
        raise ValueError(f"scale {real_scale} is too large to requantize (needs shift {shift} < 1)")
    return QuantScale(int(multiplier), int(shift))


def quantize(x: np.ndarray, scale: float | np.ndarray, bits: int = 8) -> np.ndarray:
    """Symmetric quantization of a float tensor: ``sat(floor(x / scale + 1/2))``."""
    q = np.floor(np.asarray(x, dtype=np.float64) / scale + 0.5)
    return saturate(q, bits).astype(np.int64)


def dequantize(q: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    return np.asarray(q, dtype=np.float64) * scale
