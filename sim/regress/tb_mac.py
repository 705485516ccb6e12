"""cocotb testbench of the self-test MAC case: drives the given operands, records ``acc``.

The golden comparison happens on the host (:func:`vitaccel.sim.regress.selftest.run_case`),
so a broken golden kernel is caught exactly as it would be for a real unit.
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from vitaccel.sim.runner import tb_params, write_tb_output


@cocotb.test()
async def mac_stream(dut):
    params = tb_params()
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.clear.value = 0
    dut.a.value = 0
    dut.b.value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    # Drive and sample on falling edges: each sample sees exactly one more rising edge.
    await FallingEdge(dut.clk)
    observed = []
    cycles = 0
    for a, b, clear in zip(params["a"], params["b"], params["clear"]):
        dut.a.value = a
        dut.b.value = b
        dut.clear.value = clear
        await FallingEdge(dut.clk)
        cycles += 1
        observed.append(dut.acc.value.to_signed())
    write_tb_output(acc=observed, cycles=cycles)
    # An optional in-testbench check, so the runner's failure reporting can be tested too.
    if "expected_final" in params:
        assert observed[-1] == params["expected_final"], \
            f"acc: expected {params['expected_final']}, got {observed[-1]}"
