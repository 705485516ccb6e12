"""AXI4 manager DMA: 2-D strided reads from DDR to a word stream and writes back.

A transfer is described by a :func:`descriptor_layout` record: ``rows`` rows of
``row_bytes`` bytes, the first at byte address ``addr``, each next one ``stride`` bytes
further. Any alignment and length is allowed. A descriptor with ``rows == 0`` or
``row_bytes == 0`` is accepted and dropped: no bus traffic and no ``*_done`` pulse (the
controller refuses such operands before they reach the DMA).

* **Read engine**: ``rd_desc`` -> AR bursts -> R beats -> ``rd_data``. The requested bytes
  of all rows come out *packed*: byte ``i`` of the transfer is byte ``i % W`` of word
  ``i // W`` (``W = data_width // 8``); the last word has ``last`` set and is zero-padded.
* **Write engine**: ``wr_desc`` + ``wr_data`` (same packed format; the producer marks the
  transfer's final word with ``last``) -> AW bursts, W beats with byte strobes -> B.

Bursts are INCR, at most ``max_burst_beats`` beats, never cross a 4 KiB boundary and start
at the beat-aligned address (strobes / realignment take care of the rest). Up to
``max_outstanding`` bursts per direction are in flight, so bursts run back to back. Every
channel tolerates back-pressure at any cycle. A transfer ends with a one-cycle pulse on ``rd_done`` /
``wr_done``; ``rd_resp`` / ``wr_resp`` carry, in that cycle, the first non-OKAY response of
the transfer (or OKAY). ``rd_done`` comes with the last R beat (the last word may still sit
in the output register); ``wr_done`` with the last B response.
``rd_bytes`` / ``wr_bytes`` count the useful bytes moved (wrapping counters for the
performance registers).
"""

from __future__ import annotations

from amaranth import Cat, C, Const, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .signatures import (AXI_BOUNDARY_BYTES, AXI_BURST_INCR, AXI_MAX_BURST_BEATS, AXI_RESP_OKAY,
                         Axi4Signature)

__all__ = ["descriptor_layout", "word_layout", "burst_layout", "split_bursts", "BurstSplitter",
           "AxiDma"]

#: AxCACHE for normal non-cacheable bufferable memory (what Xilinx DMA IPs drive).
_AXCACHE_NORMAL = 0b0011


def _log2_exact(value: int, what: str) -> int:
    if value <= 0 or value & (value - 1):
        raise ValueError(f"{what}: must be a power of two, got {value}")
    return value.bit_length() - 1


def descriptor_layout(addr_width: int, length_width: int, rows_width: int) -> data.StructLayout:
    """One 2-D transfer: start address, row count, bytes per row, address step per row."""
    return data.StructLayout({
        "addr": addr_width, "rows": rows_width, "row_bytes": length_width, "stride": addr_width,
    })


def word_layout(data_width: int) -> data.StructLayout:
    """One word of a packed transfer stream; ``last`` marks the transfer's final word."""
    return data.StructLayout({"data": data_width, "last": 1})


