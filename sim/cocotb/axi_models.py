"""Bus models shared by the testbenches: DDR as cocotbext-axi's ``AxiRam`` made unfriendly.

``stressed_ram`` pauses every AXI channel at random, delays each read burst by a random
number of cycles, and can answer SLVERR above an address, so a design under test sees
back-pressure and latency on every channel, as on a busy ZCU102 HP port.
"""

from __future__ import annotations

import random

from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiBus, AxiRam

__all__ = ["random_pauses", "stressed_ram"]


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
