"""cocotb testbench of the sparse attention unit: write the operand, schedule and parameter
words, start, let the unit run, collect the output rows, compare with the expected rows
passed by the host, report the cycles from start to the last row."""

import json
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from vitaccel.sim.runner import tb_params, write_tb_output

PERIOD_NS = 10


async def run_one(dut, p: dict, head_dim: int) -> tuple[list[int], int]:
    """Load one program, run it, return the output row words and the cycles start -> last row."""
    dut.load_en.value = 1
    dut.load_mask.value = (1 << len(dut.load_mask)) - 1   # whole words
    for target, addr, word in p["loads"]:
        dut.load_target.value = target
        dut.load_addr.value = addr
        dut.load_data.value = word
        await RisingEdge(dut.clk)
    dut.load_en.value = 0
    for name in ("tokens", "waves", "head_dim", "softmax_multiplier", "softmax_shift", "out_multiplier", "out_shift"):
        getattr(dut, name).value = p[name]
    dut.start.value = 1
    await RisingEdge(dut.clk)
    started = get_sim_time(unit="ns")
    dut.start.value = 0
    await RisingEdge(dut.out__valid)  # the unit runs on its own until the first row
    rows = []
    row_mask = (1 << (8 * head_dim)) - 1
    while True:
        await ReadOnly()
        if dut.out__valid.value:
            word = dut.out__payload.value.to_unsigned()
            rows.append(word & row_mask)
            if (word >> (8 * head_dim)) & 1:
                break
        await RisingEdge(dut.clk)
    cycles = int((get_sim_time(unit="ns") - started) // PERIOD_NS) + 1
    await RisingEdge(dut.clk)
    return rows, cycles


@cocotb.test()
async def attention_matches_golden(dut):
    params = json.loads(Path(tb_params()["program_file"]).read_text())
    head_dim = params["head_dim"]
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    dut.load_en.value = 0
    dut.out__ready.value = 1
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    results, failures = [], []
    for index, p in enumerate(params["runs"]):
        rows, cycles = await run_one(dut, p, head_dim)
        results.append({"rows": [str(r) for r in rows], "cycles": cycles})
        expected = [int(r) for r in p["expected"]]
        wrong = [i for i, (want, got) in enumerate(zip(expected, rows)) if want != got]
        if wrong or len(rows) != len(expected):
            first = wrong[0] if wrong else min(len(rows), len(expected))
            failures.append(f"run {index} ({p.get('label', '')}): first wrong output row {first}")
    write_tb_output(runs=results)
    assert not failures, "; ".join(failures)
