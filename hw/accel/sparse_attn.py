"""SPARSE_ATTN in the accelerator: Sanger's mask prediction and packing on chip, then the unit.

:class:`SparseAttentionController` executes ``isa.DESCRIPTIONS[Opcode.SPARSE_ATTN]`` on the
score-stationary unit (:class:`~vitaccel.hw.sparse_attention.SparseAttention`, built for
``config.sparse_max_head_dim``). Phases (``sim/perf/units.py`` counts their cycles):

``CHECK``   the golden machine's checks, in its order (``GoldenMachine._sparse_attn``): shape
            (``0 < m == n <= max_tokens``, ``1 <= d <= sparse_max_head_dim``; INVALID_OPERAND),
            Q, K, V, the mask (``predict=0`` only) out of VECTOR and the parameter block out of
            ACC (ADDRESS_OUT_OF_RANGE); the parameters the kernels reject (INVALID_OPERAND:
            softmax shift, multiplier, table widths other than the config's; an output
            multiplier of 2^31 or more, an output shift outside ``1..MAX_SHIFT``, a margin of
            ``PREDICT_MARGIN_LIMIT`` or more); the output out of VECTOR (ADDRESS_OUT_OF_RANGE).
``LOAD``    Q, K and V from VECTOR, one byte per cycle (the unit stores K and V
            block-transposed, so a K row scatters over ``d`` unit words anyway). The bytes of Q
            and K also go, cut to 4 bits (``sat4(round_shift(x, 4))``), into the predictor's
            ``q4`` (a row per word) and ``k4`` (``sparse_pe_cols`` keys per word) memories.
``MASK``    per query, the mask row in groups of ``sparse_pe_cols`` keys. ``predict=1``: the
            predictor takes a group per cycle (``sparse_pe_cols x d`` 4-bit products and adder
            trees): one pass folds the row max, a second compares every predicted score with
            ``max - margin``. ``predict=0``: the row's mask bytes are read from VECTOR, one per
            cycle. Each group goes through the packer.
``PACK``    Sanger's packing, one group per cycle: the group's set keys are compacted behind
            the packed row being filled; a full row (``sparse_pe_cols`` keys) is written to the
            unit's wave memory, at the next free wave of PE row ``i % sparse_pe_rows``. After the
            last group of a ``mask_block_cols`` block, one cycle flushes the partly filled row
            (a sub-row never shares a packed row with another block; empty sub-rows give none).
            The packed rows and their waves are those of
            :func:`~vitaccel.sim.golden.attention.encode_waves` (same split, order and slots).
``FILL``    one cycle per wave: the slots of PE rows that ran out of packed rows become bubbles.
``RUN``     the unit (SDDMM, softmax, SpMM); each output row is written to VECTOR, a byte per cycle.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.hw.nonlinear.arith import SHIFT_BITS, register
from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig, ConfigError
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer
from vitaccel.hw.spec.nonlinear import SOFTMAX_MULT_BITS
from vitaccel.hw.spec.numerics import MAX_SHIFT, MULTIPLIER_BITS
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.hw.spec.sparse import PREDICT_BITS, PREDICT_MARGIN_LIMIT, PREDICT_SHIFT, mask_block_cols

from .decode import first_failure, instruction_unit_members, instruction_view

__all__ = ["SparseAttentionController"]

_ADDR_BITS = 24
_LANE_BITS = (ADDR_UNIT - 1).bit_length()


def predict_value(x: Value) -> Value:
    """An int8 cut to the predictor's :data:`PREDICT_BITS` (``sat(round_shift(x, 4))``)."""
    shifted = (x.as_signed() + (1 << (PREDICT_SHIFT - 1))) >> PREDICT_SHIFT
    top = (1 << (PREDICT_BITS - 1)) - 1
    return Mux(shifted > top, top, shifted)[:PREDICT_BITS]   # never below -8: no low clamp


