"""Top-k engine: selects the ``k`` largest of ``n`` scores in O(n) cycles, SpAtten-style.

Dataflow
--------
1. **Load**: ``scores`` is a stream of ``topk_lanes`` unsigned scores per beat, written into a
   score memory in order (one word per lane group).
2. **Threshold search**, MSB first, :data:`~vitaccel.hw.spec.sparse.TOPK_RADIX_BITS` bits per
   pass: every pass reads all lane groups once and counts, for each of the
   ``2^radix - 1`` candidate digits ``d``, the scores ``>= prefix + d * 2^shift``; the next
   prefix takes the largest digit whose count still reaches ``k``. After the last pass the
   prefix is the k-th largest score ``T`` and the count of the next candidate above is the
   number of scores strictly above ``T``.
3. **Compaction**: one more pass keeps every score ``> T`` and the first ``k - count(> T)``
   scores ``== T`` (lowest index wins ties, exactly as :func:`vitaccel.sim.golden.topk.topk`),
   and emits per lane group the keep mask and the kept indices packed in ascending order.

Pipelining (the zcu102's 300 MHz, docs/timing.md): the score memory is read synchronously and
every step after it is one register stage: per lane whether its bits above the pass's digit
are above / equal to the prefix's (two compares against registers; the same two are "above"
and "tie" of the threshold in the compaction) and its digit's thermometer code; the lane
counts of every candidate (a LUT per lane and candidate into 4-lane table look-ups, then an
adder tree with one level per cycle), the running counts; the digit choice
takes three cycles at the end of a pass. In the compaction the only state carried from one
lane group to the next is the number of ties still to keep (``ties_left``): the keep mask and
each lane's slot come from the lanes' prefix counts of "above" and "tie" (computed ahead,
not in the loop) and ``min(ties before the lane, ties_left)``. All stages move on one
``advance`` (``~result.valid | result.ready``), so back-pressure stalls the whole pipeline.

Cycles from ``start`` to the last result beat: ``passes * (groups + pass_extra) +
compact_latency + groups`` with ``groups = ceil(n / lanes)`` (``passes = 4`` for 16-bit
scores; :func:`topk_engine_cycles`), 289 for ``n = 197`` on 4 lanes.
"""

from __future__ import annotations

import math

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.sparse import TOPK_RADIX_BITS, TOPK_SCORE_BITS, count_bits, index_bits, topk_passes

__all__ = ["TopKEngine", "topk_result_layout", "topk_engine_cycles"]


def topk_result_layout(lanes: int, max_tokens: int) -> data.StructLayout:
    """One result beat: the keep mask of a lane group and its kept indices, packed low."""
    return data.StructLayout({
        "mask": lanes,
        "count": (lanes).bit_length(),
        "indices": data.ArrayLayout(index_bits(max_tokens + lanes), lanes),
        "last": 1,
    })


#: Lanes counted by one table look-up (a LUT level: each count bit is a function of 4 bits).
_CHUNK = 4


def _count_table(bits: Value) -> Value:
    """The number of set bits of ``bits`` (at most a few) as a table look-up, not adders."""
    width = len(bits)
    return Array(Const(value.bit_count(), width.bit_length()) for value in range(1 << width))[bits]


def _tree_levels(count: int) -> int:
    return max(0, (count - 1).bit_length())


