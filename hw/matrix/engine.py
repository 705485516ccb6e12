"""The matrix engine: scratchpads, tile sequencer, block grid and post-processing."""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import AccelConfig
from ..spec.matrix import a_half_words, b_half_words, nm_words_per_step
from ..spec.nm import pack_index_rows
from .grid import BlockGrid
from .layouts import EngineLayouts, block_control_layout
from .postprocess import PostProcessor

__all__ = ["MatrixEngine"]


class _HalfFlags:
    """Full flags of a double buffer's two halves, with the writer's and reader's half."""

    def __init__(self, name: str):
        self.full = Signal(2, name=f"{name}_full")
        self.write_half = Signal(name=f"{name}_write_half")
        self.read_half = Signal(name=f"{name}_read_half")

    @property
    def can_write(self):
        return ~self.full.bit_select(self.write_half, 1)

    @property
    def can_read(self):
        return self.full.bit_select(self.read_half, 1)

    def filled(self, m: Module):
        m.d.sync += [self.full.bit_select(self.write_half, 1).eq(1), self.write_half.eq(~self.write_half)]

    def released(self, m: Module):
        m.d.sync += [self.full.bit_select(self.read_half, 1).eq(0), self.read_half.eq(~self.read_half)]

    def reset(self):
        return [self.full.eq(0), self.write_half.eq(0), self.read_half.eq(0)]


