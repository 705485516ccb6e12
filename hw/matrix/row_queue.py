"""A queue of rows for the post-processor's output: distributed RAM with a registered head."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RowQueue"]


class RowQueue(wiring.Component):
    """First in, first out, for a writer that never overfills it (the post-processor hands
    out credits), with every control path one LUT deep.

    ``w_en`` writes ``w_data``; ``r_data`` (a register) holds the head while ``r_rdy``;
    ``r_en`` takes it. An entry written to an empty queue is readable two cycles later.
    Unlike ``amaranth.lib.fifo.SyncFIFOBuffered``, the fill level is a thermometer code that
    learns of a refill one cycle late, so the head's refill enable (which fans out to every
    bit of ``r_data``) is one LUT of registers and the reader's handshake, and nothing else
    waits for it.

    Parameters
    ----------
    width : int
        Bits per entry.
    depth : int
        Entries the RAM holds (a power of two; the head register holds one more).
    """

    def __init__(self, *, width: int, depth: int):
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if not isinstance(depth, int) or depth < 2 or depth & (depth - 1):
            raise ValueError(f"depth must be a power of two of at least 2, got {depth!r}")
        self.width, self.depth = width, depth
        super().__init__({"w_en": In(1), "w_data": In(width), "r_rdy": Out(1), "r_en": In(1),
                          "r_data": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.storage = storage = memory.Memory(shape=self.width, depth=self.depth, init=[])
        write, read = storage.write_port(), storage.read_port()
        produce = Signal(range(self.depth), name="produce")
        consume = Signal(range(self.depth), name="consume")
        # filled[i]: more than i entries in the RAM, counting a refill one cycle late (popped),
        # so that no update of it waits for this cycle's refill decision.
        filled = Signal(self.depth, name="filled")
        popped = Signal(name="popped")
        available = Mux(popped, filled[1], filled[0])
        refill = Signal()
        m.d.comb += [
            refill.eq(available & (~self.r_rdy | self.r_en)),
            write.addr.eq(produce), write.data.eq(self.w_data), write.en.eq(self.w_en),
            read.addr.eq(consume), read.en.eq(refill), self.r_data.eq(read.data),
        ]
        m.d.sync += popped.eq(refill)
        with m.If(self.w_en):
            m.d.sync += produce.eq(produce + 1)
        with m.If(refill):
            m.d.sync += consume.eq(consume + 1)
        # The head is valid next cycle if it stays (not taken) or is refilled.
        m.d.sync += self.r_rdy.eq((self.r_rdy & ~self.r_en) | (available & (~self.r_rdy | self.r_en)))
        with m.If(self.w_en & ~popped):
            m.d.sync += filled.eq(Cat(1, filled[:-1]))
        with m.Elif(popped & ~self.w_en):
            m.d.sync += filled.eq(filled[1:])
        return m
