"""cocotb testbench of fuzz programs on ``vitaccel_top``: many programs per simulator launch.

One test loops over the programs of a case file written by :mod:`vitaccel.sim.regress.fuzz_rtl`.
Per program it pulses reset (so a hung program cannot affect the next one; the on-chip
memories keep their contents, as the golden machine's buffers do), writes the DDR window and
the program into a stressed ``AxiRam`` (random pauses and read latency), sets the watchdog and
the checksum registers, starts, and waits for the interrupt at most the program's cycle
budget. It appends one JSON line per program to the result file (error code and pc, status,
retired instructions, cycles, and the final DDR window when the program finished), so a
crashed simulator still leaves the results of the programs before.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from vitaccel.sim.cocotb.axi_models import stressed_ram
from vitaccel.sim.cocotb.tb_system import CLOCK_NS, AxiLitePort, shared_pauses
from vitaccel.sim.runner import tb_params, write_tb_output


@cocotb.test()
async def fuzz_programs(dut):
    """Run every program of the case file in order, with a reset before each."""
    p = tb_params()
    case = json.loads(Path(p["case_file"]).read_text())
    rng = random.Random(case["seed"])
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    ram = stressed_ram(dut, rng, size=case["ram_bytes"], backpressure=case["backpressure"],
                       max_latency=case["max_latency"])
    channels = (ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
                ram.read_if.ar_channel, ram.read_if.r_channel)
    for channel in channels:   # one pause coroutine for all channels: cheaper per cycle
        channel.clear_pause_generator()
    if case["backpressure"]:
        cocotb.start_soon(shared_pauses(dut, rng, channels, case["backpressure"]))
    port = AxiLitePort(dut)
    for log in (ram.read_if.log, ram.write_if.log, port.host.read_if.log, port.host.write_if.log):
        log.setLevel(logging.WARNING)
    out = Path(p["result_file"])
    base, program_addr = case["ddr_base"], case["program_addr"]
    done = 0
    for program in case["programs"]:
        dut.rst.value = 1
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)
        ddr = bytes.fromhex(program["ddr"])
        words = [int(w, 16) for w in program["words"]]
        ram.write(base, ddr)
        ram.write(program_addr, b"".join(w.to_bytes(16, "little") for w in words))
        for name, value in (("INTERRUPT_ENABLE", 0b11), ("PROGRAM_ADDR_LO", program_addr), ("PROGRAM_ADDR_HI", 0),
                            ("PROGRAM_LENGTH", len(words)), ("DDR_BASE_LO", base), ("DDR_BASE_HI", 0),
                            ("DDR_SIZE", len(ddr)), ("WATCHDOG_LIMIT", program["watchdog"]),
                            ("PROGRAM_CRC", program["checksum"] or 0),
                            ("PROGRAM_CHECK", int(program["checksum"] is not None)), ("CONTROL", 1)):
            await port.write(name, value)
        interrupt, waited = await port.wait_interrupt(program["max_cycles"])
        record = {"index": program["index"], "interrupt": interrupt, "waited": waited,
                  "status": await port.read("STATUS"), "error_code": await port.read("ERROR_CODE"),
                  "error_pc": await port.read("ERROR_PC"),
                  "retired": await port.read("INSTRUCTIONS_RETIRED_LO"),
                  "cycles": await port.read("TOTAL_CYCLES_LO")}
        if interrupt and record["error_code"] == 0:
            record["ddr"] = ram.read(base, len(ddr)).hex()
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        done += 1
    write_tb_output(programs=done)
