"""A minimal testbench that checks the simulator plumbing itself (build, run, parameters,
outputs, failure reporting) on a tiny multiply-accumulate design."""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from vitaccel.sim.runner import tb_params, write_tb_output


@cocotb.test()
async def mac_matches_reference(dut):
    params = tb_params()
    rng = random.Random(params.get("seed", 0))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.clear.value = 0
    dut.a.value = 0
    dut.b.value = 0
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    expected = 0
    for _ in range(params.get("steps", 50)):
        a, b = rng.randint(-128, 127), rng.randint(-128, 127)
        dut.a.value = a
        dut.b.value = b
        await RisingEdge(dut.clk)
        expected += a * b
    await RisingEdge(dut.clk)
    got = dut.acc.value.to_signed()
    if params.get("break_reference"):
        expected += 1
    assert got == expected, f"acc: expected {expected}, got {got}"
    write_tb_output(acc=got)
