"""cocotb testbench of the whole accelerator (``vitaccel_top``).

DDR is cocotbext-axi's ``AxiRam`` with random pauses on every channel and a random latency
before each read burst; the host is ``AxiLiteMaster`` on ``s_axi_control_*``. The programs,
the DDR image and the register settings come from a JSON case file written by
:mod:`vitaccel.sim.cases.accel`; per program the testbench writes back the status, error
code and pc, the performance counters and the final DDR image (to a JSON result file).
It only drives and records; the comparison with the golden machine is the case's job.
"""

from __future__ import annotations

import json
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotb.utils import get_sim_time
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from vitaccel.hw.spec.regmap import register
from vitaccel.sim.cocotb.axi_models import stressed_ram
from vitaccel.sim.runner import tb_params, write_tb_output

_CLOCK_NS = 10   # testbench clock period
#: Counters read back after every program.
COUNTERS = ("TOTAL_CYCLES", "BUSY_CYCLES_LOAD", "BUSY_CYCLES_COMPUTE", "BUSY_CYCLES_STORE",
            "STALL_CYCLES_LOAD", "STALL_CYCLES_COMPUTE", "STALL_CYCLES_STORE", "DMA_READ_BYTES",
            "DMA_WRITE_BYTES", "INSTRUCTIONS_RETIRED", "ENGINE_BUSY_CYCLES")


@cocotb.test()
async def accel_programs(dut):
    """Run every program of the case file in order; record what the host can observe."""
    p = tb_params()
    with open(p["case_file"]) as handle:
        case = json.load(handle)
    rng = random.Random(case["seed"])
    cocotb.start_soon(Clock(dut.clk, _CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    ram = stressed_ram(dut, rng, size=case["ram_bytes"], backpressure=case["backpressure"],
                       max_latency=case["max_latency"])
    host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.clk, dut.rst)
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    async def write(name: str, value: int) -> None:
        await host.write(register(name).offset, int(value).to_bytes(4, "little"))

    async def read(name: str) -> int:
        return int.from_bytes((await host.read(register(name).offset, 4)).data, "little")

    await write("INTERRUPT_ENABLE", 0b11)
    results = []
    for program in case["programs"]:
        words = [int(w, 16) for w in program["words"]]
        ram.write(case["ddr_base"], bytes.fromhex(program["ddr"]))
        ram.write(case["program_addr"], b"".join(w.to_bytes(16, "little") for w in words))
        await write("PROGRAM_ADDR_LO", case["program_addr"])
        await write("PROGRAM_ADDR_HI", 0)
        await write("PROGRAM_LENGTH", len(words))
        await write("DDR_BASE_LO", case["ddr_base"])
        await write("DDR_SIZE", len(program["ddr"]) // 2)
        await write("WATCHDOG_LIMIT", program.get("watchdog", 0))
        await write("PROGRAM_CRC", program.get("checksum") or 0)
        await write("PROGRAM_CHECK", int(program.get("checksum") is not None))
        await write("CONTROL", 1)
        # Wait in the simulator (no Python per cycle): long compiled programs run faster.
        started = get_sim_time(unit="ns")
        if not dut.interrupt.value:
            await First(RisingEdge(dut.interrupt), Timer(case["max_cycles"] * _CLOCK_NS, unit="ns"))
            await RisingEdge(dut.clk)
        waited = round((get_sim_time(unit="ns") - started) / _CLOCK_NS)
        record = {"name": program["name"], "interrupt": bool(dut.interrupt.value), "waited": waited,
                  "status": await read("STATUS"), "error_code": await read("ERROR_CODE"),
                  "error_pc": await read("ERROR_PC"), "interrupt_status": await read("INTERRUPT_STATUS")}
        for name in COUNTERS:
            record[name.lower()] = (await read(f"{name}_LO")) | ((await read(f"{name}_HI")) << 32)
        record["ddr"] = ram.read(case["ddr_base"], len(program["ddr"]) // 2).hex()
        results.append(record)
        if not record["interrupt"]:
            break   # a hang: nothing after it is meaningful
        await write("INTERRUPT_STATUS", 0b11)
    with open(p["result_file"], "w") as handle:
        json.dump(results, handle)
    write_tb_output(programs=len(results))
