"""GEMM in the accelerator: operands from the on-chip buffers through the matrix engine.

:class:`GemmController` executes one GEMM instruction (``isa.DESCRIPTIONS[Opcode.GEMM]``)
on :class:`~vitaccel.hw.matrix.engine.MatrixEngine`:

1. **Checks** in the golden machine's order (``GoldenMachine._gemm``): empty shape,
   ``k > max_k``, residual without requant, ``nm`` (no sparse GEMMs in this top) (INVALID_OPERAND); A, B, ACC partials, parameter
   block (ADDRESS_OUT_OF_RANGE); then what the engine cannot do -- ``accumulate`` together
   with ``requant`` (the post-processor has no per-element addend) -- INVALID_OPERAND where
   the golden machine runs it. A requantizing GEMM then checks its VECTOR output region
   (ADDRESS_OUT_OF_RANGE) and scans the parameter block's values (multiplier outside
   0..2^31-1, shift outside 1..MAX_SHIFT: INVALID_OPERAND, as ``requantize``). A raw GEMM
   (no ``requant``) whose ACC output region is out of range stops with ADDRESS_OUT_OF_RANGE
   at once if its sums cannot overflow int32 (no ``bias``, 32-bit accumulators); otherwise it
   runs *dry* (nothing written) so that an overflow, which the golden machine checks first,
   still wins.
2. **Plan**: the engine's command word (as :func:`vitaccel.hw.spec.matrix.plan_gemm`, but
   with at most :data:`MAX_BLOCK_TILES` tiles per B block), with ``block_tiles`` /
   ``n_blocks`` computed by short iterations instead of dividers.
3. **Run**: two *feeders* (A from INPUT -- or from VECTOR with ``a_vector``, a port the
   residual then does not use -- and B from WEIGHT, each on its own read port, so they run
   concurrently) assemble the engine's words from 16-byte buffer words through
   :class:`_SegmentReader`: an A word is ``tile_rows`` runs of ``b`` consecutive bytes (one
   per row), a B word ``tile_cols`` such runs (one per column, ``b_transposed``) or ``b``
   runs of ``tile_cols`` bytes (one per k row). Each run keeps the buffer words it read, so
   an A row or a B column walking through K reads each word once; zero padding (rows >= M,
   k >= K, columns >= N) is masked, ``unsigned_a`` is the engine's. A *drain* reads each
   tile's parameter word (int32 bias / multiplier / shift from ACC, one run per field; bias 0
   without the ``bias`` flag) and each row's residual (VECTOR at ``out_addr``) the same way,
   and writes each output row's in-range bytes to VECTOR at ``out_addr`` with byte-enabled
   16-byte writes (one per cycle, a row takes one or two) through a pipeline of its own
   (:class:`_RowWriter`), taking the next row while one is written. Feeders and drain
   run concurrently, so the engine's double buffers never deadlock.
4. **Raw int32 output** (no ``requant``): the drain takes the engine's ``output_acc`` row
   (A @ B before bias), adds the tile's biases (``bias``) and, with ``accumulate``, the
   row's ACC partials at ``acc_addr`` (read before the row), and writes the row to ACC at
   ``acc_addr`` with byte-enabled 16-byte writes (``acc_write``). A sum outside int32 stops
   the GEMM with INVALID_OPERAND when it ends (as the golden machine's check); from that
   element's row on nothing more is written.

Differences from the golden machine (programs that break them are malformed anyway): the
parameter block is read per tile while outputs are written, so a raw GEMM whose ACC output
overlaps its own bias block reads biases it already overwrote (the golden machine reads the
block first); after an int32 overflow the ACC output region holds the rows drained
before the overflowing one (the golden machine writes nothing).

Every buffer is read through a synchronous read port (address this cycle, data the next);
the controller drives ``<buffer>_read`` / ``<buffer>_read_addr`` (byte address) and
receives the 16-byte word in ``<buffer>_read_data``; the core gives it priority. Writes go
through ``vector_write`` and ``acc_write`` (16 byte enables of the 16-byte word at
``<buffer>_write_addr``, data ``<buffer>_write_data``), which the core also serves first.
"""

from __future__ import annotations

import math

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig, ConfigError
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Opcode
from vitaccel.hw.spec.matrix import (COMMAND_FIELDS, PARAM_FIELDS, b_half_words, check_engine_config,
                                     nm_words_per_step)
from vitaccel.hw.spec.nm import index_bits
from vitaccel.hw.spec.numerics import MAX_SHIFT
from vitaccel.hw.spec.regmap import ErrorCode

from .decode import field_slice, instruction_unit_members

__all__ = ["GemmController", "engine_supported"]

_ADDR_BITS = 24            # byte address inside one buffer (buffers are <= 512 KiB)
_WORD_BITS = ADDR_UNIT * 8
_LANE_BITS = (ADDR_UNIT - 1).bit_length()
#: Buffers the controller reads, and the name of their port members.
READ_BUFFERS = (Buffer.INPUT, Buffer.WEIGHT, Buffer.ACC, Buffer.VECTOR)
#: Most tiles in one B block. The engine computes on a block only once it is loaded, so the
#: first block's load is not hidden behind compute: small blocks start sooner, and later
#: blocks (and the A panels, sent again per block) still load while the previous one computes.
MAX_BLOCK_TILES = 8
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
    """``ceil(value / divisor)`` for a power-of-two ``divisor``: an adder and a shift."""
    assert divisor & (divisor - 1) == 0, divisor
    return (value + divisor - 1) >> (divisor.bit_length() - 1)


