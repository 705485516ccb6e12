"""Streaming softmax, GELU (int8 table, int16 polynomial) and LayerNorm units, bit-exact to
:mod:`vitaccel.sim.golden.nonlinear`.

All take ``config.vector_lanes`` elements per beat on an ``amaranth.lib.stream`` input
and produce as many on a stream output; either side may stall at any cycle. The GELUs are
pure pipelines (one beat per cycle). Softmax and LayerNorm need whole-row statistics before
the first output, so they buffer rows in memories of ``ROW_SLOTS`` rows and run their passes
as concurrent stages on consecutive rows (softmax: load + max | exp + sum | reciprocal |
broadcast multiply; LayerNorm: load + sums | inverse square root | normalise). Each stage
moves one beat per cycle, so back-to-back rows keep one element per lane per cycle, plus a
few cycles per row to hand a row from stage to stage.

Run-time settings (``length``, scale fields, tables) may change only while ``busy`` is low.
Lanes past ``length`` in the last beat of a row are ignored on input and output 0.
"""

from __future__ import annotations

import math

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.luts import EXP_VALUE_BITS, RECIP_FRAC_BITS, RSQRT_FRAC_BITS
from vitaccel.hw.spec.nonlinear import (GELU_INT16_CONST_BITS, GELU_INT16_MULT_BITS,
                                        LAYERNORM_BETA_BITS, LAYERNORM_EPS_BITS,
                                        LAYERNORM_GAMMA_BITS, LAYERNORM_MAX_CHANNELS,
                                        LAYERNORM_NORM_FRAC_BITS, SOFTMAX_DIFF_BITS,
                                        SOFTMAX_MULT_BITS, SOFTMAX_OUTPUT_BITS)

from .arith import (DSP_B_UNSIGNED_BITS, SHIFT_BITS, ExpStage, InvSqrt, Reciprocal, pipelined_round_shift,
                    register, round_shift, saturate)

__all__ = ["Softmax", "Gelu", "GeluInt16", "LayerNorm", "softmax_input_layout", "ROW_SLOTS"]


def _check_config(config: AccelConfig, flag: str) -> None:
    if not isinstance(config, AccelConfig):
        raise TypeError(f"config: must be an AccelConfig, got {type(config).__name__}")
    if not getattr(config, flag):
        raise ValueError(f"config {config.name!r} has {flag}=False: the unit is not part of it")


def softmax_input_layout(lanes: int) -> data.StructLayout:
    """One softmax input beat: ``lanes`` int32 scores and a bit per lane (1 = takes part)."""
    return data.StructLayout({"scores": data.ArrayLayout(signed(32), lanes), "mask": unsigned(lanes)})


