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

Cycles from ``start`` to the last result beat: ``(passes + 1) * ceil(n / lanes)``
(``passes = 4`` for 16-bit scores), 250 for ``n = 197`` on 4 lanes.
"""

from __future__ import annotations

import math

from amaranth import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.sparse import TOPK_RADIX_BITS, TOPK_SCORE_BITS, count_bits, index_bits, topk_passes

__all__ = ["TopKEngine", "topk_result_layout"]


def topk_result_layout(lanes: int, max_tokens: int) -> data.StructLayout:
    """One result beat: the keep mask of a lane group and its kept indices, packed low."""
    return data.StructLayout({
        "mask": lanes,
        "count": (lanes).bit_length(),
        "indices": data.ArrayLayout(index_bits(max_tokens + lanes), lanes),
        "last": 1,
    })


def popcount(bits: list) -> Value:
    """Number of set bits among single-bit values (an adder tree)."""
    values = list(bits)
    if not values:
        return Const(0, 1)
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


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

    def elaborate(self, platform) -> Module:
        m = Module()
        lanes, groups = self.lanes, self.groups
        cbits = count_bits(self.config.max_tokens)
        gbits = max(1, (groups - 1).bit_length())
        digits = 1 << TOPK_RADIX_BITS

        m.submodules.mem = mem = Memory(
            shape=data.ArrayLayout(unsigned(TOPK_SCORE_BITS), lanes), depth=groups, init=[])
        wr = mem.write_port()
        rd = mem.read_port(domain="comb")  # asynchronous read: one group per cycle, no bubbles

        # -- load ------------------------------------------------------------------------
        load_addr = Signal(range(groups + 1))
        m.d.comb += [wr.addr.eq(load_addr), wr.data.eq(self.scores.payload)]
        with m.If(self.scores.valid & self.scores.ready & (load_addr < groups)):
            m.d.comb += wr.en.eq(1)
            m.d.sync += load_addr.eq(load_addr + 1)

        # -- state -----------------------------------------------------------------------
        n = Signal(cbits)
        k = Signal(cbits)
        last_group = Signal(gbits)
        group = Signal(gbits)
        shift_pass = Signal(range(topk_passes()))  # pass p resolves bits [shift(p), shift(p)+radix)
        prefix = Signal(TOPK_SCORE_BITS)
        count_above = Signal(cbits)  # scores above every value with the current prefix
        counts = [Signal(cbits, name=f"count_{d}") for d in range(digits)]  # counts[0] unused
        ties_left = Signal(cbits)

        m.d.comb += rd.addr.eq(group)
        scores = rd.data
        lane_valid = [(group * lanes + lane) < n for lane in range(lanes)]

        shift = Signal(range(TOPK_SCORE_BITS))
        m.d.comb += shift.eq(TOPK_SCORE_BITS - TOPK_RADIX_BITS * (shift_pass + 1))

        # Candidate threshold comparisons for this group: ge[d][lane].
        ge = [[Signal(name=f"ge_{d}_{lane}") for lane in range(lanes)] for d in range(digits)]
        for d in range(1, digits):
            candidate = Signal(TOPK_SCORE_BITS + 1, name=f"candidate_{d}")
            m.d.comb += candidate.eq(prefix | (Const(d, TOPK_RADIX_BITS) << shift))
            for lane in range(lanes):
                m.d.comb += ge[d][lane].eq(lane_valid[lane] & (scores[lane] >= candidate))

        # Compaction: keep scores above the threshold and the first ties.
        above = [Signal(name=f"above_{lane}") for lane in range(lanes)]
        tie = [Signal(name=f"tie_{lane}") for lane in range(lanes)]
        keep = [Signal(name=f"keep_{lane}") for lane in range(lanes)]
        for lane in range(lanes):
            m.d.comb += [
                above[lane].eq(lane_valid[lane] & (scores[lane] > prefix)),
                tie[lane].eq(lane_valid[lane] & (scores[lane] == prefix)),
                keep[lane].eq(above[lane] | (tie[lane] & (popcount(tie[:lane]) < ties_left))),
            ]
        ties_taken = popcount([tie[lane] & keep[lane] for lane in range(lanes)])
        payload = self.result.payload
        m.d.comb += [payload.mask.eq(Cat(*keep)), payload.count.eq(popcount(keep)),
                     payload.last.eq(group == last_group)]
        # Slot s holds the index of the lane that is the s-th kept lane of the group: a pure
        # OR of one-hot terms (if-chains on the same signal simulated wrongly under Icarus 11).
        kept_before = [Signal(range(lanes + 1), name=f"kept_before_{lane}") for lane in range(lanes)]
        for lane in range(lanes):
            m.d.comb += kept_before[lane].eq(popcount(keep[:lane]))
        for slot in range(lanes):
            terms = [Mux(keep[lane] & (kept_before[lane] == slot), group * lanes + lane, 0)
                     for lane in range(slot, lanes)]
            value = terms[0]
            for term in terms[1:]:
                value = value | term
            m.d.comb += payload.indices[slot].eq(value)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    n_eff = Mux(self.n == 0, 1, self.n)
                    m.d.sync += [
                        n.eq(self.n), k.eq(Mux(self.k > self.n, self.n, self.k)),
                        last_group.eq((n_eff - 1) >> (lanes.bit_length() - 1)), group.eq(0), shift_pass.eq(0),
                        prefix.eq(0), count_above.eq(0), load_addr.eq(0),
                        *[c.eq(0) for c in counts],
                    ]
                    with m.If(self.n != 0):
                        m.next = "SEARCH"
            with m.State("SEARCH"):
                last = group == last_group
                # Counts including this group (the digit choice at the end of a pass needs them).
                totals = [counts[d] + popcount(ge[d]) if d else Const(0) for d in range(digits)]
                m.d.sync += [counts[d].eq(totals[d]) for d in range(1, digits)]
                m.d.sync += group.eq(Mux(last, 0, group + 1))
                with m.If(last):
                    # Largest digit whose count still reaches k (digit 0 always does).
                    choice = Signal(TOPK_RADIX_BITS)
                    new_above = Signal(cbits)
                    # Digit 0 chosen: the scores above the new prefix are those >= digit 1.
                    m.d.comb += [choice.eq(0), new_above.eq(totals[1])]
                    for d in range(1, digits):
                        with m.If(totals[d] >= k):
                            m.d.comb += choice.eq(d)
                            m.d.comb += new_above.eq(totals[d + 1] if d + 1 < digits else count_above)
                    new_prefix = prefix | (choice << shift)
                    m.d.sync += [prefix.eq(new_prefix), count_above.eq(new_above),
                                 *[c.eq(0) for c in counts]]
                    with m.If(shift_pass == topk_passes() - 1):
                        m.d.sync += ties_left.eq(k - new_above)
                        m.next = "COMPACT"
                    with m.Else():
                        m.d.sync += shift_pass.eq(shift_pass + 1)
            with m.State("COMPACT"):
                m.d.comb += self.result.valid.eq(1)
                with m.If(self.result.ready):
                    m.d.sync += [group.eq(group + 1), ties_left.eq(ties_left - ties_taken)]
                    with m.If(group == last_group):
                        m.next = "IDLE"
        # Outside the FSM's processes: a continuous assignment is evaluated at time zero, which
        # Icarus 11 does not do for a combinational process whose inputs never change.
        m.d.comb += [self.scores.ready.eq(fsm.ongoing("IDLE")), self.busy.eq(~fsm.ongoing("IDLE"))]
        return m
