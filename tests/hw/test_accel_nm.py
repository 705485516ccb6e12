"""nm=1 (N:M sparse) GEMMs through the accelerator top, against the golden machine (Amaranth sim)."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import Opcode, decode
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.sim.cases.accel import Program, gemm_program, golden_outcomes

from test_accel import _engine_steps, _simulate

TINY_NM = dataclasses.replace(PRESETS["tiny"], name="tiny-nm", nm_sparsity=(2, 4))

#: (m, k, n, flags): K not a multiple of M (=4) or of the tile, sizes off the 4x4 array,
#: range limits (-128 / 127: saturating int8 outputs), residual, unsigned A, raw int32.
NM_CASES = [
    (5, 7, 6, dict(bias=True, residual=True, unsigned_a=True)),
    (3, 16, 9, dict(bias=True, extreme=True)),
    (6, 10, 5, dict(requant=False, bias=True, extreme=True, bias_limit=1 << 30)),
    (4, 13, 4, dict(requant=False, bias=False, accumulate=True, unsigned_a=True)),
]


def _programs(cases, **extra):
    rng = random.Random(16)
    programs = []
    for m, k, n, flags in cases:
        words, ddr = gemm_program(rng, TINY_NM, 4096, m=m, k=k, n=n, nm=True, **flags, **extra)
        programs.append(Program(f"nm gemm {m}x{k}x{n} {sorted(flags)} {extra}", words, ddr))
    golden_outcomes(TINY_NM, programs)
    return programs


def test_nm_gemm_programs_match_golden_machine():
    programs = _programs(NM_CASES)
    results = _simulate(programs, 4096, TINY_NM)
    saturated = 0
    for program, (out, ddr) in zip(programs, results):
        assert program.golden["code"] is ErrorCode.NONE, program.golden
        assert ErrorCode(out["ERROR_CODE"]) is ErrorCode.NONE, program.name
        assert ddr == program.golden["ddr"].tobytes(), f"{program.name}: DDR differs from the golden machine"
        assert out["ENGINE_BUSY_CYCLES_LO"] == _engine_steps(TINY_NM, program.words) > 0, program.name
        store = decode(program.words[-2])
        assert store.opcode is Opcode.STORE
        result = program.golden["ddr"][store.dram_addr:store.dram_addr + store.row_bytes].view(np.int8)
        saturated += int(np.count_nonzero((result == -128) | (result == 127)))
    assert saturated > 0


@pytest.mark.parametrize("corrupt", ["range", "duplicate"])
def test_nm_gemm_bad_index_stops(corrupt):
    # A raw GEMM whose output is also out of ACC (runs dry): the bad index still wins.
    programs = _programs([(5, 7, 6, dict(bias=True)), (3, 9, 5, dict(requant=False, bias=False))],
                         nm_corrupt=corrupt)
    results = _simulate(programs, 4096, TINY_NM)
    for program, (out, _) in zip(programs, results):
        assert program.golden["code"] is ErrorCode.INVALID_OPERAND, program.golden
        assert ErrorCode(out["ERROR_CODE"]) is ErrorCode.INVALID_OPERAND, program.name
        assert out["STATUS"] == 0b100 and out["ERROR_PC"] == program.golden["pc"], program.name
