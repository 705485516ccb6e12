"""Two 8-bit multiplies per DSP48E2 (Xilinx WP486): bit layout, accumulation bound, separation.

A DSP48E2 multiplies a 27-bit by an 18-bit signed operand. Two products that share one
operand ``b`` come out of one multiply when the other two operands are packed into the
27-bit port, the high one ``LANE_SHIFT`` bits up::

    packed = (a_hi << 18) + a_lo            # 27-bit signed
    packed * b = a_hi*b * 2^18 + a_lo*b     # exact, as integers

Sums of such products keep the form ``S = H * 2^18 + L`` (``H`` the sum of the high
products, ``L`` of the low ones). ``L`` is recovered from the low 18 bits of ``S`` as long
as the range of ``L`` spans fewer than ``2^18`` values; then ``H = (S >> 18) + (L < 0)``
exactly (the low field borrows one from the high field when ``L`` is negative). See
docs/dsp_packing.md for the derivation and a worked example.

This module defines the numbers once; the block unit (``hw/matrix/block_unit.py``) and the
tests use them. It imports no gateware.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LANE_SHIFT", "MULT_A_BITS", "MULT_B_BITS", "PackedLanes", "packed_lanes", "engine_lanes", "pack",
           "separate"]

#: Bit offset of the high lane in the packed operand (and in the products and their sums).
LANE_SHIFT = 18
#: Signed widths of the DSP48E2 multiplier's ports (A/D pre-adder side, B side).
MULT_A_BITS, MULT_B_BITS = 27, 18


@dataclass(frozen=True)
class PackedLanes:
    """How packed products of given operand ranges may be summed before separation.

    Attributes
    ----------
    a_range, b_range : tuple[int, int]
        Inclusive ranges of the packed operands (``a_lo``, ``a_hi``) and the shared one (``b``).
    product_range : tuple[int, int]
        Inclusive range of one product ``a * b``.
    max_terms : int
        Most products whose packed sum still separates exactly: the largest ``n`` with
        ``n * (product_max - product_min) < 2^LANE_SHIFT``.
    """

    a_range: tuple[int, int]
    b_range: tuple[int, int]
    product_range: tuple[int, int]
    max_terms: int

    def low_range(self, terms: int) -> tuple[int, int]:
        """Inclusive range of the low-lane sum ``L`` of ``terms`` products."""
        self._check_terms(terms)
        return terms * self.product_range[0], terms * self.product_range[1]

    def threshold(self, terms: int) -> int:
        """Largest low field ``u = S mod 2^18`` that decodes to ``L = u`` (above it, ``L = u - 2^18``)."""
        return self.low_range(terms)[1]

    def _check_terms(self, terms: int) -> None:
        if not 1 <= terms <= self.max_terms:
            raise ValueError(f"terms must be in 1..{self.max_terms}, got {terms}")


def packed_lanes(a_range: tuple[int, int], b_range: tuple[int, int]) -> PackedLanes:
    """The packing rules for operands in ``a_range`` (packed) and ``b_range`` (shared).

    Raises
    ------
    ValueError
        If the packed operand cannot fit the multiplier's 27-bit port, ``b`` its 18-bit
        port, or not even one product fits the 18-bit low lane.
    """
    (a_lo, a_hi), (b_lo, b_hi) = a_range, b_range
    if a_lo > a_hi or b_lo > b_hi:
        raise ValueError(f"empty operand range: a {a_range}, b {b_range}")
    half_a, half_b = 1 << (MULT_A_BITS - 1), 1 << (MULT_B_BITS - 1)
    if not (-half_a <= (a_lo << LANE_SHIFT) + a_lo and (a_hi << LANE_SHIFT) + a_hi < half_a):
        raise ValueError(f"a range {a_range} packed at bit {LANE_SHIFT} does not fit {MULT_A_BITS} signed bits")
    if not (-half_b <= b_lo and b_hi < half_b):
        raise ValueError(f"b range {b_range} does not fit {MULT_B_BITS} signed bits")
    corners = [a * b for a in a_range for b in b_range]
    product = (min(corners), max(corners))
    span = product[1] - product[0]
    max_terms = ((1 << LANE_SHIFT) - 1) // span if span else 1 << LANE_SHIFT
    if max_terms < 1:
        raise ValueError(f"one product of a {a_range} x b {b_range} does not fit the {LANE_SHIFT}-bit low lane")
    return PackedLanes(a_range=(a_lo, a_hi), b_range=(b_lo, b_hi), product_range=product, max_terms=max_terms)


def pack(a_hi: int, a_lo: int) -> int:
    """The packed 27-bit operand ``(a_hi << 18) + a_lo`` (an ordinary integer)."""
    return (int(a_hi) << LANE_SHIFT) + int(a_lo)


def separate(packed_sum: int, lanes: PackedLanes, terms: int) -> tuple[int, int]:
    """``(H, L)`` of a sum of ``terms`` packed products ``S = H * 2^18 + L``.

    The reference for the gateware's separation: ``u = S mod 2^18``, ``L = u`` if ``u`` is at
    most :meth:`PackedLanes.threshold`, else ``u - 2^18``; ``H = (S >> 18) + (L < 0)``.
    """
    u = int(packed_sum) & ((1 << LANE_SHIFT) - 1)
    borrow = u > lanes.threshold(terms)
    low = u - (1 << LANE_SHIFT) if borrow else u
    return (int(packed_sum) >> LANE_SHIFT) + int(borrow), low


def engine_lanes(operand_width: int) -> PackedLanes:
    """The packing rules of the matrix engine's operands: A is int8 or, in unsigned-A mode,
    uint8 (``[-128, 255]`` for 8 bits), B is int8. Packing needs 8-bit operands."""
    if operand_width != 8:
        raise ValueError(f"DSP packing needs 8-bit operands, got operand_width={operand_width}")
    low, high = -(1 << (operand_width - 1)), (1 << operand_width) - 1
    return packed_lanes((low, high), (low, (1 << (operand_width - 1)) - 1))
