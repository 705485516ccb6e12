"""Reusable fixed-point stages of the non-linear units.

Each stage computes exactly what its golden counterpart in
:mod:`vitaccel.sim.golden.nonlinear` computes (:func:`exp2_neg`, :func:`reciprocal`,
:func:`inv_sqrt`), from the tables of :mod:`vitaccel.hw.spec.luts`. The sparse attention unit
reuses :class:`ExpStage` and :class:`Reciprocal`.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.hw.spec.luts import (EXP_VALUE_BITS, EXP_ZERO_SHIFT, RECIP_FRAC_BITS,
                                   RECIP_MANTISSA_FRAC_BITS, RSQRT_FRAC_BITS,
                                   RSQRT_MANTISSA_FRAC_BITS, exp2_table, reciprocal_table,
                                   rsqrt_table)
from vitaccel.hw.spec.nonlinear import SOFTMAX_DIFF_BITS, SOFTMAX_MULT_BITS

__all__ = ["round_shift", "saturate", "leading_one", "normalize", "ExpStage", "Reciprocal",
           "InvSqrt", "SHIFT_BITS"]

#: Width of every run-time shift amount (0..63).
SHIFT_BITS = 6


def round_shift(value, amount):
    """``(value + 2^(amount-1)) >> amount`` (0 for amount 0): the one rounding rule, in gateware."""
    half = (Const(1, 1) << amount) >> 1
    return (value + half) >> amount


def saturate(value, bits: int, signed_out: bool = True):
    """Clamp ``value`` to a ``bits``-wide signed (or unsigned) range: the one saturation rule."""
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed_out else (0, (1 << bits) - 1)
    value = Value.cast(value)
    if not value.shape().signed and lo <= 0:
        return Mux(value > hi, hi, value)  # an unsigned value is never below lo: no dead compare
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


def leading_one(m: Module, value: Signal, name: str) -> Signal:
    """A signal holding ``floor(log2(value))`` (0 for 0): a priority encoder."""
    position = Signal(range(max(len(value), 2)), name=name)
    for bit in range(len(value)):
        with m.If(value[bit]):
            m.d.comb += position.eq(bit)  # later (higher) bits take priority
    return position


def normalize(value, exponent, frac_bits: int, width: int):
    """``value * 2^(frac_bits - exponent)``, rounding right shifts, as a ``width``-bit expression."""
    right = (exponent - frac_bits)[:SHIFT_BITS]
    left = (frac_bits - exponent)[:SHIFT_BITS]
    return Mux(exponent >= frac_bits, round_shift(value, right), (value << left)[:width])


class ExpStage(wiring.Component):
    """``e = 2^-(d * multiplier / 2^shift / 2^exp_lut_bits)`` per lane, two pipeline stages.

    Stage 1 forms the fixed-point base-2 exponent ``t = round(d * multiplier / 2^shift)``;
    stage 2 looks up the fractional part in the exp table and right-shifts (rounding) by the
    integer part. Invalid lanes output 0. Latency :attr:`LATENCY` cycles, one beat per cycle.

    Parameters
    ----------
    lanes : int
        Elements per cycle.
    exp_lut_bits : int
        Index width of the exp table (fractional bits of ``t``).
    """

    LATENCY = 2

    def __init__(self, *, lanes: int, exp_lut_bits: int) -> None:
        if lanes < 1:
            raise ValueError(f"lanes: must be at least 1, got {lanes}")
        self.lanes = lanes
        self.exp_lut_bits = exp_lut_bits
        self.table = exp2_table(exp_lut_bits)
        super().__init__({
            "diff": In(data.ArrayLayout(unsigned(SOFTMAX_DIFF_BITS), lanes)),
            "valid": In(lanes),
            "multiplier": In(SOFTMAX_MULT_BITS),
            "shift": In(SHIFT_BITS),
            "exp": Out(data.ArrayLayout(unsigned(EXP_VALUE_BITS), lanes)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        bits = self.exp_lut_bits
        for lane in range(self.lanes):
            table = Memory(shape=unsigned(EXP_VALUE_BITS), depth=1 << bits,
                           init=[int(v) for v in self.table])
            m.submodules[f"exp_table_{lane}"] = table
            port = table.read_port(domain="comb")
            exponent = Signal(SOFTMAX_DIFF_BITS + SOFTMAX_MULT_BITS, name=f"exponent_{lane}")
            valid = Signal(name=f"valid_{lane}")
            m.d.sync += [exponent.eq(round_shift(self.diff[lane] * self.multiplier, self.shift)),
                         valid.eq(self.valid[lane])]
            whole = exponent >> bits
            m.d.comb += port.addr.eq(exponent[:bits])
            m.d.sync += self.exp[lane].eq(Mux(~valid | (whole >= EXP_ZERO_SHIFT), 0,
                                              round_shift(port.data, whole[:5])))
        return m


class _NewtonUnit(wiring.Component):
    """Shared sequencer of :class:`Reciprocal` and :class:`InvSqrt`: normalise the input to a
    mantissa and an exponent, read a seed from a table indexed by the mantissa's top bits,
    then one Newton step in two multiplies. Subclasses give the arithmetic of each step.

    ``start`` latches ``value`` (must be positive); ``done`` is high for one cycle
    :attr:`LATENCY` cycles later, when ``result`` and ``exponent`` hold the answer; ``busy``
    is high in between.
    """

    #: Cycles from ``start`` to ``done``.
    LATENCY = 5
    _mantissa_bits: int
    _result_frac_bits: int

    def __init__(self, *, value_bits: int, lut_bits: int) -> None:
        if value_bits < 2:
            raise ValueError(f"value_bits: must be at least 2, got {value_bits}")
        self.value_bits = value_bits
        self.lut_bits = lut_bits
        super().__init__({
            "start": In(1),
            "value": In(value_bits),
            "busy": Out(1),
            "done": Out(1),
            "result": Out(self._result_frac_bits + 2),
            "exponent": Out(range(value_bits + 1)),
        })

    def _table(self):
        raise NotImplementedError

    def _normalize(self, m: Module, value: Signal):
        """``(mantissa, exponent)`` expressions of the latched input."""
        raise NotImplementedError

    def _index(self, mantissa: Signal):
        raise NotImplementedError

    def _aux(self, seed):
        """A value derived from the seed in the same cycle (``seed^2`` for the square root)."""
        return seed

    def _error(self, mantissa: Signal, seed: Signal, aux: Signal):
        raise NotImplementedError

    def _refine(self, seed: Signal, error: Signal):
        raise NotImplementedError

    def elaborate(self, platform) -> Module:
        m = Module()
        bits, y_bits = self.lut_bits, self._result_frac_bits
        table = Memory(shape=unsigned(y_bits + 1), depth=1 << bits, init=[int(v) for v in self._table()])
        m.submodules.table = table
        port = table.read_port(domain="comb")
        value = Signal(self.value_bits)
        mantissa = Signal(self._mantissa_bits)
        seed = Signal(y_bits + 1)
        aux = Signal(y_bits + 2)
        error = Signal(signed(y_bits + 4))
        normalized, exponent = self._normalize(m, value)
        index = self._index(mantissa)
        m.d.comb += port.addr.eq(Mux(index > (1 << bits) - 1, (1 << bits) - 1, index))
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += value.eq(self.value)
                    m.next = "NORMALIZE"
            with m.State("NORMALIZE"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [mantissa.eq(normalized), self.exponent.eq(exponent)]
                m.next = "SEED"
            with m.State("SEED"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [seed.eq(port.data), aux.eq(self._aux(port.data))]
                m.next = "ERROR"
            with m.State("ERROR"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += error.eq(self._error(mantissa, seed, aux))
                m.next = "REFINE"
            with m.State("REFINE"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += self.result.eq(self._refine(seed, error))
                m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m


class Reciprocal(_NewtonUnit):
    """``result ~ 2^(RECIP_FRAC_BITS + exponent) / value``: table seed + one Newton step.

    ``exponent = floor(log2 value)``, ``m = value / 2^exponent`` in Q1.RECIP_MANTISSA_FRAC_BITS,
    ``y = y0 (2 - m y0)``. Bit-exact to :func:`vitaccel.sim.golden.nonlinear.reciprocal`. One
    per row is enough: the result is broadcast to every lane.
    """

    _mantissa_bits = RECIP_MANTISSA_FRAC_BITS + 2
    _result_frac_bits = RECIP_FRAC_BITS

    def _table(self):
        return reciprocal_table(self.lut_bits)

    def _normalize(self, m, value):
        k = leading_one(m, value, "recip_log2")
        return normalize(value, k, RECIP_MANTISSA_FRAC_BITS, self._mantissa_bits), k

    def _index(self, mantissa):
        return (mantissa >> (RECIP_MANTISSA_FRAC_BITS - self.lut_bits)) - (1 << self.lut_bits)

    def _error(self, mantissa, seed, aux):
        return (1 << (RECIP_FRAC_BITS + 1)) - round_shift(mantissa * seed, RECIP_MANTISSA_FRAC_BITS)

    def _refine(self, seed, error):
        return round_shift(seed * error, RECIP_FRAC_BITS)


class InvSqrt(_NewtonUnit):
    """``result ~ 2^(RSQRT_FRAC_BITS + exponent) / sqrt(value)``: table seed + one Newton step.

    ``exponent = floor(log2 value) // 2``, ``m = value / 4^exponent`` in
    Q2.RSQRT_MANTISSA_FRAC_BITS, ``y = y0 (3 - m y0^2) / 2``. Bit-exact to
    :func:`vitaccel.sim.golden.nonlinear.inv_sqrt`.
    """

    _mantissa_bits = RSQRT_MANTISSA_FRAC_BITS + 3
    _result_frac_bits = RSQRT_FRAC_BITS

    def _table(self):
        return rsqrt_table(self.lut_bits)

    def _normalize(self, m, value):
        half_k = leading_one(m, value, "rsqrt_log2") >> 1
        return normalize(value, Cat(Const(0, 1), half_k), RSQRT_MANTISSA_FRAC_BITS, self._mantissa_bits), half_k

    def _index(self, mantissa):
        return mantissa >> (RSQRT_MANTISSA_FRAC_BITS + 2 - self.lut_bits)

    def _aux(self, seed):
        return round_shift(seed * seed, RSQRT_FRAC_BITS)

    def _error(self, mantissa, seed, aux):
        return 3 * (1 << RSQRT_FRAC_BITS) - round_shift(mantissa * aux, RSQRT_MANTISSA_FRAC_BITS)

    def _refine(self, seed, error):
        return round_shift(seed * error, RSQRT_FRAC_BITS + 1)
