"""cocotb testbench of whole compiled programs on ``vitaccel_top``: the runtime's rtl backend.

DDR is the stressed ``AxiRam`` of :mod:`vitaccel.sim.cocotb.axi_models` (random read
latency) with random pauses on every channel (:func:`shared_pauses`: cheaper per cycle), or,
when the case names a board-like DDR model (``ddr_model``, :mod:`vitaccel.sim.perf.ddr`), the
deterministic ``board_ram`` for latency records; the host is ``AxiLiteMaster`` on ``s_axi_control_*``
driven by the runtime's own driver sequence, :func:`vitaccel.hw.spec.driver.run_on_accelerator`,
so the simulated host and the board run the same register code. Every run of one program
(one per image) happens in this one simulator launch: per run the testbench writes the DDR
window and the program, runs, and writes the final DDR window and the driver's record to
files named by the case (``vitaccel.sim.cases.system``), which also compares them.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotb.utils import get_sim_time
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from vitaccel.hw.spec.regmap import register
from vitaccel.sim.cocotb.axi_models import board_ram, stressed_ram
from vitaccel.sim.cocotb.board_ddr import PROTOCOL_ERRORS, read_memory_hex, write_memory_hex
from vitaccel.sim.perf.ddr import ddr_model
from vitaccel.sim.runner import tb_params, write_tb_output
from vitaccel.hw.spec.driver import ControlPort, run_on_accelerator

CLOCK_NS = 10


class AxiLitePort(ControlPort):
    """The driver's control port as cocotbext-axi's ``AxiLiteMaster`` plus the interrupt pin."""

    def __init__(self, dut) -> None:
        self.dut = dut
        self.host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.clk, dut.rst)

    async def write(self, name: str, value: int) -> None:
        await self.host.write(register(name).offset, int(value).to_bytes(4, "little"))

    async def read(self, name: str) -> int:
        return int.from_bytes((await self.host.read(register(name).offset, 4)).data, "little")

    async def wait_interrupt(self, max_cycles: int) -> tuple[bool, int]:
        start = get_sim_time("ns")
        if not self.dut.interrupt.value:
            # One trigger for the whole wait: no Python per clock cycle.
            await First(RisingEdge(self.dut.interrupt), Timer(max_cycles * CLOCK_NS, "ns"))
            await RisingEdge(self.dut.clk)
        waited = int((get_sim_time("ns") - start) // CLOCK_NS)
        return bool(self.dut.interrupt.value), waited


class CocotbDdr:
    """An ``AxiRam`` (stressed or board-like) behind the load/dump interface of :class:`VerilogDdr`."""

    def __init__(self, ram) -> None:
        self.ram = ram
        self.logs = (ram.read_if.log, ram.write_if.log)
        self.read_if, self.write_if = ram.read_if, ram.write_if

    async def load(self, regions: dict[int, bytes]) -> None:
        for address, data in regions.items():
            self.ram.write(address, data)

    async def dump(self, address: int, length: int) -> bytes:
        return self.ram.read(address, length)


class VerilogDdr:
    """The DDR inside the simulated design (``board_ddr.v``): loaded and dumped through
    ``$readmemh`` / ``$writememh`` files in the simulator's working directory; its protocol
    checks are read after every run."""

    logs = ()

    def __init__(self, dut, *, size: int, word_bytes: int) -> None:
        self.dut, self.size, self.word_bytes = dut, size, word_bytes
        dut.ddr_load.value = 0
        dut.ddr_dump.value = 0

    async def _pulse(self, signal) -> None:
        signal.value = 1
        await RisingEdge(self.dut.clk)
        signal.value = 0
        await RisingEdge(self.dut.clk)

    def _check(self) -> None:
        code = int(self.dut.ddr_protocol_error.value)
        if code:
            raise AssertionError(f"AXI protocol error {code} at the DDR: {PROTOCOL_ERRORS.get(code, '?')}")

    async def load(self, regions: dict[int, bytes]) -> None:
        image = bytearray(-(-self.size // self.word_bytes) * self.word_bytes)
        for address, data in regions.items():
            image[address:address + len(data)] = data
        write_memory_hex(Path("ddr_in.hex"), image, self.word_bytes)
        await self._pulse(self.dut.ddr_load)

    async def dump(self, address: int, length: int) -> bytes:
        self._check()
        await self._pulse(self.dut.ddr_dump)
        return read_memory_hex(Path("ddr_out.hex"), self.word_bytes)[address:address + length]


async def shared_pauses(dut, rng: random.Random, channels, probability: float, max_run: int = 7) -> None:
    """Random back-pressure on all ``channels`` from one coroutine: over random runs of
    1..``max_run`` cycles each channel is paused with ``probability``.

    cocotbext-axi's per-channel pause generators resume five coroutines every cycle, which
    measured as most of a whole-program simulation's time; this resumes one per run, at
    mid-cycle (between the clock edges where the channels sample ``pause``).
    """
    await RisingEdge(dut.clk)
    await Timer(CLOCK_NS // 2, "ns")
    while True:
        for channel in channels:
            channel.pause = rng.random() < probability
        await Timer(rng.randint(1, max_run) * CLOCK_NS, "ns")


@cocotb.test()
async def system_runs(dut):
    """Run every run of the case file in order; record what the host can observe."""
    p = tb_params()
    case = json.loads(Path(p["case_file"]).read_text())
    rng = random.Random(case["seed"])
    # With the DDR in Verilog nothing in Python needs every edge: the clock too is the
    # simulator's (cocotb's C++ clock), not a Python coroutine woken twice a cycle.
    clock_impl = "gpi" if case.get("verilog_ddr") else "py"
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns", impl=clock_impl).start())
    dut.rst.value = 1
    lay = case["layout"]
    model = ddr_model(case["ddr_model"]) if case.get("ddr_model") else None
    if case.get("verilog_ddr"):
        ram = VerilogDdr(dut, size=lay["buffer_bytes"], word_bytes=case["verilog_ddr"]["word_bytes"])
    elif model is not None and model.deterministic:
        ram = CocotbDdr(board_ram(dut, model, size=lay["buffer_bytes"], clock_ns=CLOCK_NS))
    else:
        ram = CocotbDdr(stressed_ram(dut, rng, size=lay["buffer_bytes"], backpressure=case["backpressure"],
                                     max_latency=case["max_latency"]))
        channels = (ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
                    ram.read_if.ar_channel, ram.read_if.r_channel)
        for channel in channels:   # stressed_ram's random read latency stays; its pauses are replaced
            channel.clear_pause_generator()
        if case["backpressure"]:
            cocotb.start_soon(shared_pauses(dut, rng, channels, case["backpressure"]))
    port = AxiLitePort(dut)
    # cocotbext-axi logs every burst at INFO: megabytes of log and a large share of the run time.
    for log in (*ram.logs, port.host.read_if.log, port.host.write_if.log):
        log.setLevel(logging.WARNING)
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    code = Path(case["program_file"]).read_bytes()
    for index, run in enumerate(case["runs"]):
        ddr = Path(run["ddr_in"]).read_bytes()
        await ram.load({lay["ddr_base"]: ddr, lay["program_addr"]: code})
        record = await run_on_accelerator(port, program_addr=lay["program_addr"], length=len(code) // 16,
                                          ddr_base=lay["ddr_base"], ddr_size=len(ddr), watchdog=case["watchdog"],
                                          max_cycles=case["max_cycles"], checksum=case.get("checksum"))
        Path(run["ddr_out"]).write_bytes(await ram.dump(lay["ddr_base"], len(ddr)))
        # The record file last: its existence tells the host (progress) that the run is complete.
        Path(run["record"]).write_text(json.dumps(record))
        if not record["interrupt"]:
            break   # a hang: the accelerator is still busy, later runs would not start
    write_tb_output(runs=index + 1)
