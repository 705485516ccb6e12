"""The token controller (TOPK, GATHER, PACKAGE: ``hw/accel/tokens.py`` with the top-k engine)
and the REQUANT controller (``hw/accel/requant.py``) alone in Amaranth's simulator.

The buffers are modelled in Python (synchronous, non-transparent reads as the core's
``Memory`` ports). Each instruction's result is compared with the golden machine's handler
on the same buffers, and its cycles (the core's DECIDE cycle plus the controller's cycles to
``done``) with the performance model's formula (``sim/perf/units.py``): the controllers are
pipelined (docs/timing.md), so the formulas must follow their latencies exactly. TOPK's
formula assumes the fewest empty result beats, so the TOPK cases keep an index in every lane
group.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from vitaccel.hw.accel.requant import RequantController
from vitaccel.hw.accel.tokens import TokenController
from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Instruction, Opcode, encode
from vitaccel.sim.golden.machine import GoldenMachine
from vitaccel.sim.perf.units import compute_cycles

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

TINY = PRESETS["tiny"]


def _run(dut, instr: Instruction, buffers: dict[str, bytearray], reads: dict[str, str], writes: str) -> int:
    """Run one instruction on ``dut``; ``reads`` maps a read port prefix to a buffer name,
    ``writes`` names the written buffer. Returns the busy cycles (DECIDE included)."""
    out = {}

    def word_at(memory: bytearray, address: int) -> int:
        base = (address // ADDR_UNIT) * ADDR_UNIT
        return int.from_bytes(memory[base:base + ADDR_UNIT], "little")

    async def bench(ctx):
        ctx.set(dut.word, encode(instr))
        ctx.set(dut.start, 1)
        cycles = 1
        await ctx.tick()
        ctx.set(dut.start, 0)
        while True:
            assert cycles < 50_000, f"{instr.opcode.name}: no done / error"
            done, error = ctx.get(dut.done), ctx.get(dut.error)
            pending = [(getattr(dut, f"{port}_data"), word_at(buffers[name], ctx.get(getattr(dut, f"{port}_addr"))))
                       for port, name in reads.items() if ctx.get(getattr(dut, port))]
            if ctx.get(dut.write):
                buffers[writes][ctx.get(dut.write_addr)] = ctx.get(dut.write_data)
            cycles += 1
            await ctx.tick()
            for port, value in pending:
                ctx.set(port, value)
            if done or error:
                assert not error, f"{instr.opcode.name} stopped with {ctx.get(dut.error_code)}"
                out["cycles"] = cycles
                return

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out["cycles"]


def _golden(config, instr: Instruction, buffers: dict[str, bytearray]) -> dict[str, bytes]:
    machine = GoldenMachine(config)
    for name, memory in buffers.items():
        machine.buffers[Buffer[name]][0, :len(memory)] = np.frombuffer(bytes(memory), np.uint8)
    machine._handlers[instr.opcode](instr, 0)
    return {name: machine.buffers[Buffer[name]][0, :len(memory)].tobytes() for name, memory in buffers.items()}


def _scores(rng, n: int, k: int, lanes: int, top: int, base: int) -> tuple[np.ndarray, list[int]]:
    """``n`` scores below ``base`` but for ``k`` kept ones of ``top``, at least one in every
    lane group (so no result beat is empty when ``k >= groups``)."""
    scores = rng.integers(0, base, n)
    groups = -(-n // lanes)
    kept = [min(g * lanes + int(rng.integers(0, lanes)), n - 1) for g in range(min(groups, k))]
    rest = [i for i in range(n) if i not in kept]
    kept += list(rng.choice(rest, k - len(kept), replace=False)) if k > len(kept) else []
    scores[kept] = top
    return scores, kept


def _vector(config) -> bytearray:
    return bytearray(isa.buffer_bytes(config, Buffer.VECTOR))


#: (rows, n, k, sum_rows): several selections, a partial last lane group, summed rows
TOPK_CASES = [(2, 13, 5, 0), (1, 8, 2, 0), (3, 10, 4, 1), (1, 17, 9, 1)]


@pytest.mark.parametrize("rows,n,k,sum_rows", TOPK_CASES)
def test_topk_matches_golden_and_the_perf_model(rows, n, k, sum_rows):
    rng = np.random.default_rng(rows * 100 + n)
    vector = _vector(TINY)
    lanes = TINY.topk_lanes
    if sum_rows:
        score_rows = np.zeros((rows, n), np.uint8)
        _, kept = _scores(rng, n, k, lanes, 1, 2)
        score_rows[:] = rng.integers(0, 60, (rows, n))
        score_rows[:, kept] = 250
        raw = score_rows.tobytes()
    else:
        raw = np.stack([_scores(rng, n, k, lanes, 60_000, 1000)[0] for _ in range(rows)]).astype("<u2").tobytes()
    vector[3 * ADDR_UNIT:3 * ADDR_UNIT + len(raw)] = raw
    instr = Instruction(Opcode.TOPK, rows=rows, n=n, k=k, sum_rows=sum_rows, src_addr=3, dst_addr=40)
    want = _golden(TINY, instr, {"VECTOR": vector})
    cycles = _run(TokenController(config=TINY), instr, {"VECTOR": vector}, {"read": "VECTOR"}, "VECTOR")
    assert bytes(vector) == want["VECTOR"]
    assert cycles == compute_cycles(TINY, instr)


def test_gather_matches_golden_and_the_perf_model():
    rng = np.random.default_rng(7)
    vector = _vector(TINY)
    source = rng.integers(0, 256, (9, 5)).astype(np.uint8)
    vector[2 * ADDR_UNIT:2 * ADDR_UNIT + source.size] = source.tobytes()
    indices = np.array([8, 0, 3, 3], "<u2")
    vector[10 * ADDR_UNIT:10 * ADDR_UNIT + 8] = indices.tobytes()
    instr = Instruction(Opcode.GATHER, rows=4, n=9, cols=5, src_addr=2, index_addr=10, dst_addr=20)
    want = _golden(TINY, instr, {"VECTOR": vector})
    cycles = _run(TokenController(config=TINY), instr, {"VECTOR": vector}, {"read": "VECTOR"}, "VECTOR")
    assert bytes(vector) == want["VECTOR"]
    assert cycles == compute_cycles(TINY, instr)


@pytest.mark.parametrize("extreme", [False, True])
def test_package_matches_golden_and_the_perf_model(extreme):
    """Every pruned token has a weight (probabilities >= 1), as the formula assumes; the
    extreme case saturates: tokens at -128 / 127 with the largest probabilities."""
    rng = np.random.default_rng(11 + extreme)
    n, cols, k, heads = 9, 6, 4, 3
    vector = _vector(TINY)
    probs = rng.integers(1, 256, (heads, n)).astype(np.uint8)
    tokens = rng.integers(-128, 128, (n, cols)).astype(np.int8)
    if extreme:
        probs[:] = 255
        tokens[:, : cols // 2], tokens[:, cols // 2:] = -128, 127
    kept = np.array(sorted(rng.choice(n, k, replace=False)), "<u2")
    vector[1 * ADDR_UNIT:1 * ADDR_UNIT + probs.size] = probs.tobytes()
    vector[5 * ADDR_UNIT:5 * ADDR_UNIT + tokens.size] = tokens.tobytes()
    vector[12 * ADDR_UNIT:12 * ADDR_UNIT + 2 * k] = kept.tobytes()
    instr = Instruction(Opcode.PACKAGE, n=n, cols=cols, k=k, heads=heads, prob_addr=1, src_addr=5, index_addr=12,
                        dst_addr=30)
    want = _golden(TINY, instr, {"VECTOR": vector})
    cycles = _run(TokenController(config=TINY), instr, {"VECTOR": vector}, {"read": "VECTOR"}, "VECTOR")
    assert bytes(vector) == want["VECTOR"]
    assert cycles == compute_cycles(TINY, instr)


#: (rows, cols): empty, one element, a partial word, several rows
REQUANT_CASES = [(0, 3), (1, 1), (2, 5), (4, 7)]


@pytest.mark.parametrize("rows,cols", REQUANT_CASES)
def test_requant_matches_golden_and_the_perf_model(rows, cols):
    """Accumulators at the int32 limits (with a bias keeping |acc + bias| <= 2^31), the largest
    multiplier and the shift's limits, so that results saturate both ways."""
    rng = np.random.default_rng(rows * 10 + cols)
    acc = rng.integers(-(1 << 31) + (1 << 20), (1 << 31) - (1 << 20), (rows, cols), dtype=np.int64)
    bias = rng.integers(-(1 << 20), 1 << 20, cols, dtype=np.int64)
    multiplier = rng.integers(0, 1 << 31, cols, dtype=np.int64)
    shift = rng.integers(1, 63, cols, dtype=np.int64)
    if cols >= 3:
        multiplier[0], shift[0], shift[1], multiplier[2] = (1 << 31) - 1, 62, 1, 0
    if rows >= 2:   # acc + bias == 2^31 - 1 + (bias <= 0) and -2^31 + 2^20 + bias >= -2^31
        bias[:] = np.clip(bias, -(1 << 20), 0)
        acc[0, :], acc[1, :] = (1 << 31) - 1, -(1 << 31) + (1 << 20)
    accumulators = bytearray(isa.buffer_bytes(TINY, Buffer.ACC))
    raw = acc.astype("<i4").tobytes()
    accumulators[4 * ADDR_UNIT:4 * ADDR_UNIT + len(raw)] = raw
    params = np.concatenate([bias, multiplier, shift]).astype("<i4").tobytes()
    accumulators[40 * ADDR_UNIT:40 * ADDR_UNIT + len(params)] = params
    vector = _vector(TINY)
    instr = Instruction(Opcode.REQUANT, rows=rows, cols=cols, src_addr=4, param_addr=40, dst_addr=7)
    buffers = {"ACC": accumulators, "VECTOR": vector}
    want = _golden(TINY, instr, buffers)
    cycles = _run(RequantController(config=TINY), instr, buffers, {"acc_read": "ACC"}, "VECTOR")
    assert bytes(vector) == want["VECTOR"]
    assert cycles == compute_cycles(TINY, instr)