class SparseAttentionController(wiring.Component):
    """Executes SPARSE_ATTN (see the module docstring).

    Parameters
    ----------
    config : AccelConfig
        Must have ``has_sparse_attention``; supplies the PE array, ``max_tokens``,
        ``sparse_max_head_dim`` and the buffer sizes.

    Attributes
    ----------
    word, start, done, error, error_code : the compute-queue controller members
        (:func:`~.decode.instruction_unit_members`).
    read, read_addr, read_data : VECTOR read port (byte address; 16-byte data a cycle later).
    acc_read, acc_read_addr, acc_read_data : ACC read port (parameters).
    write, write_addr, write_data : VECTOR byte write (output rows).
    """

    #: Cycles of the operand checks: the registered ends and compares, then CHECK.
    CHECK_STAGES = 2

    def __init__(self, *, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config: expected an AccelConfig, got {type(config).__name__}")
        if not config.has_sparse_attention:
            raise ConfigError(f"SparseAttentionController: config {config.name!r} has no sparse attention unit")
        self.config = config
        super().__init__({
            **instruction_unit_members(),
            "read": Out(1), "read_addr": Out(_ADDR_BITS), "read_data": In(ADDR_UNIT * 8),
            "acc_read": Out(1), "acc_read_addr": Out(_ADDR_BITS), "acc_read_data": In(ADDR_UNIT * 8),
            "write": Out(1), "write_addr": Out(_ADDR_BITS), "write_data": Out(8),
        })

    def elaborate(self, platform):
        from vitaccel.hw.sparse_attention import LoadTarget, SparseAttention, max_waves_for

        m = Module()
        cfg = self.config
        dmax, rows, cols = cfg.sparse_max_head_dim, cfg.sparse_pe_rows, cfg.sparse_pe_cols
        width = mask_block_cols(cols)
        groups_per_block = width // cols
        n_max = cfg.max_tokens
        max_groups = -(-n_max // cols)
        vector_bytes = isa.buffer_bytes(cfg, Buffer.VECTOR)
        acc_bytes = isa.buffer_bytes(cfg, Buffer.ACC)
        m.submodules.unit = unit = SparseAttention(config=cfg, max_head_dim=dmax)
        max_waves = max_waves_for(cfg)

        instr = instruction_view(self.word).sparse_attn
        n, d = instr.n, instr.d
        q_base, k_base, v_base = (instr.q_addr * ADDR_UNIT, instr.k_addr * ADDR_UNIT, instr.v_addr * ADDR_UNIT)
        mask_base, out_base = instr.mask_addr * ADDR_UNIT, instr.out_addr * ADDR_UNIT
        param_base = instr.param_addr * ADDR_UNIT
        predict = instr.predict

        # ---- operand checks: a register for the products and ends, one for the compares -------
        matrix_bytes = register(m, n * d, "matrix_bytes")
        mask_bytes = register(m, n * n, "mask_bytes")
        bad_shape = register(m, (instr.m != n) | (n == 0) | (n > n_max) | (d == 0) | (d > dmax), "bad_shape")
        q_out = register(m, q_base + matrix_bytes > vector_bytes, "q_out")
        k_out = register(m, k_base + matrix_bytes > vector_bytes, "k_out")
        v_out = register(m, v_base + matrix_bytes > vector_bytes, "v_out")
        mask_out = register(m, ~predict & (mask_base + mask_bytes > vector_bytes), "mask_out")
        param_out = register(m, param_base + 4 * isa.SPARSE_ATTN_PARAM_WORDS > acc_bytes, "param_out")
        out_out = register(m, out_base + matrix_bytes > vector_bytes, "out_out")

        # ---- parameters (isa.pack_sparse_attn_params: two ACC rows) ---------------------------
        sm_mult, sm_shift, exp_bits, recip_bits = (Signal(32, name=f"softmax_{x}") for x in
                                                   ("multiplier", "shift", "exp_bits", "recip_bits"))
        out_mult, out_shift, margin = (Signal(32, name=x) for x in ("out_multiplier", "out_shift", "margin"))
        bad_params = Signal()
        m.d.comb += bad_params.eq(
            (sm_shift > MAX_SHIFT) | (sm_mult >= 1 << SOFTMAX_MULT_BITS) | (exp_bits != cfg.exp_lut_bits)
            | (recip_bits != cfg.recip_lut_bits) | (out_mult >= 1 << MULTIPLIER_BITS) | (out_shift == 0)
            | (out_shift > MAX_SHIFT) | (predict & (margin >= PREDICT_MARGIN_LIMIT)))
        m.d.comb += [unit.tokens.eq(n), unit.head_dim.eq(d), unit.softmax_multiplier.eq(sm_mult),
                     unit.softmax_shift.eq(sm_shift[:SHIFT_BITS]), unit.out_multiplier.eq(out_mult),
                     unit.out_shift.eq(out_shift[:SHIFT_BITS])]

        # ---- VECTOR byte reads: address this cycle, the byte the next ------------------------
        read_lane = Signal(_LANE_BITS)
        byte = Signal(8)
        m.d.comb += byte.eq(self.read_data.word_select(read_lane, 8))

        def read_at(address):
            m.d.comb += [self.read.eq(1), self.read_addr.eq(address)]
            m.d.sync += read_lane.eq(address[:_LANE_BITS])

        # ---- counters ------------------------------------------------------------------------
        address = Signal(_ADDR_BITS)          # next VECTOR byte
        row = Signal(range(n_max + 1))        # token (LOAD), query (MASK), output row (RUN)
        t = Signal(range(dmax + 1))           # element of the row
        blk = Signal(range(-(-n_max // width) + 1))   # K/V block of ``row``
        lane = Signal(range(width))           # ``row`` inside its block
        matrix = Signal(range(3))             # 0 Q, 1 K, 2 V
        # The byte read last cycle and where it goes.
        pend_valid = Signal()
        pend_matrix = Signal.like(matrix)
        pend_row, pend_t, pend_blk, pend_lane = (Signal.like(s, name=f"pend_{s.name}") for s in (row, t, blk, lane))
        d_last = Signal(range(dmax))
        n_last = Signal(range(n_max))
        m.d.sync += [d_last.eq(d - 1), n_last.eq(n - 1)]

        # ---- predictor memories --------------------------------------------------------------
        q4_mem = Memory(shape=unsigned(PREDICT_BITS * dmax), depth=n_max, init=[])
        k4_mem = Memory(shape=unsigned(PREDICT_BITS * dmax * cols), depth=max_groups, init=[])
        m.submodules.q4_mem, m.submodules.k4_mem = q4_mem, k4_mem
        q4_wr, k4_wr = q4_mem.write_port(granularity=PREDICT_BITS), k4_mem.write_port(granularity=PREDICT_BITS)
        q4_rd, k4_rd = q4_mem.read_port(domain="comb"), k4_mem.read_port()
        byte4 = predict_value(byte)
        m.d.comb += [q4_wr.addr.eq(pend_row), q4_wr.data.eq(byte4.replicate(dmax)),
                     k4_wr.addr.eq(pend_blk * groups_per_block + pend_lane // cols),
                     k4_wr.data.eq(byte4.replicate(dmax * cols))]

        # ---- unit load port ------------------------------------------------------------------
        load_byte = Signal(8)
        m.d.comb += load_byte.eq(byte)
        with m.If(pend_valid):
            m.d.comb += [unit.load_en.eq(1), unit.load_data.eq(load_byte.replicate(-(-unit.load_bits // 8)))]
            with m.Switch(pend_matrix):
                with m.Case(0):
                    m.d.comb += [unit.load_target.eq(LoadTarget.Q), unit.load_addr.eq(pend_row),
                                 unit.load_mask.eq(1 << pend_t),
                                 q4_wr.en.eq(1 << pend_t)]
                with m.Case(1):
                    m.d.comb += [unit.load_target.eq(LoadTarget.K), unit.load_addr.eq(pend_blk * dmax + pend_t),
                                 unit.load_mask.eq(1 << pend_lane),
                                 k4_wr.en.eq(1 << ((pend_lane % cols) * dmax + pend_t))]
                with m.Case(2):
                    m.d.comb += [unit.load_target.eq(LoadTarget.V), unit.load_addr.eq(pend_blk * dmax + pend_t),
                                 unit.load_mask.eq(1 << pend_lane)]

        # ---- predictor: sparse_pe_cols predicted scores per cycle ---------------------------------
        pred_bits = 2 * PREDICT_BITS + max(1, (dmax - 1).bit_length())
        active = Signal(dmax)             # elements t < d take part
        m.d.sync += active.eq(Cat((d > e) for e in range(dmax)))
        group = Signal(range(max_groups + 1))   # group being issued
        m.d.comb += [q4_rd.addr.eq(row), k4_rd.addr.eq(group)]
        q4 = [Mux(active[e], q4_rd.data.word_select(e, PREDICT_BITS).as_signed(), 0) for e in range(dmax)]
        preds = []
        for c in range(cols):
            k4 = k4_rd.data.word_select(c, PREDICT_BITS * dmax)
            products = [q4[e] * k4.word_select(e, PREDICT_BITS).as_signed() for e in range(dmax)]
            while len(products) > 1:   # balanced adder tree
                products = [products[i] + products[i + 1] if i + 1 < len(products) else products[i]
                            for i in range(0, len(products), 2)]
            pred = Signal(signed(pred_bits), name=f"pred_{c}")
            m.d.comb += pred.eq(products[0])
            preds.append(pred)

        # ---- the group in the packer's stage: its keys, block and position ---------------------
        # Stage 1 (the cycle after a group is issued): its predicted scores / mask bytes are here.
        s1_valid, s1_block_end, s1_last, s1_max = Signal(), Signal(), Signal(), Signal()
        s1_key0 = Signal(range(n_max + cols + 1))      # key of lane 0
        s1_gib = Signal(range(groups_per_block))       # group in its block
        s1_blk = Signal.like(blk)
        flush = Signal()                               # the cycle after a block's last group
        m.d.sync += [s1_valid.eq(0), s1_max.eq(0), flush.eq(s1_valid & s1_block_end)]
        row_max = Signal(signed(pred_bits), name="pred_row_max")
        threshold = Signal(signed(max(pred_bits, PREDICT_MARGIN_LIMIT.bit_length()) + 2))
        m.d.comb += threshold.eq(row_max - margin[:PREDICT_MARGIN_LIMIT.bit_length()])
        key_valid = Cat((s1_key0 + c) <= n_last for c in range(cols))
        # predict=0: a group's mask bytes arrive one per cycle (``mask_lane``); the last
        # completes it (stage 1), the earlier ones are gathered.
        mask_pend = Signal()
        mask_lane = Signal(range(cols))
        gathered = Signal(cols)
        mask_bits = Signal(cols)
        m.d.sync += mask_pend.eq(0)
        m.d.comb += mask_bits.eq(gathered | Mux(mask_pend & (byte != 0), 1 << mask_lane, 0))
        with m.If(s1_valid):
            m.d.sync += gathered.eq(0)
        with m.Elif(mask_pend):
            m.d.sync += gathered.eq(mask_bits)
        # predict=1, pass 1: the valid predicted scores fold into the row max.
        folded = row_max
        for c in range(cols):
            folded = Mux(key_valid[c] & (preds[c] > folded), preds[c], folded)
        with m.If(s1_valid & s1_max):
            m.d.sync += row_max.eq(folded)
        keep = Signal(cols)
        m.d.comb += keep.eq(Mux(predict, Cat(p >= threshold for p in preds) & key_valid, mask_bits))

        # ---- packer ------------------------------------------------------------------------
        fill = Signal(range(cols + 1))
        buf = [Signal(range(width), name=f"packed_slot_{s}") for s in range(cols)]
        counts = Array(Signal(range(max_waves + 1), name=f"waves_of_row_{r}") for r in range(rows))
        pe_row = Signal(range(rows))
        waves = Signal(range(max_waves + 1))
        m.d.comb += unit.waves.eq(waves)
        # Slot of each kept lane behind the filled ones.
        position = []
        running = fill
        for c in range(cols):
            position.append(running)
            running = running + keep[c]
        total = Signal(range(2 * cols + 1))
        packing = Signal()           # in the MASK phase
        m.d.comb += total.eq(running)
        merged = []                  # slots 0 .. 2 cols - 1 after this group
        for s in range(2 * cols - 1):
            value = buf[s] if s < cols else Const(0, range(width))
            value = Mux(s < fill, value, 0) if s < cols else value
            for c in range(cols):
                value = Mux(keep[c] & (position[c] == s), s1_gib * cols + c, value)
            merged.append(value)
        emit_full = packing & s1_valid & (total >= cols)
        emit_rest = packing & flush & (fill != 0)
        packed = Signal(unit.row_layout)
        m.d.comb += [packed.query.eq(row), packed.block.eq(s1_blk)]
        with m.If(emit_full):
            m.d.comb += packed.valid.eq((1 << cols) - 1)
            m.d.comb += [packed.offset[s].eq(merged[s]) for s in range(cols)]
            m.d.sync += fill.eq(total - cols)
            m.d.sync += [buf[s].eq(merged[s + cols]) for s in range(cols - 1)]
        with m.Elif(packing & s1_valid):
            m.d.sync += fill.eq(total)
            m.d.sync += [buf[s].eq(merged[s]) for s in range(cols)]
        with m.If(emit_rest):
            m.d.comb += packed.valid.eq(Cat(fill > s for s in range(cols)))
            m.d.comb += [packed.offset[s].eq(Mux(fill > s, buf[s], 0)) for s in range(cols)]
            m.d.sync += fill.eq(0)
        count = counts[pe_row]
        with m.If(emit_full | emit_rest):
            m.d.comb += [unit.load_en.eq(1), unit.load_target.eq(LoadTarget.WAVES), unit.load_addr.eq(count),
                         unit.load_mask.eq(1 << pe_row),
                         unit.load_data.eq(packed.as_value().replicate(rows))]
            m.d.sync += count.eq(count + 1)
            with m.If(count == waves):
                m.d.sync += waves.eq(count + 1)
        # FILL: bubbles where a PE row has no packed row left.
        fill_wave = Signal(range(max_waves + 1))
        filling = Signal()
        with m.If(filling):
            m.d.comb += [unit.load_en.eq(1), unit.load_target.eq(LoadTarget.WAVES), unit.load_addr.eq(fill_wave),
                         unit.load_mask.eq(Cat(counts[r] <= fill_wave for r in range(rows))),
                         unit.load_data.eq(0)]

        def fail(code):
            return [self.error.eq(1), self.error_code.eq(code)]

        # ---- sequencing ----------------------------------------------------------------------
        settle = Signal(range(self.CHECK_STAGES + 1))
        out_row_base = Signal(_ADDR_BITS)
        mask_row_base = Signal(_ADDR_BITS)
        key = Signal(range(n_max + 1))      # predict=0: key of the mask byte being read
        key_lane = Signal(range(cols))
        group_in_block = Signal(range(groups_per_block))
        n_groups_last = Signal(range(max_groups))
        m.d.sync += n_groups_last.eq((n + (cols - 1)) // cols - 1)

        with m.FSM(name="sparse_attn"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += settle.eq(0)
                    m.next = "SETTLE"
            with m.State("SETTLE"):
                m.d.sync += settle.eq(settle + 1)
                with m.If(settle == self.CHECK_STAGES - 1):
                    m.next = "CHECK"
            with m.State("CHECK"):
                failed, code = first_failure([
                    (bad_shape, ErrorCode.INVALID_OPERAND),
                    (q_out | k_out | v_out | mask_out | param_out, ErrorCode.ADDRESS_OUT_OF_RANGE)])
                with m.If(failed):
                    m.d.comb += fail(code)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [self.acc_read.eq(1), self.acc_read_addr.eq(param_base)]
                    m.next = "PARAMS_0"
            with m.State("PARAMS_0"):
                word = self.acc_read_data
                m.d.sync += [sm_mult.eq(word[0:32]), sm_shift.eq(word[32:64]), exp_bits.eq(word[64:96]),
                             recip_bits.eq(word[96:128])]
                m.d.comb += [self.acc_read.eq(1), self.acc_read_addr.eq(param_base + ADDR_UNIT)]
                m.next = "PARAMS_1"
            with m.State("PARAMS_1"):
                word = self.acc_read_data
                m.d.sync += [out_mult.eq(word[0:32]), out_shift.eq(word[32:64]), margin.eq(word[64:96])]
                m.next = "PARAMS_CHECK"
            with m.State("PARAMS_CHECK"):
                failed, code = first_failure([(bad_params, ErrorCode.INVALID_OPERAND),
                                              (out_out, ErrorCode.ADDRESS_OUT_OF_RANGE)])
                with m.If(failed):
                    m.d.comb += fail(code)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [address.eq(q_base), matrix.eq(0), row.eq(0), t.eq(0), blk.eq(0), lane.eq(0),
                                 fill.eq(0), waves.eq(0), *(c.eq(0) for c in counts)]
                    m.next = "LOAD"
            # LOAD: one byte per cycle, Q then K then V (row-major, d bytes a row).
            with m.State("LOAD"):
                read_at(address)
                m.d.sync += [pend_valid.eq(1), pend_matrix.eq(matrix), pend_row.eq(row), pend_t.eq(t),
                             pend_blk.eq(blk), pend_lane.eq(lane), address.eq(address + 1), t.eq(t + 1)]
                with m.If(t == d_last):
                    m.d.sync += [t.eq(0), row.eq(row + 1), lane.eq(lane + 1)]
                    with m.If(lane == width - 1):
                        m.d.sync += [lane.eq(0), blk.eq(blk + 1)]
                    with m.If(row == n_last):
                        m.d.sync += [row.eq(0), lane.eq(0), blk.eq(0), matrix.eq(matrix + 1),
                                     address.eq(Mux(matrix == 0, k_base, v_base))]
                        with m.If(matrix == 2):
                            m.next = "LOAD_LAST"
            with m.State("LOAD_LAST"):   # the last V byte is written
                m.d.sync += [pend_valid.eq(0), row.eq(0), pe_row.eq(0), group.eq(0), key.eq(0),
                             key_lane.eq(0), group_in_block.eq(0), blk.eq(0),
                             row_max.eq(-(1 << (pred_bits - 1))), mask_row_base.eq(mask_base)]
                m.next = "ROW"
            # MASK + PACK, one query row at a time.
            with m.State("ROW"):
                m.d.sync += [group.eq(0), group_in_block.eq(0), blk.eq(0), key.eq(0), key_lane.eq(0),
                             row_max.eq(-(1 << (pred_bits - 1))), address.eq(mask_row_base)]
                with m.If(predict):
                    m.next = "PRED_MAX"
                with m.Else():
                    m.next = "MASK_READ"
            # predict=1, pass 1: the row max of the predicted scores (a group per cycle).
            with m.State("PRED_MAX"):
                m.d.sync += [s1_valid.eq(1), s1_max.eq(1), s1_block_end.eq(0), s1_key0.eq(group * cols),
                             group.eq(group + 1)]
                with m.If(group == n_groups_last):
                    m.d.sync += group.eq(0)
                    m.next = "PRED_MAX_LAST"
            with m.State("PRED_MAX_LAST"):   # the last group folds into the max
                m.next = "PRED_KEEP"
            # predict=1, pass 2: keep where pred >= max - margin; the packer takes each group.
            with m.State("PRED_KEEP"):
                m.d.comb += packing.eq(1)
                block_end = (group_in_block == groups_per_block - 1) | (group == n_groups_last)
                m.d.sync += [s1_valid.eq(1), s1_key0.eq(group * cols), s1_gib.eq(group_in_block),
                             s1_blk.eq(blk), s1_block_end.eq(block_end), s1_last.eq(group == n_groups_last),
                             group.eq(group + 1), group_in_block.eq(group_in_block + 1)]
                with m.If(block_end):
                    m.d.sync += [group_in_block.eq(0), blk.eq(blk + 1)]
                    m.next = "PRED_GAP"
            with m.State("PRED_GAP"):   # the packer takes the block's last group
                m.d.comb += packing.eq(1)
                with m.If(s1_last):
                    m.next = "ROW_FLUSH"
                with m.Else():
                    m.next = "PRED_KEEP"
            # predict=0: the row's mask bytes, one per cycle; a group's last byte completes it.
            with m.State("MASK_READ"):
                m.d.comb += packing.eq(1)
                read_at(address)
                block_end = (group_in_block == groups_per_block - 1) | (group == n_groups_last)
                group_end = (key_lane == cols - 1) | (key == n_last)
                m.d.sync += [address.eq(address + 1), key.eq(key + 1), key_lane.eq(key_lane + 1),
                             mask_pend.eq(1), mask_lane.eq(key_lane)]
                with m.If(group_end):
                    m.d.sync += [s1_valid.eq(1), s1_key0.eq(group * cols), s1_gib.eq(group_in_block),
                                 s1_blk.eq(blk), s1_block_end.eq(block_end), s1_last.eq(group == n_groups_last),
                                 key_lane.eq(0), group.eq(group + 1), group_in_block.eq(group_in_block + 1)]
                    with m.If(block_end):
                        m.d.sync += [group_in_block.eq(0), blk.eq(blk + 1)]
                        m.next = "MASK_GAP"
            with m.State("MASK_GAP"):
                m.d.comb += packing.eq(1)
                with m.If(s1_last):
                    m.next = "ROW_FLUSH"
                with m.Else():
                    m.next = "MASK_READ"
            with m.State("ROW_FLUSH"):   # the row's last partial packed row
                m.d.comb += packing.eq(1)
                m.d.sync += [row.eq(row + 1), pe_row.eq(Mux(pe_row == rows - 1, 0, pe_row + 1)),
                             mask_row_base.eq(mask_row_base + n)]
                with m.If(row == n_last):
                    m.d.sync += [fill_wave.eq(0), row.eq(0)]
                    m.next = "FILL"
                with m.Else():
                    m.next = "ROW"
            with m.State("FILL"):
                with m.If(fill_wave == waves):
                    m.d.comb += unit.start.eq(1)
                    m.d.sync += [address.eq(out_base), t.eq(0), row.eq(0)]
                    m.next = "RUN"
                with m.Else():
                    m.d.comb += filling.eq(1)
                    m.d.sync += fill_wave.eq(fill_wave + 1)
            # RUN: the unit computes; each output row goes to VECTOR a byte per cycle.
            with m.State("RUN"):
                with m.If(unit.out.valid):
                    m.d.comb += [self.write.eq(1), self.write_addr.eq(address),
                                 self.write_data.eq(unit.out.payload.row.as_value().word_select(t, 8))]
                    m.d.sync += [address.eq(address + 1), t.eq(t + 1)]
                    with m.If(t == d_last):
                        m.d.comb += unit.out.ready.eq(1)
                        m.d.sync += t.eq(0)
                        with m.If(unit.out.payload.last):
                            m.d.comb += self.done.eq(1)
                            m.next = "IDLE"
        return m
