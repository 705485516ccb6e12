"""GEMM in the accelerator: operands from the on-chip buffers through the matrix engine.

:class:`GemmController` executes one GEMM instruction (``isa.DESCRIPTIONS[Opcode.GEMM]``)
on :class:`~vitaccel.hw.matrix.engine.MatrixEngine`:

1. **Checks** in the golden machine's order (``GoldenMachine._gemm``): empty shape,
   ``k > max_k``, residual without requant (INVALID_OPERAND); A, B, ACC partials, parameter
   block (ADDRESS_OUT_OF_RANGE); then what the engine cannot do -- ``accumulate`` together
   with ``requant`` (the post-processor has no per-element addend) -- INVALID_OPERAND where
   the golden machine runs it. A requantizing GEMM then checks its VECTOR output region
   (ADDRESS_OUT_OF_RANGE) and scans the parameter block's values (multiplier outside
   0..2^31-1, shift outside 1..MAX_SHIFT: INVALID_OPERAND, as ``requantize``). A raw GEMM
   (no ``requant``) whose ACC output region is out of range stops with ADDRESS_OUT_OF_RANGE
   at once if its sums cannot overflow int32 (no ``bias``, 32-bit accumulators); otherwise it
   runs *dry* (nothing written) so that an overflow, which the golden machine checks first,
   still wins.
2. **Plan**: the engine's command word (:func:`vitaccel.hw.spec.matrix.plan_gemm`), with
   ``block_tiles`` / ``n_blocks`` computed by short iterations instead of dividers.
3. **Run**: a *feeder* gathers A and B words byte by byte from INPUT / WEIGHT (zero padding,
   ``b_transposed`` and ``unsigned_a`` handled by addressing) in the engine's load order
   (per B block: the block, then every A panel); a *drain* gathers each tile's parameter
   word (int32 bias / multiplier / shift from ACC; bias 0 without the ``bias`` flag) and the
   residual rows (VECTOR at ``out_addr``), and writes each output row's in-range bytes to
   VECTOR at ``out_addr``. Feeder and drain run concurrently, so the engine's double
   buffers never deadlock.
4. **Raw int32 output** (no ``requant``): the drain takes the engine's ``output_acc`` row
   (A @ B before bias), adds the tile's biases (``bias``) and, with ``accumulate``, the
   row's ACC partials at ``acc_addr`` (gathered before the row, one int32 per cycle), and
   writes one whole int32 element per cycle to ACC at ``acc_addr`` (``acc_write``, 4 byte
   enables). A sum outside int32 stops the GEMM with INVALID_OPERAND when it ends (as the
   golden machine's check); from that element on nothing more is written.

Differences from the golden machine (programs that break them are malformed anyway): the
parameter block is read per tile while outputs are written, so a raw GEMM whose ACC output
overlaps its own bias block reads biases it already overwrote (the golden machine reads the
block first); after an int32 overflow the ACC output region holds the elements drained
before the overflowing one (the golden machine writes nothing).

Every buffer is read through a synchronous read port (address this cycle, data the next);
the controller drives ``<buffer>_read`` / ``<buffer>_read_addr`` (byte address) and
receives the 16-byte word in ``<buffer>_read_data``; the core gives it priority. Writes go
through ``vector_write`` (one byte) and ``acc_write`` (one 4-byte-aligned int32), which the
core also serves first.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig, ConfigError
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Opcode
from vitaccel.hw.spec.matrix import PARAM_FIELDS, b_half_words, check_engine_config
from vitaccel.hw.spec.numerics import MAX_SHIFT
from vitaccel.hw.spec.regmap import ErrorCode

from .decode import field_slice

__all__ = ["GemmController", "engine_supported"]

_ADDR_BITS = 24            # byte address inside one buffer (buffers are <= 512 KiB)
_WORD_BITS = ADDR_UNIT * 8
#: Buffers the controller reads, and the name of their port members.
READ_BUFFERS = (Buffer.INPUT, Buffer.WEIGHT, Buffer.ACC, Buffer.VECTOR)
#: Bytes of one parameter-block entry (int32) in ACC.
_PARAM_BYTES = 4


def engine_supported(config: AccelConfig) -> str | None:
    """None if the accelerator can build a matrix engine for ``config``, else the reason
    (GEMM then stops with INVALID_OPERAND)."""
    if config.operand_width != 8:
        return f"operand_width {config.operand_width}: the buffers hold int8 operands"
    try:
        check_engine_config(config)
    except ConfigError as err:
        return str(err)
    return None


def _ceil_div(value, divisor: int):
    if divisor & (divisor - 1) == 0:
        shift = divisor.bit_length() - 1
        return (value + divisor - 1) >> shift
    return (value + divisor - 1) // divisor


class _Gatherer:
    """Assembles a word of ``outer x inner`` elements of ``elem_bits`` (element ``(o, i)``
    at bit ``(o * inner + i) * elem_bits``) from a synchronous-read buffer, one element per
    cycle. ``locate(o, i)`` gives (byte address, in range); out-of-range elements are 0.

    ``start`` (comb) begins a gather; ``busy`` is 1 until ``word`` is complete.
    """

    def __init__(self, m: Module, name: str, *, outer: int, inner: int, elem_bits: int, data, locate):
        self.start = Signal(name=f"{name}_start")
        self.word = Signal(outer * inner * elem_bits, name=f"{name}_word")
        self.read = Signal(name=f"{name}_read")
        self.read_addr = Signal(_ADDR_BITS, name=f"{name}_read_addr")
        # At least one bit: a zero-width counter would emit a [-1:0] vector (lint warning).
        o = Signal(range(max(outer, 2)), name=f"{name}_o")
        i = Signal(range(max(inner, 2)), name=f"{name}_i")
        presenting = Signal(name=f"{name}_presenting")
        captured_pos = Signal(range(outer * inner), name=f"{name}_captured_pos")
        pos = Signal(range(outer * inner), name=f"{name}_pos")
        captured_valid = Signal(name=f"{name}_captured_valid")
        captured_in = Signal(name=f"{name}_captured_in")
        lane_bits = (ADDR_UNIT // (elem_bits // 8) - 1).bit_length()
        captured_lane = Signal(max(lane_bits, 1), name=f"{name}_captured_lane")
        self.busy = presenting | captured_valid
        addr, in_range = locate(o, i)
        m.d.comb += [self.read.eq(presenting), self.read_addr.eq(addr)]
        m.d.sync += captured_valid.eq(presenting)
        with m.If(presenting):
            last_i = i == inner - 1
            m.d.sync += [captured_pos.eq(pos), captured_in.eq(in_range), pos.eq(pos + 1),
                         captured_lane.eq(addr[(elem_bits // 8 - 1).bit_length():4] if lane_bits else 0),
                         i.eq(Mux(last_i, 0, i + 1))]
            with m.If(last_i):
                m.d.sync += o.eq(o + 1)
                with m.If(o == outer - 1):
                    m.d.sync += presenting.eq(0)
        with m.If(captured_valid):
            element = data.word_select(captured_lane, elem_bits) if lane_bits else data[:elem_bits]
            m.d.sync += self.word.word_select(captured_pos, elem_bits).eq(Mux(captured_in, element, 0))
        with m.If(self.start):
            m.d.sync += [presenting.eq(1), o.eq(0), i.eq(0), pos.eq(0)]


class GemmController(wiring.Component):
    """Executes GEMM instructions on a :class:`MatrixEngine` (see the module docstring).

    Parameters
    ----------
    config : AccelConfig
        Must satisfy :func:`engine_supported`.

    Raises
    ------
    ConfigError
        If the engine cannot be built for ``config``.
    """

    def __init__(self, *, config: AccelConfig):
        reason = engine_supported(config)
        if reason is not None:
            raise ConfigError(f"GemmController: {reason}")
        self.config = config
        members = {"word": In(isa.INSTRUCTION_BITS), "start": In(1), "done": Out(1), "error": Out(1),
                   "error_code": Out(ErrorCode),
                   "vector_write": Out(1), "vector_write_addr": Out(_ADDR_BITS), "vector_write_data": Out(8),
                   "acc_write": Out(1), "acc_write_addr": Out(_ADDR_BITS), "acc_write_data": Out(32)}
        for buffer in READ_BUFFERS:
            name = buffer.name.lower()
            members[f"{name}_read"] = Out(1)
            members[f"{name}_read_addr"] = Out(_ADDR_BITS)
            members[f"{name}_read_data"] = In(_WORD_BITS)
        super().__init__(members)

    def read_port(self, buffer: Buffer):
        """(read enable, byte address, read data) members for ``buffer``."""
        name = buffer.name.lower()
        return (getattr(self, f"{name}_read"), getattr(self, f"{name}_read_addr"),
                getattr(self, f"{name}_read_data"))

    def elaborate(self, platform):
        from vitaccel.hw.matrix.engine import MatrixEngine

        m = Module()
        cfg = self.config
        m.submodules.engine = engine = MatrixEngine(cfg)
        tr, tc, b = cfg.tile_rows, cfg.tile_cols, cfg.block_size

        def f(name):
            return field_slice(self.word, Opcode.GEMM, name)

        mm, kk, nn = f("m"), f("k"), f("n")
        flags = {name: f(name) for name in ("accumulate", "bias", "requant", "residual", "unsigned_a",
                                            "b_transposed")}
        a_base, b_base = f("a_addr") * ADDR_UNIT, f("b_addr") * ADDR_UNIT
        out_base, param_base = f("out_addr") * ADDR_UNIT, f("param_addr") * ADDR_UNIT
        acc_base = f("acc_addr") * ADDR_UNIT

        # ---- checks (registered in CALC, tested in CHECK, golden order) ---------------------
        size = {buf: isa.buffer_bytes(cfg, buf) for buf in Buffer}
        invalid_shape, a_out, b_out, acc_out, param_out, unsupported, out_out, raw_out = (
            Signal(name=n) for n in ("invalid_shape", "a_out", "b_out", "acc_out", "param_out", "unsupported",
                                     "out_out", "raw_out"))
        acc_region_out = acc_base + mm * nn * 4 > size[Buffer.ACC]   # partials / raw output (int32)
        k_words, m_tiles, n_tiles = Signal(16), Signal(16), Signal(16)
        m.d.sync += [
            invalid_shape.eq((mm == 0) | (kk == 0) | (nn == 0) | (kk > cfg.max_k)
                             | (flags["residual"] & ~flags["requant"])),
            a_out.eq(a_base + mm * kk > size[Buffer.INPUT]),
            b_out.eq(b_base + kk * nn > size[Buffer.WEIGHT]),
            acc_out.eq(flags["accumulate"] & acc_region_out),
            param_out.eq((flags["bias"] | flags["requant"])
                         & (param_base + nn * (3 * _PARAM_BYTES) > size[Buffer.ACC])),
            unsupported.eq(flags["accumulate"] & flags["requant"]),
            out_out.eq(out_base + mm * nn > size[Buffer.VECTOR]),
            raw_out.eq(acc_region_out),
            k_words.eq(_ceil_div(kk, b)), m_tiles.eq(_ceil_div(mm, tr)), n_tiles.eq(_ceil_div(nn, tc)),
        ]

        # ---- plan: block_tiles = min(n_tiles, b_half_words // k_words), n_blocks, last block
        block_tiles, block_words, n_blocks, remaining = Signal(16), Signal(32), Signal(16), Signal(16)

        def tiles_in_block(block):
            return Mux(block == n_blocks - 1, remaining, block_tiles)

        feed_start, drain_start = Signal(), Signal()
        feed_done, drain_done = Signal(), Signal()
        cmd = engine.command.payload
        m.d.comb += [cmd.k_words.eq(k_words), cmd.m_tiles.eq(m_tiles), cmd.n_blocks.eq(n_blocks),
                     cmd.block_tiles.eq(block_tiles), cmd.last_block_tiles.eq(remaining),
                     cmd.unsigned_a.eq(flags["unsigned_a"]), cmd.residual.eq(flags["residual"])]

        def fail(code):
            return [self.error.eq(1), self.error_code.eq(code)]

        # Raw GEMMs: a sum outside int32 (sticky until the end), a run that writes nothing.
        overflow, dry = Signal(), Signal()
        # Without bias, 32-bit accumulators (which hold any max_k-long A @ B) cannot overflow.
        may_overflow = flags["bias"] | (cfg.acc_width > 32)

        # Parameter values: multipliers in 0..2^31-1, shifts in 1..MAX_SHIFT (int32 words).
        scan_index = Signal(16)
        scan_read, scan_captured, scan_is_shift = Signal(), Signal(), Signal()
        scan_lane = Signal(2)
        scan_addr = Signal(_ADDR_BITS)
        m.d.comb += scan_addr.eq(param_base + (nn + scan_index) * _PARAM_BYTES)
        scan_value = self.read_port(Buffer.ACC)[2].word_select(scan_lane, 32).as_signed()
        scan_bad = Mux(scan_is_shift, (scan_value < 1) | (scan_value > MAX_SHIFT), scan_value < 0)

        with m.FSM(name="gemm"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "CALC"
            with m.State("CALC"):
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [block_tiles.eq(0), block_words.eq(k_words)]
                with m.If(invalid_shape):
                    m.d.comb += fail(ErrorCode.INVALID_OPERAND)
                    m.next = "IDLE"
                with m.Elif(a_out | b_out | acc_out | param_out):
                    m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                    m.next = "IDLE"
                with m.Elif(unsupported):
                    m.d.comb += fail(ErrorCode.INVALID_OPERAND)
                    m.next = "IDLE"
                with m.Elif(flags["requant"]):
                    with m.If(out_out):
                        m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [scan_index.eq(0), scan_captured.eq(0), dry.eq(0)]
                        m.next = "SCAN_PARAMS"
                with m.Elif(raw_out & ~may_overflow):
                    m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                    m.next = "IDLE"
                with m.Else():   # raw: no parameter values to check
                    m.d.sync += dry.eq(raw_out)
                    m.next = "PLAN_TILES"
            with m.State("SCAN_PARAMS"):   # golden requantize rejects these before writing anything
                m.d.comb += scan_read.eq(scan_index < 2 * nn)
                m.d.sync += [scan_index.eq(scan_index + 1), scan_captured.eq(scan_read),
                             scan_is_shift.eq(scan_index >= nn), scan_lane.eq(scan_addr[2:4])]
                with m.If(scan_captured & scan_bad):
                    m.d.comb += fail(ErrorCode.INVALID_OPERAND)
                    m.next = "IDLE"
                with m.Elif(~scan_read & ~scan_captured):
                    m.next = "PLAN_TILES"
            with m.State("PLAN_TILES"):   # largest block that fits one B scratchpad half
                with m.If((block_tiles < n_tiles) & (block_words <= b_half_words(cfg))):
                    m.d.sync += [block_tiles.eq(block_tiles + 1), block_words.eq(block_words + k_words)]
                with m.Else():
                    m.d.sync += [n_blocks.eq(1), remaining.eq(n_tiles)]
                    m.next = "PLAN_BLOCKS"
            with m.State("PLAN_BLOCKS"):  # remaining ends as the last block's tiles
                with m.If(remaining > block_tiles):
                    m.d.sync += [remaining.eq(remaining - block_tiles), n_blocks.eq(n_blocks + 1)]
                with m.Else():
                    m.next = "COMMAND"
            with m.State("COMMAND"):
                m.d.comb += engine.command.valid.eq(1)
                with m.If(engine.command.ready):
                    m.d.comb += [feed_start.eq(1), drain_start.eq(1)]
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(feed_done & drain_done):
                    with m.If(overflow):
                        m.d.comb += fail(ErrorCode.INVALID_OPERAND)
                    with m.Elif(dry):
                        m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                    with m.Else():
                        m.d.comb += self.done.eq(1)
                    m.next = "IDLE"

        # ---- feeder: per block, its B words, then every band's A panel ----------------------
        f_block, f_band, f_tile, f_k = Signal(16), Signal(16), Signal(16), Signal(16)
        f_is_b = Signal()
        a_row_base = f_band * tr
        k_base = f_k * b
        b_col_base = (f_block * block_tiles + f_tile) * tc

        def locate_operand(o, i):
            # A word: o = row, i = kk.  B word: o = kk, i = col.
            a_row, a_k = a_row_base + o, k_base + i
            b_k, b_col = k_base + o, b_col_base + i
            a_addr = a_base + a_row * kk + a_k
            b_addr = b_base + Mux(flags["b_transposed"], b_col * kk + b_k, b_k * nn + b_col)
            return (Mux(f_is_b, b_addr, a_addr),
                    Mux(f_is_b, (b_k < kk) & (b_col < nn), (a_row < mm) & (a_k < kk)))

        input_data = self.read_port(Buffer.INPUT)[2]
        weight_data = self.read_port(Buffer.WEIGHT)[2]
        a_gather = _Gatherer(m, "a_gather", outer=tr, inner=b, elem_bits=8, data=input_data, locate=locate_operand)
        b_gather = _Gatherer(m, "b_gather", outer=b, inner=tc, elem_bits=8, data=weight_data, locate=locate_operand)
        for buffer, gather, phase in ((Buffer.INPUT, a_gather, ~f_is_b), (Buffer.WEIGHT, b_gather, f_is_b)):
            read, addr, _ = self.read_port(buffer)
            m.d.comb += [read.eq(gather.read & phase), addr.eq(gather.read_addr)]
        m.d.comb += [engine.a_load.payload.eq(a_gather.word), engine.b_load.payload.eq(b_gather.word)]

        with m.FSM(name="gemm_feed"):
            with m.State("IDLE"):
                m.d.comb += feed_done.eq(1)
                with m.If(feed_start):
                    m.d.sync += [f_block.eq(0), f_band.eq(0), f_tile.eq(0), f_k.eq(0), f_is_b.eq(1)]
                    m.next = "GATHER_B"
            for name, gather, stream in (("A", a_gather, engine.a_load), ("B", b_gather, engine.b_load)):
                with m.State(f"GATHER_{name}"):
                    m.d.comb += gather.start.eq(1)
                    m.next = f"WAIT_{name}"
                with m.State(f"WAIT_{name}"):
                    with m.If(~gather.busy):
                        m.next = f"SEND_{name}"
                with m.State(f"SEND_{name}"):
                    m.d.comb += stream.valid.eq(1)
                    with m.If(stream.ready):
                        last_k = f_k == k_words - 1
                        m.d.sync += f_k.eq(Mux(last_k, 0, f_k + 1))
                        m.next = f"GATHER_{name}"
                        if name == "B":
                            with m.If(last_k):
                                m.d.sync += f_tile.eq(f_tile + 1)
                                with m.If(f_tile == tiles_in_block(f_block) - 1):
                                    m.d.sync += [f_tile.eq(0), f_band.eq(0), f_is_b.eq(0)]
                                    m.next = "GATHER_A"
                        else:
                            with m.If(last_k):
                                m.d.sync += f_band.eq(f_band + 1)
                                with m.If(f_band == m_tiles - 1):
                                    m.d.sync += [f_band.eq(0), f_block.eq(f_block + 1), f_is_b.eq(1)]
                                    with m.If(f_block == n_blocks - 1):
                                        m.next = "IDLE"
                                    with m.Else():
                                        m.next = "GATHER_B"

        # ---- drain: parameter word per tile, residual / partials row and output row per row --
        d_block, d_band, d_tile, d_row = Signal(16), Signal(16), Signal(16), Signal(range(max(tr, 2)))
        d_col = Signal(range(max(tc, 2)))
        d_col_base = (d_block * block_tiles + d_tile) * tc
        d_row_abs = d_band * tr + d_row

        def locate_param(o, i):   # o = field (bias, multiplier, shift), i = lane
            col = d_col_base + i
            return (param_base + (o * nn + col) * _PARAM_BYTES,
                    (col < nn) & Mux(o == 0, flags["bias"], flags["requant"]))

        def locate_residual(o, i):
            col = d_col_base + i
            return out_base + d_row_abs * nn + col, (col < nn) & (d_row_abs < mm)

        def locate_partial(o, i):
            col = d_col_base + i
            return acc_base + (d_row_abs * nn + col) * 4, (col < nn) & (d_row_abs < mm)

        acc_read, acc_addr, acc_data = self.read_port(Buffer.ACC)
        vec_read, vec_addr, vec_data = self.read_port(Buffer.VECTOR)
        params = _Gatherer(m, "param_gather", outer=len(PARAM_FIELDS), inner=tc, elem_bits=8 * _PARAM_BYTES,
                           data=acc_data, locate=locate_param)
        residual = _Gatherer(m, "residual_gather", outer=1, inner=tc, elem_bits=8, data=vec_data,
                             locate=locate_residual)
        partials = _Gatherer(m, "partial_gather", outer=1, inner=tc, elem_bits=32, data=acc_data,
                             locate=locate_partial)
        m.d.comb += [acc_read.eq(params.read | scan_read | partials.read),
                     acc_addr.eq(Mux(scan_read, scan_addr, Mux(partials.read, partials.read_addr, params.read_addr))),
                     vec_read.eq(residual.read), vec_addr.eq(residual.read_addr),
                     engine.residual.payload.eq(residual.word)]
        param_word = engine.params.payload
        entry_word = [params.word.word_select(index, 8 * _PARAM_BYTES) for index in range(len(PARAM_FIELDS) * tc)]
        for lane in range(tc):
            for field_index, (name, bits, _) in enumerate(PARAM_FIELDS):
                m.d.comb += param_word[lane][name].eq(entry_word[field_index * tc + lane][:bits])
        params_valid = Signal()
        m.d.comb += engine.params.valid.eq(params_valid)
        with m.If(engine.params.valid & engine.params.ready):
            m.d.sync += params_valid.eq(0)
        out_col = d_col_base + d_col
        out_index = Signal(32)
        out_in_range = (out_col < nn) & (d_row_abs < mm)
        m.d.comb += [out_index.eq(d_row_abs * nn + out_col),
                     self.vector_write_addr.eq(out_base + out_index),
                     self.vector_write_data.eq(engine.output.payload.as_value().word_select(d_col, 8))]
        # Raw output: A @ B (+ bias) (+ partials), checked against int32 (golden order).
        raw_sum = Signal(signed(cfg.acc_width + 2))
        bias_lane = params.word.word_select(d_col, 32).as_signed()   # field 0: the biases
        partial_lane = partials.word.word_select(d_col, 32).as_signed()
        m.d.comb += [raw_sum.eq(engine.output_acc[d_col] + Mux(flags["bias"], bias_lane, 0)
                                + Mux(flags["accumulate"], partial_lane, 0)),
                     self.acc_write_addr.eq(acc_base + out_index * 4),
                     self.acc_write_data.eq(raw_sum[:32])]
        raw_overflows = (raw_sum < -(1 << 31)) | (raw_sum >= (1 << 31))

        with m.FSM(name="gemm_drain"):
            with m.State("IDLE"):
                m.d.comb += drain_done.eq(1)
                with m.If(drain_start):
                    m.d.sync += [d_block.eq(0), d_band.eq(0), d_tile.eq(0), d_row.eq(0), params_valid.eq(0),
                                 overflow.eq(0)]
                    m.next = "PARAMS"
            with m.State("PARAMS"):   # a raw GEMM without bias reads none (the engine's word is unused)
                m.d.comb += params.start.eq(flags["requant"] | flags["bias"])
                m.next = "WAIT_PARAMS"
            with m.State("WAIT_PARAMS"):
                with m.If(~params.busy):
                    m.d.sync += params_valid.eq(1)
                    m.next = "ROW"
            with m.State("ROW"):   # residual (requant) and accumulate (raw) exclude each other
                m.d.comb += [residual.start.eq(flags["residual"]), partials.start.eq(flags["accumulate"])]
                with m.If(flags["residual"] | flags["accumulate"]):
                    m.next = "WAIT_ROW"
                with m.Else():
                    m.next = "OFFER"
            with m.State("WAIT_ROW"):
                with m.If(~residual.busy & ~partials.busy):
                    m.next = "OFFER"
            with m.State("OFFER"):   # the engine emits when the tile is done; the row arrives next cycle
                m.d.comb += engine.residual.valid.eq(flags["residual"])
                with m.If(engine.output.valid):
                    m.d.sync += d_col.eq(0)
                    m.next = "WRITE"
            with m.State("WRITE"):   # one element per cycle; padding columns and rows are dropped
                m.d.comb += [self.vector_write.eq(out_in_range & flags["requant"]),
                             self.acc_write.eq(out_in_range & ~flags["requant"] & ~dry & ~overflow & ~raw_overflows)]
                with m.If(out_in_range & ~flags["requant"] & raw_overflows):
                    m.d.sync += overflow.eq(1)
                m.d.sync += d_col.eq(d_col + 1)
                with m.If(d_col == tc - 1):
                    m.d.comb += engine.output.ready.eq(1)
                    m.d.sync += [d_col.eq(0), d_row.eq(d_row + 1)]
                    m.next = "ROW"
                    with m.If(d_row == tr - 1):
                        m.d.sync += [d_row.eq(0), d_tile.eq(d_tile + 1)]
                        m.next = "PARAMS"
                        with m.If(d_tile == tiles_in_block(d_block) - 1):
                            m.d.sync += [d_tile.eq(0), d_band.eq(d_band + 1)]
                            with m.If(d_band == m_tiles - 1):
                                m.d.sync += [d_band.eq(0), d_block.eq(d_block + 1)]
                                with m.If(d_block == n_blocks - 1):
                                    m.next = "IDLE"
        return m
