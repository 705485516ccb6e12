"""cocotb testbench of the matrix engine, split as in cocotb's examples:

* :class:`StreamDriver` - writes words into one ready/valid input stream (A and B
  scratchpad rows, sparse-mode metadata words, parameter words, residual rows, the
  command), stalling at random;
* :class:`StreamMonitor` - collects output rows (and the raw accumulators ``output_acc``
  beside them), withholding ``ready`` at random;
* reference model - :func:`vitaccel.sim.cases.matrix_engine.make_case` (golden ``linear``
  and ``matmul``);
* scoreboard - :func:`scoreboard` compares the unpacked output and accumulators with the
  reference.

Speed: the drivers only run Python in cycles where a stream can move. While the engine
computes with full scratchpads they sleep on ``ready`` rising, so Verilator runs unattended.
"""

from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.matrix import unpack_output
from vitaccel.sim.cases.matrix_engine import case_streams, first_mismatch, make_case
from vitaccel.sim.runner import tb_params, write_tb_output

CLOCK_NS = 10


class _StreamEnd:
    """The ``valid``/``ready``/``payload`` signals of the stream ``name`` and a stall generator."""

    def __init__(self, dut, name: str, rng: random.Random, stall_prob: float):
        self.clk = dut.clk
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.rng, self.stall_prob = rng, stall_prob


class StreamDriver(_StreamEnd):
    """Writes ``words`` into the ready/valid stream ``name`` of ``dut``."""

    def __init__(self, dut, name: str, rng: random.Random, stall_prob: float):
        super().__init__(dut, name, rng, stall_prob)
        self.first_handshake_ns: float | None = None
        self.valid.value = 0

    async def send(self, words: list[int]) -> None:
        for word in words:
            while self.stall_prob and self.rng.random() < self.stall_prob:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.payload.value = word
            self.valid.value = 1
            while True:
                await ReadOnly()
                if self.ready.value == 1:
                    await RisingEdge(self.clk)  # the handshake happens at this edge
                    break
                await RisingEdge(self.ready)  # sleep while the scratchpad half is full
            if self.first_handshake_ns is None:
                self.first_handshake_ns = get_sim_time("ns")
        self.valid.value = 0


class StreamMonitor(_StreamEnd):
    """Collects ``count`` beats from the output stream ``name`` and, with each, the value of
    the signal ``beside`` (if given) into ``beside_beats``."""

    def __init__(self, dut, name: str, rng: random.Random, stall_prob: float, beside: str | None = None):
        super().__init__(dut, name, rng, stall_prob)
        self.beats: list[int] = []
        self.beside = getattr(dut, beside) if beside else None
        self.beside_beats: list[int] = []
        self.last_handshake_ns = 0.0
        self.ready.value = int(stall_prob == 0)

    async def collect(self, count: int) -> None:
        while len(self.beats) < count:
            if self.stall_prob:
                self.ready.value = int(self.rng.random() >= self.stall_prob)
            await ReadOnly()
            if self.valid.value == 1 and self.ready.value == 1:
                self.beats.append(int(self.payload.value))
                if self.beside is not None:
                    self.beside_beats.append(int(self.beside.value))
                await RisingEdge(self.clk)
                self.last_handshake_ns = get_sim_time("ns")
            elif self.valid.value == 0 and not self.stall_prob:
                await RisingEdge(self.valid)  # sleep while the engine computes
            else:
                await RisingEdge(self.clk)


def scoreboard(case, beats: list[int], acc_beats: list[int], acc_bits: int) -> dict | None:
    """First mismatch of the engine's output, then of its raw accumulators, against the
    reference model, or None."""
    mismatch = first_mismatch(case.expected, unpack_output(case.plan, beats))
    if mismatch is None:
        mismatch = first_mismatch(case.expected_acc, unpack_output(case.plan, acc_beats, bits=acc_bits))
        if mismatch is not None:
            mismatch["detail"] = "raw accumulator (output_acc)"
    return mismatch


async def run_one(dut, config: AccelConfig, spec: dict) -> dict:
    """Drive one GEMM through the engine; returns its verdict, cycles and first mismatch."""
    case = make_case(config, seed=spec["seed"], M=spec["M"], K=spec["K"], N=spec["N"],
                     unsigned_a=spec["unsigned_a"], residual=spec["residual"], extremes=spec["extremes"],
                     nm=spec.get("nm", False), pattern=spec.get("pattern"))
    plan = case.plan
    if spec.get("break_reference"):
        case.expected[0, 0] += 1  # proves that the scoreboard reports a difference
    rng = random.Random(spec["seed"])
    stall = spec["stall_prob"]
    loaders = case_streams(case)
    drivers = {name: StreamDriver(dut, name, random.Random(rng.random()), stall) for name in loaders}
    monitor = StreamMonitor(dut, "output", random.Random(rng.random()), stall, beside="output_acc")
    tasks = [cocotb.start_soon(drivers[name].send(words)) for name, words in loaders.items()]
    expected_rows = len(loaders["params"]) * plan.tile_rows
    budget = int((plan.compute_cycles + len(loaders["a_load"]) + len(loaders["b_load"]) + expected_rows)
                 * (1 + 8 * stall) * 4 + 2000)
    collector = cocotb.start_soon(monitor.collect(expected_rows))
    await First(collector, ClockCycles(dut.clk, budget))
    for task in tasks:
        task.cancel()
    for name in loaders:
        getattr(dut, f"{name}__valid").value = 0
    if len(monitor.beats) < expected_rows:
        collector.cancel()
        return {"passed": False, "cycles": budget, "mismatch": {
            "position": [], "expected": expected_rows, "got": len(monitor.beats),
            "detail": f"timeout: {len(monitor.beats)} of {expected_rows} output rows in {budget} cycles"}}
    start = min(drivers["a_load"].first_handshake_ns, drivers["b_load"].first_handshake_ns)
    cycles = round((monitor.last_handshake_ns - start) / CLOCK_NS) + 1
    mismatch = scoreboard(case, monitor.beats, monitor.beside_beats, config.acc_width)
    return {"passed": mismatch is None, "cycles": cycles, "mismatch": mismatch}


@cocotb.test()
async def gemms_match_golden(dut):
    """Every GEMM in the parameters, one after another on the same engine."""
    p = tb_params()
    config = AccelConfig.from_dict(p["config"])
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    for name in ("command", "a_load", "b_load", "params", "residual", "b_meta"):
        if name != "b_meta" or config.nm_sparsity is not None:  # b_meta: sparse-capable engines only
            getattr(dut, f"{name}__valid").value = 0
    dut.output__ready.value = 0
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    results = []
    for spec in p["cases"]:
        results.append(await run_one(dut, config, spec))
        write_tb_output(results=results)
        await ClockCycles(dut.clk, 2)
    failed = [(spec, r) for spec, r in zip(p["cases"], results) if not r["passed"]]
    assert not failed, f"{len(failed)} GEMM(s) differ from golden linear, first: {failed[0]}"
