"""Sparse score-stationary attention unit (Sanger): SDDMM, softmax and SpMM on one PE array.

See ``docs/sparse_attention.md`` for the design. In short: the compiler packs the predicted
mask (:func:`vitaccel.sim.golden.attention.pack_mask_for`) and schedules the packed rows
into *waves* (:func:`~vitaccel.sim.golden.attention.schedule_waves`), one packed row per PE
row per wave, queries ``i`` on PE row ``i % sparse_pe_rows``. Every PE ``(r, c)`` owns the
score of slot ``c`` of its row's packed row in every wave and keeps it, in its own score
memory, from the SDDMM through the softmax (where it is replaced by its exponential) to the
SpMM. Phases, each a loop over the waves:

``CLEAR``   per-query state (row max, row sum, output accumulators), one query per cycle.
``SDDMM``   ``d`` cycles per wave (the run's ``head_dim``): ``q_i[t]`` is broadcast along PE row ``r``, the
            ``W = mask_block_cols`` keys of the row's column block arrive on ``W`` lanes
            (``K`` is stored block-transposed) and each PE picks its key by its offset.
``MAX``     one cycle per wave: per PE row, the max of its valid scores folds into the row max.
``EXPSUM``  one cycle per wave (pipelined :class:`~vitaccel.hw.nonlinear.arith.ExpStage`):
            ``e = exp(score - max)`` replaces the score in place; the row sums accumulate.
``RECIP``   one :class:`~vitaccel.hw.nonlinear.arith.Reciprocal` per PE row, per query.
``SPMM``    ``d + 2`` cycles per wave: the PE turns its ``e`` into the uint8
            probability ``p`` (reciprocal broadcast), then multiplies ``p`` by ``v_j[t]``; the
            PE row's adder tree sums the ``sparse_pe_cols`` products into the query's output.
``READOUT`` one output row per cycle, requantized to int8.
"""

from __future__ import annotations

import math

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.hw.nonlinear.arith import SHIFT_BITS, ExpStage, Reciprocal, round_shift, saturate
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.luts import EXP_VALUE_BITS, RECIP_FRAC_BITS
from vitaccel.hw.spec.nonlinear import SOFTMAX_DIFF_BITS, SOFTMAX_MULT_BITS, SOFTMAX_OUTPUT_BITS
from vitaccel.hw.spec.numerics import MULTIPLIER_BITS
from vitaccel.hw.spec.sparse import (AttentionLoad, count_bits, mask_block_cols, packed_row_fields,
                                     score_bits)

__all__ = ["LoadTarget", "SparseAttention", "packed_row_layout", "max_waves_for"]


class LoadTarget(enum.Enum, shape=2):
    """Which memory a ``load`` write goes to (values and word layouts: :class:`AttentionLoad`)."""

    Q = AttentionLoad.Q.value
    K = AttentionLoad.K.value
    V = AttentionLoad.V.value
    WAVES = AttentionLoad.WAVES.value


