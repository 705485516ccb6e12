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


def test_nm_gemm_cycles_match_the_perf_model():
    """GemmController alone (buffers in Python): the perf model's busy cycles, exactly, for
    nm GEMMs (requant and raw, several B blocks, sizes off the array) and a dense reference."""
    from test_accel import _gemm_alone_cycles

    from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Instruction, buffer_bytes, nm_weight_layout
    from vitaccel.hw.spec.nm import compress, magnitude_keep_mask
    from vitaccel.sim.perf.gemm import gemm_cycles

    rng = np.random.default_rng(17)
    for m, k, n, requant, nm in ((12, 64, 64, 1, 1), (12, 64, 64, 1, 0), (5, 30, 37, 0, 1), (9, 13, 6, 1, 1)):
        memory = {buffer: bytearray(rng.integers(0, 256, buffer_bytes(TINY_NM, buffer), dtype=np.uint8).tobytes())
                  for buffer in Buffer}
        params = np.array([0] * n + [1 << 30] * n + [40] * n, "<i4").tobytes()
        memory[Buffer.ACC][:len(params)] = params
        b_at = 3
        if nm:
            dense = rng.integers(-128, 128, (k, n))
            weights = compress(np.where(magnitude_keep_mask(dense, 2, 4), dense, 0), 2, 4)
            layout = nm_weight_layout(k, n, (2, 4))
            base = b_at * ADDR_UNIT
            memory[Buffer.WEIGHT][base:base + weights.values.size] = weights.values.view(np.uint8).tobytes()
            memory[Buffer.WEIGHT][base + layout.indices_offset:base + layout.nbytes] = weights.indices.tobytes()
        out_at = 64 if requant else 0
        instr = Instruction(Opcode.GEMM, m=m, k=k, n=n, requant=requant, bias=1, nm=nm, a_addr=1, b_addr=b_at,
                            param_addr=0, out_addr=out_at, acc_addr=-(-len(params) // ADDR_UNIT))
        cycles = _gemm_alone_cycles(TINY_NM, instr, memory)
        assert cycles + 1 == gemm_cycles(TINY_NM, instr.fields).busy, (m, k, n, requant, nm, cycles)