class _Pipe:
    """Registers of the engine's pipeline, all enabled by one ``advance``."""

    def __init__(self, m: Module, advance: Value) -> None:
        self.m, self.advance = m, advance

    def reg(self, value, name: str) -> Signal:
        """``value`` one cycle later (held while ``advance`` is low)."""
        value = Value.cast(value)
        reg = Signal(value.shape(), name=name)
        with self.m.If(self.advance):
            self.m.d.sync += reg.eq(value)
        return reg

    def delay(self, value, cycles: int, name: str) -> Value:
        for i in range(cycles):
            value = self.reg(value, f"{name}_d{i}")
        return value

    def sum(self, values: list, name: str) -> tuple[Value, int]:
        """The pipelined sum of ``values`` (one adder-tree level per cycle) and its latency."""
        level = 0
        values = [Value.cast(v) for v in values]
        while len(values) > 1:
            values = [self.reg(values[i] + values[i + 1], f"{name}_l{level}_{i}") if i + 1 < len(values)
                      else self.reg(values[i], f"{name}_l{level}_{i}") for i in range(0, len(values), 2)]
            level += 1
        return values[0], level

    def count(self, bits: Value, name: str) -> tuple[Value, int]:
        """The number of set bits of ``bits``: table look-ups per 4 lanes, then a tree."""
        chunks = [self.reg(_count_table(bits[i:i + _CHUNK]), f"{name}_c{i // _CHUNK}")
                  for i in range(0, len(bits), _CHUNK)]
        total, levels = self.sum(chunks, name)
        return total, levels + 1

    def prefix_counts(self, bits: Value, name: str) -> tuple[list[Value], Value, int]:
        """Per lane the number of set bits below it, and the total, with their latency:
        in-chunk prefix counts and chunk totals by table look-up, the chunks' bases by a
        log-depth prefix sum (one level per cycle), then one add."""
        lanes = len(bits)
        chunk_count = -(-lanes // _CHUNK)
        inner = [self.reg(_count_table(bits[(lane // _CHUNK) * _CHUNK:lane]) if lane % _CHUNK else Const(0, 1),
                          f"{name}_in{lane}") for lane in range(lanes)]
        totals = [self.reg(_count_table(bits[c * _CHUNK:(c + 1) * _CHUNK]), f"{name}_t{c}")
                  for c in range(chunk_count)]
        inclusive = totals
        levels = _tree_levels(chunk_count)
        for level in range(levels):
            step = 1 << level
            inclusive = [self.reg(inclusive[c] + inclusive[c - step] if c >= step else inclusive[c],
                                  f"{name}_p{level}_{c}") for c in range(chunk_count)]
        inner = [self.delay(v, levels, f"{name}_in{lane}") for lane, v in enumerate(inner)]
        before = [self.reg(inner[lane] + (inclusive[lane // _CHUNK - 1] if lane >= _CHUNK else 0),
                           f"{name}_before{lane}") for lane in range(lanes)]
        total = self.reg(inclusive[-1], f"{name}_total")
        return before, total, levels + 2


def search_latency(lanes: int) -> int:
    """Cycles from a group's read to its counts being added: the read, the comparisons, the
    lane count (a table look-up and a tree), the accumulation."""
    return 1 + 1 + 1 + _tree_levels(-(-lanes // _CHUNK)) + 1


def pass_extra(lanes: int) -> int:
    """Cycles of a search pass beyond one per group: the candidates' setup, the pipeline's
    drain, the three digit-choice states."""
    return search_latency(lanes) + 3


def compact_latency(lanes: int) -> int:
    """Cycles from the compaction's setup to its first result beat being valid: two setup
    states, the read, the compares, the prefix counts (table look-ups, the chunks' prefix sum, an add),
    keep, kept_before, the slot select, the output register."""
    return 2 + 1 + 1 + (_tree_levels(-(-lanes // _CHUNK)) + 2) + 1 + 1 + 1 + 1


def topk_engine_cycles(lanes: int, n: int) -> int:
    """Cycles from ``start`` to the last result beat (``result.ready`` always high) for ``n``
    scores on ``lanes`` lanes: the start and PREPARE, per pass the groups and
    :func:`pass_extra`, the compaction's latency and one beat per group."""
    groups = max(1, math.ceil(n / lanes))
    return 2 + topk_passes() * (groups + pass_extra(lanes)) + compact_latency(lanes) + groups - 1


class TopKEngine(wiring.Component):
    """Top-k over ``n <= config.max_tokens`` scores with ``config.topk_lanes`` lanes.

    Parameters
    ----------
    config : AccelConfig
        Supplies ``topk_lanes`` and ``max_tokens``.

    Attributes
    ----------
    scores : stream, in
        ``topk_lanes`` unsigned scores per beat, lane 0 = lowest index; accepted while idle.
    n, k : in
        Score count (``1..max_tokens``) and keep count (clamped to ``n``), sampled at ``start``.
    start : in
        Pulse: begin the selection on the loaded scores; resets the load address.
    busy : out
        High from ``start`` until the last result beat is accepted.
    result : stream, out
        One beat per lane group (see :func:`topk_result_layout`), ``last`` on the final one.
    """

    def __init__(self, *, config: AccelConfig) -> None:
        if not isinstance(config, AccelConfig):
            self._MustUse__silence = True  # never built: no "created but never used" warning
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        self.config = config
        self.lanes = config.topk_lanes
        self.groups = math.ceil(config.max_tokens / self.lanes)
        cbits = count_bits(config.max_tokens)
        super().__init__({
            "scores": In(stream.Signature(data.ArrayLayout(unsigned(TOPK_SCORE_BITS), self.lanes))),
            "n": In(cbits),
            "k": In(cbits),
            "start": In(1),
            "busy": Out(1),
            "result": Out(stream.Signature(topk_result_layout(self.lanes, config.max_tokens))),
        })

    # -- latencies (the perf model and the tests count with them): see the module functions --
    def search_latency(self) -> int:
        return search_latency(self.lanes)

    def cycles(self, n: int) -> int:
        """Cycles from ``start`` to the last result beat with ``result.ready`` always high."""
        return topk_engine_cycles(self.lanes, n)

    def elaborate(self, platform) -> Module:
        m = Module()
        lanes, groups = self.lanes, self.groups
        cbits = count_bits(self.config.max_tokens)
        gbits = max(1, (groups - 1).bit_length())
        lane_bits = lanes.bit_length() - 1           # lanes is a power of two (config check)
        digits = 1 << TOPK_RADIX_BITS
        passes = topk_passes()
        assert TOPK_SCORE_BITS == passes * TOPK_RADIX_BITS

        m.submodules.mem = mem = Memory(
            shape=data.ArrayLayout(unsigned(TOPK_SCORE_BITS), lanes), depth=groups, init=[])
        wr = mem.write_port()
        rd = mem.read_port()   # synchronous: the data is a register stage

        # -- load ------------------------------------------------------------------------
        load_addr = Signal(range(groups + 1))
        m.d.comb += [wr.addr.eq(load_addr), wr.data.eq(self.scores.payload)]
        with m.If(self.scores.valid & self.scores.ready & (load_addr < groups)):
            m.d.comb += wr.en.eq(1)
            m.d.sync += load_addr.eq(load_addr + 1)

        # -- state -----------------------------------------------------------------------
        k = Signal(cbits)
        last_group = Signal(gbits)
        before_last_group = Signal(gbits)             # last_group - 1 (issue_last's compare, no adder)
        tail_mask = Signal(lanes)                     # lanes below n in the last group
        digit = [Signal(TOPK_RADIX_BITS, name=f"digit_{p}") for p in range(passes)]  # per pass
        prefix = Cat(*reversed(digit))                # pass p's digit is bits [16-4(p+1), 16-4p)
        # A score reaches candidate ``prefix + d * 2^shift`` iff its bits above this pass's digit
        # are above the prefix's, or equal to them with its digit >= d (the prefix is 0 from the
        # digit down). "Above" is ``score > prefix_top`` (the prefix with the bits from the digit
        # down set; the prefix itself in the compaction), "equal" ``prefix <= score <= prefix_top``.
        prefix_top = Signal(TOPK_SCORE_BITS)
        digit_at = Signal(range(passes))   # the digit is bits [4 digit_at, 4 digit_at + 4)
        counts = [Signal(cbits, name=f"count_{d}") for d in range(digits)]                    # [0] unused
        count_above = Signal(cbits)   # scores above every value with the current prefix
        reaches_k = Signal(digits)    # bit d: counts[d] >= k (a thermometer: counts fall with d)
        choice_onehot = Signal(digits)
        ties_left = Signal(signed(cbits + 1))         # ties still to keep, not clamped: < 0 once none are
        ties_usable = Signal(range(lanes + 1))        # ties_left clamped to 0..lanes
        ties_excess = Signal(signed(cbits + 2))       # ties_left - lanes

        out_valid = Signal()
        advance = Signal()
        m.d.comb += advance.eq(~out_valid | self.result.ready)
        pipe = _Pipe(m, advance)

        # -- the read stage: issue a group, its tags travel with the data ------------------
        issue = Signal(gbits)
        issuing = Signal()
        issue_last = Signal()
        compacting = Signal()    # the reads in flight are the compaction's (else the search's)
        m.d.comb += [rd.addr.eq(issue), rd.en.eq(advance)]
        with m.If(advance & issuing):   # issue_last is kept as a register: issue + 1 == last_group
            m.d.sync += [issue.eq(issue + 1), issue_last.eq(issue == before_last_group)]
        valid1 = pipe.reg(issuing, "valid1")
        last1 = pipe.reg(issuing & issue_last, "last1")
        group1 = pipe.reg(issue, "group1")
        mask1 = pipe.reg(Mux(issue_last, tail_mask, (1 << lanes) - 1), "mask1")
        scores = rd.data

        # -- per lane: high bits above / equal to the prefix's, the digit's thermometer code ----
        # (one register stage: two carry chains against registers, a digit mux and a LUT). In
        # the compaction these are "above" and "tie" of the threshold.
        above_top = [scores[lane] > prefix_top for lane in range(lanes)]
        above2 = pipe.reg(Cat(*(mask1[lane] & above_top[lane] for lane in range(lanes))), "above2")
        tie2 = pipe.reg(Cat(*(mask1[lane] & ~above_top[lane] & (scores[lane] >= prefix) for lane in range(lanes))),
                        "tie2")
        digit_reaches = [pipe.reg(Cat(*(scores[lane].word_select(digit_at, TOPK_RADIX_BITS) >= d
                                        for d in range(1, digits))), f"digit_reaches2_{lane}")
                         for lane in range(lanes)]   # bit d - 1: the digit is >= d

        # -- search: comparisons (a LUT each, into the lane counts), running counts ----------
        ge = [Cat(*(above2[lane] | (tie2[lane] & digit_reaches[lane][d - 1]) for lane in range(lanes)))
              if d else None for d in range(digits)]
        valid2 = pipe.reg(valid1, "valid2")
        lane_counts, levels = zip(*(pipe.count(ge[d], f"ge_count_{d}") for d in range(1, digits)))
        counted_valid = pipe.delay(valid2, levels[0], "counted_valid")
        with m.If(counted_valid):
            m.d.sync += [counts[d].eq(counts[d] + lane_counts[d - 1]) for d in range(1, digits)]
        assert 2 + levels[0] + 1 == self.search_latency()

        # -- compaction: above / tie, their prefix counts, keep, slots -------------------
        compact1 = pipe.reg(issuing & compacting, "compact1")
        tags2 = pipe.reg(Cat(compact1, last1, group1), "tags2")
        above_before, above_count, latency = pipe.prefix_counts(above2, "above")
        tie_before, tie_count, _ = pipe.prefix_counts(tie2, "tie")
        above3, tie3 = pipe.delay(above2, latency, "above3"), pipe.delay(tie2, latency, "tie3")
        tags3 = pipe.delay(tags2, latency, "tags3")
        valid3 = tags3[0]
        # keep: above, or a tie among the first ties_usable of the group (lowest index first)
        keep4 = pipe.reg(Cat(*(above3[lane] | (tie3[lane] & (tie_before[lane] < ties_usable))
                               for lane in range(lanes))), "keep4")
        ties_kept = [pipe.reg(Mux(tie_before[lane] < ties_usable, tie_before[lane], ties_usable), f"ties_kept{lane}")
                     for lane in range(lanes)]
        ties_kept_total = pipe.reg(Mux(tie_count < ties_usable, tie_count, ties_usable), "ties_kept_total")
        above4 = [pipe.reg(v, f"above_before4_{lane}") for lane, v in enumerate(above_before)]
        above_count4 = pipe.reg(above_count, "above_count4")
        tags4 = pipe.reg(tags3, "tags4")
        # ties_left and ties_excess (= ties_left - lanes) count down without a clamp (two carry
        # chains, nothing after them); ties_usable clamps the new ties_left to 0..lanes from the
        # two chains' signs, one LUT.
        with m.If(advance & valid3):
            left = ties_left - tie_count
            excess = ties_excess - tie_count
            m.d.sync += [ties_left.eq(left), ties_excess.eq(excess),
                         ties_usable.eq(Mux(left < 0, 0, Mux(excess >= 0, lanes, left)))]
        kept_before5 = [pipe.reg(above4[lane] + ties_kept[lane], f"kept_before5_{lane}") for lane in range(lanes)]
        kept_count5 = pipe.reg(above_count4 + ties_kept_total, "kept_count5")
        keep5, tags5 = pipe.reg(keep4, "keep5"), pipe.reg(tags4, "tags5")
        # slot s holds the lane that is the s-th kept lane: one-hot per slot, then an encoder
        select6 = [pipe.reg(Cat(*(keep5[lane] & (kept_before5[lane] == slot) if lane >= slot else Const(0, 1)
                                  for lane in range(lanes))), f"select6_{slot}") for slot in range(lanes)]
        keep6, count6, tags6 = pipe.reg(keep5, "keep6"), pipe.reg(kept_count5, "count6"), pipe.reg(tags5, "tags6")
        valid6, last6, group6 = tags6[0], tags6[1], tags6[2:]

        def encode(onehot: Value) -> Value:
            return Cat(*(Cat(*(onehot[lane] for lane in range(lanes) if lane >> bit & 1)).any()
                         for bit in range(lane_bits))) if lane_bits else Const(0, 1)

        payload = self.result.payload
        with m.If(advance):
            m.d.sync += [out_valid.eq(valid6), payload.mask.eq(keep6), payload.count.eq(count6),
                         payload.last.eq(last6),
                         *[payload.indices[slot].eq(Cat(encode(select6[slot])[:lane_bits], group6))
                           for slot in range(lanes)]]
        m.d.comb += self.result.valid.eq(out_valid)

        # One-hot states (registers, so that every enable is a LUT or two from a register).
        state = {name: Signal(name=f"state_{name.lower()}", init=name == "IDLE") for name in (
            "IDLE", "PREPARE", "SETUP", "SEARCH", "DRAIN", "REACHES", "CHOOSE", "DECIDE", "COMPACT_SETUP", "COMPACT_SETUP2", "COMPACT")}
        pass_onehot = Signal(passes)
        drain = Signal(range(self.search_latency() + 1))

        def goto(current, following):
            m.d.sync += [state[current].eq(0), state[following].eq(1)]

        def restart_issue():
            return [issue.eq(0), issuing.eq(1), issue_last.eq(last_group == 0)]

        n_last, k_raw, n_raw = Signal(cbits), Signal(cbits), Signal(cbits)
        with m.If(state["IDLE"] & self.start):
            m.d.sync += [n_last.eq(self.n - 1), n_raw.eq(self.n), k_raw.eq(self.k), pass_onehot.eq(1),
                         count_above.eq(0), load_addr.eq(0), *[d.eq(0) for d in digit]]
            with m.If(self.n != 0):
                goto("IDLE", "PREPARE")
        with m.If(state["PREPARE"]):   # from registers: k clamped to n, the last group and its lanes
            tail = n_last[:lane_bits] if lane_bits else Const(0, 1)
            m.d.sync += [k.eq(Mux(k_raw > n_raw, n_raw, k_raw)), last_group.eq(n_last >> lane_bits),
                         before_last_group.eq((n_last >> lane_bits) - 1),
                         tail_mask.eq(Cat(Const(1, 1), *(tail >= lane for lane in range(1, lanes))))]
            goto("PREPARE", "SETUP")
        with m.If(state["SETUP"]):   # this pass's digit position, counts cleared
            for p in range(passes):
                with m.If(pass_onehot[p]):
                    shift = TOPK_SCORE_BITS - TOPK_RADIX_BITS * (p + 1)
                    m.d.sync += [prefix_top.eq(prefix | ((1 << (shift + TOPK_RADIX_BITS)) - 1)),
                                 digit_at.eq(shift // TOPK_RADIX_BITS)]
            m.d.sync += [*[c.eq(0) for c in counts], *restart_issue()]
            goto("SETUP", "SEARCH")
        with m.If(state["SEARCH"] & issue_last):   # one group read per cycle, then the drain
            m.d.sync += [issuing.eq(0), drain.eq(self.search_latency() - 2)]
            goto("SEARCH", "DRAIN")
        with m.If(state["DRAIN"]):
            m.d.sync += drain.eq(drain - 1)
            with m.If(drain == 0):
                goto("DRAIN", "REACHES")
        with m.If(state["REACHES"]):
            m.d.sync += reaches_k.eq(Cat(Const(1, 1), *(counts[d] >= k for d in range(1, digits))))
            goto("REACHES", "CHOOSE")
        with m.If(state["CHOOSE"]):   # the largest digit whose count still reaches k
            m.d.sync += choice_onehot.eq(reaches_k & ~(reaches_k >> 1))
            goto("CHOOSE", "DECIDE")
        with m.If(state["DECIDE"]):
            # digit 0 chosen: the scores above the new prefix are those >= digit 1's candidate
            above_terms = [Mux(choice_onehot[d], counts[d + 1] if d + 1 < digits else count_above, 0)
                           for d in range(digits)]
            new_above = Cat(*(Cat(*(t[bit] for t in above_terms)).any() for bit in range(cbits)))
            choice = Cat(*(Cat(*(choice_onehot[d] for d in range(digits) if d >> bit & 1)).any()
                           for bit in range(TOPK_RADIX_BITS)))
            for p in range(passes):
                with m.If(pass_onehot[p]):
                    m.d.sync += digit[p].eq(choice)
            m.d.sync += [count_above.eq(new_above), pass_onehot.eq(pass_onehot << 1)]
            with m.If(pass_onehot[passes - 1]):
                goto("DECIDE", "COMPACT_SETUP")
            with m.Else():
                goto("DECIDE", "SETUP")
        with m.If(state["COMPACT_SETUP"]):
            m.d.sync += [ties_left.eq(k - count_above), prefix_top.eq(prefix)]
            goto("COMPACT_SETUP", "COMPACT_SETUP2")
        with m.If(state["COMPACT_SETUP2"]):
            m.d.sync += [ties_excess.eq(ties_left - lanes), ties_usable.eq(Mux(ties_left > lanes, lanes, ties_left)),
                         *restart_issue(), compacting.eq(1)]
            goto("COMPACT_SETUP2", "COMPACT")
        with m.If(state["COMPACT"]):
            with m.If(advance & issuing & issue_last):
                m.d.sync += [issuing.eq(0), compacting.eq(0)]
            with m.If(out_valid & self.result.ready & payload.last):
                goto("COMPACT", "IDLE")
        m.d.comb += [self.scores.ready.eq(state["IDLE"]), self.busy.eq(~state["IDLE"])]
        return m