def packed_row_layout(config: AccelConfig) -> data.StructLayout:
    """The packed-row word of :func:`~vitaccel.hw.spec.sparse.packed_row_fields` as a layout."""
    fields = packed_row_fields(max_tokens=config.max_tokens, pe_cols=config.sparse_pe_cols)
    cols = config.sparse_pe_cols
    return data.StructLayout({
        "query": fields["query"], "block": fields["block"], "valid": fields["valid"],
        "offset": data.ArrayLayout(fields["offset"] // cols, cols),
    })


def max_waves_for(config: AccelConfig) -> int:
    """Waves of the densest possible mask: the depth of the wave and score memories."""
    width = mask_block_cols(config.sparse_pe_cols)
    per_query = math.ceil(config.max_tokens / width) * math.ceil(width / config.sparse_pe_cols)
    return math.ceil(config.max_tokens / config.sparse_pe_rows) * per_query


class SparseAttention(wiring.Component):
    """Score-stationary sparse attention for one head on a ``sparse_pe_rows x sparse_pe_cols`` array.

    Parameters
    ----------
    config : AccelConfig
        PE array shape, ``max_tokens``, exp/reciprocal table sizes.
    max_head_dim : int, optional
        Widest Q/K/V row the memories hold, 1..256 (default ``config.sparse_max_head_dim``).
        The head dim of a run (``head_dim``) is any ``1..max_head_dim``; K and V words stay
        ``block * max_head_dim + t`` (:class:`AttentionLoad` with ``head_dim = max_head_dim``).

    Attributes
    ----------
    load_en, load_target, load_addr, load_data, load_mask : in
        One memory word written per cycle while idle (see :class:`LoadTarget`); ``load_mask``
        has a bit per int8 element (Q, K, V) or per PE row (WAVES): only those are written.
    start : in
        Pulse: run on the loaded operands with the parameters below (sampled at ``start``).
    tokens, waves, head_dim : in
        Sequence length (``1..max_tokens``), the number of waves in the wave memory and the
        elements per row of this run (``1..max_head_dim``; output elements past it are
        meaningless).
    softmax_multiplier, softmax_shift, out_multiplier, out_shift : in
        :class:`~vitaccel.hw.spec.nonlinear.SoftmaxParams` and the output requantization.
    busy : out
        High from ``start`` until the last output row is accepted.
    out : stream, out
        One row of ``max_head_dim`` int8 per query in order, ``last`` on the final one.
    """

    def __init__(self, *, config: AccelConfig, max_head_dim: int | None = None) -> None:
        self._MustUse__silence = True  # until constructed: a rejected unit is not "unused"
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        head_dim = config.sparse_max_head_dim if max_head_dim is None else max_head_dim
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or not 1 <= head_dim <= 256:
            raise ValueError(f"max_head_dim: must be an integer in 1..256, got {head_dim!r}")
        self._MustUse__silence = False
        self.config = config
        self.max_head_dim = head_dim
        self.rows, self.cols = config.sparse_pe_rows, config.sparse_pe_cols
        self.block_cols = mask_block_cols(self.cols)
        self.n_blocks = math.ceil(config.max_tokens / self.block_cols)
        self.max_waves = max_waves_for(config)
        self.row_layout = packed_row_layout(config)
        self.load_bits = max(8 * head_dim, 8 * self.block_cols, self.rows * self.row_layout.size)
        self.load_lanes = max(head_dim, self.block_cols, self.rows)
        super().__init__({
            "load_en": In(1),
            "load_target": In(LoadTarget),
            "load_addr": In(range(max(self.max_waves, config.max_tokens, self.n_blocks * head_dim))),
            "load_data": In(self.load_bits),
            "load_mask": In(self.load_lanes),
            "start": In(1),
            "tokens": In(count_bits(config.max_tokens)),
            "head_dim": In(range(head_dim + 1)),
            "waves": In(range(self.max_waves + 1)),
            "softmax_multiplier": In(SOFTMAX_MULT_BITS),
            "softmax_shift": In(SHIFT_BITS),
            "out_multiplier": In(MULTIPLIER_BITS),
            "out_shift": In(SHIFT_BITS),
            "busy": Out(1),
            "out": Out(stream.Signature(data.StructLayout({
                "row": data.ArrayLayout(signed(8), head_dim), "last": 1}))),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg, d, rows, cols, width = self.config, self.max_head_dim, self.rows, self.cols, self.block_cols
        n_max = cfg.max_tokens
        sbits = max(score_bits(d), EXP_VALUE_BITS + 1)        # a score, later its exp, in place
        sum_bits = EXP_VALUE_BITS + count_bits(n_max)
        int8 = signed(8)

        # -- operand and schedule memories (written by load, read through per-row ports) ----
        def operand_memory(name, shape, depth, target):
            mem = Memory(shape=shape, depth=depth, init=[])
            m.submodules[name] = mem
            wr = mem.write_port(granularity=1)   # one enable per array element
            selected = self.load_en & (self.load_target == target) & ~self.busy
            m.d.comb += [wr.addr.eq(self.load_addr), wr.data.eq(self.load_data[:wr.data.shape().size]),
                         wr.en.eq(Mux(selected, self.load_mask[:len(wr.en)], 0))]
            return mem

        q_mem = operand_memory("q_mem", data.ArrayLayout(int8, d), n_max, LoadTarget.Q)
        kv_shape = data.ArrayLayout(int8, width)
        k_mem = operand_memory("k_mem", kv_shape, self.n_blocks * d, LoadTarget.K)
        v_mem = operand_memory("v_mem", kv_shape, self.n_blocks * d, LoadTarget.V)
        wave_mem = operand_memory("wave_mem", data.ArrayLayout(self.row_layout, rows),
                                  self.max_waves, LoadTarget.WAVES)
        wave_port = wave_mem.read_port(domain="comb")
        wave = wave_port.data

        # -- control state -------------------------------------------------------------------
        tokens = Signal.like(self.tokens)
        d_last = Signal(range(d))                                 # run-time head dim - 1
        n_waves = Signal.like(self.waves)
        sm_mult, sm_shift = Signal.like(self.softmax_multiplier), Signal.like(self.softmax_shift)
        out_mult, out_shift = Signal.like(self.out_multiplier), Signal.like(self.out_shift)
        w = Signal(range(self.max_waves + ExpStage.LATENCY + 1))   # wave counter
        t = Signal(range(d))                                      # head-dim counter
        i = Signal(range(n_max + rows + 1), name="query")       # query counter; not "i": Verilog `integer i`
        m.d.comb += wave_port.addr.eq(w)

        exp_stages = []
        for r in range(rows):
            stage = ExpStage(lanes=cols, exp_lut_bits=cfg.exp_lut_bits)
            m.submodules[f"exp_{r}"] = stage
            m.d.comb += [stage.multiplier.eq(sm_mult), stage.shift.eq(sm_shift)]
            exp_stages.append(stage)

        phase_clear, phase_sddmm, phase_max, phase_expsum = (Signal(name=f"in_{p}") for p in
                                                            ("clear", "sddmm", "max", "expsum"))
        phase_recip_start, phase_recip_write, phase_latch, phase_mac, phase_writeback = (
            Signal(name=f"in_{p}") for p in ("recip_start", "recip_write", "latch", "mac", "writeback"))

        slots = -(-n_max // rows)       # queries a PE row owns
        i_slot = i // rows              # CLEAR, READOUT: the slot of query i
        readout_rows = []
        recip_done = Signal()
        # -- one PE row at a time: its memories, its PEs ---------------------------------------
        for r in range(rows):
            packed = wave[r]
            slot = packed.query // rows
            any_valid = packed.valid.any()
            q_port = q_mem.read_port(domain="comb")
            k_port = k_mem.read_port(domain="comb")
            v_port = v_mem.read_port(domain="comb")
            m.d.comb += [q_port.addr.eq(packed.query), k_port.addr.eq(packed.block * d + t),
                         v_port.addr.eq(packed.block * d + t)]
            q_value = q_port.data[t]

            # Per-query state of the queries this PE row owns.
            # Per-query state of the queries this PE row owns (query i at slot i // rows): a
            # memory as deep as the row's share of the queries, not as all of them.
            def state_memory(name, shape):
                mem = Memory(shape=shape, depth=slots, init=[])
                m.submodules[f"{name}_{r}"] = mem
                return mem.write_port(), mem.read_port(domain="comb")

            max_wr, max_rd = state_memory("row_max", signed(sbits))
            sum_wr, sum_rd = state_memory("row_sum", unsigned(sum_bits))
            recip_layout = data.StructLayout({"y": RECIP_FRAC_BITS + 2, "k": range(sum_bits + 1)})
            recip_wr, recip_rd = state_memory("row_recip", recip_layout)
            acc_layout = data.ArrayLayout(signed(32), d)
            acc_wr, acc_rd = state_memory("acc", acc_layout)
            readout_rows.append(acc_rd)

            recip = Reciprocal(value_bits=sum_bits, lut_bits=cfg.recip_lut_bits)
            m.submodules[f"reciprocal_{r}"] = recip
            if r == 0:
                m.d.comb += recip_done.eq(recip.done)

            # Pipeline of EXPSUM: the query and the wave of the exps leaving the ExpStage.
            exp_query = [Signal.like(packed.query, name=f"exp_query_{r}_{s}") for s in range(ExpStage.LATENCY)]
            exp_valid = [Signal(cols, name=f"exp_valid_{r}_{s}") for s in range(ExpStage.LATENCY)]
            exp_wave = [Signal.like(w, name=f"exp_wave_{r}_{s}") for s in range(ExpStage.LATENCY)]
            # Only waves fed during EXPSUM may leave the pipeline as valid.
            feeding = Mux(phase_expsum & (w < n_waves), packed.valid, 0)
            m.d.sync += [exp_query[0].eq(packed.query), exp_valid[0].eq(feeding), exp_wave[0].eq(w)]
            for s in range(1, ExpStage.LATENCY):
                m.d.sync += [exp_query[s].eq(exp_query[s - 1]), exp_valid[s].eq(exp_valid[s - 1]),
                             exp_wave[s].eq(exp_wave[s - 1])]
            exp_out_query, exp_out_valid, exp_out_wave = exp_query[-1], exp_valid[-1], exp_wave[-1]

            stage = exp_stages[r]
            m.d.comb += stage.valid.eq(feeding)
            # SpMM state: probabilities latched per wave, this row's output partials per t.
            acc_vec = [Signal(signed(32), name=f"acc_vec_{r}_{e}") for e in range(d)]
            products = []
            row_max = max_rd.data
            scores, exps = [], []
            for c in range(cols):
                valid = packed.valid[c]
                score_mem = Memory(shape=signed(sbits), depth=self.max_waves, init=[])
                m.submodules[f"score_{r}_{c}"] = score_mem
                s_wr, s_rd = score_mem.write_port(), score_mem.read_port(domain="comb")
                m.d.comb += s_rd.addr.eq(w)
                scores.append((valid, s_rd.data))
                # SDDMM: multiply-accumulate over t, store the score on the last step.
                product = Signal(signed(16), name=f"qk_{r}_{c}")
                partial = Signal(signed(sbits), name=f"dot_{r}_{c}")
                dot = Signal(signed(sbits), name=f"dot_acc_{r}_{c}")
                m.d.comb += [product.eq(q_value * k_port.data[packed.offset[c]]),
                             partial.eq(Mux(t == 0, 0, dot) + product)]
                with m.If(phase_sddmm):
                    m.d.sync += dot.eq(partial)
                    m.d.comb += [s_wr.addr.eq(w), s_wr.data.eq(partial), s_wr.en.eq(valid & (t == d_last))]
                # EXPSUM: diff to the row max into the exp pipeline; its output replaces the score.
                diff = row_max - s_rd.data
                m.d.comb += stage.diff[c].eq(Mux(diff > (1 << SOFTMAX_DIFF_BITS) - 1,
                                                 (1 << SOFTMAX_DIFF_BITS) - 1, diff))
                with m.If(phase_expsum):
                    m.d.comb += [s_wr.addr.eq(exp_out_wave), s_wr.data.eq(stage.exp[c]),
                                 s_wr.en.eq(exp_out_valid[c])]
                exps.append(Mux(exp_out_valid[c], stage.exp[c], 0))
                # SPMM: p = sat8(round(e * y / 2^(k + RECIP_FRAC_BITS - 8))), then p * v[t].
                prob = Signal(SOFTMAX_OUTPUT_BITS, name=f"p_{r}_{c}")
                y = recip_rd.data.y
                k = recip_rd.data.k
                scaled = round_shift(s_rd.data.as_unsigned()[:EXP_VALUE_BITS] * y,
                                     (k + RECIP_FRAC_BITS - SOFTMAX_OUTPUT_BITS)[:SHIFT_BITS])
                with m.If(phase_latch):
                    m.d.sync += prob.eq(Mux(valid, saturate(scaled, SOFTMAX_OUTPUT_BITS, signed_out=False), 0))
                products.append(prob * v_port.data[packed.offset[c]])

            # Row max: fold this wave's valid scores into the stored max.
            m.d.comb += max_rd.addr.eq(slot)
            folded = row_max
            for valid, score in scores:
                folded = Mux(valid & (score > folded), score, folded)
            # Row sum: the exps leaving the pipeline add into their query's sum.
            exp_total = sum(exps)
            # Port addressing per phase.
            with m.If(phase_clear):
                m.d.comb += [max_wr.addr.eq(i_slot), max_wr.data.eq(-(1 << (sbits - 1))), max_wr.en.eq(i < tokens),
                             sum_wr.addr.eq(i_slot), sum_wr.data.eq(0), sum_wr.en.eq(i < tokens),
                             acc_wr.addr.eq(i_slot), acc_wr.data.eq(0), acc_wr.en.eq(i < tokens)]
            with m.If(phase_max):
                m.d.comb += [max_wr.addr.eq(slot), max_wr.data.eq(folded),
                             max_wr.en.eq(any_valid & (w < n_waves))]
            with m.If(phase_expsum):
                m.d.comb += [sum_rd.addr.eq(exp_out_query // rows), sum_wr.addr.eq(exp_out_query // rows),
                             sum_wr.data.eq(sum_rd.data + exp_total), sum_wr.en.eq(exp_out_valid.any())]
            # RECIP: query i * rows + r of this PE row; start, then store the answer when done.
            query_r = i * rows + r
            with m.If(phase_recip_start):
                m.d.comb += [sum_rd.addr.eq(i), recip.start.eq(1),
                             recip.value.eq(Mux(sum_rd.data == 0, 1, sum_rd.data))]
            with m.If(phase_recip_write):
                m.d.comb += [recip_wr.addr.eq(i), recip_wr.data.y.eq(recip.result),
                             recip_wr.data.k.eq(recip.exponent), recip_wr.en.eq(recip.done & (query_r < tokens))]
            with m.If(phase_latch | phase_mac | phase_writeback):
                m.d.comb += [recip_rd.addr.eq(slot), acc_rd.addr.eq(slot)]
            row_partial = Signal(signed(32), name=f"pv_{r}")  # sign-extended before it is packed
            m.d.comb += row_partial.eq(sum(products))
            for e, slot_partial in enumerate(acc_vec):   # step t's output partial into slot t
                with m.If(phase_mac & (t == e)):
                    m.d.sync += slot_partial.eq(row_partial)
            with m.If(phase_writeback):
                m.d.comb += [acc_wr.addr.eq(slot), acc_wr.en.eq(any_valid)]
                for e in range(d):
                    m.d.comb += acc_wr.data[e].eq(acc_rd.data[e] + acc_vec[e])

        # -- readout: requantize the accumulators of query i, owned by PE row i % rows ------
        out_row = data.ArrayLayout(signed(32), d)
        selected = Signal(out_row)
        for r, port in enumerate(readout_rows):
            with m.If(~(phase_latch | phase_mac | phase_writeback)):
                m.d.comb += port.addr.eq(i_slot)
            with m.If(i % rows == r):
                m.d.comb += selected.eq(port.data)
        for e in range(d):
            m.d.comb += self.out.payload.row[e].eq(
                saturate(round_shift(selected[e] * out_mult, out_shift), 8))
        m.d.comb += self.out.payload.last.eq(i == tokens - 1)

        # -- sequencing ----------------------------------------------------------------------
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [tokens.eq(self.tokens), n_waves.eq(self.waves),
                                 sm_mult.eq(self.softmax_multiplier), sm_shift.eq(self.softmax_shift),
                                 out_mult.eq(self.out_multiplier), out_shift.eq(self.out_shift),
                                 d_last.eq(self.head_dim - 1), i.eq(0), w.eq(0), t.eq(0)]
                    with m.If(self.tokens != 0):
                        m.next = "CLEAR"
            with m.State("CLEAR"):
                m.d.comb += [phase_clear.eq(1)]
                m.d.sync += i.eq(i + 1)
                with m.If(i == tokens - 1):
                    m.next = "SDDMM"
            with m.State("SDDMM"):
                m.d.comb += [phase_sddmm.eq(w < n_waves)]
                with m.If(w == n_waves):
                    m.d.sync += w.eq(0)
                    m.next = "MAX"
                with m.Elif(t == d_last):
                    m.d.sync += [t.eq(0), w.eq(w + 1)]
                with m.Else():
                    m.d.sync += t.eq(t + 1)
            with m.State("MAX"):
                m.d.comb += [phase_max.eq(1)]
                m.d.sync += w.eq(w + 1)
                with m.If(w >= n_waves):
                    m.d.sync += w.eq(0)
                    m.next = "EXPSUM"
            with m.State("EXPSUM"):
                m.d.comb += [phase_expsum.eq(1)]
                m.d.sync += w.eq(w + 1)
                with m.If(w == n_waves + ExpStage.LATENCY):
                    m.d.sync += [w.eq(0), i.eq(0)]
                    m.next = "RECIP_START"
            with m.State("RECIP_START"):
                m.d.comb += [phase_recip_start.eq(1)]
                m.next = "RECIP_WAIT"
            with m.State("RECIP_WAIT"):
                m.d.comb += [phase_recip_write.eq(1)]
                with m.If(recip_done):
                    m.d.sync += i.eq(i + 1)
                    with m.If((i + 1) * rows >= tokens):
                        m.next = "LATCH"
                    with m.Else():
                        m.next = "RECIP_START"
            with m.State("LATCH"):
                m.d.comb += [phase_latch.eq(1)]
                m.d.sync += t.eq(0)
                with m.If(w == n_waves):
                    m.d.sync += i.eq(0)
                    m.next = "READOUT"
                with m.Else():
                    m.next = "MAC"
            with m.State("MAC"):
                m.d.comb += [phase_mac.eq(1)]
                m.d.sync += t.eq(t + 1)
                with m.If(t == d_last):
                    m.next = "WRITEBACK"
            with m.State("WRITEBACK"):
                m.d.comb += [phase_writeback.eq(1)]
                m.d.sync += w.eq(w + 1)
                m.next = "LATCH"
            with m.State("READOUT"):
                m.d.comb += [self.out.valid.eq(1)]
                with m.If(self.out.ready):
                    m.d.sync += i.eq(i + 1)
                    with m.If(i == tokens - 1):
                        m.next = "IDLE"
        # Outside the FSM's processes: a continuous assignment is evaluated at time zero, which
        # Icarus 11 does not do for a combinational process whose inputs never change.
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
