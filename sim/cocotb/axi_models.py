"""Bus models shared by the testbenches: DDR as cocotbext-axi's ``AxiRam``.

``stressed_ram`` pauses every AXI channel at random, delays each read beat by a random
number of cycles, and can answer SLVERR above an address, so a design under test sees
back-pressure and latency on every channel, as on a busy ZCU102 HP port (verification).
``board_ram`` is the deterministic board-like DDR of a named
:class:`~vitaccel.sim.perf.ddr.DdrModel` (latency records): no pauses, a fixed latency per
read burst, one word per cycle. Both keep ``AxiRam``'s protocol checks (burst sizes, 4 KiB
boundaries, handshakes).
"""

from __future__ import annotations

import random

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge, Timer
from cocotb.utils import get_sim_time
from cocotbext.axi import AxiBus, AxiRam
from cocotbext.axi.constants import AxiBurstType, AxiResp

__all__ = ["random_pauses", "stressed_ram", "board_ram"]


def random_pauses(rng: random.Random, probability: float):
    """Pause generator for cocotbext-axi channels: pause with ``probability`` each cycle."""
    while True:
        yield rng.random() < probability


def stressed_ram(dut, rng: random.Random, *, size: int, backpressure: float, max_latency: int,
                 error_base: int | None = None, prefix: str = "m_axi") -> AxiRam:
    """An ``AxiRam`` on ``prefix`` with random pauses, read latency and an optional error window.

    Parameters
    ----------
    backpressure : float
        Probability that a channel pauses in a given cycle (all five channels).
    max_latency : int
        Each read burst waits 0..``max_latency`` cycles before its data.
    error_base : int, optional
        Reads and writes at or above this address answer SLVERR.
    """
    ram = AxiRam(AxiBus.from_prefix(dut, prefix), dut.clk, dut.rst, size=size)
    for channel in (ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
                    ram.read_if.ar_channel, ram.read_if.r_channel):
        channel.set_pause_generator(random_pauses(rng, backpressure))
    plain_read, plain_write = ram.read_if._read, ram.write_if._write

    def check(address: int) -> None:
        if error_base is not None and address >= error_base:
            raise ValueError("address in the error window")  # AxiRam answers SLVERR

    async def slow_read(address, length):
        if max_latency:
            await ClockCycles(dut.clk, rng.randint(0, max_latency))
        check(address)
        return await plain_read(address, length)

    async def checked_write(address, data):
        check(address)
        await plain_write(address, data)

    ram.read_if._read = slow_read
    ram.write_if._write = checked_write
    return ram


def board_ram(dut, model, *, size: int, clock_ns: int, prefix: str = "m_axi") -> AxiRam:
    """An ``AxiRam`` on ``prefix`` behaving as the board-like ``model`` (a deterministic
    :class:`~vitaccel.sim.perf.ddr.DdrModel`), clocked with period ``clock_ns``.

    Read bursts are served in order; burst ``i``'s first beat leaves the memory
    ``model.read_latency`` cycles after its AR handshake at the earliest (latencies of
    bursts in flight overlap, as in a DDR controller) and not before burst ``i - 1``'s last
    beat, then one beat per cycle. Writes stream one beat per cycle. One port: the bus width
    is its bound (<= ``model.port_bytes_per_cycle`` for a 128-bit port). No Python runs per
    idle cycle: the AR handshake is time-stamped by the channel itself."""
    if not model.deterministic:
        raise ValueError(f"DDR model {model.name!r} is not board-like")
    ram = AxiRam(AxiBus.from_prefix(dut, prefix), dut.clk, dut.rst, size=size)
    reader = ram.read_if
    latency_ns = model.read_latency * clock_ns
    queue = reader.ar_channel.queue
    plain_put = queue.put_nowait

    def stamped_put(ar):   # called by the AR sink in the cycle of the handshake
        ar.accepted_ns = get_sim_time("ns")
        plain_put(ar)

    queue.put_nowait = stamped_put

    async def process_read(self=reader):
        # cocotbext-axi's loop for INCR bursts (the only kind the DMA issues), with the latency.
        while True:
            ar = await self.ar_channel.recv()
            burst = AxiBurstType(int(getattr(ar, "arburst", AxiBurstType.INCR)))
            assert burst == AxiBurstType.INCR, f"unexpected burst type {burst}"
            size_bytes = 2 ** int(getattr(ar, "arsize", self.max_burst_size))
            assert 0 < size_bytes <= self.byte_lanes
            beats = int(getattr(ar, "arlen", 0)) + 1
            address = int(ar.araddr) // size_bytes * size_bytes
            assert 0x1000 - (address & 0xFFF) >= size_bytes * beats, "burst crosses a 4 KiB boundary"
            wait = ar.accepted_ns + latency_ns - get_sim_time("ns")
            if wait > clock_ns // 2:   # to mid-cycle, then the edge: deterministic ordering
                await Timer(wait - clock_ns // 2, "ns")
                await RisingEdge(self.clock)
            for beat in range(beats):
                r = self.r_channel._transaction_obj()
                r.rid, r.rlast, r.rresp = int(getattr(ar, "arid", 0)), beat == beats - 1, AxiResp.OKAY
                word = address // self.byte_lanes * self.byte_lanes
                try:
                    data = await self._read(word, self.byte_lanes)
                except Exception:
                    data, r.rresp = bytes(self.byte_lanes), AxiResp.SLVERR
                r.rdata = int.from_bytes(data, "little")
                await self.r_channel.send(r)
                address += size_bytes

    reader._process_read = process_read
    if reader._process_read_cr is not None:   # already started (reset seen low): restart patched
        reader._process_read_cr.kill()
        reader._process_read_cr = cocotb.start_soon(reader._process_read())
    return ram