def reciprocal(divisor: int, bits: int) -> tuple[int, int]:
    """``(multiplier, shift)`` with ``floor(x / divisor) == (x * multiplier) >> shift`` for every
    ``0 <= x < 2**bits``: ``multiplier = ceil(2**shift / divisor)`` with ``shift = bits +
    ceil(log2(divisor))``; exact since ``x * (multiplier * divisor - 2**shift) < x * divisor
    <= 2**shift``."""
    shift = bits + (divisor - 1).bit_length()
    return -(-(1 << shift) // divisor), shift


def _ceil_div_register(m: Module, value, divisor: int, name: str) -> Signal:
    """A register that holds ``ceil(value / divisor)`` one cycle after ``value`` for a power of
    two, two cycles after otherwise: ``value + divisor - 1`` into a register, then a multiply
    by the :func:`reciprocal` (a DSP48E2), with no divider and no adder before the multiply."""
    value = Value.cast(value)
    result = Signal(len(value), name=name)
    if divisor & (divisor - 1) == 0:
        m.d.sync += result.eq(_ceil_div(value, divisor))
        return result
    rounded_up = Signal(len(value) + 1, name=f"{name}_rounded_up")
    multiplier, shift = reciprocal(divisor, len(rounded_up))
    m.d.sync += [rounded_up.eq(value + divisor - 1), result.eq((rounded_up * multiplier) >> shift)]
    return result


class _SegmentReader:
    """Reads ``outer`` *segments* of ``length`` consecutive bytes from a buffer with a
    synchronous 16-byte read port (address this cycle, word the next), one buffer word per
    cycle. Segment ``o`` starts at byte ``start[o]``; its bytes from ``valid_bytes`` on, and
    all of it unless ``valid(o)``, read as 0 and are never fetched.

    Each segment keeps a *window* of the last ``nw = ceil(length / 16) + 1`` words it read
    (enough for a segment at any alignment): the newest word's index as issued (``tag``) and
    as captured (``wtag``), and how many slots hold data (``count``). Only words missing from
    the window are read, so a segment that walks forward through a row (an A row or a
    transposed-B column across k steps) reads each buffer word once; with ``prefetch``, a
    segment whose oldest slot is no longer needed reads the next word while the port is
    otherwise idle, so such walks rarely wait. A reader with ``step == 0`` (never advanced)
    fills each window from its first slot instead, so a segment's bytes are only a lane shift
    away. The requesting segment is picked one-hot (the lowest that needs a word, else the
    lowest with a spare slot), its address through an OR tree.

    Bytes reach a segment in two steps, so that no segment holds a barrel shifter of its own:
    every captured word is rotated once, by the capturing segment's start modulo ``align``
    (``gcd(16, step_multiple)``: advances never change it), in one rotator the segments
    share; a segment then merges each rotated word with the next at a fixed byte boundary
    (one 2:1 multiplexer per byte) and picks its bytes at a multiple of ``align`` (a
    multiplexer of ``nw * 16 / align`` inputs; none at all for a filling reader).
    ``step_multiple``: a number ``step`` is always a multiple of (default: ``step`` itself,
    which must then be an int).

    ``restart`` (comb) sets ``start[o] = origin + o * stride`` and empties the windows;
    ``advance`` (comb) adds ``step`` to every start. While ``enable`` is 1 the reader reads
    the words the segments need (lowest segment first); ``ready`` is 1 (whether enabled or
    not) when ``word`` (comb; segment ``o``'s byte ``i`` at byte ``o * length + i``) is
    complete. ``read`` / ``read_addr`` drive the buffer's port, ``data`` is its read data.
    """

    def __init__(self, m: Module, name: str, *, outer: int, length: int, data, origin, stride, step,
                 valid, valid_bytes, prefetch: bool = False, step_multiple: int | None = None):
        self.restart = Signal(name=f"{name}_restart")
        self.advance = Signal(name=f"{name}_advance")
        self.enable = Signal(name=f"{name}_enable")
        self.ready = Signal(name=f"{name}_ready")
        self.read = Signal(name=f"{name}_read")
        self.read_addr = Signal(_ADDR_BITS, name=f"{name}_read_addr")
        self.word = Signal(outer * length * 8, name=f"{name}_word")
        nw = -(-length // ADDR_UNIT) + 1
        # A reader that never advances (``step == 0``: one fetch of each segment per restart,
        # its words in address order) fills each window from slot 0, so a segment's first
        # word is always in slot 0 and, its words rotated by the start lane, its bytes need no
        # further selection; a walking reader's window slides, and its bytes move by slot and
        # by the lane's multiple of ``align``.
        fills = isinstance(step, int) and step == 0 and not prefetch
        if step_multiple is None:
            if not isinstance(step, int):
                raise TypeError(f"{name}: a step that is not an int needs step_multiple")
            step_multiple = step
        align = math.gcd(ADDR_UNIT, step_multiple)   # a power of two; gcd(16, 0) == 16
        rot_bits = align.bit_length() - 1
        # Signals, not expressions: Amaranth would rebuild an expression at each of its uses.
        shared = {}
        for key, value, shape in (("valid_bytes", valid_bytes, range(length + 1)), ("origin", origin, _ADDR_BITS),
                                  ("stride", stride, _ADDR_BITS), ("step", step, _ADDR_BITS)):
            shared[key] = Signal(shape, name=f"{name}_{key}")
            m.d.comb += shared[key].eq(value)
        valid_bytes, origin, stride, step = (shared[key] for key in ("valid_bytes", "origin", "stride", "step"))
        slot_bits = (nw - 1).bit_length()
        tag_bits = _ADDR_BITS - _LANE_BITS
        cap_valid, cap_prefetch = Signal(name=f"{name}_cap_valid"), Signal(name=f"{name}_cap_prefetch")
        cap_seg = Signal(range(max(outer, 2)), name=f"{name}_cap_seg")
        cap_target = Signal(tag_bits, name=f"{name}_cap_target")
        # The shared rotator: rotated byte j is the read word's byte (j + cap_rot) mod 16.
        cap_rot, rot = Signal(rot_bits, name=f"{name}_cap_rot"), Signal(rot_bits, name=f"{name}_rot")
        rotated = Signal(_WORD_BITS, name=f"{name}_rotated")
        m.d.comb += rotated.eq(Cat(data, data).bit_select(cap_rot * 8, _WORD_BITS) if rot_bits else data)
        pick = Signal(range(max(outer, 2)), name=f"{name}_pick")
        target = Signal(tag_bits, name=f"{name}_target")
        cap_needed = Value.cast(0)
        # The lowest segment that needs a word wins, else (prefetch) the lowest with a spare
        # slot: a one-hot pick and an AND-OR tree of the segments' addresses (log depth, not
        # a priority chain through every segment).
        needs, spares = Signal(outer, name=f"{name}_needs"), Signal(outer, name=f"{name}_spares")
        lowest = Signal(outer, name=f"{name}_lowest")
        targets, rots = [], []
        for o in range(outer):
            start = Signal(_ADDR_BITS, name=f"{name}_start{o}")
            tag = Signal(tag_bits, name=f"{name}_tag{o}")
            wtag = Signal(tag_bits, name=f"{name}_wtag{o}")
            count = Signal(range(nw + 1), name=f"{name}_count{o}")
            window = Signal(nw * _WORD_BITS, name=f"{name}_window{o}")
            active = Signal(name=f"{name}_active{o}")
            m.d.comb += active.eq(valid(o) & (valid_bytes != 0))
            first = start[_LANE_BITS:]
            last = Signal(tag_bits, name=f"{name}_last{o}")
            m.d.comb += last.eq((start + valid_bytes - 1)[_LANE_BITS:_ADDR_BITS])
            in_window = (count != 0) & (first <= tag) & (tag - first < count)
            need = needs[o]
            m.d.comb += need.eq(active & ~(in_window & (last <= tag)))
            # A word in flight is needed if the segment's bytes reach it.
            cap_needed = cap_needed | ((cap_seg == o) & active & (last >= cap_target))
            if prefetch:   # the oldest slot holds none of the segment's bytes: fetch ahead
                m.d.comb += spares[o].eq(active & ~need & (first + (nw - 1) > tag))
            targets.append(Mux(need & ~in_window, first, tag + 1)[:tag_bits])
            rots.append(start[:rot_bits])
            with m.If(self.read & lowest[o]):
                m.d.sync += [tag.eq(target), count.eq(Mux(in_window, Mux(count == nw, nw, count + 1), 1))]
            if fills:
                fill = Signal(range(nw + 1), name=f"{name}_fill{o}")   # words captured since the restart
                with m.If(cap_valid & (cap_seg == o)):
                    m.d.sync += [window.word_select(fill, _WORD_BITS).eq(rotated), fill.eq(fill + 1)]
                pick_at = Const(0)   # the segment starts at virtual byte 0 (align 16: rot is the lane)
            else:
                with m.If(cap_valid & (cap_seg == o)):
                    m.d.sync += [window.eq(Cat(window[_WORD_BITS:], rotated)), wtag.eq(cap_target)]
                # The segment's first word sits in slot first - (wtag - nw + 1) of the window;
                # its first byte at virtual byte slot * 16 + (lane - rot), a multiple of align.
                slot = (first + (nw - 1) - wtag)[:slot_bits]
                pick_at = Cat(start[rot_bits:_LANE_BITS], slot)
            with m.If(self.advance):
                m.d.sync += start.eq(start + step)
            with m.If(self.restart):
                m.d.sync += [start.eq(origin + stride * o), count.eq(0)]
                if fills:
                    m.d.sync += fill.eq(0)
            # Virtual byte p is the byte ``rot`` places after window byte p: rotated word p // 16
            # while p % 16 + rot < 16, else the next one (whose rotation wrapped that byte round).
            window_bytes = [window[p * 8:(p + 1) * 8] for p in range(nw * ADDR_UNIT)] + [Const(0, 8)] * ADDR_UNIT
            seg_rot = start[:rot_bits]
            virtual = [window_bytes[p] if p % ADDR_UNIT <= ADDR_UNIT - align
                       else Mux(seg_rot < ADDR_UNIT - p % ADDR_UNIT, window_bytes[p], window_bytes[p + ADDR_UNIT])
                       for p in range(nw * ADDR_UNIT)]
            choices = nw * ADDR_UNIT // align if not fills else 1
            seg_bytes = []
            for i in range(length):
                picks = [virtual[q * align + i] if q * align + i < len(virtual) else Const(0, 8) for q in range(choices)]
                byte = Cat(*picks).word_select(pick_at, 8) if len(picks) > 1 else picks[0]
                seg_bytes.append(Mux(active & (i < valid_bytes), byte, 0))
            m.d.comb += self.word[o * length * 8:(o + 1) * length * 8].eq(Cat(*seg_bytes))
        any_need, any_spare = needs.any(), spares.any()
        chosen = Signal(outer, name=f"{name}_chosen")
        m.d.comb += [chosen.eq(Mux(any_need, needs, spares)), lowest.eq(chosen & (~chosen + 1)),
                     pick.eq(_or_tree([Mux(lowest[o], o, 0) for o in range(outer)])),
                     target.eq(_or_tree([Mux(lowest[o], targets[o], 0) for o in range(outer)]))]
        if rot_bits:
            m.d.comb += rot.eq(_or_tree([Mux(lowest[o], rots[o], 0) for o in range(outer)]))
        m.d.comb += [self.read.eq(self.enable & (any_need | any_spare)),
                     self.read_addr.eq(Cat(Const(0, _LANE_BITS), target)),
                     self.ready.eq(~any_need & ~(cap_valid & (~cap_prefetch | cap_needed)))]
        m.d.sync += [cap_valid.eq(self.read), cap_seg.eq(pick), cap_target.eq(target), cap_prefetch.eq(~any_need),
                     cap_rot.eq(rot)]


def _or_tree(values: list) -> Value:
    """The OR of ``values`` as a balanced tree."""
    while len(values) > 1:
        values = [values[i] | values[i + 1] if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)]
    return Value.cast(values[0])


class _RowWriter:
    """Stores rows with byte-enabled 16-byte writes, one per cycle, from a row register.

    ``load`` (comb; only while ``free``) takes ``row`` (``row_bytes`` bytes), ``mask`` (the
    bytes to store), ``start`` (the row's byte address) and ``last_index`` (its writes - 1:
    the 16-byte words it spans). The register holds the row behind a zero word and shifts
    by 16 bytes per write, so write ``i`` is always the register's low 32 bytes rotated by
    the start lane: one rotator, no word select. ``write`` (byte enables), ``write_addr`` and
    ``write_data`` are registers, a cycle after the write's turn; ``free``: a row may load
    this cycle (none is held, or its last write is under way); ``busy``: a row is held or
    its last write not yet out.
    """

    def __init__(self, m: Module, name: str, *, row_bytes: int):
        words = -(-(row_bytes + ADDR_UNIT - 1) // ADDR_UNIT)   # a row at any alignment
        self.load = Signal(name=f"{name}_load")
        self.row = Signal(row_bytes * 8, name=f"{name}_row")
        self.mask = Signal(row_bytes, name=f"{name}_mask")
        self.start = Signal(_ADDR_BITS, name=f"{name}_start")
        self.last_index = Signal(range(words), name=f"{name}_last_index")
        self.free, self.busy = Signal(name=f"{name}_free"), Signal(name=f"{name}_busy")
        self.write = Signal(ADDR_UNIT, name=f"{name}_write")
        self.write_addr = Signal(_ADDR_BITS, name=f"{name}_write_addr")
        self.write_data = Signal(_WORD_BITS, name=f"{name}_write_data")
        data = Signal((words + 1) * _WORD_BITS, name=f"{name}_data")   # word -1 (zeros), the row, zeros
        enables = Signal((words + 1) * ADDR_UNIT, name=f"{name}_enables")
        back = Signal(range(ADDR_UNIT + 1), name=f"{name}_back")   # 16 - lane: the row's first byte in the pair
        word = Signal(_ADDR_BITS - _LANE_BITS, name=f"{name}_word")
        left = Signal(range(words), name=f"{name}_left")   # writes after this one
        held, pending = Signal(name=f"{name}_held"), Signal(name=f"{name}_pending")
        m.d.comb += [self.free.eq(~held | (left == 0)), self.busy.eq(held | pending)]
        m.d.sync += [pending.eq(held), self.write.eq(0)]
        with m.If(held):
            m.d.sync += [self.write.eq(enables[:2 * ADDR_UNIT].bit_select(back, ADDR_UNIT)),
                         self.write_data.eq(data[:2 * _WORD_BITS].bit_select(back * 8, _WORD_BITS)),
                         self.write_addr.eq(Cat(Const(0, _LANE_BITS), word)),
                         data.eq(data[_WORD_BITS:]), enables.eq(enables[ADDR_UNIT:]), word.eq(word + 1),
                         left.eq(left - 1)]
            with m.If(left == 0):
                m.d.sync += held.eq(0)
        with m.If(self.load):
            m.d.sync += [data.eq(Cat(Const(0, _WORD_BITS), self.row)), enables.eq(Cat(Const(0, ADDR_UNIT), self.mask)),
                         back.eq(ADDR_UNIT - self.start[:_LANE_BITS]), word.eq(self.start[_LANE_BITS:]),
                         left.eq(self.last_index), held.eq(1)]


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
        members = {**instruction_unit_members(),
                   "vector_write": Out(ADDR_UNIT), "vector_write_addr": Out(_ADDR_BITS),
                   "vector_write_data": Out(_WORD_BITS),
                   "acc_write": Out(ADDR_UNIT), "acc_write_addr": Out(_ADDR_BITS), "acc_write_data": Out(_WORD_BITS),
                   # The engine took a k-step this cycle (counted by ENGINE_BUSY_CYCLES).
                   "engine_step": Out(1)}
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
        m.d.comb += self.engine_step.eq(engine.step)
        tr, tc, b = cfg.tile_rows, cfg.tile_cols, cfg.block_size

        def f(name):
            return field_slice(self.word, Opcode.GEMM, name)

        mm, kk, nn = f("m"), f("k"), f("n")
        flags = {name: f(name) for name in ("accumulate", "bias", "requant", "residual", "unsigned_a",
                                            "b_transposed", "a_vector")}
        # Sparse (nm=1) GEMMs: B is the compressed values [rows, n] at b_base, then their
        # in-group indices [rows, n] at b_base + idx_offset (isa.nm_weight_layout).
        nm = f("nm") if cfg.nm_sparsity is not None else Const(0)
        nm_keep, nm_group = cfg.nm_sparsity or (1, 1)
        nm_rows = ((kk + nm_group - 1) >> (nm_group.bit_length() - 1)) << (nm_keep.bit_length() - 1)
        a_base, b_base = f("a_addr") * ADDR_UNIT, f("b_addr") * ADDR_UNIT
        out_base, param_base = f("out_addr") * ADDR_UNIT, f("param_addr") * ADDR_UNIT
        acc_base = f("acc_addr") * ADDR_UNIT

        # ---- checks (registered in CALC, tested in CHECK, golden order) ---------------------
        size = {buf: isa.buffer_bytes(cfg, buf) for buf in Buffer}
        invalid_shape, a_out, b_out, acc_out, param_out, unsupported, out_out, raw_out = (
            Signal(name=n) for n in ("invalid_shape", "a_out", "b_out", "acc_out", "param_out", "unsupported",
                                     "out_out", "raw_out"))
        # The operand sizes are registered a cycle before the checks (the word is valid from the
        # start cycle on), so a DSP multiply and the adder and compare after it are two stages.
        mk, kn, mn = (Signal(len(x) + len(y), name=name) for x, y, name in ((mm, kk, "m_k"), (kk, nn, "k_n"),
                                                                          (mm, nn, "m_n")))
        m.d.sync += [mk.eq(mm * kk), kn.eq(kk * nn), mn.eq(mm * nn)]
        nm_values = Signal(len(kn), name="nm_values")   # bytes of the compressed values
        m.d.sync += nm_values.eq(nm_rows * nn)
        idx_offset = Cat(Const(0, _LANE_BITS), (nm_values + ADDR_UNIT - 1)[_LANE_BITS:])
        acc_region_out = acc_base + mn * 4 > size[Buffer.ACC]   # partials / raw output (int32)
        k_words = Signal(16)
        # Tile counts: read from PLAN_TILES on, at least three cycles after the word.
        m_tiles, n_tiles = _ceil_div_register(m, mm, tr, "m_tiles"), _ceil_div_register(m, nn, tc, "n_tiles")
        a_words = Signal(16)   # A words per panel: k_words, or M / N per sparse k-step
        m.d.sync += [
            # nm=1 without nm_sparsity, or with b_transposed: with the shape checks (golden).
            invalid_shape.eq((mm == 0) | (kk == 0) | (nn == 0) | (kk > cfg.max_k)
                             | (flags["residual"] & ~flags["requant"])
                             | (f("nm") & (flags["b_transposed"] if cfg.nm_sparsity is not None else 1))
                             | (flags["a_vector"] & flags["residual"])),   # one VECTOR read port
            a_out.eq(a_base + mk > Mux(flags["a_vector"], size[Buffer.VECTOR], size[Buffer.INPUT])),
            b_out.eq(b_base + Mux(nm, idx_offset + nm_values, kn) > size[Buffer.WEIGHT]),
            acc_out.eq(flags["accumulate"] & acc_region_out),
            param_out.eq((flags["bias"] | flags["requant"])
                         & (param_base + nn * (3 * _PARAM_BYTES) > size[Buffer.ACC])),
            unsupported.eq(flags["accumulate"] & flags["requant"]),
            out_out.eq(out_base + mn > size[Buffer.VECTOR]),
            raw_out.eq(acc_region_out),
            k_words.eq(Mux(nm, _ceil_div(nm_rows, b), _ceil_div(kk, b))),
            a_words.eq(Mux(nm, _ceil_div(nm_rows, b) << (nm_words_per_step(cfg).bit_length() - 1), _ceil_div(kk, b))),
        ]

        # ---- plan: block_tiles = min(n_tiles, b_half_words // k_words), n_blocks, last block
        block_tiles, block_words, n_blocks, remaining = Signal(16), Signal(32), Signal(16), Signal(16)
        # Strength reduction: the walks below keep their addresses, element indices and
        # in-range tests in registers, updated with their counters by adding these registered
        # steps, so no multiplier or subtract-and-compare sits between a counter and the
        # readers' request logic (the instruction word is held while the GEMM runs).
        block_cols, block_b_bytes = Signal(16), Signal(_ADDR_BITS)   # block_tiles * tc, its B bytes (transposed)
        band_a_bytes, tile_b_bytes, band_elems = Signal(_ADDR_BITS), Signal(_ADDR_BITS), Signal(32)
        m.d.sync += [band_a_bytes.eq(kk * tr), tile_b_bytes.eq(kk * tc), band_elems.eq(nn * tr)]

        def tiles_in_block(block):
            return Mux(block == n_blocks - 1, remaining, block_tiles)

        feed_start, drain_start = Signal(), Signal()
        feed_done, drain_done = Signal(), Signal()
        cmd = engine.command.payload
        m.d.comb += [cmd.k_words.eq(k_words), cmd.m_tiles.eq(m_tiles), cmd.n_blocks.eq(n_blocks),
                     cmd.block_tiles.eq(block_tiles), cmd.last_block_tiles.eq(remaining),
                     cmd.unsigned_a.eq(flags["unsigned_a"]), cmd.residual.eq(flags["residual"])]
        for name, _ in COMMAND_FIELDS:   # fields of other modes: off
            if name == "nm" and cfg.nm_sparsity is not None:
                m.d.comb += cmd.nm.eq(nm)
            elif name not in ("k_words", "m_tiles", "n_blocks", "block_tiles", "last_block_tiles", "unsigned_a",
                              "residual"):
                m.d.comb += cmd[name].eq(0)

        def fail(code):
            return [self.error.eq(1), self.error_code.eq(code)]

        # Raw GEMMs: a sum outside int32 (sticky until the end), a run that writes nothing;
        # nm GEMMs: an index >= M or used twice in a group (found as B streams, sticky).
        overflow, dry, bad_index = Signal(), Signal(), Signal()
        # Without bias, 32-bit accumulators (which hold any max_k-long A @ B) cannot overflow.
        may_overflow = flags["bias"] | (cfg.acc_width > 32)

        # Parameter values: multipliers in 0..2^31-1, shifts in 1..MAX_SHIFT (int32 words),
        # four entries (one buffer word) per cycle; entry e of the block is at param_base + 4e.
        entries_per_word = ADDR_UNIT // _PARAM_BYTES
        scan_word, scan_captured_word = Signal(16), Signal(16)   # buffer word of the block
        scan_read, scan_captured = Signal(), Signal()
        scan_addr = Signal(_ADDR_BITS)
        m.d.comb += scan_addr.eq(param_base + scan_word * ADDR_UNIT)
        scan_bad = Value.cast(0)
        for lane in range(entries_per_word):
            entry = scan_captured_word * entries_per_word + lane
            value = self.read_port(Buffer.ACC)[2].word_select(lane, 32).as_signed()
            scan_bad = scan_bad | ((entry >= nn) & (entry < 3 * nn)
                                   & Mux(entry >= 2 * nn, (value < 1) | (value > MAX_SHIFT), value < 0))

        with m.FSM(name="gemm"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "CALC"
            with m.State("CALC"):
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [block_tiles.eq(0), block_words.eq(k_words), block_cols.eq(0), block_b_bytes.eq(0),
                             bad_index.eq(0)]
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
                    with m.If(out_out & nm):   # dry: a bad index (golden checks it first) still wins
                        m.d.sync += dry.eq(1)
                        m.next = "PLAN_TILES"
                    with m.Elif(out_out):
                        m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [scan_word.eq(nn // entries_per_word), scan_captured.eq(0), dry.eq(0)]
                        m.next = "SCAN_PARAMS"
                with m.Elif(raw_out & ~may_overflow & ~nm):
                    m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                    m.next = "IDLE"
                with m.Else():   # raw: no parameter values to check
                    m.d.sync += dry.eq(raw_out)
                    m.next = "PLAN_TILES"
            with m.State("SCAN_PARAMS"):   # golden requantize rejects these before writing anything
                m.d.comb += scan_read.eq(scan_word * entries_per_word < 3 * nn)
                m.d.sync += [scan_word.eq(scan_word + 1), scan_captured.eq(scan_read),
                             scan_captured_word.eq(scan_word)]
                with m.If(scan_captured & scan_bad):
                    m.d.comb += fail(ErrorCode.INVALID_OPERAND)
                    m.next = "IDLE"
                with m.Elif(~scan_read & ~scan_captured):
                    m.next = "PLAN_TILES"
            with m.State("PLAN_TILES"):   # largest block that fits one B scratchpad half, capped
                with m.If((block_tiles < n_tiles) & (block_words <= b_half_words(cfg))
                          & (block_tiles < MAX_BLOCK_TILES)):
                    m.d.sync += [block_tiles.eq(block_tiles + 1), block_words.eq(block_words + k_words),
                                 block_cols.eq(block_cols + tc), block_b_bytes.eq(block_b_bytes + tile_b_bytes)]
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
                    with m.If(overflow | bad_index):
                        m.d.comb += fail(ErrorCode.INVALID_OPERAND)
                    with m.Elif(dry):
                        m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                    with m.Else():
                        m.d.comb += self.done.eq(1)
                    m.next = "IDLE"

        # ---- feeders: A panels and B blocks, each from its own buffer, concurrently ----------
        # The engine's double buffers order them: per block, the block's B words (tile by
        # tile, k-step by k-step) and every band's A panel.
        def k_valid_bytes(k_offset, width):   # bytes of a k-run of ``width`` before K
            return Mux(kk - k_offset >= width, width, kk - k_offset)

        def set_kofs(kofs, kvalid, value):   # a k offset and its k_valid_bytes (from registers)
            return [kofs.eq(value), kvalid.eq(k_valid_bytes(value[:16], b))]

        a_block, a_band, a_k, a_kofs = Signal(16), Signal(16), Signal(16), Signal(16)
        a_origin = Signal(_ADDR_BITS)   # a_base + a_band * tr * kk
        a_rows_left = Signal(signed(18))   # mm - a_band * tr
        a_kvalid = Signal(range(b + 1))   # k_valid_bytes(a_kofs, b)
        # A from INPUT, or with a_vector from VECTOR (whose port the residual reader, excluded
        # then, would otherwise use).
        a_data = Mux(flags["a_vector"], self.read_port(Buffer.VECTOR)[2], self.read_port(Buffer.INPUT)[2])
        a_reader = _SegmentReader(m, "a_reader", outer=tr, length=b, data=a_data,
                                  origin=a_origin, stride=kk, step=b,
                                  valid=lambda o: a_rows_left > o, valid_bytes=a_kvalid, prefetch=True)
        b_block, b_tile, b_k, b_kofs = Signal(16), Signal(16), Signal(16), Signal(16)
        # b_col_base = (b_block * block_tiles + b_tile) * tc; b_block_col: its value at b_tile 0
        b_col_base, b_block_col = Signal(16), Signal(16)
        bt_origin, bt_block_origin = Signal(_ADDR_BITS), Signal(_ADDR_BITS)   # b_base + (those) * kk
        b_cols_left, b_k_left = Signal(signed(18)), Signal(signed(18))   # nn - b_col_base, kk - b_kofs
        b_kvalid, b_col_bytes = Signal(range(b + 1)), Signal(range(tc + 1))   # k_valid_bytes(b_kofs, b), min(tc, cols left)

        def set_b_col(value):
            value = value[:16]
            return [b_col_base.eq(value), b_cols_left.eq(nn - value),
                    b_col_bytes.eq(Mux(nn - value >= tc, tc, nn - value))]

        weight_data = self.read_port(Buffer.WEIGHT)[2]
        # Transposed B ([n, k]): one segment per column, k consecutive; else one per k row.
        bt_reader = _SegmentReader(m, "bt_reader", outer=tc, length=b, data=weight_data,
                                   origin=bt_origin, stride=kk, step=b,
                                   valid=lambda o: b_cols_left > o, valid_bytes=b_kvalid, prefetch=True)
        bn_reader = _SegmentReader(m, "bn_reader", outer=b, length=tc, data=weight_data,
                                   origin=b_base + b_col_base, stride=nn, step=b * nn, step_multiple=b,
                                   valid=lambda o: b_k_left > o, valid_bytes=b_col_bytes)
        transposed = flags["b_transposed"]
        m.d.comb += [self.input_read.eq(a_reader.read & ~flags["a_vector"]),
                     self.input_read_addr.eq(a_reader.read_addr)]
        b_readers = [bt_reader, bn_reader]
        if cfg.nm_sparsity is not None:
            # nm: the indices of the bn_reader's values, same walk from idx_offset on; it
            # reads the WEIGHT port when the values' reader does not (see b_meta below).
            meta_reader = _SegmentReader(m, "meta_reader", outer=b, length=tc, data=weight_data,
                                         origin=b_base + idx_offset + b_col_base, stride=nn, step=b * nn,
                                         step_multiple=b, valid=lambda o: b_k_left > o, valid_bytes=b_col_bytes)
            b_readers.append(meta_reader)
        for buffer, reads in ((Buffer.WEIGHT, b_readers),):
            read, addr, _ = self.read_port(buffer)
            m.d.comb += [read.eq(Cat(*(r.read for r in reads)).any()),
                         addr.eq(_or_tree([Mux(r.read, r.read_addr, 0) for r in reads]))]
        bt_word = bt_reader.word   # [col][kk] -> the engine's [kk][col]
        m.d.comb += [engine.a_load.payload.eq(a_reader.word),
                     engine.b_load.payload.eq(Mux(transposed, Cat(*(bt_word.word_select(col * b + kx, 8)
                                                                    for kx in range(b) for col in range(tc))),
                                                  bn_reader.word))]
        b_ready = Mux(transposed, bt_reader.ready, bn_reader.ready)
        if cfg.nm_sparsity is not None:
            # The engine takes a B word and its metadata word together. Metadata: each index
            # byte's low index_bits(M) bits, in the B word's [kk][col] order. An index is bad
            # if a higher bit is set (>= M) or a group (N slots of a column) names a position
            # twice; padded slots (past the rows, past n) read 0 and are skipped by group.
            bits = index_bits(nm_group)
            index_bytes = [meta_reader.word.word_select(i, 8) for i in range(b * tc)]
            b_ready = b_ready & (~nm | meta_reader.ready)
            m.d.comb += [engine.b_meta.valid.eq(nm & engine.b_load.valid),
                         engine.b_meta.payload.eq(Cat(*(byte[:bits] for byte in index_bytes)))]
            bad = []
            for group in range(b // nm_keep):
                slots = range(group * nm_keep, (group + 1) * nm_keep)
                in_range = b_k_left > group * nm_keep
                for col in range(tc):
                    ids = [index_bytes[slot * tc + col] for slot in slots]
                    twice = [x == y for i, x in enumerate(ids) for y in ids[i + 1:]]
                    bad.append(in_range & (col < b_col_bytes) & Cat(*(x[bits:] != 0 for x in ids), *twice).any())
            with m.If(nm & engine.b_load.valid & engine.b_load.ready & Cat(*bad).any()):
                m.d.sync += bad_index.eq(1)
        a_feed_done, b_feed_done = Signal(), Signal()
        m.d.comb += feed_done.eq(a_feed_done & b_feed_done)

        with m.FSM(name="gemm_feed_a"):
            with m.State("IDLE"):
                m.d.comb += a_feed_done.eq(1)
                with m.If(feed_start):
                    m.d.sync += [a_block.eq(0), a_band.eq(0), a_origin.eq(a_base), a_rows_left.eq(mm)]
                    m.next = "PANEL"
            with m.State("PANEL"):
                m.d.comb += a_reader.restart.eq(1)
                m.d.sync += [a_k.eq(0), *set_kofs(a_kofs, a_kvalid, Const(0, 16))]
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [a_reader.enable.eq(1), engine.a_load.valid.eq(a_reader.ready)]
                with m.If(engine.a_load.valid & engine.a_load.ready):
                    m.d.comb += a_reader.advance.eq(1)
                    m.d.sync += [a_k.eq(a_k + 1), *set_kofs(a_kofs, a_kvalid, a_kofs + b)]
                    with m.If(a_k == a_words - 1):
                        m.d.sync += [a_band.eq(a_band + 1), a_origin.eq(a_origin + band_a_bytes),
                                     a_rows_left.eq(a_rows_left - tr)]
                        m.next = "PANEL"
                        with m.If(a_band == m_tiles - 1):
                            m.d.sync += [a_band.eq(0), a_block.eq(a_block + 1), a_origin.eq(a_base),
                                         a_rows_left.eq(mm)]
                            with m.If(a_block == n_blocks - 1):
                                m.next = "IDLE"

        with m.FSM(name="gemm_feed_b"):
            with m.State("IDLE"):
                m.d.comb += b_feed_done.eq(1)
                with m.If(feed_start):
                    m.d.sync += [b_block.eq(0), b_tile.eq(0), b_block_col.eq(0), *set_b_col(Const(0, 16)),
                                 bt_origin.eq(b_base), bt_block_origin.eq(b_base)]
                    m.next = "TILE"
            with m.State("TILE"):
                m.d.comb += [r.restart.eq(1) for r in b_readers]
                m.d.sync += [b_k.eq(0), *set_kofs(b_kofs, b_kvalid, Const(0, 16)), b_k_left.eq(Mux(nm, nm_rows, kk))]
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [bt_reader.enable.eq(transposed), bn_reader.enable.eq(~transposed),
                             engine.b_load.valid.eq(b_ready)]
                if cfg.nm_sparsity is not None:   # the values' reads first
                    m.d.comb += meta_reader.enable.eq(nm & ~bn_reader.read)
                with m.If(engine.b_load.valid & engine.b_load.ready):
                    m.d.comb += [r.advance.eq(1) for r in b_readers]
                    m.d.sync += [b_k.eq(b_k + 1), *set_kofs(b_kofs, b_kvalid, b_kofs + b), b_k_left.eq(b_k_left - b)]
                    with m.If(b_k == k_words - 1):
                        m.d.sync += [b_tile.eq(b_tile + 1), *set_b_col(b_col_base + tc),
                                     bt_origin.eq(bt_origin + tile_b_bytes)]
                        m.next = "TILE"
                        with m.If(b_tile == tiles_in_block(b_block) - 1):
                            m.d.sync += [b_tile.eq(0), b_block.eq(b_block + 1), b_block_col.eq(b_block_col + block_cols),
                                         *set_b_col(b_block_col + block_cols),
                                         bt_block_origin.eq(bt_block_origin + block_b_bytes),
                                         bt_origin.eq(bt_block_origin + block_b_bytes)]
                            with m.If(b_block == n_blocks - 1):
                                m.next = "IDLE"

        # ---- drain: parameter word per tile, residual / partials row and output row per row --
        d_block, d_band, d_tile, d_row = Signal(16), Signal(16), Signal(16), Signal(range(max(tr, 2)))
        # Registers, updated with the counters: d_col_base = (d_block * block_tiles + d_tile) * tc,
        # d_row_abs = d_band * tr + d_row, d_row_in = d_row_abs < mm, d_cols the tile's in-range
        # columns, d_row_index = d_row_abs * nn + d_col_base (element index of the row's first
        # column); d_block_col, d_band_row, d_tile_index, d_band_index: their values at the
        # first tile of the block, first row of the band, first row of the tile and band.
        d_col_base, d_block_col, d_row_abs, d_band_row, d_row_in = Signal(16), Signal(16), Signal(16), Signal(16), Signal()
        d_cols = Signal(range(tc + 1))
        d_row_index, d_tile_index, d_band_index = Signal(32), Signal(32), Signal(32)

        def set_d_col(value):
            value = value[:16]
            return [d_col_base.eq(value), d_cols.eq(Mux(nn - value >= tc, tc, nn - value))]

        def set_d_row(value):
            value = value[:16]
            return [d_row_abs.eq(value), d_row_in.eq(value < mm)]

        acc_read, acc_addr, acc_data = self.read_port(Buffer.ACC)
        vec_read, vec_addr, vec_data = self.read_port(Buffer.VECTOR)
        # One segment per field (bias, multiplier, shift): the tile's int32 entries.
        params = _SegmentReader(m, "param_reader", outer=len(PARAM_FIELDS), length=tc * _PARAM_BYTES, data=acc_data,
                                origin=param_base + d_col_base * _PARAM_BYTES, stride=nn * _PARAM_BYTES, step=0,
                                valid=lambda o: flags["bias"] if o == 0 else flags["requant"],
                                valid_bytes=d_cols * _PARAM_BYTES)
        residual = _SegmentReader(m, "residual_reader", outer=1, length=tc, data=vec_data,
                                  origin=out_base + d_row_index, stride=0, step=0,
                                  valid=lambda o: flags["residual"] & d_row_in, valid_bytes=d_cols)
        partials = _SegmentReader(m, "partial_reader", outer=1, length=tc * 4, data=acc_data,
                                  origin=acc_base + d_row_index * 4, stride=0, step=0,
                                  valid=lambda o: flags["accumulate"] & d_row_in, valid_bytes=d_cols * 4)
        m.d.comb += [acc_read.eq(params.read | scan_read | partials.read),
                     acc_addr.eq(Mux(scan_read, scan_addr, Mux(partials.read, partials.read_addr, params.read_addr))),
                     vec_read.eq(residual.read | (a_reader.read & flags["a_vector"])),
                     vec_addr.eq(Mux(residual.read, residual.read_addr, a_reader.read_addr)),
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

        # Output rows leave the engine into a pipeline, at most one per cycle (``take``, in
        # WRITE): the taken row (its int8 bytes, or output_acc + bias and the partials), the
        # raw sum and its int32 overflow test, then the row writer, so that the adders, the
        # overflow test and the rotator each have a cycle of their own. Raw output: A @ B
        # (+ bias) (+ partials), checked against int32 (golden order); a row with an element
        # outside int32 writes nothing, and no row after it does.
        requant = flags["requant"]
        col_in = Signal(tc)
        m.d.comb += col_in.eq(Cat(*(d_row_in & (lane < d_cols) for lane in range(tc))))
        take = Signal()
        writer = _RowWriter(m, "row_writer", row_bytes=tc * 4)
        t_valid, s_valid = Signal(), Signal()
        s_free = Signal()   # the summed row moves on (or there is none)
        t_free = Signal()   # the taken row moves on (or there is none)
        m.d.comb += [s_free.eq(~s_valid | writer.free), t_free.eq(~t_valid | s_free)]
        t_row, s_row = Signal(tc * 8), Signal(tc * 8)
        t_cols, s_cols, s_overflows = Signal(tc), Signal(tc), Signal(tc)
        t_start, s_start = Signal(_ADDR_BITS), Signal(_ADDR_BITS)
        t_bytes = Signal(range(tc * 4 + 1))   # the row's in-range bytes
        s_last_index = Signal.like(writer.last_index)
        sum_bits = max(cfg.acc_width, 32) + 2   # output_acc + bias + partial, exactly
        t_sums = [Signal(signed(sum_bits - 1), name=f"taken_sum{lane}") for lane in range(tc)]
        t_partials = [Signal(signed(32), name=f"taken_partial{lane}") for lane in range(tc)]
        s_sums = [Signal(signed(sum_bits), name=f"raw_sum{lane}") for lane in range(tc)]
        with m.If(t_free):
            m.d.sync += [t_valid.eq(take), t_row.eq(engine.output.payload.as_value()), t_cols.eq(col_in),
                         t_start.eq(Mux(requant, out_base + d_row_index, acc_base + d_row_index * 4)),
                         t_bytes.eq(Mux(d_row_in, Mux(requant, d_cols, d_cols * 4), 0))]
            for lane in range(tc):
                m.d.sync += [t_sums[lane].eq(engine.output_acc[lane] + Mux(flags["bias"], entry_word[lane].as_signed(), 0)),
                             t_partials[lane].eq(Mux(flags["accumulate"], partials.word.word_select(lane, 32), 0))]
        with m.If(s_free):
            m.d.sync += [s_valid.eq(t_valid), s_row.eq(t_row), s_cols.eq(t_cols), s_start.eq(t_start),
                         # the words the row spans from its start lane (one for a row out of range)
                         s_last_index.eq(Mux(t_bytes == 0, 0, (t_start[:_LANE_BITS] + t_bytes - 1) >> _LANE_BITS))]
            for lane in range(tc):
                raw_sum = t_sums[lane] + t_partials[lane]
                m.d.sync += [s_sums[lane].eq(raw_sum),
                             s_overflows[lane].eq(t_cols[lane] & ((raw_sum < -(1 << 31)) | (raw_sum >= (1 << 31))))]
        row_overflows = s_overflows.any()
        stopped = dry | bad_index
        raw_keep = s_cols & ~Mux(row_overflows | overflow | stopped, (1 << tc) - 1, 0)
        m.d.comb += [writer.load.eq(s_valid & writer.free), writer.start.eq(s_start),
                     writer.last_index.eq(s_last_index),
                     writer.row.eq(Mux(requant, s_row, Cat(*(total[:32] for total in s_sums)))),
                     writer.mask.eq(Mux(requant, Mux(stopped, 0, s_cols), Cat(*(keep.replicate(4) for keep in raw_keep))))]
        with m.If(writer.load & ~requant & row_overflows):
            m.d.sync += overflow.eq(1)
        m.d.comb += [self.vector_write.eq(Mux(requant, writer.write, 0)), self.acc_write.eq(Mux(requant, 0, writer.write)),
                     self.vector_write_addr.eq(writer.write_addr), self.vector_write_data.eq(writer.write_data),
                     self.acc_write_addr.eq(writer.write_addr), self.acc_write_data.eq(writer.write_data)]
        row_reads = flags["residual"] | flags["accumulate"]

        with m.FSM(name="gemm_drain"):
            with m.State("IDLE"):
                m.d.comb += drain_done.eq(~t_valid & ~s_valid & ~writer.busy)
                with m.If(drain_start):
                    m.d.sync += [d_block.eq(0), d_band.eq(0), d_tile.eq(0), d_row.eq(0), params_valid.eq(0),
                                 overflow.eq(0), *set_d_col(Const(0, 16)), d_block_col.eq(0), *set_d_row(Const(0, 16)),
                                 d_band_row.eq(0), d_row_index.eq(0), d_tile_index.eq(0), d_band_index.eq(0)]
                    m.next = "PARAMS"
            with m.State("PARAMS"):   # a raw GEMM without bias reads none (the engine's word is unused)
                m.d.comb += params.restart.eq(1)
                m.next = "WAIT_PARAMS"
            with m.State("WAIT_PARAMS"):
                m.d.comb += params.enable.eq(1)
                with m.If(params.ready):
                    m.d.sync += params_valid.eq(1)
                    m.next = "ROW"
                    with m.If(~row_reads):   # nothing to read per row
                        m.next = "WRITE"
            with m.State("ROW"):   # residual (requant) and accumulate (raw) exclude each other
                m.d.comb += [residual.restart.eq(1), partials.restart.eq(1)]
                m.next = "WRITE"
            with m.State("WRITE"):   # the engine emits a row once its tile is done (and the residual offered)
                m.d.comb += [residual.enable.eq(1), partials.enable.eq(1),
                             engine.residual.valid.eq(flags["residual"] & residual.ready & ~engine.output.valid)]
                with m.If(engine.output.valid & partials.ready & t_free):   # a row per cycle at most
                    m.d.comb += [engine.output.ready.eq(1), take.eq(1)]
                    m.d.sync += [d_row.eq(d_row + 1), *set_d_row(d_row_abs + 1), d_row_index.eq(d_row_index + nn)]
                    with m.If(row_reads):
                        m.next = "ROW"
                    with m.If(d_row == tr - 1):
                        m.d.sync += [d_row.eq(0), d_tile.eq(d_tile + 1), *set_d_col(d_col_base + tc),
                                     *set_d_row(d_band_row), d_tile_index.eq(d_tile_index + tc),
                                     d_row_index.eq(d_tile_index + tc)]
                        m.next = "PARAMS"
                        with m.If(d_tile == tiles_in_block(d_block) - 1):
                            m.d.sync += [d_tile.eq(0), d_band.eq(d_band + 1), *set_d_col(d_block_col),
                                         d_band_row.eq(d_band_row + tr), *set_d_row(d_band_row + tr),
                                         d_band_index.eq(d_band_index + band_elems),
                                         d_tile_index.eq(d_band_index + band_elems),
                                         d_row_index.eq(d_band_index + band_elems)]
                            with m.If(d_band == m_tiles - 1):
                                m.d.sync += [d_band.eq(0), d_block.eq(d_block + 1),
                                             d_block_col.eq(d_block_col + block_cols),
                                             *set_d_col(d_block_col + block_cols), d_band_row.eq(0),
                                             *set_d_row(Const(0, 16)), d_band_index.eq(d_block_col + block_cols),
                                             d_tile_index.eq(d_block_col + block_cols),
                                             d_row_index.eq(d_block_col + block_cols)]
                                with m.If(d_block == n_blocks - 1):
                                    m.next = "IDLE"
        return m
