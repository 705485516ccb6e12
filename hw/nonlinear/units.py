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

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
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

from .arith import SHIFT_BITS, ExpStage, InvSqrt, Reciprocal, round_shift, saturate

__all__ = ["Softmax", "Gelu", "GeluInt16", "LayerNorm", "softmax_input_layout", "ROW_SLOTS"]


def _check_config(config: AccelConfig, flag: str) -> None:
    if not isinstance(config, AccelConfig):
        raise TypeError(f"config: must be an AccelConfig, got {type(config).__name__}")
    if not getattr(config, flag):
        raise ValueError(f"config {config.name!r} has {flag}=False: the unit is not part of it")


def softmax_input_layout(lanes: int) -> data.StructLayout:
    """One softmax input beat: ``lanes`` int32 scores and a bit per lane (1 = takes part)."""
    return data.StructLayout({"scores": data.ArrayLayout(signed(32), lanes), "mask": unsigned(lanes)})


def _lane_in_row(beat, lane: int, lanes: int, length):
    """Whether element ``lane`` of beat ``beat`` lies inside a row of ``length`` elements."""
    return beat * lanes + lane < length


def _beats(length, lanes: int):
    """``ceil(length / lanes)`` for a power-of-two lane count."""
    return (length + lanes - 1) >> int(math.log2(lanes))


def _stream_out(m: Module, *, ports, base, active, beats, out: stream.Interface, depth: int):
    """Drive ``out`` with beats ``base .. base+beats-1`` read through synchronous ``ports``.

    A beat is read ahead only when the output register is empty or being consumed, so the
    stream may stall at any cycle without losing data. Counters clear while ``active`` is low
    and after the last beat. Returns ``(index of the beat on the output, last beat accepted)``.
    """
    pointer = Signal(range(depth + 1))
    sent = Signal(range(depth + 1))
    loaded = Signal()
    advance = ~loaded | out.ready
    last = out.valid & out.ready & (sent == beats - 1)
    for port in ports:
        m.d.comb += [port.addr.eq(base + pointer), port.en.eq(active & advance)]
    m.d.comb += out.valid.eq(active & loaded)
    with m.If(active):
        with m.If(advance):
            m.d.sync += loaded.eq(pointer < beats)
            with m.If(pointer < beats):
                m.d.sync += pointer.eq(pointer + 1)
        with m.If(out.valid & out.ready):
            m.d.sync += sent.eq(sent + 1)
    with m.If(~active | last):
        m.d.sync += [pointer.eq(0), sent.eq(0), loaded.eq(0)]
    return sent, last


