"""Reusable fixed-point stages of the non-linear units.

Each stage computes exactly what its golden counterpart in
:mod:`vitaccel.sim.golden.nonlinear` computes (:func:`exp2_neg`, :func:`reciprocal`,
:func:`inv_sqrt`), from the tables of :mod:`vitaccel.hw.spec.luts`. The sparse attention unit
reuses :class:`ExpStage` and :class:`Reciprocal`.

Pipelining (docs/timing.md): a clock of 300 MHz leaves room for about one carry chain, one
8-way choice or one DSP48E2 multiply per cycle. So every multiply has a register on its
output (and its operands come from registers, which yosys may absorb as ``AREG``/``BREG``/
``PREG``), every ``round_shift`` by a run-time amount is :func:`pipelined_round_shift` (two
shifts, then the rounding add), and a multiply's operands are kept within the DSP48E2's
27 x 18 signed multiplier (one block, no cascade).
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

__all__ = ["round_shift", "pipelined_round_shift", "saturate", "leading_one", "ExpStage", "Reciprocal",
           "InvSqrt", "SHIFT_BITS", "DSP_B_UNSIGNED_BITS", "register"]

#: Width of every run-time shift amount (0..63).
SHIFT_BITS = 6
#: Widest unsigned operand on the DSP48E2's 18-bit signed ``B`` input (the ``A`` input takes
#: 26): a product whose narrower operand fits here maps onto one DSP48E2.
DSP_B_UNSIGNED_BITS = 17


def round_shift(value, amount):
    """``(value + 2^(amount-1)) >> amount`` (0 for amount 0): the one rounding rule, in gateware."""
    half = (Const(1, 1) << amount) >> 1
    return (value + half) >> amount


def pipelined_round_shift(m: Module, value, amount, stage, name: str, shape=None) -> Signal:
    """``round_shift(value, amount)`` for a run-time 6-bit ``amount`` over three registers made
    by ``stage(m, value, name, shape=None)`` (:func:`register`, or a stalling pipeline's):
    the shift by ``amount``'s multiple of 8, the shift by the rest, the rounding add.

    With ``value = q 2^a + r`` (``0 <= r < 2^a``), ``(value + 2^(a-1)) >> a`` is ``q`` plus 1
    exactly when ``r >= 2^(a-1)``, i.e. bit ``a-1`` of ``value`` (none for ``a = 0``). So
    ``t = (value << 1) >> amount`` holds both: ``t >> 1 == value >> amount`` and ``t[0]`` is
    the rounding bit. Each shift is an 8-way choice per bit (two LUT levels), where the one
    64-way shift was six levels.
    """
    amount = Value.cast(amount)
    doubled = Value.cast(value) << 1
    coarse = stage(m, doubled >> Cat(Const(0, 3), amount[3:]), f"{name}_coarse")
    fine_amount = stage(m, amount[:3], f"{name}_fine_amount")
    fine = stage(m, coarse >> fine_amount, f"{name}_fine")
    return stage(m, (fine >> 1) + fine[0], f"{name}_rounded", shape)


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


def register(m: Module, value, name: str, shape=None) -> Signal:
    """``value`` one cycle later, in a reset-less register (a datapath register, which yosys
    may absorb into a DSP48E2)."""
    value = Value.cast(value)
    reg = Signal(shape if shape is not None else value.shape(), name=name, reset_less=True)
    m.d.sync += reg.eq(value)
    return reg


class ExpStage(wiring.Component):
    """``e = 2^-(d * multiplier / 2^shift / 2^exp_lut_bits)`` per lane, a :attr:`LATENCY`-cycle pipeline.

    The cycles: the product ``d * multiplier`` in two DSP48E2 halves (``d`` split at bit
    :data:`DSP_B_UNSIGNED_BITS`), their sum, the rounding shift by ``shift``
    (:func:`pipelined_round_shift`, three cycles) into the fixed-point base-2 exponent ``t``;
    the exp table read at the fractional part of ``t``; the rounding right shift by the
    integer part (three cycles). Invalid lanes output 0. ``exp`` comes from registers. One beat per cycle, no stall.

    Parameters
    ----------
    lanes : int
        Elements per cycle.
    exp_lut_bits : int
        Index width of the exp table (fractional bits of ``t``).
    """

    LATENCY = 9

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
        bits, split = self.exp_lut_bits, DSP_B_UNSIGNED_BITS
        exponent_bits = SOFTMAX_DIFF_BITS + SOFTMAX_MULT_BITS
        multiplier, shift = self.multiplier, self.shift
        assert EXP_VALUE_BITS < EXP_ZERO_SHIFT   # a shift by EXP_ZERO_SHIFT rounds every table value to 0
        for lane in range(self.lanes):
            table = Memory(shape=unsigned(EXP_VALUE_BITS), depth=1 << bits,
                           init=[int(v) for v in self.table])
            m.submodules[f"exp_table_{lane}"] = table
            port = table.read_port(domain="comb")
            valid = _delay_line(m, self.valid[lane], 5, f"exp_valid_{lane}")
            diff = self.diff[lane]
            # 1: the two halves of d * multiplier, each a 17 x 16 product (one DSP48E2 each)
            low = register(m, diff[:split] * multiplier, f"exp_product_low_{lane}")
            high = register(m, diff[split:] * multiplier, f"exp_product_high_{lane}")
            # 2: their sum
            product = register(m, (high << split) + low, f"exp_product_{lane}", exponent_bits)
            # 3, 4, 5: round_shift(product, shift)
            exponent = pipelined_round_shift(m, product, shift, register, f"exponent_{lane}", exponent_bits)
            # 6: the table read at the fraction; the shift by the whole part, at most
            # EXP_ZERO_SHIFT: table values are below 2^(EXP_ZERO_SHIFT - 1), so that shift
            # rounds it to exactly the 0 of a large whole part or an invalid lane (no zero flag
            # and output mux in front of the row sum's adders)
            whole = exponent >> bits
            m.d.comb += port.addr.eq(exponent[:bits])
            value = register(m, port.data, f"exp_value_{lane}")
            amount = register(m, Mux(~valid[4] | (whole >= EXP_ZERO_SHIFT), EXP_ZERO_SHIFT, whole),
                              f"exp_whole_{lane}", range(EXP_ZERO_SHIFT + 1))
            # 7, 8, 9: round_shift(value, amount)
            m.d.comb += self.exp[lane].eq(pipelined_round_shift(m, value, amount, register, f"exp_value_{lane}"))
        return m


def _delay_line(m: Module, value, cycles: int, name: str) -> list:
    """``[value 1 cycle later, .. cycles later]`` in reset-less registers."""
    line = []
    for stage in range(cycles):
        value = register(m, value, f"{name}_{stage}")
        line.append(value)
    return line


class _NewtonUnit(wiring.Component):
    """Shared sequencer of :class:`Reciprocal` and :class:`InvSqrt`: normalise the input to a
    mantissa and an exponent, read a seed from a table indexed by the mantissa's top bits,
    then one Newton step of multiplies. Subclasses give the arithmetic of each step.

    One state per operation, each ending in a register (a priority encoder, a barrel shift,
    an add, a table read or one DSP48E2 multiply per cycle). ``start`` latches ``value``
    (must be positive); ``done`` is high for one cycle :attr:`LATENCY` cycles later, when
    ``result`` and ``exponent`` hold the answer; ``busy`` is high in between.
    """

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

    #: Cycles from ``start`` to ``done``: IDLE, LOG2_BYTES, LOG2, AMOUNT, COARSE, SHIFT, ROUND, INDEX, READ,
    #: SEED (:data:`_SETUP_CYCLES`), then one per Newton step (``len(self._newton(...))``).
    LATENCY: int

    def _table(self):
        raise NotImplementedError

    def _log2(self, k: Value):
        """``(exponent of the result, exponent of the normalisation)`` from ``k``, the latched
        input's leading one."""
        raise NotImplementedError

    def _frac_bits(self) -> int:
        raise NotImplementedError

    def _index(self, mantissa: Signal):
        raise NotImplementedError

    def _newton(self, mantissa: Signal, seed: Signal) -> list:
        """The Newton step, one cycle each: ``(name, shape, function of the previous step's
        register -> value)``; the last one is the result."""
        raise NotImplementedError

    def _seed_bits(self) -> int:
        """Width of every seed the table can give for a normalised mantissa: the used table
        entries (index at least :meth:`_first_index`) are all below ``2^bits``."""
        table = self._table()
        return max(int(v) for v in table[self._first_index():]).bit_length()

    def _first_index(self) -> int:
        return 0

    def elaborate(self, platform) -> Module:
        m = Module()
        bits, y_bits = self.lut_bits, self._result_frac_bits
        # The seed table over the two cycles READ and SEED: 64-entry parts (a LUT6 per bit) read
        # at the index's low bits, then the part its high bits choose. One table of 2^bits
        # entries read in one cycle was a mux tree that abc chained to four LUT levels.
        part_bits = min(bits, 6)
        values = [int(v) for v in self._table()]
        parts = []
        for part in range(1 << (bits - part_bits)):
            table = Memory(shape=unsigned(y_bits + 1), depth=1 << part_bits,
                           init=values[part << part_bits:(part + 1) << part_bits])
            m.submodules[f"table_{part}"] = table
            parts.append(table.read_port())
        chosen_part = Signal(bits - part_bits, reset_less=True)
        frac = self._frac_bits()
        value = Signal(self.value_bits, reset_less=True)
        log2 = Signal(range(max(self.value_bits, 2)), reset_less=True)
        norm_exponent = Signal(range(self.value_bits + 2), reset_less=True)
        right, left = Signal(SHIFT_BITS, reset_less=True), Signal(SHIFT_BITS, reset_less=True)
        use_right = Signal(reset_less=True)
        base, bit = Signal(self._mantissa_bits, reset_less=True), Signal(reset_less=True)
        doubled = Signal(self.value_bits + 1, reset_less=True)   # (value << 1) >> shift: its bit 0 rounds
        # value shifted by the amounts' multiples of 8 (wide enough for the mantissa's bits),
        # right and left each in a register of its own: SHIFT chooses (no mux after the shifters)
        coarse_right = Signal(max(self.value_bits, self._mantissa_bits), reset_less=True)
        coarse_left = Signal(max(self.value_bits, self._mantissa_bits), reset_less=True)
        mantissa = Signal(self._mantissa_bits, reset_less=True)
        index = Signal(bits, reset_less=True)
        seed = Signal(self._seed_bits(), reset_less=True)
        # the leading one in two cycles: per byte its leading one and whether it has one
        # (LOG2_BYTES), then the highest byte's (LOG2): each a priority encoder of 8 or fewer
        chunks = [value[i:i + 8] for i in range(0, len(value), 8)]
        chunk_any = Signal(len(chunks), reset_less=True)
        chunk_one = [Signal(3, name=f"log2_byte_{i}", reset_less=True) for i in range(len(chunks))]
        byte_ones = [leading_one(m, c, f"log2_byte_{i}_one") for i, c in enumerate(chunks)]
        leading = Signal(range(max(self.value_bits, 2)))
        for i in range(len(chunks)):
            with m.If(chunk_any[i]):
                m.d.comb += leading.eq(8 * i + chunk_one[i])   # later (higher) bytes take priority
        result_exponent, normalise_exponent = self._log2(leading)
        raw_index = self._index(mantissa)
        for port in parts:
            m.d.comb += port.addr.eq(index[:part_bits])
        steps = self._newton(mantissa, seed)
        # The states follow each other in a fixed order, so they are one-hot flags in a shift
        # register (``phase[k]``: the k-th state after IDLE, the last DONE): every state's
        # register enables and ``done`` are flip-flops, where a binary-encoded FSM put a
        # state decode (several LUT levels) in front of every register of the unit.
        states = ["LOG2_BYTES", "LOG2", "AMOUNT", "COARSE", "SHIFT", "ROUND", "INDEX", "READ", "SEED",
                  *(f"NEWTON_{step}" for step in range(len(steps))), "DONE"]
        assert len(states) == self.LATENCY
        phase = Signal(len(states), name="phase")
        state = {name: phase[k] for k, name in enumerate(states)}
        idle = Signal(init=1, name="idle")
        busy = Signal(name="busy_flag")
        accept = Signal()
        m.d.comb += [accept.eq(idle & self.start), self.busy.eq(busy), self.done.eq(state["DONE"])]
        m.d.sync += phase.eq(Cat(accept, phase[:-1]))
        with m.If(accept):
            m.d.sync += [value.eq(self.value), idle.eq(0), busy.eq(1)]
        with m.If(phase[-2]):              # the last Newton step: not busy in DONE
            m.d.sync += busy.eq(0)
        with m.If(state["DONE"]):
            m.d.sync += idle.eq(1)
        with m.If(state["LOG2_BYTES"]):
            m.d.sync += [chunk_any.eq(Cat(*(c.any() for c in chunks))),
                         *(one.eq(byte_one) for one, byte_one in zip(chunk_one, byte_ones))]
        with m.If(state["LOG2"]):          # priority encoder
            m.d.sync += [self.exponent.eq(result_exponent), norm_exponent.eq(normalise_exponent)]
        with m.If(state["AMOUNT"]):        # shift amounts of value * 2^(frac - exponent)
            m.d.sync += [use_right.eq(norm_exponent >= frac), right.eq((norm_exponent - frac)[:SHIFT_BITS]),
                         left.eq((frac - norm_exponent)[:SHIFT_BITS])]
        with m.If(state["COARSE"]):        # shifts by the amounts' multiples of 8
            m.d.sync += [coarse_right.eq(value >> Cat(Const(0, 3), right[3:])),
                         coarse_left.eq(value << Cat(Const(0, 3), left[3:])),
                         doubled.eq((value << 1) >> Cat(Const(0, 3), right[3:]))]   # used under use_right
        with m.If(state["SHIFT"]):         # the rest (right shifts round in the next state)
            m.d.sync += [base.eq(Mux(use_right, coarse_right >> right[:3],
                                     (coarse_left << left[:3])[:self._mantissa_bits])),
                         bit.eq(use_right & (doubled >> right[:3])[0])]
        with m.If(state["ROUND"]):
            m.d.sync += mantissa.eq(base + bit)
        with m.If(state["INDEX"]):         # table index from the mantissa's top bits
            m.d.sync += index.eq(Mux(raw_index > (1 << bits) - 1, (1 << bits) - 1, raw_index))
        with m.If(state["READ"]):          # the parts' synchronous reads
            m.d.sync += chosen_part.eq(index[part_bits:])
        with m.If(state["SEED"]):
            m.d.sync += seed.eq(Cat(*(port.data for port in parts)).word_select(chosen_part, y_bits + 1)
                                if len(parts) > 1 else parts[0].data)
        previous = None
        for step, (name, shape, function) in enumerate(steps):   # one multiply, add or subtract each
            reg = self.result if step == len(steps) - 1 else Signal(shape, name=f"newton_{name}", reset_less=True)
            with m.If(state[f"NEWTON_{step}"]):
                m.d.sync += reg.eq(function(previous))
            previous = reg
        return m


#: Cycles of :class:`_NewtonUnit` from ``start`` to the first Newton step's state.
_SETUP_CYCLES = 10


def _rounded_product_bits(a_bits: int, b_max: int, shift: int) -> int:
    """Width of ``round_shift(a * b, shift)`` for ``a < 2^a_bits``, ``b <= b_max``."""
    return ((((1 << a_bits) - 1) * b_max + (1 << (shift - 1))) >> shift).bit_length()


class Reciprocal(_NewtonUnit):
    """``result ~ 2^(RECIP_FRAC_BITS + exponent) / value``: table seed + one Newton step.

    ``exponent = floor(log2 value)``, ``m = value / 2^exponent`` in Q1.RECIP_MANTISSA_FRAC_BITS,
    ``y = y0 (2 - m y0)``. Bit-exact to :func:`vitaccel.sim.golden.nonlinear.reciprocal`. One
    per row is enough: the result is broadcast to every lane.
    """

    _mantissa_bits = RECIP_MANTISSA_FRAC_BITS + 2
    _result_frac_bits = RECIP_FRAC_BITS
    #: m y0, its rounding, the error, y0 x error, its rounding.
    LATENCY = _SETUP_CYCLES + 5

    def _table(self):
        return reciprocal_table(self.lut_bits)

    def _frac_bits(self):
        return RECIP_MANTISSA_FRAC_BITS

    def _log2(self, k):
        return k, k

    def _index(self, mantissa):
        return (mantissa >> (RECIP_MANTISSA_FRAC_BITS - self.lut_bits)) - (1 << self.lut_bits)

    def _newton(self, mantissa, seed):
        y_bits, mb = RECIP_FRAC_BITS, RECIP_MANTISSA_FRAC_BITS
        error = signed(y_bits + 4)
        return [
            ("product", len(mantissa) + len(seed), lambda _: mantissa * seed),
            ("rounded", len(mantissa) + len(seed), lambda p: round_shift(p, mb)),
            ("error", error, lambda r: (1 << (y_bits + 1)) - r),
            ("refined", signed(len(seed) + error.width + 1), lambda e: seed * e),
            ("result", None, lambda p: round_shift(p, y_bits)),
        ]


class InvSqrt(_NewtonUnit):
    """``result ~ 2^(RSQRT_FRAC_BITS + exponent) / sqrt(value)``: table seed + one Newton step.

    ``exponent = floor(log2 value) // 2``, ``m = value / 4^exponent`` in
    Q2.RSQRT_MANTISSA_FRAC_BITS, ``y = y0 (3 - m y0^2) / 2``. Bit-exact to
    :func:`vitaccel.sim.golden.nonlinear.inv_sqrt`.
    """

    _mantissa_bits = RSQRT_MANTISSA_FRAC_BITS + 3
    _result_frac_bits = RSQRT_FRAC_BITS
    #: y0^2, its rounding, m y0^2, its rounding, the error, y0 x error, its rounding.
    LATENCY = _SETUP_CYCLES + 7

    def _table(self):
        return rsqrt_table(self.lut_bits)

    def _first_index(self):
        return (1 << self.lut_bits) >> 2   # m >= 1 in Q2: the first quarter of the table is unused

    def _frac_bits(self):
        return RSQRT_MANTISSA_FRAC_BITS

    def _log2(self, k):
        half_k = k >> 1
        return half_k, Cat(Const(0, 1), half_k)

    def _index(self, mantissa):
        return mantissa >> (RSQRT_MANTISSA_FRAC_BITS + 2 - self.lut_bits)

    def _newton(self, mantissa, seed):
        y_bits, mb = RSQRT_FRAC_BITS, RSQRT_MANTISSA_FRAC_BITS
        seed_max = (1 << len(seed)) - 1
        # y0^2 rounded: narrower than y0 + 2 bits for the seeds the table gives, so that
        # m x y0^2 is one DSP48E2 (checked in tests/hw/test_nonlinear.py)
        square_bits = _rounded_product_bits(len(seed), seed_max, y_bits)
        error = signed(y_bits + 4)
        return [
            ("square", 2 * len(seed), lambda _: seed * seed),
            ("square_rounded", square_bits, lambda p: round_shift(p, y_bits)),
            ("product", len(mantissa) + square_bits, lambda s: mantissa * s),
            ("rounded", len(mantissa) + square_bits, lambda p: round_shift(p, mb)),
            ("error", error, lambda r: 3 * (1 << y_bits) - r),
            ("refined", signed(len(seed) + error.width + 1), lambda e: seed * e),
            ("result", None, lambda p: round_shift(p, y_bits + 1)),
        ]