def _last_beat(m: Module, length, lanes: int) -> Signal:
    """A register holding ``ceil(length / lanes) - 1``, the index of a row's last beat, for a
    power-of-two lane count: the run-time ``length`` then feeds no compare in the same cycle.
    It and the beat counters' registered ``last`` flags follow ``length`` two cycles late, so
    ``length`` must settle two cycles before a row's first beat (``_started`` gives that after
    reset; the accelerator's controllers set it several cycles ahead)."""
    last = Signal(range(max(2, -(-(1 << len(length)) // lanes))), name="last_beat")
    m.d.sync += last.eq((length - 1) >> int(math.log2(lanes)))
    return last


class _Tag:
    """What one pipeline stage holds: a beat (``valid``) of row slot ``slot``, beat ``beat``,
    ``last`` if it is the row's last (decided when the beat is read, so that no stage compares)."""

    def __init__(self, name: str, depth: int) -> None:
        self.valid = Signal(name=f"{name}_valid")
        self.slot = Signal(range(ROW_SLOTS), name=f"{name}_slot")
        self.beat = Signal(range(max(depth, 2)), name=f"{name}_beat")
        self.last = Signal(name=f"{name}_last")

    def eq(self, other: "_Tag") -> list:
        return [self.valid.eq(other.valid), self.slot.eq(other.slot), self.beat.eq(other.beat),
                self.last.eq(other.last)]


def _tags(name: str, count: int, depth: int) -> list[_Tag]:
    return [_Tag(f"{name}_{stage}", depth) for stage in range(count)]


def _delay(m: Module, value, cycles: int, name: str, enable=None, *, keep: bool | str = False):
    """``value`` ``cycles`` cycles later through reset-less registers (advancing on ``enable``).

    ``keep`` gives the registers a reset, so that they stay flip-flops: yosys folds a chain of
    reset-less copies into an SRL16E, whose clock-to-out (0.72 ns in docs/timing.md's model)
    is too slow in front of a value broadcast to every lane. ``keep="last"``: only the last
    register (for a wide value in front of a carry chain, where an SRL16E before it is fine)."""
    for stage in range(cycles):
        kept = keep is True or (keep == "last" and stage == cycles - 1)
        reg = Signal.like(value, name=f"{name}_{stage}", reset_less=not kept) if isinstance(value, Signal) \
            else Signal(Value.cast(value).shape(), name=f"{name}_{stage}", reset_less=not kept)
        statement = reg.eq(value)
        if enable is None:
            m.d.sync += statement
        else:
            with m.If(enable):
                m.d.sync += statement
        value = reg
    return value


def _sum_tree(m: Module, values: list, name: str, combine=None) -> tuple:
    """A pipelined reduction of ``values``: one level of pairs (``combine``, default ``+``) per
    cycle. Returns ``(result register, levels)``; no stall (the stages using it never stall)."""
    combine = combine or (lambda a, b: a + b)
    level, levels = list(values), 0
    while len(level) > 1:
        pairs = [level[i:i + 2] for i in range(0, len(level), 2)]
        level = [register(m, combine(*pair) if len(pair) == 2 else pair[0], f"{name}_{levels}_{i}")
                 for i, pair in enumerate(pairs)]
        levels += 1
    return level[0], levels


class _RowCount:
    """Rows between two hand-over events (``add``, ``remove``: comb strobes, one row each).

    Every stage takes rows in slot order, so "the next slot is ready" is "the count is not
    zero" and "the next slot is free" is "the count is below ``ROW_SLOTS``": :attr:`any` and
    :attr:`room` are registered, so no slot lookup sits in a handshake path.
    """

    def __init__(self, m: Module, name: str) -> None:
        self.add, self.remove = Signal(name=f"{name}_add"), Signal(name=f"{name}_remove")
        self.count = count = Signal(range(ROW_SLOTS + 1), name=f"{name}_count")
        self.any, self.room = Signal(name=f"{name}_any"), Signal(name=f"{name}_room", init=1)
        # the strobes only choose between values of registers (no adder after them)
        with m.If(self.add & ~self.remove):
            m.d.sync += [count.eq(count + 1), self.any.eq(1), self.room.eq(count < ROW_SLOTS - 1)]
        with m.Elif(self.remove & ~self.add):
            m.d.sync += [count.eq(count - 1), self.any.eq(count > 1), self.room.eq(1)]


class _BeatCounter:
    """The beat index within a row, stepped by the comb strobe ``step`` and back to 0 after
    the row's last beat; :attr:`last` (index == ``last_beat``) is registered.

    ``step`` is only a clock enable (the next values come from registers alone), so a late
    ``step`` (the OUT pipeline's ``advance`` reaches every stage register) adds one LUT at
    most. ``last`` follows from a down counter of the beats after this one (``remaining``)
    compared with constants (one LUT each), not from an equality of the index with a
    register (a chain of LUTs after abc's area recovery). Between rows (index 0, no step)
    both re-read ``last_beat``, which may change only then.
    """

    def __init__(self, m: Module, name: str, last_beat: Signal, depth: int) -> None:
        self.step = Signal(name=f"{name}_step")
        self.value = Signal(range(max(depth, 2)), name=name)
        self.last = Signal(name=f"{name}_last")
        remaining = Signal(range(max(depth, 2)), name=f"{name}_remaining")   # last_beat - value
        at_start = Signal(init=1, name=f"{name}_at_start")                   # value == 0
        with m.If(self.step):
            m.d.sync += [self.value.eq(Mux(self.last, 0, self.value + 1)),
                         remaining.eq(Mux(self.last, last_beat, remaining - 1)),
                         self.last.eq(Mux(self.last, last_beat == 0, remaining == 1)),
                         at_start.eq(self.last)]
        with m.Elif(at_start):
            m.d.sync += [remaining.eq(last_beat), self.last.eq(last_beat == 0)]


class _OutPipeline:
    """The OUT stage of a row unit: read the beats of the rows ``rows`` counts (ready, not yet
    read) through synchronous ``ports`` into ``stages`` pipeline stages that advance together,
    then a skid register before ``out`` (the stream may stall at any cycle; no beat is lost
    or repeated).

    ``tags[0]`` describes the ports' data, ``tags[k]`` the registers the unit fills under
    ``m.If(advance)`` (:meth:`stage`) from stage ``k - 1``, and the last one :attr:`payload`.
    Reads run ahead into the next ready row while a row drains, so rows follow each other
    without a bubble. ``release`` strobes when a row's last beat leaves (its slot is free).

    ``advance`` is a register (``~skid_valid``), not ``~out.valid | out.ready``: it reaches
    every stage register (thousands of clock enables at 16 lanes), so ``out.ready`` must not
    be in front of it. When ``out`` stalls, the pipeline moves once more and the last stage's
    beat waits in the skid register (shown first), then the pipeline holds until it leaves.
    ``out`` sees the beats exactly when it would without the skid register.
    """

    def __init__(self, m: Module, *, ports, rows: _RowCount, base, last_beat, depth: int,
                 out: stream.Interface, stages: int, name: str) -> None:
        self.advance = advance = Signal(name=f"{name}_advance")
        self.tags = tags = _tags(f"{name}_tag", stages, depth)
        #: The last stage's beat (what the unit computes); ``out.payload`` shows it or the skid's.
        self.payload = payload = Signal(out.payload.shape(), name=f"{name}_payload")
        skid_valid, skid_last = Signal(name=f"{name}_skid_valid"), Signal(name=f"{name}_skid_last")
        skid = Signal(out.payload.shape(), name=f"{name}_skid", reset_less=True)
        read_slot = _slot_signal(f"{name}_read_slot")
        pointer = _BeatCounter(m, f"{name}_pointer", last_beat, depth)
        issue = rows.any
        m.d.comb += [advance.eq(~skid_valid), out.valid.eq(skid_valid | tags[-1].valid),
                     out.payload.eq(Mux(skid_valid, skid.as_value(), payload.as_value())),
                     pointer.step.eq(advance & issue), rows.remove.eq(advance & issue & pointer.last)]
        with m.If(~skid_valid & tags[-1].valid & ~out.ready):
            m.d.sync += [skid_valid.eq(1), skid.eq(payload), skid_last.eq(tags[-1].last)]
        with m.If(skid_valid & out.ready):
            m.d.sync += skid_valid.eq(0)
        for port in ports:
            m.d.comb += [port.addr.eq(base(read_slot) + pointer.value), port.en.eq(advance)]
        with m.If(advance):
            m.d.sync += [tags[0].valid.eq(issue), tags[0].slot.eq(read_slot), tags[0].beat.eq(pointer.value),
                         tags[0].last.eq(pointer.last)]
            for stage in range(1, stages):
                m.d.sync += tags[stage].eq(tags[stage - 1])
        with m.If(rows.remove):
            m.d.sync += read_slot.eq(_next_slot(read_slot))
        self.release = Signal(name=f"{name}_release")
        m.d.comb += self.release.eq(out.valid & out.ready & Mux(skid_valid, skid_last, tags[-1].last))
        self.busy = Cat(*(tag.valid for tag in tags)).any() | (pointer.value != 0) | skid_valid

    def stage(self, m: Module, value, name: str, shape=None) -> Signal:
        """A register of the pipeline loaded with ``value`` when it advances."""
        value = Value.cast(value)
        reg = Signal(shape if shape is not None else value.shape(), name=name, reset_less=True)
        with m.If(self.advance):
            m.d.sync += reg.eq(value)
        return reg


#: Rows a unit holds at once. With two, a row would hold its buffer through two stages plus
#: the hand-over, which costs more than one stage time per row; three keep every stage busy.
ROW_SLOTS = 3


def _last_lanes(m: Module, length, lanes: int) -> Signal:
    """A register with bit ``lane`` set if lane ``lane`` of a row's last beat lies inside the
    row: lane ``i`` of beat ``b`` is inside iff ``b`` is not the last beat or this bit is set,
    a LUT on registers instead of a compare with ``length`` (which settles as for
    :func:`_last_beat`)."""
    mask = Signal(lanes, name="last_lanes", init=1)
    if lanes > 1:
        # lane < ((length - 1) mod lanes) + 1, on the low bits of length - 1 only
        low = Signal(int(math.log2(lanes)), name="last_lanes_low")
        m.d.comb += low.eq(length - 1)
        # lane 0 is always inside (``low >= 0`` would be a constant compare: a lint warning)
        m.d.sync += mask.eq(Cat(Const(1, 1), *(low >= lane for lane in range(1, lanes))))
    else:
        m.d.sync += mask.eq(1)
    return mask


def _started(m: Module) -> Signal:
    """Low for the first two cycles after reset (see :func:`_last_beat`)."""
    first, started = Signal(), Signal()
    m.d.sync += [first.eq(1), started.eq(first)]
    return started


def _slot_signal(name: str) -> Signal:
    return Signal(range(ROW_SLOTS), name=name)


def _next_slot(slot: Signal):
    return Mux(slot == ROW_SLOTS - 1, 0, slot + 1)


class _Slots:
    """One register per row slot: read with ``regs[slot]``, written with
    ``regs.set(m, slot, value)`` in the current ``m.If`` context.

    Reads are a chain of two-way ``Mux``es rather than an ``Array``: Icarus leaves the
    ``always @*`` block of an ``Array`` read X until its select first changes.
    """

    def __init__(self, name: str, shape=1) -> None:
        self.regs = [Signal(shape, name=f"{name}_{slot}") for slot in range(ROW_SLOTS)]

    def __getitem__(self, slot):
        value = self.regs[0]
        for index in range(1, ROW_SLOTS):
            value = Mux(slot == index, self.regs[index], value)
        return value

    def set(self, m: Module, slot, value) -> None:
        for index in range(ROW_SLOTS):
            with m.If(slot == index):
                m.d.sync += self.regs[index].eq(value)

    def any(self):
        return Cat(*self.regs).any()


class Softmax(wiring.Component):
    """Row softmax of int32 scores into uint8 probabilities (scale 1/256).

    Three stages work on different rows at once, handing rows over through row-slot
    memories (``ROW_SLOTS`` rows each): LOAD (store the row, running max), EXP (exp of each difference to the max, row
    sum), and OUT (broadcast-multiply by the row's reciprocal, which a fourth stage computes
    from the sum by table + Newton while EXP starts the next row). Each stage moves one beat
    per cycle, so back-to-back rows stream at one element per lane per cycle plus a few
    cycles per row.

    Parameters
    ----------
    config : AccelConfig
        ``vector_lanes`` (lanes), ``max_tokens`` (longest row), ``exp_lut_bits``,
        ``recip_lut_bits``.

    Ports
    -----
    i : stream of :func:`softmax_input_layout` beats
    o : stream of ``lanes`` uint8 probabilities
    length : row length, 1..max_tokens
    multiplier, shift : ``SoftmaxParams`` fields
    busy : a row is in flight (change ``length``/``multiplier``/``shift`` only when low)
    """

    def __init__(self, *, config: AccelConfig) -> None:
        _check_config(config, "has_softmax")
        self.config = config
        self.lanes = config.vector_lanes
        self.depth = -(-config.max_tokens // self.lanes)
        super().__init__({
            "i": In(stream.Signature(softmax_input_layout(self.lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(unsigned(SOFTMAX_OUTPUT_BITS), self.lanes))),
            "length": In(range(config.max_tokens + 1)),
            "multiplier": In(SOFTMAX_MULT_BITS),
            "shift": In(SHIFT_BITS),
            "busy": Out(1),
        })

    #: OUT pipeline stages after the exp read: operands; e / sum; rounding shift (three);
    #: saturation flags; output register.
    OUT_STAGES = 8
    #: EXP stages before the ExpStage: the score read, its register, max - score, the clamp.
    EXP_INPUT_STAGES = 3
    #: LOAD pipeline before the compare tree: the masked candidates.
    LOAD_STAGES = 1

    def elaborate(self, platform) -> Module:
        m = Module()
        lanes, depth, config = self.lanes, self.depth, self.config
        sum_bits = EXP_VALUE_BITS + math.ceil(math.log2(config.max_tokens)) + 1
        m.submodules.scores = scores = Memory(shape=softmax_input_layout(lanes), depth=ROW_SLOTS * depth, init=[])
        m.submodules.exps = exps = Memory(shape=data.ArrayLayout(unsigned(EXP_VALUE_BITS), lanes),
                                          depth=ROW_SLOTS * depth, init=[])
        m.submodules.exp = exp = ExpStage(lanes=lanes, exp_lut_bits=config.exp_lut_bits)
        m.submodules.recip = recip = Reciprocal(value_bits=sum_bits, lut_bits=config.recip_lut_bits)
        score_write, score_read = scores.write_port(), scores.read_port()
        exp_write, exp_read = exps.write_port(), exps.read_port()
        last_beat = _last_beat(m, self.length, lanes)

        def base(slot):
            return slot * depth

        # hand-over state (row counts, rows go through in slot order): scores held (last beat
        # in .. EXP done) / max known, EXP not started / exps held (EXP start .. last beat
        # out) / exps ready to output (reciprocal done)
        scores_held, maxed = _RowCount(m, "scores_held"), _RowCount(m, "maxed")
        exps_held, exps_ready = _RowCount(m, "exps_held"), _RowCount(m, "exps_ready")
        row_maxes = _Slots("row_max", signed(32))
        reciprocals = _Slots("reciprocal", RECIP_FRAC_BITS + 2)
        out_shifts = _Slots("out_shift", SHIFT_BITS)
        empty_rows = _Slots("empty_row", 1)

        # -- LOAD: store the row; running max through a pipelined compare tree -----------------
        started = _started(m)
        load_slot = _slot_signal("load_slot")
        load_beat = _BeatCounter(m, "load_beat", last_beat, depth)
        lowest = -(1 << 31)
        accepted = self.i.valid & self.i.ready
        m.d.comb += [self.i.ready.eq(started & scores_held.room), load_beat.step.eq(accepted),
                     scores_held.add.eq(accepted & load_beat.last)]
        last_lanes = _last_lanes(m, self.length, lanes)
        mask = [self.i.payload.mask[lane] & (~load_beat.last | last_lanes[lane]) for lane in range(lanes)]
        m.d.comb += [score_write.addr.eq(base(load_slot) + load_beat.value), score_write.en.eq(accepted),
                     score_write.data.scores.eq(self.i.payload.scores)]
        for lane in range(lanes):
            m.d.comb += score_write.data.mask[lane].eq(mask[lane])
        with m.If(scores_held.add):
            m.d.sync += load_slot.eq(_next_slot(load_slot))
        # a masked lane takes part as the lowest int32, which no max can be below
        candidates = [register(m, Mux(mask[lane], self.i.payload.scores[lane], lowest), f"load_candidate_{lane}")
                      for lane in range(lanes)]
        beat_max, levels = _sum_tree(m, candidates, "load_max", lambda a, b: Mux(b > a, b, a))
        load_valid = _delay(m, accepted, self.LOAD_STAGES + levels, "load_valid")
        load_last = _delay(m, accepted & load_beat.last, self.LOAD_STAGES + levels, "load_last")
        load_tail_slot = _delay(m, load_slot, self.LOAD_STAGES + levels, "load_tail_slot")
        running_max = Signal(signed(32), init=lowest)
        new_max = Mux(beat_max > running_max, beat_max, running_max)
        with m.If(load_valid):
            m.d.sync += running_max.eq(new_max)
            with m.If(load_last):
                m.d.comb += maxed.add.eq(1)
                row_maxes.set(m, load_tail_slot, new_max)
                m.d.sync += running_max.eq(lowest)

        # -- EXP: exp of (max - score), row sum ---------------------------------------------
        # Reads of the next row start while the previous row drains through the pipeline, so
        # every stage carries its own tag (slot, beat). Stages: 0 the score read, 1 its
        # register, 2 max - score, 3 the clamp (into ExpStage), 3 + ExpStage.LATENCY the exps
        # (written back), then the adder tree of the row sum.
        exp_slot = _slot_signal("exp_slot")  # slot being read
        issuing = Signal()
        issue = _BeatCounter(m, "exp_issue", last_beat, depth)
        total = Signal(sum_bits)
        write_stage = self.EXP_INPUT_STAGES + ExpStage.LATENCY
        beat_total, sum_levels = _sum_tree(m, [exp.exp[lane] for lane in range(lanes)], "exp_sum")
        tags = _tags("exp_tag", write_stage + sum_levels + 1, depth)
        m.d.comb += [exp.multiplier.eq(self.multiplier), exp.shift.eq(self.shift),
                     score_read.addr.eq(base(exp_slot) + issue.value), score_read.en.eq(1),
                     issue.step.eq(issuing)]
        m.d.sync += [tags[0].valid.eq(issuing), tags[0].beat.eq(issue.value), tags[0].slot.eq(exp_slot),
                     tags[0].last.eq(issue.last)]
        for stage in range(1, len(tags)):
            m.d.sync += tags[stage].eq(tags[stage - 1])
        row_max = register(m, row_maxes[tags[0].slot], "exp_row_max")
        limit = (1 << SOFTMAX_DIFF_BITS) - 1
        for lane in range(lanes):
            score = register(m, score_read.data.scores[lane], f"exp_score_{lane}")
            valid = _delay(m, score_read.data.mask[lane], 3, f"exp_mask_{lane}")
            diff = register(m, row_max - score, f"exp_diff_{lane}")
            m.d.comb += [exp.diff[lane].eq(register(m, Mux(diff > limit, limit, diff), f"exp_clamped_{lane}",
                                                    SOFTMAX_DIFF_BITS)),
                         exp.valid[lane].eq(valid)]
        with m.If(issuing & issue.last):
            m.d.sync += [issuing.eq(0), exp_slot.eq(_next_slot(exp_slot))]
        writing, write_tag = tags[write_stage].valid, tags[write_stage]
        m.d.comb += [exp_write.addr.eq(base(write_tag.slot) + write_tag.beat), exp_write.en.eq(writing),
                     exp_write.data.eq(exp.exp)]
        tail = tags[-1]
        row_total = total + beat_total
        # -- RECIPROCAL: one per row, overlapping the next row's EXP -------------------------
        recip_pending, recip_slot = Signal(), _slot_signal("recip_slot")
        recip_total = Signal(sum_bits)
        # recip_total == 0 per 6 bits (a LUT each after the row sum's adder), registered with it:
        # the compare over all of it chained into the FSM's hand-over strobes
        recip_zero_parts = Signal(-(-sum_bits // 6), name="recip_zero_parts")
        # A long row (more beats than the reciprocal takes cycles) hands its sum over only
        # after the previous reciprocal is done, so it may start at once; a short row waits
        # until the previous row has drained and its reciprocal is done.
        # registered: a cycle late, but issuing covers the cycle a beat enters the pipeline
        draining = register(m, Cat(issuing, *(tag.valid for tag in tags)).any(), "exp_draining", 1)
        long_row = register(m, last_beat > Reciprocal.LATENCY, "exp_long_row", 1)
        may_start = long_row | (~recip_pending & ~draining)
        start = Signal()
        m.d.comb += [start.eq(~issuing & maxed.any & exps_held.room & may_start),
                     maxed.remove.eq(start), exps_held.add.eq(start)]
        with m.If(start):
            m.d.sync += issuing.eq(1)
        with m.If(tail.valid):
            m.d.sync += total.eq(row_total)
            with m.If(tail.last):
                m.d.comb += scores_held.remove.eq(1)
                m.d.sync += [total.eq(0), recip_pending.eq(1), recip_slot.eq(tail.slot),
                             recip_total.eq(row_total),
                             recip_zero_parts.eq(Cat(*(row_total[i:i + 6] == 0 for i in range(0, sum_bits, 6))))]
        m.d.comb += recip.value.eq(recip_total)
        with m.FSM(name="recip_fsm"):
            with m.State("IDLE"):
                with m.If(recip_pending):
                    with m.If(recip_zero_parts.all()):
                        empty_rows.set(m, recip_slot, 1)
                        m.d.comb += exps_ready.add.eq(1)
                        m.d.sync += recip_pending.eq(0)
                    with m.Else():
                        m.d.comb += recip.start.eq(1)
                        m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(recip.done):
                    reciprocals.set(m, recip_slot, recip.result)
                    empty_rows.set(m, recip_slot, 0)
                    out_shifts.set(m, recip_slot, RECIP_FRAC_BITS - SOFTMAX_OUTPUT_BITS + recip.exponent)
                    m.d.comb += exps_ready.add.eq(1)
                    m.d.sync += recip_pending.eq(0)
                    m.next = "IDLE"

        # -- OUT: broadcast multiply by the reciprocal, one operation per stage ---------------
        out = _OutPipeline(m, ports=[exp_read], rows=exps_ready, base=base, last_beat=last_beat, depth=depth,
                           out=self.o, stages=self.OUT_STAGES, name="out")
        # the release a cycle late: 'advance' shares its logic, and reaches every stage register
        release = Signal(name="out_released")
        m.d.sync += release.eq(out.release)
        m.d.comb += exps_held.remove.eq(release)
        stage, first = out.stage, out.tags[0].slot
        reciprocal = stage(m, reciprocals[first], "out_reciprocal")                          # 1
        out_shift = _delay(m, out_shifts[first], 2, "out_shift", out.advance, keep=True)                 # 1, 2
        empty = _delay(m, empty_rows[first], 6, "out_empty", out.advance, keep=True)                      # 1..6
        for lane in range(lanes):
            value = stage(m, exp_read.data[lane], f"out_exp_{lane}")                          # 1
            product = stage(m, value * reciprocal, f"out_product_{lane}")                      # 2
            scaled = pipelined_round_shift(m, product, out_shift, stage, f"out_scaled_{lane}")  # 3, 4, 5
            high = stage(m, scaled > (1 << SOFTMAX_OUTPUT_BITS) - 1, f"out_high_{lane}")     # 6
            code = stage(m, scaled[:SOFTMAX_OUTPUT_BITS], f"out_code_{lane}")
            with m.If(out.advance):                                                            # 7
                m.d.sync += out.payload[lane].eq(
                    Mux(empty, 0, Mux(high, (1 << SOFTMAX_OUTPUT_BITS) - 1, code)))

        m.d.comb += self.busy.eq((load_beat.value != 0) | scores_held.any | (exps_held.count > release) | out.busy)
        return m


class Gelu(wiring.Component):
    """int8 GELU through a writable 256-entry table (one table read per lane per cycle).

    The table is loaded per layer through ``lut_write`` (``addr`` = input code, ``data`` = the
    :func:`~vitaccel.hw.spec.nonlinear.gelu_table` entry, ``en``), not baked into the design.
    """

    def __init__(self, *, config: AccelConfig) -> None:
        _check_config(config, "has_gelu")
        self.config = config
        self.lanes = config.vector_lanes
        beat = data.ArrayLayout(signed(8), self.lanes)
        super().__init__({
            "i": In(stream.Signature(beat)),
            "o": Out(stream.Signature(beat)),
            "lut_write": In(wiring.Signature({"addr": Out(8), "data": Out(signed(8)), "en": Out(1)})),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.table = table = Memory(shape=signed(8), depth=256, init=[])
        write = table.write_port()
        m.d.comb += [write.addr.eq(self.lut_write.addr), write.data.eq(self.lut_write.data),
                     write.en.eq(self.lut_write.en)]
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)
        for lane in range(self.lanes):
            port = table.read_port()
            m.d.comb += [port.addr.eq(self.i.payload[lane].as_unsigned()), port.en.eq(advance),
                         self.o.payload[lane].eq(port.data)]
        with m.If(advance):
            m.d.sync += self.o.valid.eq(self.i.valid)
        return m


class GeluInt16(wiring.Component):
    """int16 GELU by I-BERT's second-order ``erf`` polynomial, one beat per cycle.

    The per-layer constants are the fields of
    :class:`~vitaccel.hw.spec.nonlinear.GeluInt16Params`; change them only between layers.
    Bit-exact to :func:`vitaccel.sim.golden.nonlinear.gelu_int16`.
    """

    def __init__(self, *, config: AccelConfig) -> None:
        _check_config(config, "has_gelu")
        self.config = config
        self.lanes = config.vector_lanes
        beat = data.ArrayLayout(signed(16), self.lanes)
        super().__init__({
            "i": In(stream.Signature(beat)),
            "o": Out(stream.Signature(beat)),
            "clip": In(16),
            "q_b": In(signed(GELU_INT16_CONST_BITS)),
            "q_c": In(signed(GELU_INT16_CONST_BITS)),
            "q_one": In(signed(GELU_INT16_CONST_BITS)),
            "multiplier": In(GELU_INT16_MULT_BITS),
            "shift": In(SHIFT_BITS),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)
        with m.If(advance):
            m.d.sync += self.o.valid.eq(self.i.valid)
            for lane in range(self.lanes):
                q = self.i.payload[lane]
                magnitude = Mux(q < 0, -q, q)
                base = Mux(magnitude > self.clip, self.clip, magnitude) + self.q_b
                polynomial = base * base + self.q_c
                erf = Mux(q < 0, -polynomial, polynomial)
                product = -q * (erf + self.q_one)
                m.d.sync += self.o.payload[lane].eq(
                    saturate(round_shift(product * self.multiplier, self.shift), 16))
        return m


class LayerNorm(wiring.Component):
    """LayerNorm of int8 rows (up to ``LAYERNORM_MAX_CHANNELS`` channels) into int8.

    Three stages work on different rows through a row memory of ``ROW_SLOTS`` rows: LOAD (store
    the row, sum and sum of squares), STATS (variance, inverse square root by table + Newton)
    and OUT (normalise, per-channel gamma/beta, requantize). Back-to-back rows stream at one
    element per lane per cycle plus a few cycles per row.

    Per-channel folded ``gamma``/``beta`` (``LayerNormParams``) are written through
    ``param_write`` one beat (``lanes`` channels) per address before the rows stream in;
    change them and the settings only while ``busy`` is low.
    """

    def __init__(self, *, config: AccelConfig, max_channels: int = LAYERNORM_MAX_CHANNELS) -> None:
        _check_config(config, "has_layernorm")
        if not 1 <= max_channels <= LAYERNORM_MAX_CHANNELS:
            raise ValueError(f"max_channels: must be in 1..{LAYERNORM_MAX_CHANNELS}, got {max_channels}")
        self.config = config
        self.lanes = config.vector_lanes
        self.max_channels = max_channels
        self.depth = -(-max_channels // self.lanes)
        beat = data.ArrayLayout(signed(8), self.lanes)
        super().__init__({
            "i": In(stream.Signature(beat)),
            "o": Out(stream.Signature(beat)),
            "length": In(range(max_channels + 1)),
            "eps_term": In(LAYERNORM_EPS_BITS),
            "out_shift": In(SHIFT_BITS),
            "param_write": In(wiring.Signature({
                "addr": Out(range(self.depth)),
                "gamma": Out(data.ArrayLayout(signed(LAYERNORM_GAMMA_BITS), self.lanes)),
                "beta": Out(data.ArrayLayout(signed(LAYERNORM_BETA_BITS), self.lanes)),
                "en": Out(1),
            })),
            "busy": Out(1),
        })

    #: OUT pipeline stages after the row read: operands; n x; - Sx; x (n x - Sx) / std;
    #: rounding shift (three); x gamma; + beta; rounding shift (three); saturation flags;
    #: output register.
    OUT_STAGES = 15
    #: LOAD pipeline before the adder tree: the masked values, their squares.
    LOAD_STAGES = 2
    #: STATS states before the inverse square root starts: IDLE, MULTIPLY, SUBTRACT, EPS, CLAMP.
    STATS_STATES = 5

    def elaborate(self, platform) -> Module:
        m = Module()
        lanes, depth = self.lanes, self.depth
        params_layout = data.StructLayout({
            "gamma": data.ArrayLayout(signed(LAYERNORM_GAMMA_BITS), lanes),
            "beta": data.ArrayLayout(signed(LAYERNORM_BETA_BITS), lanes)})
        m.submodules.rows = rows = Memory(shape=data.ArrayLayout(signed(8), lanes), depth=ROW_SLOTS * depth, init=[])
        m.submodules.params = params = Memory(shape=params_layout, depth=depth, init=[])
        # Exact widths of the statistics: |sum x| <= 128 n, sum x^2 <= 128^2 n (one DSP48E2
        # each for n sum x^2 and (sum x)^2 on the zcu102's 768 channels).
        sum_bits = (128 * self.max_channels).bit_length() + 1
        square_sum_bits = (128 * 128 * self.max_channels).bit_length()
        variance_bits = 2 * sum_bits + 2
        # |n x - sum x| <= sqrt(n V) < sqrt(n) 2^(k+1) (Cauchy-Schwarz, V = n sum x^2 - (sum x)^2
        # + eps < 4^(k+1)) and inv_std < 2^DSP_B_UNSIGNED_BITS (tests/hw/test_nonlinear.py
        # checks every mantissa), so |z| <= sqrt(n) inv_std / 8 + 1: z fits in norm_bits.
        norm_bits = ((math.isqrt(self.max_channels) + 1) << (DSP_B_UNSIGNED_BITS - 3)).bit_length() + 2
        m.submodules.rsqrt = rsqrt = InvSqrt(value_bits=variance_bits, lut_bits=self.config.rsqrt_lut_bits)
        row_write, row_read = rows.write_port(), rows.read_port()
        param_write, param_read = params.write_port(), params.read_port()
        m.d.comb += [param_write.addr.eq(self.param_write.addr), param_write.en.eq(self.param_write.en),
                     param_write.data.gamma.eq(self.param_write.gamma),
                     param_write.data.beta.eq(self.param_write.beta)]
        last_beat = _last_beat(m, self.length, lanes)

        def base(slot):
            return slot * depth

        # hand-over state: rows in the unit (last beat in .. last beat out) / sums done
        # (statistics pending) / rows ready to output
        rows_in, loaded, rows_ready = _RowCount(m, "rows_in"), _Slots("loaded"), _RowCount(m, "rows_ready")
        sums_x = _Slots("sum_x", signed(sum_bits))
        sums_xx = _Slots("sum_xx", square_sum_bits)
        inv_stds = _Slots("inv_std", DSP_B_UNSIGNED_BITS)
        norm_shifts = _Slots("norm_shift", SHIFT_BITS)

        # -- LOAD: store the row; sum and sum of squares through a pipelined adder tree ----------
        started = _started(m)
        load_slot = _slot_signal("load_slot")
        load_beat = _BeatCounter(m, "load_beat", last_beat, depth)
        accepted = self.i.valid & self.i.ready
        m.d.comb += [self.i.ready.eq(started & rows_in.room), load_beat.step.eq(accepted),
                     rows_in.add.eq(accepted & load_beat.last)]
        last_lanes = _last_lanes(m, self.length, lanes)
        values = [Mux(~load_beat.last | last_lanes[lane], self.i.payload[lane], 0) for lane in range(lanes)]
        m.d.comb += [row_write.addr.eq(base(load_slot) + load_beat.value), row_write.en.eq(accepted)]
        for lane in range(lanes):
            m.d.comb += row_write.data[lane].eq(values[lane])
        with m.If(rows_in.add):
            m.d.sync += load_slot.eq(_next_slot(load_slot))
        held = [register(m, value, f"load_value_{lane}", signed(8)) for lane, value in enumerate(values)]
        squares = [register(m, v * v, f"load_square_{lane}", 15) for lane, v in enumerate(held)]
        beat_x, levels = _sum_tree(m, [register(m, v, f"load_value_late_{lane}") for lane, v in enumerate(held)],
                                   "load_sum_x")
        beat_xx, _ = _sum_tree(m, squares, "load_sum_xx")
        load_valid = _delay(m, accepted, self.LOAD_STAGES + levels, "load_valid")
        load_last = _delay(m, accepted & load_beat.last, self.LOAD_STAGES + levels, "load_last")
        load_tail_slot = _delay(m, load_slot, self.LOAD_STAGES + levels, "load_tail_slot")
        sum_x, sum_xx = Signal(signed(sum_bits)), Signal(square_sum_bits)
        with m.If(load_valid):
            m.d.sync += [sum_x.eq(sum_x + beat_x), sum_xx.eq(sum_xx + beat_xx)]
            with m.If(load_last):
                loaded.set(m, load_tail_slot, 1)
                sums_x.set(m, load_tail_slot, sum_x + beat_x)
                sums_xx.set(m, load_tail_slot, sum_xx + beat_xx)
                m.d.sync += [sum_x.eq(0), sum_xx.eq(0)]

        # -- STATS: variance and inverse square root, one per row; one operation per state -------
        stats_slot = _slot_signal("stats_slot")
        operand_x = Signal(signed(sum_bits), reset_less=True)
        operand_xx = Signal(square_sum_bits, reset_less=True)
        scaled_xx = Signal(variance_bits, reset_less=True)
        squared_x = Signal(variance_bits, reset_less=True)
        spread = Signal(signed(variance_bits + 1), reset_less=True)
        # n sum x^2 == (sum x)^2, over two cycles: per 3 bits (a LUT each), then all of them
        equal_parts = Signal(-(-variance_bits // 3), reset_less=True)
        no_spread = Signal(reset_less=True)
        eps_zero = register(m, self.eps_term == 0, "eps_zero")   # settled long before a row's CLAMP
        variance = Signal(variance_bits)
        m.d.comb += rsqrt.value.eq(variance)
        with m.FSM(name="stats_fsm"):
            with m.State("IDLE"):
                with m.If(loaded[stats_slot]):
                    m.d.sync += [operand_x.eq(sums_x[stats_slot]), operand_xx.eq(sums_xx[stats_slot])]
                    m.next = "MULTIPLY"
            with m.State("MULTIPLY"):   # n sum x^2 and (sum x)^2, a DSP48E2 each
                m.d.sync += [scaled_xx.eq(self.length * operand_xx), squared_x.eq(operand_x * operand_x)]
                m.next = "SUBTRACT"
            with m.State("SUBTRACT"):
                m.d.sync += [spread.eq(scaled_xx - squared_x),
                             equal_parts.eq(Cat(*(scaled_xx[i:i + 3] == squared_x[i:i + 3]
                                                  for i in range(0, variance_bits, 3))))]
                m.next = "EPS"
            with m.State("EPS"):
                m.d.sync += [spread.eq(spread + self.eps_term), no_spread.eq(equal_parts.all())]
                m.next = "CLAMP"
            with m.State("CLAMP"):
                # max(spread, 1): spread >= 0 (n sum x^2 >= (sum x)^2, eps_term unsigned), so only a
                # zero becomes 1, known from registers (no 40-bit compare of the sum just made)
                m.d.sync += variance.eq(Cat(spread[0] | (no_spread & eps_zero), spread[1:variance_bits]))
                m.next = "START"
            with m.State("START"):
                m.d.comb += rsqrt.start.eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(rsqrt.done):
                    inv_stds.set(m, stats_slot, rsqrt.result)
                    norm_shifts.set(m, stats_slot, RSQRT_FRAC_BITS - LAYERNORM_NORM_FRAC_BITS + rsqrt.exponent)
                    loaded.set(m, stats_slot, 0)
                    m.d.comb += rows_ready.add.eq(1)
                    m.d.sync += stats_slot.eq(_next_slot(stats_slot))
                    m.next = "IDLE"

        # -- OUT: normalise, scale, shift, requantize: one operation per stage -----------------
        out = _OutPipeline(m, ports=[row_read], rows=rows_ready, base=base, last_beat=last_beat, depth=depth,
                           out=self.o, stages=self.OUT_STAGES, name="out")
        tags = out.tags
        # the release a cycle late: 'advance' shares its logic, and reaches every stage register
        release = Signal(name="out_released")
        m.d.sync += release.eq(out.release)
        m.d.comb += rows_in.remove.eq(release)
        # gamma / beta arrive at stage 6, from the address stage 5 held
        m.d.comb += [param_read.addr.eq(tags[5].beat), param_read.en.eq(out.advance)]
        stage = out.stage
        offset = _delay(m, -sums_x[tags[0].slot], 2, "out_offset", out.advance, keep=True)              # 1, 2
        inv_std = _delay(m, inv_stds[tags[0].slot], 2, "out_inv_std", out.advance, keep=True)            # 1, 2
        norm_shift = _delay(m, norm_shifts[tags[0].slot], 4, "out_norm_shift", out.advance, keep=True)     # 1..4
        in_row = [_delay(m, ~tags[11].last | last_lanes[lane], 2, f"out_in_row_{lane}",
                         out.advance) for lane in range(lanes)]                                  # 12, 13
        for lane in range(lanes):
            x = stage(m, row_read.data[lane], f"out_x_{lane}")                                  # 1
            scaled_x = stage(m, x * self.length, f"out_scaled_x_{lane}")                        # 2
            centred = stage(m, scaled_x + offset, f"out_centred_{lane}")                        # 3
            product = stage(m, centred * stage(m, inv_std, f"out_inv_std_{lane}"), f"out_product_{lane}")  # 4
            normalised = pipelined_round_shift(m, product, norm_shift, stage, f"out_normalised_{lane}",
                                               signed(norm_bits))                                # 5, 6, 7
            gamma = stage(m, param_read.data.gamma[lane], f"out_gamma_{lane}")                  # 7
            beta = _delay(m, param_read.data.beta[lane], 2, f"out_beta_{lane}", out.advance,
                          keep="last")                                                        # 7, 8
            weighted = stage(m, normalised * gamma, f"out_weighted_{lane}")                     # 8
            total = stage(m, weighted + beta, f"out_total_{lane}")                              # 9
            scaled = pipelined_round_shift(m, total, self.out_shift, stage, f"out_scaled_{lane}")  # 10, 11, 12
            high = stage(m, scaled > 127, f"out_high_{lane}")                                   # 13
            low = stage(m, scaled < -128, f"out_low_{lane}")
            code = stage(m, scaled[:8], f"out_code_{lane}", signed(8))
            with m.If(out.advance):                                                              # 14
                m.d.sync += out.payload[lane].eq(
                    Mux(in_row[lane], Mux(high, 127, Mux(low, -128, code)), 0))

        m.d.comb += self.busy.eq((load_beat.value != 0) | (rows_in.count > release) | out.busy)
        return m