#: Rows a unit holds at once. With two, a row would hold its buffer through two stages plus
#: the hand-over, which costs more than one stage time per row; three keep every stage busy.
ROW_SLOTS = 3


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
        beats = _beats(self.length, lanes)

        def base(slot):
            return slot * depth

        # hand-over state: scores slot loaded / exps slot in use / exps slot ready to output
        scores_full, exps_taken, exps_ready = _Slots("scores_full"), _Slots("exps_taken"), _Slots("exps_ready")
        row_maxes = _Slots("row_max", signed(32))
        reciprocals = _Slots("reciprocal", RECIP_FRAC_BITS + 2)
        out_shifts = _Slots("out_shift", SHIFT_BITS)
        empty_rows = _Slots("empty_row", 1)

        # -- LOAD: store the row, running max ---------------------------------------------
        started = Signal()
        load_slot, load_beat = _slot_signal("load_slot"), Signal(range(depth + 1))
        running_max = Signal(signed(32), init=-(1 << 31))
        m.d.sync += started.eq(1)
        m.d.comb += self.i.ready.eq(started & ~scores_full[load_slot])
        mask = [self.i.payload.mask[lane] & _lane_in_row(load_beat, lane, lanes, self.length)
                for lane in range(lanes)]
        new_max = running_max
        for lane in range(lanes):
            # a signal per step: an expression chain would repeat `new_max` twice per lane
            # and grow exponentially in the simulator's compiled code
            score, step = self.i.payload.scores[lane], Signal(signed(32), name=f"running_max_{lane}")
            m.d.comb += step.eq(Mux(mask[lane] & (score > new_max), score, new_max))
            new_max = step
        m.d.comb += [score_write.addr.eq(base(load_slot) + load_beat),
                     score_write.en.eq(self.i.valid & self.i.ready),
                     score_write.data.scores.eq(self.i.payload.scores)]
        for lane in range(lanes):
            m.d.comb += score_write.data.mask[lane].eq(mask[lane])
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [running_max.eq(new_max), load_beat.eq(load_beat + 1)]
            with m.If(load_beat == beats - 1):
                scores_full.set(m, load_slot, 1)
                row_maxes.set(m, load_slot, new_max)
                m.d.sync += [load_slot.eq(_next_slot(load_slot)), load_beat.eq(0), running_max.eq(running_max.init)]

        # -- EXP: exp of (max - score), row sum ---------------------------------------------
        # Reads of the next row start while the previous row drains through ExpStage, so
        # every read-side and write-side signal carries its own slot.
        exp_slot = _slot_signal("exp_slot")  # slot being read
        issue = Signal(range(depth + 1))
        issuing = Signal()
        total = Signal(sum_bits)
        read_valid, read_addr, read_slot = Signal(), Signal(range(depth)), _slot_signal("read_slot")
        tag_valid = [Signal(name=f"tag_valid_{s}") for s in range(ExpStage.LATENCY)]
        tag_addr = [Signal(range(depth), name=f"tag_addr_{s}") for s in range(ExpStage.LATENCY)]
        tag_slot = [_slot_signal(f"tag_slot_{s}") for s in range(ExpStage.LATENCY)]
        limit = (1 << SOFTMAX_DIFF_BITS) - 1
        m.d.comb += [exp.multiplier.eq(self.multiplier), exp.shift.eq(self.shift),
                     score_read.addr.eq(base(exp_slot) + issue), score_read.en.eq(1)]
        for lane in range(lanes):
            diff = row_maxes[read_slot] - score_read.data.scores[lane]
            m.d.comb += [exp.diff[lane].eq(Mux(diff > limit, limit, diff)),
                         exp.valid[lane].eq(score_read.data.mask[lane])]
        m.d.sync += [read_valid.eq(issuing), read_addr.eq(issue), read_slot.eq(exp_slot),
                     tag_valid[0].eq(read_valid), tag_addr[0].eq(read_addr), tag_slot[0].eq(read_slot)]
        for stage in range(1, ExpStage.LATENCY):
            m.d.sync += [tag_valid[stage].eq(tag_valid[stage - 1]), tag_addr[stage].eq(tag_addr[stage - 1]),
                         tag_slot[stage].eq(tag_slot[stage - 1])]
        with m.If(issuing):
            m.d.sync += issue.eq(issue + 1)
            with m.If(issue == beats - 1):
                m.d.sync += [issuing.eq(0), exp_slot.eq(_next_slot(exp_slot))]
        writing, write_slot = tag_valid[-1], tag_slot[-1]
        m.d.comb += [exp_write.addr.eq(base(write_slot) + tag_addr[-1]), exp_write.en.eq(writing),
                     exp_write.data.eq(exp.exp)]
        row_total = total + sum(exp.exp[lane] for lane in range(lanes))
        # -- RECIPROCAL: one per row, overlapping the next row's EXP -------------------------
        recip_pending, recip_slot = Signal(), _slot_signal("recip_slot")
        recip_total = Signal(sum_bits)
        # A long row (more beats than the reciprocal takes cycles) hands its sum over only
        # after the previous reciprocal is done, so it may start at once; a short row waits
        # until the previous row has drained and its reciprocal is done.
        draining = read_valid | Cat(*tag_valid).any()
        may_start = (beats > Reciprocal.LATENCY + 1) | (~recip_pending & ~draining)
        with m.If(~issuing & scores_full[exp_slot] & ~exps_taken[exp_slot] & may_start):
            m.d.sync += [issuing.eq(1), issue.eq(0)]
        with m.If(writing):
            m.d.sync += total.eq(row_total)
            with m.If(tag_addr[-1] == beats - 1):
                scores_full.set(m, write_slot, 0)
                exps_taken.set(m, write_slot, 1)
                m.d.sync += [total.eq(0), recip_pending.eq(1), recip_slot.eq(write_slot),
                             recip_total.eq(row_total)]
        m.d.comb += recip.value.eq(recip_total)
        with m.FSM(name="recip_fsm"):
            with m.State("IDLE"):
                with m.If(recip_pending):
                    with m.If(recip_total == 0):
                        empty_rows.set(m, recip_slot, 1)
                        exps_ready.set(m, recip_slot, 1)
                        m.d.sync += recip_pending.eq(0)
                    with m.Else():
                        m.d.comb += recip.start.eq(1)
                        m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(recip.done):
                    reciprocals.set(m, recip_slot, recip.result)
                    empty_rows.set(m, recip_slot, 0)
                    out_shifts.set(m, recip_slot, RECIP_FRAC_BITS - SOFTMAX_OUTPUT_BITS + recip.exponent)
                    exps_ready.set(m, recip_slot, 1)
                    m.d.sync += recip_pending.eq(0)
                    m.next = "IDLE"

        # -- OUT: broadcast multiply by the reciprocal ----------------------------------------
        out_slot = _slot_signal("out_slot")
        _, out_last = _stream_out(m, ports=[exp_read], base=base(out_slot), active=exps_ready[out_slot],
                                  beats=beats, out=self.o, depth=depth)
        for lane in range(lanes):
            scaled = round_shift(exp_read.data[lane] * reciprocals[out_slot], out_shifts[out_slot])
            m.d.comb += self.o.payload[lane].eq(
                Mux(empty_rows[out_slot], 0, saturate(scaled, SOFTMAX_OUTPUT_BITS, signed_out=False)))
        with m.If(out_last):
            exps_ready.set(m, out_slot, 0)
            exps_taken.set(m, out_slot, 0)
            m.d.sync += out_slot.eq(_next_slot(out_slot))

        m.d.comb += self.busy.eq((load_beat != 0) | scores_full.any() | exps_taken.any())
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

    def elaborate(self, platform) -> Module:
        m = Module()
        lanes, depth = self.lanes, self.depth
        params_layout = data.StructLayout({
            "gamma": data.ArrayLayout(signed(LAYERNORM_GAMMA_BITS), lanes),
            "beta": data.ArrayLayout(signed(LAYERNORM_BETA_BITS), lanes)})
        m.submodules.rows = rows = Memory(shape=data.ArrayLayout(signed(8), lanes), depth=ROW_SLOTS * depth, init=[])
        m.submodules.params = params = Memory(shape=params_layout, depth=depth, init=[])
        sum_bits = 8 + math.ceil(math.log2(self.max_channels + 1)) + 1
        variance_bits = 2 * sum_bits + 2
        m.submodules.rsqrt = rsqrt = InvSqrt(value_bits=variance_bits, lut_bits=self.config.rsqrt_lut_bits)
        row_write, row_read = rows.write_port(), rows.read_port()
        param_write, param_read = params.write_port(), params.read_port()
        m.d.comb += [param_write.addr.eq(self.param_write.addr), param_write.en.eq(self.param_write.en),
                     param_write.data.gamma.eq(self.param_write.gamma),
                     param_write.data.beta.eq(self.param_write.beta)]
        beats = _beats(self.length, lanes)

        def base(slot):
            return slot * depth

        # hand-over state: slot loaded (statistics pending) / slot ready to output
        loaded, ready = _Slots("loaded"), _Slots("ready")
        sums_x = _Slots("sum_x", signed(sum_bits))
        sums_xx = _Slots("sum_xx", 2 * sum_bits)
        inv_stds = _Slots("inv_std", RSQRT_FRAC_BITS + 2)
        norm_shifts = _Slots("norm_shift", SHIFT_BITS)

        # -- LOAD: store the row, sum and sum of squares ---------------------------------------
        started = Signal()
        load_slot, load_beat = _slot_signal("load_slot"), Signal(range(depth + 1))
        sum_x, sum_xx = Signal(signed(sum_bits)), Signal(2 * sum_bits)
        m.d.sync += started.eq(1)
        m.d.comb += self.i.ready.eq(started & ~loaded[load_slot] & ~ready[load_slot])
        values = [Mux(_lane_in_row(load_beat, lane, lanes, self.length), self.i.payload[lane], 0)
                  for lane in range(lanes)]
        new_sum_x = sum_x + sum(values)
        new_sum_xx = sum_xx + sum(v * v for v in values)
        m.d.comb += [row_write.addr.eq(base(load_slot) + load_beat), row_write.en.eq(self.i.valid & self.i.ready)]
        for lane in range(lanes):
            m.d.comb += row_write.data[lane].eq(values[lane])
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [sum_x.eq(new_sum_x), sum_xx.eq(new_sum_xx), load_beat.eq(load_beat + 1)]
            with m.If(load_beat == beats - 1):
                loaded.set(m, load_slot, 1)
                sums_x.set(m, load_slot, new_sum_x)
                sums_xx.set(m, load_slot, new_sum_xx)
                m.d.sync += [sum_x.eq(0), sum_xx.eq(0),
                             load_beat.eq(0), load_slot.eq(_next_slot(load_slot))]

        # -- STATS: variance and inverse square root, one per row ------------------------------
        stats_slot = _slot_signal("stats_slot")
        variance = Signal(variance_bits)
        m.d.comb += rsqrt.value.eq(variance)
        with m.FSM(name="stats_fsm"):
            with m.State("IDLE"):
                with m.If(loaded[stats_slot]):
                    spread = (self.length * sums_xx[stats_slot] - sums_x[stats_slot] * sums_x[stats_slot]
                              + self.eps_term)
                    m.d.sync += variance.eq(Mux(spread < 1, 1, spread))
                    m.next = "START"
            with m.State("START"):
                m.d.comb += rsqrt.start.eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(rsqrt.done):
                    inv_stds.set(m, stats_slot, rsqrt.result)
                    norm_shifts.set(m, stats_slot, RSQRT_FRAC_BITS - LAYERNORM_NORM_FRAC_BITS + rsqrt.exponent)
                    loaded.set(m, stats_slot, 0)
                    ready.set(m, stats_slot, 1)
                    m.d.sync += stats_slot.eq(_next_slot(stats_slot))
                    m.next = "IDLE"

        # -- OUT: normalise, scale, shift, requantize ------------------------------------------
        out_slot = _slot_signal("out_slot")
        out_beat, out_last = _stream_out(m, ports=[row_read], base=base(out_slot), active=ready[out_slot],
                                         beats=beats, out=self.o, depth=depth)
        m.d.comb += [param_read.addr.eq(row_read.addr - base(out_slot)), param_read.en.eq(row_read.en)]
        for lane in range(lanes):
            centred = self.length * row_read.data[lane] - sums_x[out_slot]
            normalised = round_shift(centred * inv_stds[out_slot], norm_shifts[out_slot])
            scaled = round_shift(normalised * param_read.data.gamma[lane] + param_read.data.beta[lane],
                                 self.out_shift)
            m.d.comb += self.o.payload[lane].eq(
                Mux(_lane_in_row(out_beat, lane, lanes, self.length), saturate(scaled, 8), 0))
        with m.If(out_last):
            ready.set(m, out_slot, 0)
            m.d.sync += out_slot.eq(_next_slot(out_slot))

        m.d.comb += self.busy.eq((load_beat != 0) | loaded.any() | ready.any())
        return m
