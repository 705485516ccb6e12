"""AXI DMA in Amaranth's simulator against a behavioural AXI subordinate written here.

The subordinate checks the protocol on every burst (INCR, beat-aligned, no 4 KiB crossing,
length limit, WLAST position) and stalls every channel at random; reads come back after a
random latency and can be made to fail (SLVERR) on chosen addresses.
"""

from __future__ import annotations

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from vitaccel.hw.axi.dma import AxiDma, split_bursts
from vitaccel.hw.axi.signatures import (AXI_BOUNDARY_BYTES, AXI_BURST_INCR, AXI_RESP_OKAY,
                                        AXI_RESP_SLVERR, Axi4Signature)
from vitaccel.hw.spec.config import PRESETS
from vitaccel.sim.cases.axi import Transfer, gather, pack_words, random_transfers, scatter

MEM_BYTES = 3 * AXI_BOUNDARY_BYTES


class _Subordinate:
    """Cycle model of an AXI4 memory with random stalls; ``step`` runs one clock."""

    def __init__(self, dut, memory: bytearray, rng: random.Random, *, stall: float,
                 max_latency: int, error_range: tuple[int, int] | None = None):
        self.bus, self.mem, self.rng = dut.bus, memory, rng
        self.lanes = dut.data_width // 8
        self.max_beats = dut.max_burst_beats
        self.stall, self.max_latency = stall, max_latency
        self.error_range = error_range
        self.reads: deque = deque()     # [addr, beats left, ready cycle, resp]
        self.writes: deque = deque()    # [addr, beats left, resp]
        self.responses: deque = deque()  # [resp, ready cycle]
        self.cycle = 0
        self.bursts: list[tuple[str, int, int]] = []

    def _check_burst(self, kind: str, addr: int, length: int, size: int, burst: int) -> None:
        beats = length + 1
        assert burst == AXI_BURST_INCR, f"{kind}: burst type {burst}"
        assert 1 << size == self.lanes, f"{kind}: size {size}"
        assert addr % self.lanes == 0, f"{kind}: unaligned address {addr:#x}"
        assert beats <= self.max_beats, f"{kind}: {beats} beats"
        assert addr // AXI_BOUNDARY_BYTES == (addr + beats * self.lanes - 1) // AXI_BOUNDARY_BYTES, \
            f"{kind}: burst at {addr:#x} of {beats} beats crosses 4 KiB"
        self.bursts.append((kind, addr, beats))

    def _resp(self, addr: int) -> int:
        if self.error_range and self.error_range[0] <= addr < self.error_range[1]:
            return AXI_RESP_SLVERR
        return AXI_RESP_OKAY

    def drive(self, ctx) -> None:
        """Set this cycle's subordinate-side outputs (call before sampling handshakes)."""
        bus, rng = self.bus, self.rng
        go = lambda: rng.random() >= self.stall  # noqa: E731
        ctx.set(bus.arready, go())
        ctx.set(bus.awready, go())
        ctx.set(bus.wready, go() and bool(self.writes))
        r_valid = bool(self.reads) and self.reads[0][2] <= self.cycle and go()
        if r_valid:
            addr, left, _, resp = self.reads[0]
            ctx.set(bus.rdata, int.from_bytes(self.mem[addr:addr + self.lanes], "little"))
            ctx.set(bus.rresp, resp)
            ctx.set(bus.rlast, left == 1)
        ctx.set(bus.rvalid, r_valid)
        b_valid = bool(self.responses) and self.responses[0][1] <= self.cycle and go()
        ctx.set(bus.bvalid, b_valid)
        if b_valid:
            ctx.set(bus.bresp, self.responses[0][0])
        self._r_valid, self._b_valid = r_valid, b_valid

    _STABLE = {"ar": ("araddr", "arlen", "arsize", "arburst"),
               "aw": ("awaddr", "awlen", "awsize", "awburst"),
               "w": ("wdata", "wstrb", "wlast")}

    def _check_stable(self, ctx) -> None:
        """AXI rule: once VALID is high it stays high, payload unchanged, until READY."""
        waiting = getattr(self, "_waiting", {})
        for channel, fields in self._STABLE.items():
            valid = ctx.get(getattr(self.bus, f"{channel}valid"))
            payload = tuple(ctx.get(getattr(self.bus, f)) for f in fields)
            if channel in waiting:
                assert valid, f"{channel.upper()}VALID dropped before READY"
                assert payload == waiting[channel], f"{channel.upper()} payload changed while waiting"
        self._waiting = {channel: tuple(ctx.get(getattr(self.bus, f)) for f in fields)
                         for channel, fields in self._STABLE.items()
                         if ctx.get(getattr(self.bus, f"{channel}valid"))
                         and not ctx.get(getattr(self.bus, f"{channel}ready"))}

    async def step(self, ctx) -> None:
        """Sample this cycle's handshakes, update the model and advance one clock."""
        bus = self.bus
        r_valid, b_valid = self._r_valid, self._b_valid
        self._check_stable(ctx)
        ar = ctx.get(bus.arvalid) and ctx.get(bus.arready)
        aw = ctx.get(bus.awvalid) and ctx.get(bus.awready)
        w = ctx.get(bus.wvalid) and ctx.get(bus.wready)
        r = r_valid and ctx.get(bus.rready)
        b = b_valid and ctx.get(bus.bready)
        if ar:
            addr, length = ctx.get(bus.araddr), ctx.get(bus.arlen)
            self._check_burst("AR", addr, length, ctx.get(bus.arsize), ctx.get(bus.arburst))
            self.reads.append([addr, length + 1, self.cycle + 1 + self.rng.randint(0, self.max_latency),
                               self._resp(addr)])
        if r:
            head = self.reads[0]
            head[0] += self.lanes
            head[1] -= 1
            if head[1] == 0:
                self.reads.popleft()
        if w:
            head = self.writes[0]
            data, strb = ctx.get(bus.wdata), ctx.get(bus.wstrb)
            assert ctx.get(bus.wlast) == (head[1] == 1), f"WLAST wrong at {head[0]:#x}"
            for lane in range(self.lanes):
                if strb >> lane & 1:
                    self.mem[head[0] + lane] = data >> (8 * lane) & 0xFF
            head[0] += self.lanes
            head[1] -= 1
            if head[1] == 0:
                self.writes.popleft()
                self.responses.append([head[2], self.cycle + 1 + self.rng.randint(0, 3)])
        if aw:
            addr, length = ctx.get(bus.awaddr), ctx.get(bus.awlen)
            self._check_burst("AW", addr, length, ctx.get(bus.awsize), ctx.get(bus.awburst))
            self.writes.append([addr, length + 1, self._resp(addr)])
        if b:
            self.responses.popleft()
        await ctx.tick()
        self.cycle += 1