def burst_layout(addr_width: int, data_width: int) -> data.StructLayout:
    """One AXI burst: aligned address, ``len`` (beats - 1), the byte lanes used by its first
    and last beat (``[first_lo, W)`` and ``[0, last_hi)``) and whether it ends the transfer."""
    lanes_bits = _log2_exact(data_width // 8, "data_width // 8")
    return data.StructLayout({
        "addr": addr_width, "len": 8, "first_lo": max(lanes_bits, 1), "last_hi": lanes_bits + 1,
        "last": 1,
    })


def split_bursts(addr: int, rows: int, row_bytes: int, stride: int, *, data_width: int,
                 max_burst_beats: int = AXI_MAX_BURST_BEATS) -> list[dict[str, int]]:
    """The bursts the hardware issues for a descriptor (reference model of :class:`BurstSplitter`).

    Raises
    ------
    ValueError
        If ``rows`` or ``row_bytes`` is not positive.
    """
    if rows < 1 or row_bytes < 1:
        raise ValueError(f"a DMA transfer needs rows >= 1 and row_bytes >= 1, got rows={rows}, "
                         f"row_bytes={row_bytes}")
    lane_bytes = data_width // 8
    out = []
    for row in range(rows):
        cur, remaining = addr + row * stride, row_bytes
        while remaining:
            off = cur % lane_bytes
            to_page = (AXI_BOUNDARY_BYTES - (cur - off) % AXI_BOUNDARY_BYTES) // lane_bytes
            beats = min(max_burst_beats, to_page, -(-(off + remaining) // lane_bytes))
            take = min(beats * lane_bytes - off, remaining)
            out.append({"addr": cur - off, "len": beats - 1, "first_lo": off,
                        "last_hi": off + take - (beats - 1) * lane_bytes,
                        "last": int(row == rows - 1 and take == remaining), "bytes": take})
            cur += take
            remaining -= take
    return out


class BurstSplitter(wiring.Component):
    """Cuts 2-D descriptors into AXI INCR bursts, one burst per cycle.

    Parameters
    ----------
    addr_width, data_width, length_width, rows_width : int
        As :class:`AxiDma`.
    max_burst_beats : int
        Longest burst (power of two, 1..256).
    """

    def __init__(self, *, addr_width: int, data_width: int, length_width: int, rows_width: int,
                 max_burst_beats: int):
        self.addr_width, self.data_width = addr_width, data_width
        self.length_width, self.rows_width = length_width, rows_width
        self.max_burst_beats = max_burst_beats
        super().__init__({
            "desc": In(stream.Signature(descriptor_layout(addr_width, length_width, rows_width))),
            "burst": Out(stream.Signature(burst_layout(addr_width, data_width))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        lane_bytes = self.data_width // 8
        lg = _log2_exact(lane_bytes, "data_width // 8")
        page_bits = _log2_exact(AXI_BOUNDARY_BYTES, "boundary")

        busy = Signal()
        addr = Signal(self.addr_width)
        row_addr = Signal(self.addr_width)
        stride = Signal(self.addr_width)
        row_bytes = Signal(self.length_width)
        remaining = Signal(self.length_width)
        rows_left = Signal(self.rows_width)

        # Everything below is combinational from the registers: one burst per cycle.
        offset = Signal(max(lg, 1))
        if lg:
            m.d.comb += offset.eq(addr[:lg])
        beats_to_page = Signal(page_bits - lg + 1)
        m.d.comb += beats_to_page.eq((1 << (page_bits - lg)) - addr[lg:page_bits])
        beats_needed = Signal(self.length_width + 1)
        m.d.comb += beats_needed.eq((offset + remaining + lane_bytes - 1) >> lg)
        beats = Signal(range(self.max_burst_beats + 1))
        limit = Mux(beats_to_page < self.max_burst_beats, beats_to_page, self.max_burst_beats)
        m.d.comb += beats.eq(Mux(beats_needed < limit, beats_needed, limit))
        burst_bytes = Signal(self.length_width + 1)
        m.d.comb += burst_bytes.eq((beats << lg) - offset)
        take = Signal(self.length_width)
        m.d.comb += take.eq(Mux(burst_bytes < remaining, burst_bytes, remaining))
        row_end = Signal()
        m.d.comb += row_end.eq(take == remaining)

        payload = self.burst.payload
        m.d.comb += [
            self.busy.eq(busy),
            self.burst.valid.eq(busy),
            payload.addr.eq(Cat(C(0, lg), addr[lg:])),
            payload.len.eq(beats - 1),
            payload.first_lo.eq(offset),
            payload.last_hi.eq(offset + take - ((beats - 1) << lg)),
            payload.last.eq(row_end & (rows_left == 1)),
            self.desc.ready.eq(~busy),
        ]
        # An empty descriptor (no rows or no bytes) is consumed and dropped: it must not
        # start a transfer whose row counter would wrap and run for 2^rows_width rows.
        desc_empty = (self.desc.payload.rows == 0) | (self.desc.payload.row_bytes == 0)
        with m.If(self.desc.valid & ~busy & ~desc_empty):
            desc = self.desc.payload
            m.d.sync += [busy.eq(1), addr.eq(desc.addr), row_addr.eq(desc.addr),
                         stride.eq(desc.stride), row_bytes.eq(desc.row_bytes),
                         remaining.eq(desc.row_bytes), rows_left.eq(desc.rows)]
        with m.If(self.burst.valid & self.burst.ready):
            with m.If(~row_end):
                m.d.sync += [addr.eq(addr + take), remaining.eq(remaining - take)]
            with m.Elif(rows_left == 1):
                m.d.sync += busy.eq(0)
            with m.Else():
                m.d.sync += [addr.eq(row_addr + stride), row_addr.eq(row_addr + stride),
                             remaining.eq(row_bytes), rows_left.eq(rows_left - 1)]
        return m


class AxiDma(wiring.Component):
    """AXI4 manager with a 2-D read engine and a 2-D write engine (see the module docstring).

    Parameters
    ----------
    addr_width : int
        AXI address bits.
    data_width : int
        AXI data bits (power of two, 32..512).
    id_width : int
        AXI ID bits (all transactions use ID 0, so responses come back in order).
    max_burst_beats : int
        Longest burst, a power of two in 1..256.
    max_outstanding : int
        Bursts in flight per direction (2..64).
    length_width, rows_width : int
        Widths of the descriptor's ``row_bytes`` and ``rows`` fields.
    counter_width : int
        Width of the byte counters.
    """

    def __init__(self, *, addr_width: int = 32, data_width: int = 64, id_width: int = 1,
                 max_burst_beats: int = AXI_MAX_BURST_BEATS, max_outstanding: int = 4,
                 length_width: int = 24, rows_width: int = 16, counter_width: int = 32):
        bus = Axi4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width)
        if data_width > 512:
            raise ValueError(f"data_width: must be at most 512, got {data_width}")
        _log2_exact(max_burst_beats, "max_burst_beats")
        if not 1 <= max_burst_beats <= AXI_MAX_BURST_BEATS:
            raise ValueError(f"max_burst_beats: must be in 1..{AXI_MAX_BURST_BEATS}, got {max_burst_beats}")
        if not 2 <= max_outstanding <= 64:
            raise ValueError(f"max_outstanding: must be in 2..64, got {max_outstanding}")
        for name, value, hi in (("length_width", length_width, 32),
                                ("rows_width", rows_width, 32), ("counter_width", counter_width, 64)):
            if not 1 <= value <= hi:
                raise ValueError(f"{name}: must be in 1..{hi}, got {value}")
        self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
        self.max_burst_beats, self.max_outstanding = max_burst_beats, max_outstanding
        self.length_width, self.rows_width, self.counter_width = length_width, rows_width, counter_width
        desc = descriptor_layout(addr_width, length_width, rows_width)
        super().__init__({
            "bus": Out(bus),
            "rd_desc": In(stream.Signature(desc)),
            "rd_data": Out(stream.Signature(word_layout(data_width))),
            "rd_done": Out(1),
            "rd_resp": Out(2),
            "wr_desc": In(stream.Signature(desc)),
            "wr_data": In(stream.Signature(word_layout(data_width))),
            "wr_done": Out(1),
            "wr_resp": Out(2),
            "rd_busy": Out(1),
            "wr_busy": Out(1),
            "rd_bytes": Out(counter_width),
            "wr_bytes": Out(counter_width),
        })

    @classmethod
    def from_config(cls, config, **kwargs) -> "AxiDma":
        """The DMA for an :class:`~vitaccel.hw.spec.config.AccelConfig` (its ``dma_data_width``)."""
        return cls(data_width=config.dma_data_width, **kwargs)

    @property
    def lane_bytes(self) -> int:
        return self.data_width // 8

    # -- shared pieces ------------------------------------------------------------------------

    def _splitter(self, m: Module, name: str, desc) -> BurstSplitter:
        splitter = BurstSplitter(addr_width=self.addr_width, data_width=self.data_width,
                                 length_width=self.length_width, rows_width=self.rows_width,
                                 max_burst_beats=self.max_burst_beats)
        m.submodules[name] = splitter
        wiring.connect(m, wiring.flipped(desc), splitter.desc)
        return splitter

    def _info_fifo(self, m: Module, name: str, layout: data.StructLayout):
        queue = fifo.SyncFIFOBuffered(width=layout.size, depth=self.max_outstanding)
        m.submodules[name] = queue
        return queue, data.View(layout, queue.r_data)

    def _drive_address(self, m: Module, prefix: str, burst, valid) -> None:
        bus = self.bus
        m.d.comb += [
            getattr(bus, f"{prefix}valid").eq(valid),
            getattr(bus, f"{prefix}addr").eq(burst.payload.addr),
            getattr(bus, f"{prefix}len").eq(burst.payload.len),
            getattr(bus, f"{prefix}size").eq(_log2_exact(self.lane_bytes, "lanes")),
            getattr(bus, f"{prefix}burst").eq(AXI_BURST_INCR),
            getattr(bus, f"{prefix}cache").eq(_AXCACHE_NORMAL),
            getattr(bus, f"{prefix}id").eq(0),
            getattr(bus, f"{prefix}lock").eq(0),
            getattr(bus, f"{prefix}prot").eq(0),
            getattr(bus, f"{prefix}qos").eq(0),
        ]

    def _mask(self, m: Module, lanes, name: str) -> Signal:
        """Bits of byte lanes ``[0, lanes)``; ``lanes`` may equal the lane count."""
        mask = Signal(self.data_width, name=name)
        ones = Const((1 << self.data_width) - 1, self.data_width)
        m.d.comb += mask.eq(~(ones << (lanes * 8))[:self.data_width])
        return mask

    @staticmethod
    def _first_error(current, new):
        """Keep the first non-OKAY response of a transfer."""
        return Mux(current != AXI_RESP_OKAY, current, new)

    # -- engines -----------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        self._elaborate_read(m)
        self._elaborate_write(m)
        return m

    def _elaborate_read(self, m: Module) -> None:
        bus, lanes = self.bus, self.lane_bytes
        splitter = self._splitter(m, "rd_splitter", self.rd_desc)
        info_layout = data.StructLayout({"first_lo": splitter.burst.payload.first_lo.shape(),
                                         "last_hi": splitter.burst.payload.last_hi.shape(),
                                         "last": 1})
        info_fifo, info = self._info_fifo(m, "rd_info", info_layout)
        m.d.comb += [info_fifo.w_data.eq(Cat(splitter.burst.payload.first_lo,
                                             splitter.burst.payload.last_hi,
                                             splitter.burst.payload.last))]
        self._drive_address(m, "ar", splitter.burst, splitter.burst.valid & info_fifo.w_rdy)
        m.d.comb += [splitter.burst.ready.eq(bus.arready & info_fifo.w_rdy),
                     info_fifo.w_en.eq(splitter.burst.valid & bus.arready & info_fifo.w_rdy)]

        # Realignment: collect the useful bytes of each beat behind the ones already held.
        held = Signal(8 * lanes)            # fewer than `lanes` bytes waiting for a word
        held_count = Signal(range(lanes + 1))
        flush = Signal()                     # the transfer's tail is in `held`, emit it
        first_beat = Signal(init=1)
        error = Signal(2)
        out_valid, out_last = Signal(), Signal()
        out_data = Signal(8 * lanes)
        m.d.comb += [self.rd_data.valid.eq(out_valid), self.rd_data.payload.data.eq(out_data),
                     self.rd_data.payload.last.eq(out_last)]
        out_free = ~out_valid | self.rd_data.ready
        with m.If(self.rd_data.ready):
            m.d.sync += out_valid.eq(0)

        m.d.comb += bus.rready.eq(info_fifo.r_rdy & out_free & ~flush)
        beat = bus.rvalid & bus.rready
        lo = Mux(first_beat, info.first_lo, 0)
        hi = Mux(bus.rlast, info.last_hi, lanes)
        useful = Signal(range(lanes + 1))
        m.d.comb += useful.eq(hi - lo)
        keep = self._mask(m, hi, "rd_keep")
        fresh = Signal(8 * lanes)
        m.d.comb += fresh.eq((bus.rdata & keep) >> (lo * 8))
        merged = Signal(16 * lanes)
        m.d.comb += merged.eq(held | (fresh << (held_count * 8)))
        total = Signal(range(2 * lanes + 1))
        m.d.comb += total.eq(held_count + useful)
        ends_transfer = bus.rlast & info.last

        m.d.comb += info_fifo.r_en.eq(beat & bus.rlast)
        with m.If(flush & out_free):
            m.d.sync += [out_valid.eq(1), out_data.eq(held), out_last.eq(1),
                         held.eq(0), held_count.eq(0), flush.eq(0)]
        with m.Elif(beat):
            m.d.sync += [first_beat.eq(bus.rlast), self.rd_bytes.eq(self.rd_bytes + useful)]
            with m.If(total >= lanes):
                m.d.sync += [out_valid.eq(1), out_data.eq(merged[:8 * lanes]),
                             out_last.eq(ends_transfer & (total == lanes)),
                             held.eq(merged[8 * lanes:]), held_count.eq(total - lanes)]
                with m.If(ends_transfer & (total != lanes)):
                    m.d.sync += flush.eq(1)
            with m.Elif(ends_transfer):
                m.d.sync += [out_valid.eq(1), out_data.eq(merged[:8 * lanes]), out_last.eq(1),
                             held.eq(0), held_count.eq(0)]
            with m.Else():
                m.d.sync += [held.eq(merged[:8 * lanes]), held_count.eq(total)]
            resp = self._first_error(error, bus.rresp)
            with m.If(ends_transfer):
                m.d.comb += [self.rd_done.eq(1), self.rd_resp.eq(resp)]
                m.d.sync += error.eq(AXI_RESP_OKAY)
            with m.Else():
                m.d.sync += error.eq(resp)
        m.d.comb += self.rd_busy.eq(splitter.busy | info_fifo.r_rdy | flush | out_valid)

    def _elaborate_write(self, m: Module) -> None:
        bus, lanes = self.bus, self.lane_bytes
        splitter = self._splitter(m, "wr_splitter", self.wr_desc)
        p = splitter.burst.payload
        w_layout = data.StructLayout({"len": 8, "first_lo": p.first_lo.shape(),
                                      "last_hi": p.last_hi.shape(), "last": 1})
        w_fifo, w_info = self._info_fifo(m, "wr_w_info", w_layout)
        b_fifo, b_info = self._info_fifo(m, "wr_b_info", data.StructLayout({"last": 1}))
        m.d.comb += [w_fifo.w_data.eq(Cat(p.len, p.first_lo, p.last_hi, p.last)), b_fifo.w_data.eq(p.last)]
        room = w_fifo.w_rdy & b_fifo.w_rdy
        self._drive_address(m, "aw", splitter.burst, splitter.burst.valid & room)
        issue = splitter.burst.valid & bus.awready & room
        m.d.comb += [splitter.burst.ready.eq(bus.awready & room),
                     w_fifo.w_en.eq(issue), b_fifo.w_en.eq(issue)]

        # Unpacking: bytes of the packed input stream wait in `held` until a beat takes them.
        held = Signal(16 * lanes)
        held_count = Signal(range(2 * lanes + 1))
        saw_last = Signal()                  # the producer's final word is already in `held`
        beat_index = Signal(8)
        lo = Mux(beat_index == 0, w_info.first_lo, 0)
        wlast = beat_index == w_info.len
        hi = Mux(wlast, w_info.last_hi, lanes)
        needed = Signal(range(lanes + 1))
        m.d.comb += needed.eq(hi - lo)
        upper = self._mask(m, hi, "wr_upper")
        lower = self._mask(m, lo, "wr_lower")
        lane_bits = Signal(self.data_width)
        m.d.comb += lane_bits.eq(upper & ~lower)
        strobes = Signal(lanes)
        m.d.comb += strobes.eq(Cat(lane_bits[8 * i] for i in range(lanes)))
        m.d.comb += [
            bus.wvalid.eq(w_fifo.r_rdy & (held_count >= needed)),
            # Unstrobed lanes are zeroed so WDATA stays stable while WVALID waits for WREADY
            # (bytes appended to `held` in that time land only above the strobed lanes).
            bus.wdata.eq((held << (lo * 8))[:8 * lanes] & lane_bits),
            bus.wstrb.eq(strobes),
            bus.wlast.eq(wlast),
        ]
        beat = bus.wvalid & bus.wready
        used = Mux(beat, needed, 0)
        after = Signal(16 * lanes)
        after_count = Signal(range(2 * lanes + 1))
        m.d.comb += [after.eq(held >> (used * 8)), after_count.eq(held_count - used)]
        m.d.comb += self.wr_data.ready.eq(~saw_last & (after_count < lanes))
        take = self.wr_data.valid & self.wr_data.ready
        m.d.comb += w_fifo.r_en.eq(beat & wlast)
        with m.If(beat):
            m.d.sync += [beat_index.eq(Mux(wlast, 0, beat_index + 1)),
                         self.wr_bytes.eq(self.wr_bytes + needed)]
        with m.If(take):
            m.d.sync += [held.eq(after | (self.wr_data.payload.data << (after_count * 8))),
                         held_count.eq(after_count + lanes),
                         saw_last.eq(self.wr_data.payload.last)]
        with m.Else():
            m.d.sync += [held.eq(after), held_count.eq(after_count)]
        # The transfer's last beat drops the zero padding of the producer's last word (it
        # cannot coincide with `take`: the last word was taken before its bytes were used).
        with m.If(beat & wlast & w_info.last):
            m.d.sync += [held.eq(0), held_count.eq(0), saw_last.eq(0)]

        # Responses: the B queue remembers which burst ends its transfer.
        error = Signal(2)
        m.d.comb += [bus.bready.eq(b_fifo.r_rdy), b_fifo.r_en.eq(bus.bvalid & b_fifo.r_rdy)]
        with m.If(bus.bvalid & bus.bready):
            resp = self._first_error(error, bus.bresp)
            with m.If(b_info.last):
                m.d.comb += [self.wr_done.eq(1), self.wr_resp.eq(resp)]
                m.d.sync += error.eq(AXI_RESP_OKAY)
            with m.Else():
                m.d.sync += error.eq(resp)
        m.d.comb += self.wr_busy.eq(splitter.busy | w_fifo.r_rdy | b_fifo.r_rdy)
