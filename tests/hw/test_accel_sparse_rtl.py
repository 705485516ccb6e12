"""SPARSE_ATTN through the accelerator top in Verilator (``sim/cases/accel.py`` programs): the
DDR image, status and error code against the golden machine under AXI back-pressure, and the
compute queue's busy cycles against the performance model."""

from __future__ import annotations

import numpy as np
import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Opcode, decode
from vitaccel.hw.spec.sparse import MaskPredictParams
from vitaccel.sim.cases.accel import run_program_case, sparse_attn_bad_programs, sparse_attn_programs
from vitaccel.sim.golden.attention import predict_mask
from vitaccel.sim.golden.machine import GoldenMachine
from vitaccel.sim.perf.units import compute_cycles, sparse_attention_waves

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

TINY = PRESETS["tiny"]


def _sparse_cycles(program) -> int:
    """The perf model's busy cycles of the program's SPARSE_ATTN (its mask taken from the golden
    machine's VECTOR after the run) plus FINISH."""
    machine = GoldenMachine(TINY)
    machine.run(program.words, program.ddr.copy())
    instr = next(i for i in map(decode, program.words) if i.opcode is Opcode.SPARSE_ATTN)
    f = instr.fields
    n, d = f["n"], f["d"]
    vector = machine.buffers[Buffer.VECTOR][0]

    def matrix(unit: int, cols: int, dtype) -> np.ndarray:
        start = unit * ADDR_UNIT
        return vector[start:start + n * cols].view(dtype).reshape(n, cols).astype(np.int64)

    if f["predict"]:
        from vitaccel.hw.spec import isa
        margin = isa.unpack_sparse_attn_params(machine.buffers[Buffer.ACC][0][f["param_addr"] * ADDR_UNIT:][
            :4 * isa.SPARSE_ATTN_PARAM_WORDS].view("<i4"))["margin"]
        mask = predict_mask(matrix(f["q_addr"], d, np.int8), matrix(f["k_addr"], d, np.int8), MaskPredictParams(margin))
    else:
        mask = matrix(f["mask_addr"], n, np.uint8) != 0
    return compute_cycles(TINY, instr, sparse_waves=sparse_attention_waves(TINY, mask)) + 1


def _check(result: dict) -> None:
    bad = [(p["name"], p["problems"]) for p in result["programs"] if p["problems"]]
    assert result["passed"] and not bad, bad


def test_sparse_attn_top_verilator():
    """Predicted and given masks, d of 16, 17 and 64, n off the PE array and past one mask
    block, ties, -128, empty rows; the bad operands in the golden order."""
    programs = sparse_attn_programs(TINY, seed=5) + sparse_attn_bad_programs(TINY, 4096)
    result = run_program_case(TINY, programs=programs, simulator="verilator", backpressure=0.4, max_latency=6)
    _check(result)
    for program, record in zip(programs, result["programs"]):
        if record["error_code"] == "NONE" and "good" not in program.name:
            assert record["busy_cycles_compute"] == _sparse_cycles(program), program.name


@pytest.mark.slow
def test_sparse_attn_top_deit_length_verilator():
    """digits-vit-197's head shape on tiny: 197 tokens (four mask blocks of 64, the last
    partial), d = 64 with a predicted mask, d = 32 with a given one."""
    import random

    from vitaccel.sim.cases.accel import Program, sparse_attn_program

    rng = random.Random(21)
    programs = []
    for predict, margin, d in ((1, 60, 64), (0, 0, 32)):   # a 197 x 197 mask leaves room for d = 32
        words, ddr = sparse_attn_program(rng, TINY, 1 << 17, n=197, d=d, predict=predict, margin=margin)
        programs.append(Program(f"sparse_attn 197x{d} predict={predict}", words, ddr))
    result = run_program_case(TINY, programs=programs, simulator="verilator", backpressure=0.3, max_latency=4,
                              max_cycles=2_000_000)
    _check(result)
    for program, record in zip(programs, result["programs"]):
        assert record["busy_cycles_compute"] == _sparse_cycles(program), program.name