def _simulate(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


def _set_desc(ctx, port, t: Transfer) -> None:
    ctx.set(port.payload.addr, t.addr)
    ctx.set(port.payload.rows, t.rows)
    ctx.set(port.payload.row_bytes, t.row_bytes)
    ctx.set(port.payload.stride, t.stride)


def _run_reads(dut, memory, transfers, *, seed, stall, sink_stall, error_range=None,
               max_cycles=20000):
    """Issue every read, collect the word stream; returns (words per transfer, responses, sub)."""
    rng = random.Random(seed)
    sub = _Subordinate(dut, memory, rng, stall=stall, max_latency=6, error_range=error_range)
    words: list[list[tuple[int, int]]] = [[] for _ in transfers]
    responses: list[int] = []
    state = {"bytes": 0}

    async def tb(ctx):
        pending = deque(transfers)
        current = 0
        for _ in range(max_cycles):
            if pending:
                _set_desc(ctx, dut.rd_desc, pending[0])
            ctx.set(dut.rd_desc.valid, bool(pending))
            ctx.set(dut.rd_data.ready, rng.random() >= sink_stall)
            sub.drive(ctx)
            if pending and ctx.get(dut.rd_desc.ready):
                pending.popleft()
            if ctx.get(dut.rd_data.valid) and ctx.get(dut.rd_data.ready):
                words[current].append((ctx.get(dut.rd_data.payload.data), ctx.get(dut.rd_data.payload.last)))
                if ctx.get(dut.rd_data.payload.last):
                    current += 1
            if ctx.get(dut.rd_done):
                responses.append(ctx.get(dut.rd_resp))
            await sub.step(ctx)
            if current == len(transfers) and not pending:
                break
        state["bytes"] = ctx.get(dut.rd_bytes)
        state["cycles"] = sub.cycle

    _simulate(dut, tb)
    return words, responses, sub, state


def _run_writes(dut, memory, transfers, payloads, *, seed, stall, source_stall, error_range=None,
                max_cycles=20000):
    rng = random.Random(seed)
    sub = _Subordinate(dut, memory, rng, stall=stall, max_latency=0, error_range=error_range)
    responses: list[int] = []
    state = {}
    lanes = dut.data_width // 8
    stream = deque((w, i == len(ws) - 1) for p in payloads for ws in [pack_words(p, lanes)]
                   for i, w in enumerate(ws))

    async def tb(ctx):
        pending = deque(transfers)
        for _ in range(max_cycles):
            if pending:
                _set_desc(ctx, dut.wr_desc, pending[0])
            ctx.set(dut.wr_desc.valid, bool(pending))
            offer = bool(stream) and rng.random() >= source_stall
            if offer:
                ctx.set(dut.wr_data.payload.data, stream[0][0])
                ctx.set(dut.wr_data.payload.last, stream[0][1])
            ctx.set(dut.wr_data.valid, offer)
            sub.drive(ctx)
            if pending and ctx.get(dut.wr_desc.ready):
                pending.popleft()
            if offer and ctx.get(dut.wr_data.ready):
                stream.popleft()
            if ctx.get(dut.wr_done):
                responses.append(ctx.get(dut.wr_resp))
            await sub.step(ctx)
            if len(responses) == len(transfers):
                break
        state["bytes"] = ctx.get(dut.wr_bytes)
        state["cycles"] = sub.cycle

    _simulate(dut, tb)
    return responses, sub, state


def _check_read_words(memory, transfers, words, lanes):
    for t, got in zip(transfers, words):
        expected = pack_words(gather(memory, t), lanes)
        assert [w for w, _ in got] == expected, f"read of {t} delivered wrong words"
        assert [last for _, last in got] == [0] * (len(expected) - 1) + [1], f"last flags of {t}"


@pytest.mark.parametrize("data_width,max_burst,stall", [(64, 256, 0.3), (32, 4, 0.5), (128, 8, 0.0)])
def test_random_2d_reads_are_byte_exact(data_width, max_burst, stall):
    rng = random.Random(data_width)
    memory = bytearray(rng.randbytes(MEM_BYTES))
    dut = AxiDma(data_width=data_width, addr_width=16, max_burst_beats=max_burst)
    transfers = random_transfers(rng, count=6, region=(0, MEM_BYTES), max_row_bytes=200, max_rows=3)
    words, responses, sub, state = _run_reads(dut, memory, transfers, seed=data_width, stall=stall,
                                              sink_stall=stall)
    _check_read_words(memory, transfers, words, data_width // 8)
    assert responses == [AXI_RESP_OKAY] * len(transfers)
    assert state["bytes"] == sum(t.total_bytes for t in transfers)
    expected_bursts = [b for t in transfers for b in split_bursts(
        t.addr, t.rows, t.row_bytes, t.stride, data_width=data_width, max_burst_beats=max_burst)]
    assert [(a, n) for _, a, n in sub.bursts] == [(b["addr"], b["len"] + 1) for b in expected_bursts]


@pytest.mark.parametrize("data_width,max_burst,stall", [(64, 256, 0.3), (32, 4, 0.5)])
def test_random_2d_writes_are_byte_exact(data_width, max_burst, stall):
    rng = random.Random(100 + data_width)
    memory = bytearray(rng.randbytes(MEM_BYTES))
    expected = bytearray(memory)
    dut = AxiDma(data_width=data_width, addr_width=16, max_burst_beats=max_burst)
    transfers = random_transfers(rng, count=6, region=(0, MEM_BYTES), max_row_bytes=200, max_rows=3)
    payloads = [rng.randbytes(t.total_bytes) for t in transfers]
    for t, p in zip(transfers, payloads):
        scatter(expected, t, p)
    responses, sub, state = _run_writes(dut, memory, transfers, payloads, seed=data_width, stall=stall,
                                        source_stall=stall)
    assert responses == [AXI_RESP_OKAY] * len(transfers)
    first_diff = next((i for i in range(MEM_BYTES) if memory[i] != expected[i]), None)
    assert first_diff is None, f"memory differs first at {first_diff:#x}"
    assert state["bytes"] == sum(t.total_bytes for t in transfers)


def test_read_error_response_is_reported_per_transfer():
    rng = random.Random(5)
    memory = bytearray(rng.randbytes(MEM_BYTES))
    dut = AxiDma(data_width=64, addr_width=16, max_burst_beats=16)
    transfers = [Transfer(0x100, 1, 64, 64), Transfer(0x2000, 2, 100, 200), Transfer(0x300, 1, 8, 8)]
    words, responses, _, _ = _run_reads(dut, memory, transfers, seed=1, stall=0.2, sink_stall=0.2,
                                        error_range=(0x2000, 0x2100))
    assert responses == [AXI_RESP_OKAY, AXI_RESP_SLVERR, AXI_RESP_OKAY]
    _check_read_words(memory, transfers[2:], words[2:], 8)


def test_write_error_response_is_reported_per_transfer():
    rng = random.Random(6)
    memory = bytearray(MEM_BYTES)
    dut = AxiDma(data_width=64, addr_width=16, max_burst_beats=16)
    transfers = [Transfer(0x2000, 2, 100, 200), Transfer(0x300, 1, 8, 8)]
    payloads = [rng.randbytes(t.total_bytes) for t in transfers]
    responses, _, _ = _run_writes(dut, memory, transfers, payloads, seed=2, stall=0.2, source_stall=0.2,
                                  error_range=(0x2000, 0x2100))
    assert responses == [AXI_RESP_SLVERR, AXI_RESP_OKAY]
    assert memory[0x300:0x308] == payloads[1]


def test_empty_descriptors_are_dropped_without_bus_traffic():
    rng = random.Random(8)
    memory = bytearray(rng.randbytes(MEM_BYTES))
    dut = AxiDma(data_width=32, addr_width=16, max_burst_beats=16)
    transfers = [Transfer(0x10, 1, 20, 20), Transfer(0x40, 0, 8, 8), Transfer(0x80, 3, 0, 8),
                 Transfer(0x123, 2, 9, 100)]
    words, responses, sub, _ = _run_reads(dut, memory, transfers, seed=3, stall=0.2, sink_stall=0.2,
                                          max_cycles=600)
    kept = [transfers[0], transfers[3]]
    _check_read_words(memory, kept, [words[0], words[1]], 4)
    assert responses == [AXI_RESP_OKAY, AXI_RESP_OKAY]
    expected = [(b["addr"], b["len"] + 1) for t in kept
                for b in split_bursts(t.addr, t.rows, t.row_bytes, t.stride, data_width=32, max_burst_beats=16)]
    assert [(a, n) for _, a, n in sub.bursts] == expected


def test_back_to_back_aligned_reads_reach_full_rate():
    memory = bytearray(random.Random(7).randbytes(MEM_BYTES))
    dut = AxiDma(data_width=64, addr_width=16)
    transfer = Transfer(0, 1, 8192, 8192)
    words, _, _, state = _run_reads(dut, memory, [transfer], seed=0, stall=0.0, sink_stall=0.0)
    _check_read_words(memory, [transfer], words, 8)
    beats = 8192 // 8
    assert state["cycles"] <= beats * 1.1 + 20, f"{state['cycles']} cycles for {beats} beats"


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_split_bursts_model_and_constructor_validation():
    bursts = split_bursts(4090, 1, 20, 0, data_width=64)
    assert [(b["addr"], b["len"] + 1, b["bytes"]) for b in bursts] == [(4088, 1, 6), (4096, 2, 14)]
    assert sum(b["bytes"] for b in split_bursts(3, 3, 5000, 6000, data_width=128)) == 15000
    with pytest.raises(ValueError, match="rows >= 1"):
        split_bursts(0, 0, 4, 4, data_width=64)
    with pytest.raises(ValueError, match="max_burst_beats"):
        AxiDma(max_burst_beats=3)
    with pytest.raises(ValueError, match="max_outstanding"):
        AxiDma(max_outstanding=1)
    with pytest.raises(ValueError, match="data_width"):
        Axi4Signature(addr_width=32, data_width=48)
    assert AxiDma.from_config(PRESETS["zcu102"]).data_width == 128
