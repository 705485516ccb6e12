"""Post-processing of accumulator rows: bias, requantization, residual, saturation."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import AccelConfig
from ..spec.matrix import BIAS_BITS
from .layouts import EngineLayouts
from .pipeline import register
from .row_queue import RowQueue

__all__ = ["PostProcessor"]

#: The multiplier's low part (DSP48E2 B port: 18 signed bits hold 17 unsigned).
_MULT_LOW_BITS = 17
#: The biased value's low part (DSP48E2 A port: 27 signed bits hold 26 unsigned).
_BIASED_LOW_BITS = 26


class PostProcessor(wiring.Component):
    """``sat(requantize(sat32(acc + bias)) + residual)`` for rows of ``tile_cols``, pipelined.

    Matches ``sim.golden.gemm.linear`` bit for bit: rounding is the spec's round half up
    (``(x + 2^(shift-1)) >> shift``, arithmetic), saturation the spec's clamp.

    A row enters with its parameters when ``enter`` is high (only while ``ready``) and leaves
    :attr:`LATENCY` cycles later at the earliest through ``output`` (a stream; ``output_acc``
    holds the row's raw accumulators while ``output`` is valid). The residual (a stream,
    used when ``residual_enable``) joins in the last cycle, so that a residual row is taken
    as soon as it is offered. The stages, each at most one carry chain or one multiply so
    that the ``zcu102`` clock closes (docs/timing.md):

    1. the entry registers; 2. ``acc + bias``; 3. its saturation to 32 bits;
    4. the product ``biased * multiplier`` as four DSP48E2 partial products (``biased``
       split at bit 26, ``multiplier`` at bit 17), each into a register;
    5.-6. their sum in two levels;
    7.-8. the rounding shift ``(product << 1) >> shift`` by the shift's multiple of 8, then
       the rest (as hw/nonlinear's ``pipelined_round_shift``): ``t >> 1`` is the floor,
       ``t[0]`` the rounding bit;
    9. the saturation's range tests on the floor ``v`` (wide OR/AND trees);
    10. the int8 result: 127 if ``v >= 127``, -128 if ``v < -128``, else ``v + t[0]``
        (which is then in range, so no 64-bit rounding add is needed);
    11. the output register, with the residual added and saturated.

    The stages never stall: a row enters only while fewer than :attr:`DEPTH` rows are in
    the pipeline or the queue (a credit count) that stage 10 writes into and ``output``
    takes from (:class:`RowQueue`), so no enable fans out to every register.
    """

    #: Cycles from a row's ``enter`` to the earliest cycle it can be taken into ``output``
    #: (it is valid there one cycle later): stages 1-9, the queue's write (stage 10's
    #: register) and its registered read.
    LATENCY = 11
    #: Rows in the pipeline and its queue at most (``ready`` low when there are this many;
    #: a taken row's credit returns two cycles later): enough for one row per cycle.
    DEPTH = LATENCY + 3

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        self.config = config
        layouts = EngineLayouts(config)
        acc_row = layouts.accumulators.elem_shape
        super().__init__({
            "acc": In(acc_row), "params": In(layouts.params), "enter": In(1), "ready": Out(1),
            "residual": In(stream.Signature(layouts.out_row)), "residual_enable": In(1),
            "output": Out(stream.Signature(layouts.out_row)), "output_acc": Out(acc_row),
            "busy": Out(1),
        })

    def _requantized(self, m: Module, col: int):
        """Stages 1-10 of column ``col``: the saturated int8 requantized value, as the
        logic of stage 10 (the queue's write is its register)."""
        out_bits = self.config.operand_width
        p = self.params[col]

        def stage(value, name, shape=None, *, keep=False):
            return register(m, value, f"{name}_{col}", shape, keep=keep)

        acc, bias = stage(self.acc[col], "acc_in"), stage(p.bias, "bias_in")
        multiplier = [stage(p.multiplier, "mult_in")]
        shift = [stage(p.shift, "shift_in")]

        def carry(*, with_multiplier: bool = False) -> None:   # parameters beside the data
            if with_multiplier:
                multiplier.append(stage(multiplier[-1], f"mult_d{len(multiplier)}", keep=True))
            shift.append(stage(shift[-1], f"shift_d{len(shift)}"))

        total = stage(acc + bias, "biased_sum", signed(BIAS_BITS + 1))
        carry(with_multiplier=True)
        overflow = total[BIAS_BITS] ^ total[BIAS_BITS - 1]
        limit = Mux(total[BIAS_BITS], Const(-(1 << (BIAS_BITS - 1)), signed(BIAS_BITS)),
                    Const((1 << (BIAS_BITS - 1)) - 1, signed(BIAS_BITS)))
        biased = stage(Mux(overflow, limit, total[:BIAS_BITS].as_signed()), "biased", signed(BIAS_BITS), keep=True)
        carry(with_multiplier=True)
        # Four partial products, each a DSP48E2 multiply into a register.
        mult = multiplier[-1]
        b_lo, b_hi = biased[:_BIASED_LOW_BITS], biased[_BIASED_LOW_BITS:].as_signed()
        m_lo, m_hi = mult[:_MULT_LOW_BITS], mult[_MULT_LOW_BITS:]
        pp_ll, pp_lh = stage(b_lo * m_lo, "pp_ll", keep=True), stage(b_lo * m_hi, "pp_lh", keep=True)
        pp_hl, pp_hh = stage(b_hi * m_lo, "pp_hl", keep=True), stage(b_hi * m_hi, "pp_hh", keep=True)
        carry()
        # The low bits below each shifted term pass through: each carry chain spans the overlap.
        low = stage(Cat(pp_ll[:_MULT_LOW_BITS], pp_ll[_MULT_LOW_BITS:] + pp_lh), "product_low")
        high = stage(Cat(pp_hl[:_MULT_LOW_BITS], (pp_hl[_MULT_LOW_BITS:].as_signed() + pp_hh)).as_signed(),
                     "product_high")
        carry()
        product = stage(Cat(low[:_BIASED_LOW_BITS], low[_BIASED_LOW_BITS:] + high).as_signed(), "product",
                        signed(BIAS_BITS + len(mult) + 1))
        carry()
        amount = shift[-1]
        doubled = product << 1
        coarse = stage(doubled >> Cat(Const(0, 3), amount[3:]), "coarse", doubled.shape())
        fine_amount = stage(amount[:3], "fine_amount")
        t = stage(coarse >> fine_amount, "fine", doubled.shape())
        floor, round_bit = t[1:].as_signed(), t[0]
        hi_bits = floor[out_bits - 1:-1]            # the bits whose value the int8 range cannot hold
        negative = stage(floor[-1], "negative")
        any_high = stage(hi_bits.any(), "any_high")
        all_high = stage(hi_bits.all(), "all_high")
        low_max = stage(floor[:out_bits - 1].all(), "low_max")
        low_byte = stage(floor[:out_bits], "low_byte")
        rounding = stage(round_bit, "rounding")
        lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
        at_or_above_max = ~negative & (any_high | low_max)      # floor >= 127
        below_min = negative & ~all_high                         # floor < -128
        in_range = low_byte.as_signed() + rounding               # floor in [-128, 126]: no overflow
        requantized = Signal(signed(out_bits), name=f"requantized_{col}")
        m.d.comb += requantized.eq(Mux(at_or_above_max, hi, Mux(below_min, lo, in_range)))
        return requantized

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        out_bits, cols = cfg.operand_width, cfg.tile_cols
        # The stages run freely (no stall: an enable would fan out to every register); a row
        # enters only with a credit, so the queue behind them always has room for it.
        valid = [Signal(name=f"stage{index}_valid") for index in range(self.LATENCY - 2)]
        m.d.sync += [valid[0].eq(self.enter), *(valid[i].eq(valid[i - 1]) for i in range(1, len(valid)))]
        raw = self.acc.as_value()
        for index in range(len(valid)):
            raw = register(m, raw, f"acc_raw_d{index}")
        m.submodules.queue = queue = RowQueue(width=cols * out_bits + len(raw), depth=1 << (self.DEPTH - 1).bit_length())
        m.d.comb += [queue.w_en.eq(valid[-1]),
                     queue.w_data.eq(Cat(*(self._requantized(m, col) for col in range(cols)), raw))]

        in_flight = Signal(range(self.DEPTH + 1))
        take = Signal()
        m.d.comb += [
            take.eq(queue.r_rdy & (~self.residual_enable | self.residual.valid)
                    & (~self.output.valid | self.output.ready)),
            queue.r_en.eq(take),
            self.ready.eq(in_flight != self.DEPTH),
            self.residual.ready.eq(take & self.residual_enable),
            self.busy.eq((in_flight != 0) | self.output.valid),   # output.valid covers a late credit
        ]
        # A taken row's credit returns a cycle late: the count's adder does not wait for take.
        taken = Signal()
        m.d.sync += [taken.eq(take), in_flight.eq(in_flight + self.enter - taken)]
        with m.If(take):
            m.d.sync += [self.output.valid.eq(1), self.output_acc.eq(queue.r_data[cols * out_bits:])]
        with m.Elif(self.output.ready):
            m.d.sync += self.output.valid.eq(0)
        for col in range(cols):
            requantized = queue.r_data.word_select(col, out_bits).as_signed()
            total = Signal(signed(out_bits + 1), name=f"with_residual_{col}")
            m.d.comb += total.eq(Mux(self.residual_enable, requantized + self.residual.payload[col], requantized))
            # Saturation from the sum's two top bits (they differ exactly on an overflow).
            clamped = Mux(total[-1], -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1)
            with m.If(take):
                m.d.sync += self.output.payload[col].eq(Mux(total[-1] ^ total[-2], clamped, total[:out_bits]))
        return m
