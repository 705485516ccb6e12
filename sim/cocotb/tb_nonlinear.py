"""cocotb testbench of the non-linear units (softmax, GELU, LayerNorm).

The host (:func:`vitaccel.sim.cases.nonlinear.run_case`) writes a case file: run-time
settings, table/parameter writes, packed input beats and the number of output beats. This
testbench does the writes, streams the input with random valid gaps and ready drops (the
case's ``stall`` probability, seeded), collects every output beat and reports them with the
cycle each was accepted in and the cycle count from the first input beat to the last
output beat; the host compares them with
the golden model bit for bit.
"""

import json
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from vitaccel.sim.runner import tb_params, write_tb_output


def _port(dut, name: str):
    return getattr(dut, name)


def _is_high(signal) -> bool:
    """1, and not X/Z (Icarus shows X on combinational outputs until their inputs first change)."""
    value = signal.value
    return value.is_resolvable and bool(value)


@cocotb.test()
async def nonlinear_unit_streams_case(dut):
    params = tb_params()
    with open(params["case_file"]) as handle:
        case = json.load(handle)
    rng = random.Random(params.get("seed", 0))
    stall = float(case.get("stall", 0.0))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    for name, value in case["settings"].items():
        _port(dut, name).value = value
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    enables = set()
    for write in case["writes"]:
        for name, value in write.items():
            _port(dut, name).value = value
            if name.endswith("__en"):
                enables.add(name)
        await RisingEdge(dut.clk)
    for name in enables:
        _port(dut, name).value = 0

    in_beats, expected_out = case["in_beats"], case["out_beats"]
    sent, outputs, out_cycles, cycles = 0, [], [], 0
    limit = 40 * (len(in_beats) + 16) + 2000
    while len(outputs) < expected_out:
        offer = sent < len(in_beats) and rng.random() >= stall
        take = rng.random() >= stall
        dut.i__valid.value = int(offer)
        if offer:
            dut.i__payload.value = in_beats[sent]
        dut.o__ready.value = int(take)
        await ReadOnly()
        if offer and _is_high(dut.i__ready):
            sent += 1
        if take and _is_high(dut.o__valid):
            outputs.append(int(dut.o__payload.value.to_unsigned()))
            out_cycles.append(cycles)
        await RisingEdge(dut.clk)
        cycles += 1
        assert cycles < limit, f"unit hung: {sent} of {len(in_beats)} beats in, {len(outputs)} out"
    dut.i__valid.value = 0
    write_tb_output(out_beats=outputs, out_cycles=out_cycles, cycles=cycles)