class MatrixEngine(wiring.Component):
    """Output-block-stationary GEMM engine: ``out = post(A @ B)`` for any M, K, N.

    A GEMM starts with one ``command`` word (see :mod:`vitaccel.hw.spec.matrix` for its
    fields and for the order of every stream). The host (a DMA, or a testbench) then writes
    A words into ``a_load`` and B words into ``b_load``, one scratchpad row per cycle; both
    scratchpads are double-buffered, so the next A panel and the next B block load while
    the block grid computes on the current ones. The sequencer walks
    ``for block: for band: for tile in block: for k_word``; each finished tile is copied
    into the accumulator buffer and drained row by row through the post-processor (a
    pipeline: :attr:`PostProcessor.LATENCY` cycles, :attr:`PostProcessor.DEPTH` rows) into
    ``output`` while the grid already computes the next tile; ``output_acc`` holds the same
    row's raw accumulators (before bias) while ``output`` is valid, for raw int32 GEMMs
    (their host still supplies a parameter word per tile). ``params`` supplies one word
    per tile, ``residual`` one row per output row (only if the command enables it). Every
    stream may stall at any cycle.

    **Sparse mode** (only built when ``config.nm_sparsity = (N, M)``; per command by its
    ``nm`` bit, so dense GEMMs such as attention scores run on the same engine): B words hold
    compressed k-slots, and each comes with a metadata word on ``b_meta`` (the two streams
    handshake together). One sparse k-step needs ``S = b * M / N`` activations per row, i.e.
    ``R = M / N`` ordinary A words. The A scratchpad is split into ``R`` banks of the
    ordinary A word width, and A word ``i`` of a panel is stored in bank ``i % R`` at
    ``i // R``: the loader, the ``a_load`` port and the scratchpad's total size are the same
    in both modes (``a_load`` needs ``R`` beats per sparse step, which the double buffer
    hides behind the ``block_tiles`` tiles that reuse a panel when there are ``R`` or more). A sparse step reads one row
    of all banks (``S`` k's), a dense step one word from bank ``k % R``. We chose banks over
    one ``S``-wide scratchpad word because the wide word would hold only ``b`` useful lanes
    in dense mode, halving (2:4) the dense panel a scratchpad half holds, and over two reads
    per step because that would halve the sparse issue rate. The grid's A input is ``S``
    lanes wide: in dense mode the word's lane ``kk`` sits at ``(kk // N) * M + kk % N`` and
    the metadata is the constant ``kk % N``, so the units' selection multiplexers (see
    :class:`~vitaccel.hw.matrix.block_unit.BlockUnit`) serve both modes and the dense
    products, hence results, are the same as on a dense-only engine.

    Parameters
    ----------
    config : AccelConfig
        Geometry (block_rows, block_cols, block_size), widths and scratchpad sizes.
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        self.config = config
        self.layouts = layouts = EngineLayouts(config)
        self.a_half_words = a_half_words(config)
        self.b_half_words = b_half_words(config)
        ports = {
            "command": In(stream.Signature(layouts.command)),
            "a_load": In(stream.Signature(layouts.a_word)),
            "b_load": In(stream.Signature(layouts.b_word)),
            "params": In(stream.Signature(layouts.params)),
            "residual": In(stream.Signature(layouts.out_row)),
            "output": Out(stream.Signature(layouts.out_row)),
            "output_acc": Out(layouts.accumulators.elem_shape),
            "busy": Out(1),
            # High in every cycle the grid takes a k-step (the ENGINE_BUSY_CYCLES counter).
            "step": Out(1),
        }
        if layouts.meta_word is not None:
            ports["b_meta"] = In(stream.Signature(layouts.meta_word))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        cfg, lay = self.config, self.layouts
        nm = cfg.nm_sparsity
        banks = nm_words_per_step(cfg)          # R: A words per sparse step
        bank_bits = banks.bit_length() - 1      # R is a power of two
        bank_half = self.a_half_words // banks  # words of one bank in one half
        a_ports = []
        for bank in range(banks):
            spad = memory.Memory(shape=lay.a_word, depth=2 * bank_half, init=[])
            m.submodules["a_spad" if banks == 1 else f"a_spad{bank}"] = spad
            a_ports.append((spad.write_port(), spad.read_port()))
        m.submodules.b_spad = b_spad = memory.Memory(shape=lay.b_word, depth=2 * self.b_half_words, init=[])
        m.submodules.grid = grid = BlockGrid(cfg)
        m.submodules.post = post = PostProcessor(cfg)
        b_write, b_read = b_spad.write_port(), b_spad.read_port()
        if nm is not None:
            m.submodules.meta_spad = meta_spad = memory.Memory(shape=lay.meta_word, depth=2 * self.b_half_words,
                                                               init=[])
            meta_write, meta_read = meta_spad.write_port(), meta_spad.read_port()

        cmd = Signal(lay.command)
        active = Signal()
        # Busy until the last row has left the post-processor (its residual input follows the command).
        m.d.comb += [self.busy.eq(active | post.busy), self.command.ready.eq(~active & ~post.busy)]
        last_k = cmd.k_words - 1
        # A words per panel: R per k-step in sparse mode.
        last_a = last_k if nm is None else Mux(cmd.nm, (cmd.k_words << bank_bits) - 1, last_k)

        def tiles_in_block(block):
            return Mux(block == cmd.n_blocks - 1, cmd.last_block_tiles, cmd.block_tiles)

        a_buf, b_buf = _HalfFlags("a"), _HalfFlags("b")

        # -- A loader: panels in order, every band once per B block -----------------------
        a_k, a_band, a_block, a_done = (Signal(16, name="a_k"), Signal(16, name="a_band"),
                                        Signal(16, name="a_block"), Signal(name="a_done"))
        m.d.comb += self.a_load.ready.eq(active & ~a_done & a_buf.can_write)
        for bank, (a_write, _) in enumerate(a_ports):
            write = self.a_load.valid & self.a_load.ready
            m.d.comb += [
                a_write.addr.eq(Mux(a_buf.write_half, bank_half, 0) + (a_k >> bank_bits)),
                a_write.data.eq(self.a_load.payload),
                a_write.en.eq(write & (a_k[:bank_bits] == bank) if bank_bits else write),
            ]
        with m.If(self.a_load.valid & self.a_load.ready):
            m.d.sync += a_k.eq(a_k + 1)
            with m.If(a_k == last_a):
                m.d.sync += [a_k.eq(0), a_band.eq(a_band + 1)]
                a_buf.filled(m)
                with m.If(a_band == cmd.m_tiles - 1):
                    m.d.sync += [a_band.eq(0), a_block.eq(a_block + 1)]
                    with m.If(a_block == cmd.n_blocks - 1):
                        m.d.sync += a_done.eq(1)

        # -- B loader: one block of tile columns per half --------------------------------
        b_k, b_tile, b_block, b_ptr, b_done = (Signal(16, name="b_k"), Signal(16, name="b_tile"),
                                               Signal(16, name="b_block"), Signal(16, name="b_ptr"),
                                               Signal(name="b_done"))
        b_can_load = active & ~b_done & b_buf.can_write
        m.d.comb += [
            b_write.addr.eq(Mux(b_buf.write_half, self.b_half_words, 0) + b_ptr),
            b_write.data.eq(self.b_load.payload),
            b_write.en.eq(self.b_load.valid & self.b_load.ready),
        ]
        if nm is None:
            m.d.comb += self.b_load.ready.eq(b_can_load)
        else:  # a sparse B word and its metadata word are written together
            m.d.comb += [
                self.b_load.ready.eq(b_can_load & (~cmd.nm | self.b_meta.valid)),
                self.b_meta.ready.eq(b_can_load & cmd.nm & self.b_load.valid),
                meta_write.addr.eq(b_write.addr),
                meta_write.data.eq(self.b_meta.payload),
                meta_write.en.eq(b_write.en),
            ]
        with m.If(self.b_load.valid & self.b_load.ready):
            m.d.sync += [b_k.eq(b_k + 1), b_ptr.eq(b_ptr + 1)]
            with m.If(b_k == last_k):
                m.d.sync += [b_k.eq(0), b_tile.eq(b_tile + 1)]
                with m.If(b_tile == tiles_in_block(b_block) - 1):
                    m.d.sync += [b_tile.eq(0), b_ptr.eq(0), b_block.eq(b_block + 1)]
                    b_buf.filled(m)
                    with m.If(b_block == cmd.n_blocks - 1):
                        m.d.sync += b_done.eq(1)

        # -- compute sequencer: issue one k-step per cycle --------------------------------
        c_k, c_tile, c_band, c_block, c_ptr, c_done = (
            Signal(16, name="c_k"), Signal(16, name="c_tile"), Signal(16, name="c_band"),
            Signal(16, name="c_block"), Signal(16, name="c_ptr"), Signal(name="c_done"))
        # A finished tile occupies the accumulator buffer from its last issue until drained;
        # the next tile's last step must wait for that, everything before it may proceed.
        tile_in_flight = Signal()
        issue = Signal()
        step_is_last = c_k == last_k
        # Sparse steps read row c_k of every bank, dense steps word c_k of bank c_k % R.
        a_row = c_k if nm is None else Mux(cmd.nm, c_k, c_k >> bank_bits)
        m.d.comb += [
            issue.eq(active & ~c_done & a_buf.can_read & b_buf.can_read & ~(step_is_last & tile_in_flight)),
            self.step.eq(issue),
            b_read.addr.eq(Mux(b_buf.read_half, self.b_half_words, 0) + c_ptr),
        ]
        for _, a_read in a_ports:
            m.d.comb += a_read.addr.eq(Mux(a_buf.read_half, bank_half, 0) + a_row)
        if nm is not None:
            m.d.comb += meta_read.addr.eq(b_read.addr)
        ctl = Signal(block_control_layout())  # aligned with the scratchpads' read data
        m.d.sync += [ctl.valid.eq(issue), ctl.first.eq(c_k == 0), ctl.last.eq(step_is_last)]
        with m.If(issue):
            m.d.sync += [c_k.eq(c_k + 1), c_ptr.eq(c_ptr + 1)]
            with m.If(step_is_last):
                m.d.sync += [c_k.eq(0), c_tile.eq(c_tile + 1), tile_in_flight.eq(1)]
                with m.If(c_tile == tiles_in_block(c_block) - 1):
                    m.d.sync += [c_tile.eq(0), c_ptr.eq(0), c_band.eq(c_band + 1)]
                    a_buf.released(m)
                    with m.If(c_band == cmd.m_tiles - 1):
                        m.d.sync += [c_band.eq(0), c_block.eq(c_block + 1)]
                        b_buf.released(m)
                        with m.If(c_block == cmd.n_blocks - 1):
                            m.d.sync += c_done.eq(1)

        # A operands widen by one bit: sign-extended, or zero-extended in unsigned-A mode.
        b = cfg.block_size
        if nm is None:
            lanes = {kk: a_ports[0][1].data for kk in range(b)}
        else:
            n, group = nm
            dense_bank = Signal(bank_bits, name="dense_bank")  # aligned with the read data
            m.d.sync += dense_bank.eq(c_k[:bank_bits])
            dense_word = Signal(lay.a_word, name="dense_a")
            m.d.comb += dense_word.eq(Cat(*[read.data for _, read in a_ports]).word_select(dense_bank, lay.a_word.size))
            lanes = {lane: a_ports[lane // b][1].data for lane in range(lay.a_span)}
            # Dense lane kk goes where the unit's index kk % N of group kk // N picks it.
            placed = {kk // n * group + kk % n: kk for kk in range(b)}
            dense_meta = pack_index_rows(np.tile(np.arange(b) % n, (cfg.tile_cols, 1)).T, group, rows_per_word=b)[0]
            m.d.comb += grid.meta.eq(Mux(cmd.nm, meta_read.data, Const(dense_meta, lay.meta_word.size)))
        for row in range(cfg.tile_rows):
            for lane in range(lay.a_span):
                raw = lanes[lane][row][lane % b]
                if nm is not None and lane in placed:
                    raw = Mux(cmd.nm, raw, dense_word[row][placed[lane]])
                m.d.comb += grid.a[row][lane].eq(Mux(cmd.unsigned_a, raw, raw.as_signed()))
        m.d.comb += [grid.b.eq(b_read.data), grid.ctl.eq(ctl)]

        # -- drain: accumulator buffer -> post-processor pipeline -> output ---------------
        # A row enters the post-processor once its tile is captured and the tile's parameters
        # are offered; it leaves PostProcessor.LATENCY cycles later at the earliest, taking
        # its residual then (the pipeline holds several rows, so a tile drains back to back).
        tile_ready = Signal()
        drain_row = Signal(range(cfg.tile_rows), name="drain_row")
        m.d.comb += [
            post.acc.eq(grid.result[drain_row]),
            post.params.eq(self.params.payload),
            post.residual_enable.eq(cmd.residual),
            self.output_acc.eq(post.output_acc),
        ]
        wiring.connect(m, wiring.flipped(self.residual), post.residual)
        wiring.connect(m, post.output, wiring.flipped(self.output))
        emit = Signal()
        m.d.comb += [emit.eq(tile_ready & self.params.valid & post.ready), post.enter.eq(emit)]
        with m.If(emit):
            m.d.sync += drain_row.eq(drain_row + 1)
            with m.If(drain_row == cfg.tile_rows - 1):
                m.d.sync += [drain_row.eq(0), tile_ready.eq(0), tile_in_flight.eq(0)]
                m.d.comb += self.params.ready.eq(1)
                with m.If(c_done):
                    m.d.sync += active.eq(0)  # this was the GEMM's last tile
        with m.If(grid.captured):
            m.d.sync += tile_ready.eq(1)

        # -- command: latch and reset the sequencers --------------------------------------
        with m.If(self.command.valid & self.command.ready):
            m.d.sync += [cmd.eq(self.command.payload), active.eq(1), a_done.eq(0), b_done.eq(0), c_done.eq(0),
                         a_k.eq(0), a_band.eq(0), a_block.eq(0), b_k.eq(0), b_tile.eq(0), b_block.eq(0),
                         b_ptr.eq(0), c_k.eq(0), c_tile.eq(0), c_band.eq(0), c_block.eq(0), c_ptr.eq(0),
                         *a_buf.reset(), *b_buf.reset()]
        return m
