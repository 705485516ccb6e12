"""The matrix engine: scratchpads, tile sequencer, block grid and post-processing."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import AccelConfig
from ..spec.matrix import a_half_words, b_half_words
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
    into the accumulator buffer and drained row by row through the post-processor into
    ``output`` while the grid already computes the next tile; ``output_acc`` holds the same
    row's raw accumulators (before bias) while ``output`` is valid, for raw int32 GEMMs
    (their host still supplies a parameter word per tile). ``params`` supplies one word
    per tile, ``residual`` one row per output row (only if the command enables it). Every
    stream may stall at any cycle.

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
        super().__init__({
            "command": In(stream.Signature(layouts.command)),
            "a_load": In(stream.Signature(layouts.a_word)),
            "b_load": In(stream.Signature(layouts.b_word)),
            "params": In(stream.Signature(layouts.params)),
            "residual": In(stream.Signature(layouts.out_row)),
            "output": Out(stream.Signature(layouts.out_row)),
            "output_acc": Out(layouts.accumulators.elem_shape),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, lay = self.config, self.layouts
        m.submodules.a_spad = a_spad = memory.Memory(shape=lay.a_word, depth=2 * self.a_half_words, init=[])
        m.submodules.b_spad = b_spad = memory.Memory(shape=lay.b_word, depth=2 * self.b_half_words, init=[])
        m.submodules.grid = grid = BlockGrid(cfg)
        m.submodules.post = post = PostProcessor(cfg)
        a_write, a_read = a_spad.write_port(), a_spad.read_port()
        b_write, b_read = b_spad.write_port(), b_spad.read_port()

        cmd = Signal(lay.command)
        active = Signal()
        m.d.comb += [self.busy.eq(active), self.command.ready.eq(~active)]
        last_k = cmd.k_words - 1

        def tiles_in_block(block):
            return Mux(block == cmd.n_blocks - 1, cmd.last_block_tiles, cmd.block_tiles)

        a_buf, b_buf = _HalfFlags("a"), _HalfFlags("b")

        # -- A loader: panels in order, every band once per B block -----------------------
        a_k, a_band, a_block, a_done = (Signal(16, name="a_k"), Signal(16, name="a_band"),
                                        Signal(16, name="a_block"), Signal(name="a_done"))
        m.d.comb += [
            self.a_load.ready.eq(active & ~a_done & a_buf.can_write),
            a_write.addr.eq(Mux(a_buf.write_half, self.a_half_words, 0) + a_k),
            a_write.data.eq(self.a_load.payload),
            a_write.en.eq(self.a_load.valid & self.a_load.ready),
        ]
        with m.If(self.a_load.valid & self.a_load.ready):
            m.d.sync += a_k.eq(a_k + 1)
            with m.If(a_k == last_k):
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
        m.d.comb += [
            self.b_load.ready.eq(active & ~b_done & b_buf.can_write),
            b_write.addr.eq(Mux(b_buf.write_half, self.b_half_words, 0) + b_ptr),
            b_write.data.eq(self.b_load.payload),
            b_write.en.eq(self.b_load.valid & self.b_load.ready),
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
        m.d.comb += [
            issue.eq(active & ~c_done & a_buf.can_read & b_buf.can_read & ~(step_is_last & tile_in_flight)),
            a_read.addr.eq(Mux(a_buf.read_half, self.a_half_words, 0) + c_k),
            b_read.addr.eq(Mux(b_buf.read_half, self.b_half_words, 0) + c_ptr),
        ]
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
        for row in range(cfg.tile_rows):
            for kk in range(cfg.block_size):
                raw = a_read.data[row][kk]
                m.d.comb += grid.a[row][kk].eq(Mux(cmd.unsigned_a, raw, raw.as_signed()))
        m.d.comb += [grid.b.eq(b_read.data), grid.ctl.eq(ctl)]

        # -- drain: accumulator buffer -> post-processor -> output register ----------------
        tile_ready = Signal()
        drain_row = Signal(range(cfg.tile_rows), name="drain_row")
        m.d.comb += [
            post.acc.eq(grid.result[drain_row]),
            post.params.eq(self.params.payload),
            post.residual.eq(self.residual.payload),
            post.residual_enable.eq(cmd.residual),
        ]
        emit = Signal()
        m.d.comb += emit.eq(tile_ready & self.params.valid & (~cmd.residual | self.residual.valid)
                            & (~self.output.valid | self.output.ready))
        with m.If(emit):
            m.d.sync += [self.output.payload.eq(post.result), self.output_acc.eq(post.acc),
                         self.output.valid.eq(1), drain_row.eq(drain_row + 1)]
            m.d.comb += self.residual.ready.eq(cmd.residual)
            with m.If(drain_row == cfg.tile_rows - 1):
                m.d.sync += [drain_row.eq(0), tile_ready.eq(0), tile_in_flight.eq(0)]
                m.d.comb += self.params.ready.eq(1)
                with m.If(c_done):
                    m.d.sync += active.eq(0)  # this was the GEMM's last tile
        with m.Elif(self.output.ready):
            m.d.sync += self.output.valid.eq(0)
        with m.If(grid.captured):
            m.d.sync += tile_ready.eq(1)

        # -- command: latch and reset the sequencers --------------------------------------
        with m.If(self.command.valid & self.command.ready):
            m.d.sync += [cmd.eq(self.command.payload), active.eq(1), a_done.eq(0), b_done.eq(0), c_done.eq(0),
                         a_k.eq(0), a_band.eq(0), a_block.eq(0), b_k.eq(0), b_tile.eq(0), b_block.eq(0),
                         b_ptr.eq(0), c_k.eq(0), c_tile.eq(0), c_band.eq(0), c_block.eq(0), c_ptr.eq(0),
                         *a_buf.reset(), *b_buf.reset()]
        return m
