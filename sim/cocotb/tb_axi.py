"""cocotb testbenches for the AXI DMA (``axi_dma_top``) and the register file (``axi_lite_top``).

DDR is cocotbext-axi's ``AxiRam`` with a random pause generator on every channel and a
random latency before each read beat; the host is ``AxiLiteMaster``. Parameters come from
``vitaccel.sim.cases.axi`` through :func:`tb_params`; results go back with
:func:`write_tb_output`.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge, with_timeout
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from vitaccel.hw.axi.signatures import AXI_RESP_OKAY, AXI_RESP_SLVERR
from vitaccel.sim.cases.axi import Transfer, gather, pack_words, random_transfers, scatter
from vitaccel.sim.cocotb.axi_models import stressed_ram
from vitaccel.sim.runner import tb_params, write_tb_output

RAM_BYTES = 1 << 16
READ_REGION = (0x0000, 0x8000)
WRITE_REGION = (0x8000, 0x7000)
ERROR_BASE = 0xF000                                  # reads at or above answer SLVERR


# Our own drivers change inputs on the falling edge and sample handshakes in the ReadOnly
# phase after it: registered outputs only move on rising edges and cocotbext-axi drives
# right after them, so what is seen there is what the next rising edge will act on, under
# Verilator and Icarus alike.

async def _next_cycle(dut) -> None:
    await FallingEdge(dut.clk)


def _start_in_reset(dut) -> None:
    """Start the clock with reset asserted; bus models are created before :func:`_release`
    so that no input is ever undriven (X under Icarus) once the design runs."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1


async def _release(dut) -> None:
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


class _Cycles:
    def __init__(self, dut):
        self.count = 0
        cocotb.start_soon(self._run(dut))

    async def _run(self, dut):
        while True:
            await RisingEdge(dut.clk)
            self.count += 1


def _pack_desc(t: Transfer, fields: dict[str, list[int]]) -> int:
    """The descriptor as the DUT's packed port value; ``fields`` maps each field of
    :func:`~vitaccel.hw.axi.dma.descriptor_layout` to ``[offset, width]``."""
    value = 0
    for name, (offset, width) in fields.items():
        field = getattr(t, name)
        if not 0 <= field < 1 << width:
            raise ValueError(f"descriptor field {name}={field} does not fit {width} bits")
        value |= field << offset
    return value


async def _send_desc(dut, port: str, t: Transfer) -> None:
    await _next_cycle(dut)
    getattr(dut, f"{port}__payload").value = _pack_desc(t, tb_params()["descriptor_fields"])
    getattr(dut, f"{port}__valid").value = 1
    while True:
        await ReadOnly()
        accepted = bool(getattr(dut, f"{port}__ready").value)
        await _next_cycle(dut)
        if accepted:
            break
    getattr(dut, f"{port}__valid").value = 0


async def _watch_done(dut, kind: str, sink: list) -> None:
    while True:
        await _next_cycle(dut)
        await ReadOnly()
        if getattr(dut, f"{kind}_done").value:
            sink.append(int(getattr(dut, f"{kind}_resp").value))


async def _read_words(dut, count_transfers: int, lane_bytes: int, rng, stall: float, sink: list) -> None:
    """Collect ``rd_data`` words into one list per transfer, with random ready."""
    data_bits = 8 * lane_bytes
    current: list[int] = []
    while len(sink) < count_transfers:
        await _next_cycle(dut)
        dut.rd_data__ready.value = int(rng.random() >= stall)
        await ReadOnly()
        if dut.rd_data__valid.value and dut.rd_data__ready.value:
            word = int(dut.rd_data__payload.value)
            current.append(word & ((1 << data_bits) - 1))
            if word >> data_bits & 1:
                sink.append(current)
                current = []
    await _next_cycle(dut)
    dut.rd_data__ready.value = 0


async def _write_words(dut, payloads: list[bytes], lane_bytes: int, rng, stall: float) -> None:
    data_bits = 8 * lane_bytes
    words = [(w, i == len(ws) - 1) for p in payloads for ws in [pack_words(p, lane_bytes)]
             for i, w in enumerate(ws)]
    await _next_cycle(dut)
    for word, last in words:
        while rng.random() < stall:
            dut.wr_data__valid.value = 0
            await _next_cycle(dut)
        dut.wr_data__payload.value = word | int(last) << data_bits
        dut.wr_data__valid.value = 1
        while True:
            await ReadOnly()
            accepted = bool(dut.wr_data__ready.value)
            await _next_cycle(dut)
            if accepted:
                break
    dut.wr_data__valid.value = 0


def _idle_inputs(dut) -> None:
    for name in ("rd_desc__valid", "wr_desc__valid", "wr_data__valid", "rd_data__ready"):
        getattr(dut, name).value = 0


@cocotb.test()
async def dma_random_transfers(dut):
    """Random 2-D reads and writes at the same time, byte-exact, plus a read and a write
    that end in SLVERR."""
    p = tb_params()
    rng = random.Random(p["seed"])
    lanes = p["lane_bytes"]
    _idle_inputs(dut)
    _start_in_reset(dut)
    ram = stressed_ram(dut, rng, size=RAM_BYTES, error_base=ERROR_BASE, backpressure=p["backpressure"], max_latency=p["max_latency"])
    await _release(dut)
    image = rng.randbytes(RAM_BYTES)
    ram.write(0, image)
    expected = bytearray(image)
    reads = random_transfers(rng, count=p["transfers"], region=READ_REGION,
                             max_row_bytes=p["max_row_bytes"], max_rows=p["max_rows"])
    writes = random_transfers(rng, count=p["transfers"], region=WRITE_REGION,
                              max_row_bytes=p["max_row_bytes"], max_rows=p["max_rows"])
    payloads = [rng.randbytes(t.total_bytes) for t in writes]
    for t, data in zip(writes, payloads):
        scatter(expected, t, data)
    # One read and one write in the error window, last: SLVERR, and nothing written there.
    reads.append(Transfer(ERROR_BASE + 8, 1, 40, 40))
    writes.append(Transfer(ERROR_BASE + 3, 2, 50, 64))
    payloads.append(rng.randbytes(100))

    cycles = _Cycles(dut)
    rd_resp, wr_resp, got = [], [], []
    cocotb.start_soon(_watch_done(dut, "rd", rd_resp))
    cocotb.start_soon(_watch_done(dut, "wr", wr_resp))
    reader = cocotb.start_soon(_read_words(dut, len(reads), lanes, rng, p["backpressure"], got))
    writer = cocotb.start_soon(_write_words(dut, payloads, lanes, rng, p["backpressure"]))

    async def issue(port, transfers):
        for t in transfers:
            await _send_desc(dut, port, t)

    rd_issue = cocotb.start_soon(issue("rd_desc", reads))
    wr_issue = cocotb.start_soon(issue("wr_desc", writes))
    # Generous bound on a correct run (every beat stalled on several channels, plus read
    # latency per beat); a hang fails here instead of running for ever.
    beats = sum(t.rows * (t.row_bytes // lanes + 2) for t in reads + writes)
    budget = 2000 + beats * (8 + 2 * p["max_latency"]) * int(1 + 4 * p["backpressure"])
    while (len(got) < len(reads) or len(wr_resp) < len(writes)) and cycles.count < budget:
        await RisingEdge(dut.clk)
    if cycles.count >= budget:
        for task in (rd_issue, wr_issue, reader, writer):
            task.cancel()
        message = f"timed out after {cycles.count} cycles: {len(got)}/{len(reads)} reads, {len(wr_resp)}/{len(writes)} writes done"
        write_tb_output(passed=False, cycles=cycles.count, mismatch={"position": "hang", "expected": None, "got": message})
        raise AssertionError(message)
    for task in (rd_issue, wr_issue, reader, writer):
        await task

    mismatch = None
    for index, (t, words) in enumerate(zip(reads[:-1], got)):
        want = pack_words(gather(expected, t), lanes)
        if words != want:
            pos = next((i for i, (a, b) in enumerate(zip(words, want)) if a != b), min(len(words), len(want)))
            mismatch = {"position": f"read {index} {t.to_dict()} word {pos}",
                        "expected": want[pos] if pos < len(want) else None,
                        "got": words[pos] if pos < len(words) else None}
            break
    memory = ram.read(0, RAM_BYTES)
    if mismatch is None and memory != bytes(expected):
        pos = next(i for i in range(RAM_BYTES) if memory[i] != expected[i])
        mismatch = {"position": f"DDR byte {pos:#x} after writes", "expected": expected[pos], "got": memory[pos]}
    moved = sum(t.total_bytes for t in reads) + sum(t.total_bytes for t in writes)
    write_tb_output(passed=mismatch is None, cycles=cycles.count, mismatch=mismatch,
                    transfers=len(reads) + len(writes), bytes=moved,
                    rd_bytes=int(dut.rd_bytes.value), wr_bytes=int(dut.wr_bytes.value))
    assert mismatch is None, f"mismatch: {mismatch}"
    assert rd_resp == [AXI_RESP_OKAY] * (len(reads) - 1) + [AXI_RESP_SLVERR], f"read responses {rd_resp}"
    assert wr_resp == [AXI_RESP_OKAY] * (len(writes) - 1) + [AXI_RESP_SLVERR], f"write responses {wr_resp}"
    assert int(dut.rd_bytes.value) == sum(t.total_bytes for t in reads)
    assert int(dut.wr_bytes.value) == sum(t.total_bytes for t in writes)


@cocotb.test()
async def dma_throughput(dut):
    """Cycles for one long aligned transfer, from descriptor to completion."""
    p = tb_params()
    rng = random.Random(p["seed"])
    lanes, total = p["lane_bytes"], p["total_bytes"]
    _idle_inputs(dut)
    _start_in_reset(dut)
    ram = stressed_ram(dut, rng, size=RAM_BYTES, error_base=ERROR_BASE, backpressure=p["backpressure"], max_latency=0)
    await _release(dut)
    image = rng.randbytes(RAM_BYTES)
    ram.write(0, image)
    transfer = Transfer(0, 1, total, total)
    limit_ns = 10 * (1000 + 8 * total // lanes)   # a hang fails instead of running for ever
    cycles = _Cycles(dut)
    responses, got = [], []
    if p["direction"] == "read":
        cocotb.start_soon(_watch_done(dut, "rd", responses))
        reader = cocotb.start_soon(_read_words(dut, 1, lanes, rng, p["backpressure"], got))
        start = cycles.count
        await _send_desc(dut, "rd_desc", transfer)
        await with_timeout(reader, limit_ns, "ns")
        elapsed = cycles.count - start
        ok = got == [pack_words(image[:total], lanes)]
    else:
        payload = rng.randbytes(total)
        cocotb.start_soon(_watch_done(dut, "wr", responses))
        writer = cocotb.start_soon(_write_words(dut, [payload], lanes, rng, p["backpressure"]))
        start = cycles.count
        await _send_desc(dut, "wr_desc", transfer)
        await with_timeout(writer, limit_ns, "ns")
        while not responses and cycles.count - start < limit_ns // 10:
            await RisingEdge(dut.clk)
        elapsed = cycles.count - start
        ok = ram.read(0, total) == payload
    write_tb_output(passed=ok and responses == [AXI_RESP_OKAY], cycles=elapsed, mismatch=None if ok else
                    {"position": "payload", "expected": "bytes", "got": "different"},
                    bytes=total, bytes_per_cycle=total / elapsed)
    assert ok, "transferred data differ"


@cocotb.test()
async def lite_register_semantics(dut):
    """Every register through ``AxiLiteMaster``: RW keeps, RO ignores writes, W1C clears
    (and a hardware set wins), W1S pulses and reads 0; unmapped addresses answer SLVERR."""
    p = tb_params()
    rng = random.Random(p["seed"])
    regs = p["registers"]["registers"]
    for reg in regs:
        if reg["access"] in ("ro", "w1c"):
            port = reg["port"] + ("_set" if reg["access"] == "w1c" else "")
            getattr(dut, f"regs__{port}").value = 0
    _start_in_reset(dut)
    host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.clk, dut.rst)
    await _release(dut)
    cycles = _Cycles(dut)
    pulses: list[tuple[str, int]] = []

    async def watch_pulses():
        strobes = [r for r in regs if r["access"] == "w1s"]
        while True:
            await _next_cycle(dut)
            await ReadOnly()
            for r in strobes:
                value = int(getattr(dut, f"regs__{r['port']}").value)
                if value:
                    pulses.append((r["name"], value))

    cocotb.start_soon(watch_pulses())

    async def read(offset):
        resp = await host.read(offset, 4)
        return int.from_bytes(resp.data, "little"), int(resp.resp)

    async def write(offset, value):
        resp = await host.write(offset, value.to_bytes(4, "little"))
        return int(resp.resp)

    checked = 0
    for reg in regs:
        assert await read(reg["offset"]) == (reg["reset"] if reg["access"] != "ro" else 0, AXI_RESP_OKAY), \
            f"{reg['name']}: reset value"
    for _ in range(p["rounds"]):
        for reg in regs:
            off, mask, name, port = reg["offset"], (1 << reg["width"]) - 1, reg["name"], reg["port"]
            value = rng.getrandbits(32)
            if reg["access"] == "rw":
                assert await write(off, value) == AXI_RESP_OKAY
                assert await read(off) == (value & mask, AXI_RESP_OKAY), f"{name}: RW read-back"
                assert int(getattr(dut, f"regs__{port}").value) == value & mask, f"{name}: RW port"
            elif reg["access"] == "ro":
                getattr(dut, f"regs__{port}").value = value & mask
                await RisingEdge(dut.clk)
                assert await write(off, ~value & 0xFFFFFFFF) == AXI_RESP_OKAY
                assert await read(off) == (value & mask, AXI_RESP_OKAY), f"{name}: RO value"
            elif reg["access"] == "w1c":
                await write(off, mask)
                getattr(dut, f"regs__{port}_set").value = value & mask
                await RisingEdge(dut.clk)
                getattr(dut, f"regs__{port}_set").value = 0
                assert await read(off) == (value & mask, AXI_RESP_OKAY), f"{name}: W1C set"
                clear = rng.getrandbits(32)
                assert await write(off, clear) == AXI_RESP_OKAY
                assert await read(off) == (value & ~clear & mask, AXI_RESP_OKAY), f"{name}: W1C clear"
            else:
                pulses.clear()
                assert await write(off, value) == AXI_RESP_OKAY
                await ClockCycles(dut.clk, 2)
                want = [(name, value & mask)] if value & mask else []
                assert pulses == want, f"{name}: W1S pulses {pulses}, expected {want}"
                assert await read(off) == (0, AXI_RESP_OKAY), f"{name}: W1S reads 0"
            checked += 1
    used = {r["offset"] for r in regs}
    hole = next(o for o in range(0, 4096, 4) if o not in used)
    assert await read(hole) == (0, AXI_RESP_SLVERR), "unmapped read"
    assert await write(hole, 1) == AXI_RESP_SLVERR, "unmapped write"
    write_tb_output(passed=True, cycles=cycles.count, mismatch=None, checked=checked)


@cocotb.test()
async def standin_copy(dut):
    """The stand-in top: the host programs a copy through the register map, waits for the
    interrupt, and finds the bytes copied, the counters set and errors reported."""
    from vitaccel.hw.spec.regmap import ErrorCode, register

    p = tb_params()
    rng = random.Random(p["seed"])
    _start_in_reset(dut)
    ram = stressed_ram(dut, rng, size=RAM_BYTES, error_base=ERROR_BASE, backpressure=p["backpressure"], max_latency=p["max_latency"])
    image = rng.randbytes(RAM_BYTES)
    ram.write(0, image)
    host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.clk, dut.rst)
    await _release(dut)
    cycles = _Cycles(dut)

    async def write(name, value):
        await host.write(register(name).offset, value.to_bytes(4, "little"))

    async def read(name):
        return int.from_bytes((await host.read(register(name).offset, 4)).data, "little")

    async def run(src, dst, length):
        await write("PROGRAM_ADDR_LO", src)
        await write("DDR_BASE_LO", dst)
        await write("PROGRAM_LENGTH", length)
        await write("CONTROL", 1)
        for _ in range(20 * length + 2000):
            await RisingEdge(dut.clk)
            if dut.interrupt.value:
                return
        raise AssertionError(f"no interrupt for a copy of {length} bytes")

    await write("INTERRUPT_ENABLE", 0b11)
    copies = [(rng.randrange(0, 0x4000), rng.randrange(0x8000, 0xC000), rng.randint(1, p["max_bytes"]))
              for _ in range(p["copies"])]
    expected = bytearray(image)
    mismatch = None
    for src, dst, length in copies:
        await run(src, dst, length)
        expected[dst:dst + length] = expected[src:src + length]
        status, pending = await read("STATUS"), await read("INTERRUPT_STATUS")
        assert status == 0b010 and pending == 0b01, f"status {status:#b}, interrupts {pending:#b}"
        assert await read("DMA_READ_BYTES_LO") == await read("DMA_WRITE_BYTES_LO")
        assert await read("TOTAL_CYCLES_LO") > 0
        await write("INTERRUPT_STATUS", 0b01)
        await RisingEdge(dut.clk)
        assert not dut.interrupt.value, "interrupt still raised after W1C"
        memory = ram.read(0, RAM_BYTES)
        if memory != bytes(expected) and mismatch is None:
            pos = next(i for i in range(RAM_BYTES) if memory[i] != expected[i])
            mismatch = {"position": f"copy {src:#x}->{dst:#x} ({length} B), byte {pos:#x}",
                        "expected": expected[pos], "got": memory[pos]}
    # A read from the error window and a zero length both end in an error.
    for src, length, code in ((ERROR_BASE, 64, ErrorCode.ADDRESS_OUT_OF_RANGE),
                              (0, 0, ErrorCode.INVALID_OPERAND)):
        await run(src, 0xC000, length)
        assert await read("STATUS") == 0b100, "error bit"
        assert await read("ERROR_CODE") == code.value, f"error code for length {length}"
        assert await read("INTERRUPT_STATUS") == 0b10
        await write("INTERRUPT_STATUS", 0b10)
    write_tb_output(passed=mismatch is None, cycles=cycles.count, mismatch=mismatch, copies=len(copies))
    assert mismatch is None, f"mismatch: {mismatch}"

