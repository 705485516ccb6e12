"""The accelerator core in Amaranth's simulator: decoder legality against ``isa.decode``,
and whole programs (AXI DDR model + AXI4-Lite host in Python) against the golden machine."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from vitaccel.hw.accel import AcceleratorCore, InstructionChecker
from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import PRESETS, ConfigError
from vitaccel.hw.spec.isa import Buffer, Instruction, Opcode, Queue, encode
from vitaccel.hw.spec.regmap import ErrorCode, register
from vitaccel.sim.cases.accel import (Program, add_program, bad_programs, gelu_program, layernorm_program,
                                     softmax_program, gemm_program, golden_outcomes,
                                     random_dma_program)

TINY = PRESETS["tiny"]
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def _edge_words(rng: random.Random) -> list[int]:
    """Valid words of every opcode, each with one random bit flipped, and random words."""
    words = []
    for opcode in Opcode:
        for queue in (Queue if opcode is Opcode.SYNC else [None]):
            fields = {"queue": queue} if queue is not None else {}
            word = encode(Instruction(opcode, **fields))
            words.append(word)
            for _ in range(12):
                words.append(word ^ (1 << rng.randrange(isa.INSTRUCTION_BITS)))
    words += [rng.getrandbits(isa.INSTRUCTION_BITS) for _ in range(150)]
    words += [0, (1 << isa.INSTRUCTION_BITS) - 1]
    return words


def _assert_bad_programs_stop(bad: list, results: list) -> None:
    """Each bad program ended with its expected error code (and the golden machine's pc)."""
    for program, (out, _) in zip(bad, results, strict=True):
        want = program.expect_code if program.expect_code is not None else program.golden["code"]
        assert want is not ErrorCode.NONE and ErrorCode(out["ERROR_CODE"]) is want, program.name
        assert out["STATUS"] == 0b100, program.name
        if program.expect_code is None:
            assert out["ERROR_PC"] == program.golden["pc"], program.name


def test_checker_agrees_with_isa_decode():
    rng = random.Random(7)
    words = _edge_words(rng)
    checker = InstructionChecker()
    seen = {True: 0, False: 0}

    async def bench(ctx):
        for word in words:
            ctx.set(checker.word, word)
            try:
                instr = isa.decode(word)
            except isa.IllegalInstruction:
                instr = None
            legal = bool(ctx.get(checker.legal))
            assert legal == (instr is not None), f"word {word:#034x}: hardware legal={legal}"
            if instr is not None:
                assert ctx.get(checker.queue) == instr.queue, f"word {word:#034x}: queue"
            seen[legal] += 1

    sim = Simulator(checker)
    sim.add_testbench(bench)
    sim.run()
    assert seen[True] > 20 and seen[False] > 100, seen


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_rejects_bad_configs():
    with pytest.raises(TypeError, match="AccelConfig"):
        AcceleratorCore({"name": "tiny"})
    with pytest.raises(ConfigError, match="dma_data_width 256"):
        AcceleratorCore(dataclasses.replace(TINY, dma_data_width=256))


# -- whole core with Python bus models -------------------------------------------------------

class _Harness:
    """Drives ``AcceleratorCore``: a zero-latency AXI4 memory and an AXI4-Lite host."""

    PROGRAM_ADDR = 0x8000

    def __init__(self, ctx, core, ram: bytearray):
        self.ctx, self.core, self.ram = ctx, core, ram
        self.lanes = core.config.dma_data_width // 8
        self.reads: list[list[tuple[int, bool]]] = []
        self.writes: list[list[int]] = []   # [addr, beats left]
        self.bresp = 0
        self.cycles = 0

    async def cycle(self) -> None:
        ctx, bus, lanes = self.ctx, self.core.memory, self.lanes
        ctx.set(bus.arready, 1)
        ctx.set(bus.awready, 1)
        ctx.set(bus.wready, bool(self.writes))
        beat = self.reads[0][0] if self.reads else None
        ctx.set(bus.rvalid, beat is not None)
        if beat is not None:
            ctx.set(bus.rdata, beat[0])
            ctx.set(bus.rlast, beat[1])
        ctx.set(bus.bvalid, self.bresp > 0)
        ar = ctx.get(bus.arvalid) and (ctx.get(bus.araddr), ctx.get(bus.arlen))
        aw = ctx.get(bus.awvalid) and (ctx.get(bus.awaddr), ctx.get(bus.awlen))
        r_fire = beat is not None and ctx.get(bus.rready)
        w = self.writes and ctx.get(bus.wvalid) and (ctx.get(bus.wdata), ctx.get(bus.wstrb))
        b_fire = self.bresp > 0 and ctx.get(bus.bready)
        await ctx.tick()
        self.cycles += 1
        if r_fire:
            self.reads[0].pop(0)
            if not self.reads[0]:
                self.reads.pop(0)
        if ar:
            addr, length = ar
            self.reads.append([(int.from_bytes(self.ram[addr + i * lanes:addr + (i + 1) * lanes], "little"),
                                i == length) for i in range(length + 1)])
        if w:
            data, strobe = w
            burst = self.writes[0]
            for lane in range(lanes):
                if strobe >> lane & 1:
                    self.ram[burst[0] + lane] = (data >> (8 * lane)) & 0xFF
            burst[0] += lanes
            burst[1] -= 1
            if burst[1] == 0:
                self.writes.pop(0)
                self.bresp += 1
        if aw:
            self.writes.append([aw[0], aw[1] + 1])
        if b_fire:
            self.bresp -= 1

    async def write(self, name: str, value: int) -> None:
        ctx, bus = self.ctx, self.core.control
        ctx.set(bus.awaddr, register(name).offset)
        ctx.set(bus.wdata, value)
        ctx.set(bus.wstrb, 0xF)
        ctx.set(bus.awvalid, 1)
        ctx.set(bus.wvalid, 1)
        ctx.set(bus.bready, 1)
        aw_done = w_done = False
        while not (aw_done and w_done):
            aw_now, w_now = ctx.get(bus.awready), ctx.get(bus.wready)
            await self.cycle()
            aw_done, w_done = aw_done or aw_now, w_done or w_now
            ctx.set(bus.awvalid, not aw_done)
            ctx.set(bus.wvalid, not w_done)
        while not ctx.get(bus.bvalid):
            await self.cycle()
        await self.cycle()
        ctx.set(bus.bready, 0)

    async def read(self, name: str) -> int:
        ctx, bus = self.ctx, self.core.control
        ctx.set(bus.araddr, register(name).offset)
        ctx.set(bus.arvalid, 1)
        ctx.set(bus.rready, 1)
        while not ctx.get(bus.arready):
            await self.cycle()
        await self.cycle()
        ctx.set(bus.arvalid, 0)
        while not ctx.get(bus.rvalid):
            await self.cycle()
        value = ctx.get(bus.rdata)
        await self.cycle()
        ctx.set(bus.rready, 0)
        return value

    async def run(self, words: list[int], ddr_size: int, max_cycles: int, checksum: int | None = None,
                  program_addr: int = PROGRAM_ADDR) -> dict:
        self.ram[program_addr:program_addr + 16 * len(words)] = b"".join(w.to_bytes(16, "little") for w in words)
        for name, value in (("PROGRAM_ADDR_LO", program_addr), ("PROGRAM_LENGTH", len(words)),
                            ("DDR_BASE_LO", 0), ("DDR_SIZE", ddr_size), ("INTERRUPT_ENABLE", 0b11),
                            ("PROGRAM_CRC", checksum or 0), ("PROGRAM_CHECK", int(checksum is not None)),
                            ("CONTROL", 1)):
            await self.write(name, value)
        start = self.cycles
        while not self.ctx.get(self.core.interrupt):
            assert self.cycles - start < max_cycles, "no interrupt: the core hangs"
            await self.cycle()
        out = {name: await self.read(name) for name in ("STATUS", "ERROR_CODE", "ERROR_PC",
                                                         "INSTRUCTIONS_RETIRED_LO", "TOTAL_CYCLES_LO",
                                                         "ENGINE_BUSY_CYCLES_LO")}
        await self.write("INTERRUPT_STATUS", 0b11)
        return out


def _engine_steps(config, words: list[int]) -> int:
    """The k-steps the performance model counts for the program's GEMMs: what the
    ENGINE_BUSY_CYCLES counter must read."""
    from vitaccel.sim.perf.gemm import gemm_cycles

    instrs = [isa.decode(word) for word in words]
    return sum(gemm_cycles(config, i.fields).engine for i in instrs if i.opcode is Opcode.GEMM)


def _simulate(programs: list[Program], ddr_size: int, config=TINY, *, max_cycles: int = 40_000) -> list[tuple[dict, bytes]]:
    core = AcceleratorCore(config)
    program_addr = max(_Harness.PROGRAM_ADDR, -(-ddr_size // 4096) * 4096)   # after the DDR window
    ram = bytearray(program_addr + 0x8000)
    results = []

    async def bench(ctx):
        harness = _Harness(ctx, core, ram)
        for program in programs:
            ram[:ddr_size] = program.ddr.tobytes()
            out = await harness.run(program.words, ddr_size, max_cycles=max_cycles, checksum=program.checksum,
                                    program_addr=program_addr)
            results.append((out, bytes(ram[:ddr_size])))
        print(f"{harness.cycles} cycles")

    sim = Simulator(core)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def test_programs_match_golden_machine():
    rng = random.Random(3)
    ddr_size = 1024
    dma = [Program(f"dma {i}", random_dma_program(rng, TINY, ddr_size, rounds=1, transfers=2, max_row_bytes=40,
                                                   max_rows=3),
                   np.frombuffer(rng.randbytes(ddr_size), np.uint8).copy()) for i in range(2)]
    dma.append(Program("gelu", gelu_program(rng, TINY, ddr_size, rows=2, cols=5, lut_offset=16, lut_count=240),
                       np.frombuffer(rng.randbytes(ddr_size), np.uint8).copy()))
    wanted = ("zero word", "lut_load past the table", "ddr out of range", "store dram stride overlap", "circular wait", "missing finish",
              "gemm raw", "gemm accumulate", "gemm a out of range", "gemm residual without requant",
              "gemm zero k", "gemm output out of range", "gemm negative multiplier", "gemm zero shift",
              "checksum right", "checksum wrong", "checksum wrong with illegal word")
    bad = [p for p in bad_programs(TINY, ddr_size) if p.name in wanted]
    assert len(bad) == len(wanted)
    programs = dma + bad
    golden_outcomes(TINY, programs)
    results = _simulate(programs, ddr_size)
    assert len(results) == len(programs)
    for program, (out, ddr) in zip(programs, results):
        want = program.expect_code if program.expect_code is not None else program.golden["code"]
        assert ErrorCode(out["ERROR_CODE"]) is want, program.name
        if want is ErrorCode.NONE:
            assert out["STATUS"] == 0b010, program.name
            assert ddr == program.golden["ddr"].tobytes(), f"{program.name}: DDR differs from the golden machine"
            assert out["INSTRUCTIONS_RETIRED_LO"] == len(program.words)
            assert out["TOTAL_CYCLES_LO"] > 0
            assert out["ENGINE_BUSY_CYCLES_LO"] == _engine_steps(TINY, program.words), program.name
        else:
            assert out["STATUS"] == 0b100, program.name
            if program.expect_code is None and program.golden["pc"] is not None:
                assert out["ERROR_PC"] == program.golden["pc"], program.name
        if want is ErrorCode.PROGRAM_CHECKSUM:   # stopped by the scan: nothing executed
            assert out["INSTRUCTIONS_RETIRED_LO"] == 0 and out["ERROR_PC"] == 0, program.name


def test_crc_terms_are_zlib_crc32():
    """The scan pass's one-cycle CRC of a 128-bit word equals the bit-serial definition, and
    over a program the regmap's program_crc32 (zlib)."""
    from vitaccel.hw.accel.crc import CRC_FINAL_XOR, CRC_INIT, crc32_reference, crc_xor_terms
    from vitaccel.hw.spec.regmap import program_crc32

    rng = random.Random(11)
    terms = crc_xor_terms(isa.INSTRUCTION_BITS)
    words = [rng.getrandbits(isa.INSTRUCTION_BITS) for _ in range(20)] + [0, (1 << isa.INSTRUCTION_BITS) - 1]
    state = CRC_INIT
    for word in words:
        folded = 0
        for bit, (regs, data_bits) in enumerate(terms):
            parity = sum(state >> r & 1 for r in regs) + sum(word >> i & 1 for i in data_bits)
            folded |= (parity & 1) << bit
        assert folded == crc32_reference(state, word, isa.INSTRUCTION_BITS)
        state = folded
    assert state ^ CRC_FINAL_XOR == program_crc32(b"".join(w.to_bytes(16, "little") for w in words))


# -- GEMM on the matrix engine ----------------------------------------------------------------

#: (m, k, n, flags): tile multiples and not (tiny: 4x4 tiles, block size 2), every flag the
#: compiler uses, and range limits that saturate.
GEMM_CASES = [
    (5, 7, 6, dict(bias=True)),
    (3, 9, 5, dict(bias=True, b_transposed=True)),
    (6, 4, 9, dict(bias=False, unsigned_a=True, residual=True)),
    (4, 16, 4, dict(bias=True, b_transposed=True, extreme=True)),
    (2, 3, 8, dict(bias=True, unsigned_a=True, residual=True, extreme=True)),
]
#: Raw int32 GEMMs to ACC (no requant): with and without bias, unsigned A, transposed B,
#: biases and partials near the int32 limits, ACC partials (accumulate).
RAW_GEMM_CASES = [
    (5, 7, 6, dict(requant=False, bias=True)),
    (3, 9, 5, dict(requant=False, bias=False, unsigned_a=True, b_transposed=True)),
    (4, 16, 4, dict(requant=False, bias=True, extreme=True, bias_limit=1 << 30)),
    (6, 5, 9, dict(requant=False, bias=True, accumulate=True, extreme=True)),
    (7, 3, 5, dict(requant=False, bias=False, accumulate=True, unsigned_a=True, b_transposed=True,
                   bias_limit=1 << 30)),
]


#: GEMMs reading A from VECTOR (a_vector): requantized and raw, unsigned A, transposed B,
#: accumulate, range limits.
A_VECTOR_GEMM_CASES = [
    (5, 7, 6, dict(bias=True, a_vector=True)),
    (3, 9, 5, dict(bias=True, unsigned_a=True, b_transposed=True, extreme=True, a_vector=True)),
    (6, 5, 9, dict(requant=False, bias=True, accumulate=True, a_vector=True)),
    (7, 16, 3, dict(requant=False, bias=False, unsigned_a=True, a_vector=True)),
]


#: A weight scratchpad of 1 KiB holds 4 tiles of a k=64 panel: n=20 (5 tiles) needs two B
#: blocks, the second one partial.
SMALL_SPAD = dataclasses.replace(TINY, name="tiny-small-spad", max_k=64, weight_spad_kib=1, input_spad_kib=1)


@pytest.mark.parametrize("config, cases", [
    (TINY, GEMM_CASES), (TINY, RAW_GEMM_CASES), (TINY, A_VECTOR_GEMM_CASES),
    (SMALL_SPAD, [(5, 64, 20, dict(bias=True)), (5, 64, 20, dict(requant=False, bias=True, accumulate=True))]),
], ids=["tiny", "tiny-raw", "tiny-a-vector", "two-blocks"])
def test_gemm_programs_match_golden_machine(config, cases):
    rng = random.Random(11)
    ddr_size = 4096
    programs = []
    for m, k, n, flags in cases:
        words, ddr = gemm_program(rng, config, ddr_size, m=m, k=k, n=n, **flags)
        programs.append(Program(f"gemm {m}x{k}x{n} {sorted(flags)}", words, ddr))
    golden_outcomes(config, programs)
    results = _simulate(programs, ddr_size, config)
    saturated = 0
    for (m, k, n, flags), program, (out, ddr) in zip(cases, programs, results):
        assert program.golden["code"] is ErrorCode.NONE, program.golden
        assert ErrorCode(out["ERROR_CODE"]) is ErrorCode.NONE, program.name
        assert out["STATUS"] == 0b010, program.name
        want = program.golden["ddr"].tobytes()
        assert ddr == want, f"{program.name}: DDR differs from the golden machine"
        assert out["ENGINE_BUSY_CYCLES_LO"] == _engine_steps(config, program.words) > 0, program.name
        store = isa.decode(program.words[-2])   # the result: int8, or int32 for a raw GEMM
        assert store.opcode is Opcode.STORE
        raw = not flags.get("requant", True)
        stored = program.golden["ddr"][store.dram_addr:store.dram_addr + store.row_bytes]
        result = stored.view("<i4" if raw else np.int8)
        assert result.size == m * n
        limit = np.iinfo(result.dtype)
        saturated += int(np.count_nonzero((result == limit.min) | (result == limit.max)))
        if raw and flags.get("bias_limit", 0) >= 1 << 30:   # the wide biases / partials reach high bits
            assert np.abs(result.astype(np.int64)).max() >= 1 << 24, program.name
    if cases is GEMM_CASES:
        assert saturated > 0   # outputs reached the int8 limits (the extreme cases saturate)


#: Raw GEMMs that must stop: outputs or partials out of ACC, int32 overflows (of a bias, of a
#: partial, and with the output also out of range: the overflow wins, as in the golden machine).
RAW_GEMM_BAD = ("gemm raw output out of range", "gemm partials out of range", "gemm raw bias overflow",
                "gemm raw overflow, output out of range", "gemm raw output out of range, bias",
                "gemm accumulate overflow")


def test_raw_gemm_bad_programs_stop():
    ddr_size = 1024
    bad = [p for p in bad_programs(TINY, ddr_size) if p.name in RAW_GEMM_BAD]
    assert len(bad) == len(RAW_GEMM_BAD)
    golden_outcomes(TINY, bad)
    assert {p.golden["code"] for p in bad} == {ErrorCode.INVALID_OPERAND, ErrorCode.ADDRESS_OUT_OF_RANGE}
    _assert_bad_programs_stop(bad, _simulate(bad, ddr_size))


#: GEMMs with A in VECTOR that must stop (with the residual; A past VECTOR's end) and one that
#: runs (A past INPUT's end, inside VECTOR).
A_VECTOR_BAD = ("gemm a_vector with residual", "gemm a_vector a out of range", "gemm a_vector past input")


def test_a_vector_gemm_bad_programs_stop():
    ddr_size = 1024
    bad = [p for p in bad_programs(TINY, ddr_size) if p.name in A_VECTOR_BAD]
    assert len(bad) == len(A_VECTOR_BAD)
    golden_outcomes(TINY, bad)
    assert [p.golden["code"] for p in bad] == [ErrorCode.INVALID_OPERAND, ErrorCode.ADDRESS_OUT_OF_RANGE,
                                               ErrorCode.NONE]
    results = _simulate(bad, ddr_size)
    for program, (out, _) in zip(bad, results):
        assert ErrorCode(out["ERROR_CODE"]) is program.golden["code"], program.name
        assert out["STATUS"] == (0b010 if program.golden["code"] is ErrorCode.NONE else 0b100), program.name


# -- ADD in the controller ---------------------------------------------------------------------

#: (rows, cols, a_multiplier, b_multiplier, shift, flags): typical scales, multipliers of
#: 2^32 - 1 (the word's range), shift 0 (no rounding) and 62, in place, saturating sums.
ADD_CASES = [
    (2, 7, 23000, 17000, 15, dict()),
    (3, 5, 1, 1, 0, dict(extreme=True)),
    (1, 19, (1 << 32) - 1, (1 << 31) + 5, 38, dict(in_place=True, extreme=True)),
    (2, 3, (1 << 32) - 1, (1 << 32) - 1, 62, dict()),
    (4, 4, 3 << 20, 5 << 19, 21, dict(extreme=True)),
]
ADD_BAD = ("add shift too large", "add empty", "add source2 out of range", "add params out of range",
           "add destination out of range")


def test_add_programs_match_golden_machine():
    rng = random.Random(5)
    ddr_size = 1024
    programs = []
    for rows, cols, a_mult, b_mult, shift, flags in ADD_CASES:
        words, ddr = add_program(rng, TINY, ddr_size, rows=rows, cols=cols, a_multiplier=a_mult,
                                 b_multiplier=b_mult, shift=shift, **flags)
        programs.append(Program(f"add {rows}x{cols} shift {shift} {sorted(flags)}", words, ddr))
    bad = [p for p in bad_programs(TINY, ddr_size) if p.name in ADD_BAD]
    assert len(bad) == len(ADD_BAD)
    programs += bad
    golden_outcomes(TINY, programs)
    assert {p.golden["code"] for p in bad} == {ErrorCode.NONE, ErrorCode.INVALID_OPERAND,
                                                ErrorCode.ADDRESS_OUT_OF_RANGE}
    results = _simulate(programs, ddr_size)
    saturated = 0
    for program, (out, ddr) in zip(programs, results):
        want = program.golden["code"]
        assert ErrorCode(out["ERROR_CODE"]) is want, program.name
        if want is ErrorCode.NONE:
            assert out["STATUS"] == 0b010, program.name
            assert ddr == program.golden["ddr"].tobytes(), f"{program.name}: DDR differs from the golden machine"
            stored = program.golden["ddr"] != program.ddr   # the ADD's output bytes (most of them)
            result = program.golden["ddr"][stored].view(np.int8)
            saturated += int(np.count_nonzero((result == -128) | (result == 127)))
        else:
            assert out["STATUS"] == 0b100, program.name
            assert out["ERROR_PC"] == program.golden["pc"], program.name
    assert saturated > 0


# -- SOFTMAX through the non-linear unit's Softmax ----------------------------------------------

#: (rows, cols, input_scale, spread, extreme): rows shorter and longer than a beat (tiny: 4
#: lanes), int32 limits (saturated differences).
SOFTMAX_CASES = [(2, 5, 0.01, 500, False), (3, 4, 0.002, 3000, True), (1, 13, 0.05, 100, False)]


def test_softmax_programs_match_golden_machine():
    rng = random.Random(9)
    ddr_size = 1024
    programs = []
    for rows, cols, scale, spread, extreme in SOFTMAX_CASES:
        words, ddr = softmax_program(rng, TINY, ddr_size, rows=rows, cols=cols, input_scale=scale,
                                     spread=spread, extreme=extreme)
        programs.append(Program(f"softmax {rows}x{cols} extreme={extreme}", words, ddr))
    bad = [p for p in bad_programs(TINY, ddr_size) if p.name.startswith("softmax ")]
    assert len(bad) == 6
    # The golden machine refuses what the unit is not built for, as the RTL does (same code and pc).
    assert all(p.expect_code is None for p in bad)
    golden_outcomes(TINY, programs + bad)
    results = _simulate(programs + bad, ddr_size)
    _assert_bad_programs_stop(bad, results[len(programs):])
    ones = 0
    for program, (out, ddr) in zip(programs, results):
        assert program.golden["code"] is ErrorCode.NONE, program.golden
        assert ErrorCode(out["ERROR_CODE"]) is ErrorCode.NONE, program.name
        assert out["STATUS"] == 0b010, program.name
        assert ddr == program.golden["ddr"].tobytes(), f"{program.name}: DDR differs from the golden machine"
        ones += int(np.count_nonzero(program.golden["ddr"][program.golden["ddr"] != program.ddr] == 255))
    assert ones > 0   # the extreme row's winner saturates the uint8 output


# -- LAYERNORM through the non-linear unit's LayerNorm ------------------------------------------

#: (rows, cols, out_scale, extreme): rows off the lane grid (tiny: 4 lanes), a saturating
#: output scale with range-limit and constant rows.
LAYERNORM_CASES = [(2, 6, 0.02, False), (3, 9, 0.002, True), (1, 4, 0.05, False)]


def test_layernorm_programs_match_golden_machine():
    rng = random.Random(13)
    ddr_size = 1024
    programs = []
    for rows, cols, out_scale, extreme in LAYERNORM_CASES:
        words, ddr = layernorm_program(rng, TINY, ddr_size, rows=rows, cols=cols, out_scale=out_scale,
                                       extreme=extreme)
        programs.append(Program(f"layernorm {rows}x{cols} extreme={extreme}", words, ddr))
    bad = [p for p in bad_programs(TINY, ddr_size) if p.name.startswith("layernorm ")]
    assert len(bad) == 7 and all(p.expect_code is None for p in bad)
    golden_outcomes(TINY, programs + bad)
    results = _simulate(programs + bad, ddr_size)
    saturated = 0
    for program, (out, ddr) in zip(programs, results):
        assert program.golden["code"] is ErrorCode.NONE, program.golden
        assert ErrorCode(out["ERROR_CODE"]) is ErrorCode.NONE, program.name
        assert out["STATUS"] == 0b010, program.name
        assert ddr == program.golden["ddr"].tobytes(), f"{program.name}: DDR differs from the golden machine"
        result = program.golden["ddr"][program.golden["ddr"] != program.ddr].view(np.int8)
        saturated += int(np.count_nonzero((result == -128) | (result == 127)))
    assert saturated > 0
    _assert_bad_programs_stop(bad, results[len(programs):])


# -- token pruning: TOPK, GATHER, PACKAGE on the top-k engine ------------------------------------

def _assert_match_golden(programs: list[Program], results: list) -> None:
    """Each program ended as the golden machine's run did: same DDR, or same code and pc."""
    for program, (out, ddr) in zip(programs, results, strict=True):
        want = program.golden["code"]
        assert ErrorCode(out["ERROR_CODE"]) is want, f"{program.name}: {program.golden.get('message', 'golden ok')}"
        if want is ErrorCode.NONE:
            assert out["STATUS"] == 0b010, program.name
            assert ddr == program.golden["ddr"].tobytes(), f"{program.name}: DDR differs from the golden machine"
            assert out["INSTRUCTIONS_RETIRED_LO"] == len(program.words), program.name
        else:
            assert out["STATUS"] == 0b100, program.name
            assert out["ERROR_PC"] == program.golden["pc"], program.name


def test_token_programs_match_golden_machine():
    """TOPK (per row and sum_rows: ties, all equal, k = n, k = 1, k = 0, 257 summed rows),
    GATHER (ascending, repeats, empty) and PACKAGE (ties, k = n, saturating tokens), then
    every operand check in the golden machine's order."""
    from vitaccel.sim.cases.accel import token_bad_programs, token_programs

    ddr_size = 1024
    programs = token_programs(TINY, seed=21, ddr_size=ddr_size)
    bad = token_bad_programs(TINY, ddr_size)
    golden_outcomes(TINY, programs + bad)
    assert all(p.golden["code"] is ErrorCode.NONE for p in programs), [p.golden for p in programs]
    assert {p.golden["code"] for p in bad} == {ErrorCode.INVALID_OPERAND, ErrorCode.ADDRESS_OUT_OF_RANGE}
    _assert_match_golden(programs + bad, _simulate(programs + bad, ddr_size))


def test_token_opcodes_without_topk_unit():
    """A config without the top-k engine stops TOPK / GATHER / PACKAGE as the golden machine
    does (INVALID_OPERAND at the instruction)."""
    from vitaccel.sim.cases.accel import token_programs

    config = dataclasses.replace(TINY, name="tiny-no-topk", has_topk=False, has_sparse_attention=False)
    ddr_size = 1024
    programs = token_programs(config, seed=22, quick=True, ddr_size=ddr_size)
    golden_outcomes(config, programs)
    assert {p.golden["code"] for p in programs} == {ErrorCode.INVALID_OPERAND}
    _assert_match_golden(programs, _simulate(programs, ddr_size, config))


# -- REQUANT in the controller -------------------------------------------------------------------

def test_requant_programs_match_golden_machine():
    """REQUANT off the 16-byte grid and at the int32 / multiplier / shift limits, then every
    operand check in the golden machine's order."""
    from vitaccel.sim.cases.accel import requant_bad_programs, requant_programs

    ddr_size = 1024
    programs = requant_programs(TINY, seed=23, ddr_size=ddr_size)
    bad = requant_bad_programs(TINY, ddr_size)
    golden_outcomes(TINY, programs + bad)
    assert all(p.golden["code"] is ErrorCode.NONE for p in programs), [p.golden for p in programs]
    assert {p.golden["code"] for p in bad} == {ErrorCode.INVALID_OPERAND, ErrorCode.ADDRESS_OUT_OF_RANGE}
    results = _simulate(programs + bad, ddr_size)
    _assert_match_golden(programs + bad, results)
    saturated = sum(int(np.count_nonzero(np.isin(p.golden["ddr"][p.golden["ddr"] != p.ddr].view(np.int8),
                                                 (-128, 127)))) for p in programs)
    assert saturated > 0


# -- GEMM data path: operand runs that walk through K, 16-byte writes, throughput ---------------

#: Rows and columns that straddle 16-byte words as they walk through K (k = 37, 33: every
#: alignment, a partial last k-step), both B layouts, residual / unsigned A / partials, and
#: n = 37 (10 tiles): two B blocks of at most ``MAX_BLOCK_TILES``.
WALK_GEMM_CASES = [
    (9, 37, 11, dict(bias=True)),
    (6, 37, 13, dict(bias=True, b_transposed=True, unsigned_a=True, residual=True)),
    (7, 33, 6, dict(requant=False, bias=True, accumulate=True, b_transposed=True)),
    (5, 9, 37, dict(requant=False, bias=True)),
]


def test_gemm_walking_runs_match_golden_machine():
    from vitaccel.hw.accel.gemm import MAX_BLOCK_TILES

    assert -(-37 // TINY.tile_cols) > MAX_BLOCK_TILES
    rng = random.Random(29)
    ddr_size = 4096
    programs = []
    for m, k, n, flags in WALK_GEMM_CASES:
        words, ddr = gemm_program(rng, TINY, ddr_size, m=m, k=k, n=n, **flags)
        programs.append(Program(f"gemm {m}x{k}x{n} {sorted(flags)}", words, ddr))
    golden_outcomes(TINY, programs)
    assert all(p.golden["code"] is ErrorCode.NONE for p in programs)
    _assert_match_golden(programs, _simulate(programs, ddr_size))


#: Tiles of 4 x 6 (three block columns): the tile counts are not shifts.
THREE_COLS = dataclasses.replace(TINY, name="tiny-3-cols", block_cols=3, max_k=1024)


def test_gemm_tile_count_without_a_divider_is_exact():
    """The GEMM controller divides by a tile width that is not a power of two with a multiply by
    the rounded-up reciprocal: exact for every value of the width, for every divisor a preset
    can have (tile_cols = block_cols * block_size); and whole GEMMs on 4 x 6 tiles (n = 1, 5,
    6, 7, 13, 37 columns: partial, exact and several tiles) match the golden machine."""
    from vitaccel.hw.accel.gemm import reciprocal

    values = np.arange(1 << 17, dtype=np.int64)
    for divisor in (3, 5, 6, 7, 12, 24, 40, 48, 96, 100, 192):
        multiplier, shift = reciprocal(divisor, 17)
        assert multiplier < 1 << 18   # a DSP48E2's 18-bit input
        assert np.array_equal((values * multiplier) >> shift, values // divisor), divisor
    rng = random.Random(37)
    programs = []
    for m, k, n, flags in [(5, 9, 1, dict(bias=True)), (3, 7, 5, dict(bias=True, b_transposed=True)),
                           (6, 4, 6, dict(requant=False, bias=True)), (4, 5, 7, dict(bias=True, residual=True)),
                           (2, 3, 13, dict(requant=False, bias=False)), (5, 6, 37, dict(bias=True))]:
        words, ddr = gemm_program(rng, THREE_COLS, 4096, m=m, k=k, n=n, **flags)
        programs.append(Program(f"gemm {m}x{k}x{n} {sorted(flags)}", words, ddr))
    golden_outcomes(THREE_COLS, programs)
    assert all(p.golden["code"] is ErrorCode.NONE for p in programs)
    _assert_match_golden(programs, _simulate(programs, 4096, THREE_COLS))


def _gemm_alone_cycles(config, instr: Instruction, memory: dict) -> int:
    """Cycles from ``start`` to ``done`` of :class:`GemmController` alone, its buffers modelled
    in Python (``memory``: bytearray by Buffer; read data one cycle after the address)."""
    from vitaccel.hw.accel.gemm import READ_BUFFERS, GemmController

    dut = GemmController(config=config)
    cycles = []

    async def bench(ctx):
        ctx.set(dut.word, encode(instr))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        pending = {}
        for cycle in range(100_000):
            for buffer, word in pending.items():
                ctx.set(dut.read_port(buffer)[2], word)
            assert not ctx.get(dut.error), ErrorCode(ctx.get(dut.error_code))
            if ctx.get(dut.done):
                cycles.append(cycle + 1)
                return
            pending = {}
            for buffer in READ_BUFFERS:
                read, addr, _ = dut.read_port(buffer)
                if ctx.get(read):
                    at = ctx.get(addr) & ~(isa.ADDR_UNIT - 1)
                    pending[buffer] = int.from_bytes(bytes(memory[buffer][at:at + isa.ADDR_UNIT]), "little")
            writes = [(buffer, ctx.get(enables), ctx.get(addr), ctx.get(data)) for buffer, enables, addr, data in (
                (isa.Buffer.VECTOR, dut.vector_write, dut.vector_write_addr, dut.vector_write_data),
                (isa.Buffer.ACC, dut.acc_write, dut.acc_write_addr, dut.acc_write_data))]
            await ctx.tick()
            for buffer, enables, addr, data in writes:
                for lane in range(isa.ADDR_UNIT):
                    if enables >> lane & 1:
                        memory[buffer][addr + lane] = data >> (8 * lane) & 0xFF

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert cycles, "the GEMM did not finish"
    return cycles[0]


def test_gemm_feeds_the_engine_near_its_rate():
    """A 12x64x64 GEMM (3 x 16 tiles of 32 k-steps: 1536 engine steps) takes little more
    than its compute with a transposed B (A rows and B columns walk through K: about one
    word per cycle; the first B block loads before compute starts), and less than twice
    that with B [k, n] (each B word needs a read per k row)."""
    m, k, n = 12, 64, 64
    rng = np.random.default_rng(31)
    memory = {buffer: bytearray(rng.integers(0, 256, isa.buffer_bytes(TINY, buffer), dtype=np.uint8).tobytes())
              for buffer in isa.Buffer}
    params = np.array([0] * n + [1 << 30] * n + [40] * n, "<i4").tobytes()
    memory[isa.Buffer.ACC][:len(params)] = params
    steps = -(-m // TINY.tile_rows) * -(-n // TINY.tile_cols) * -(-k // TINY.block_size)
    for transposed, bound in ((1, 1.3), (0, 2.0)):
        instr = Instruction(Opcode.GEMM, m=m, k=k, n=n, requant=1, bias=1, b_transposed=transposed, a_addr=1,
                            b_addr=3, param_addr=0, out_addr=5)
        cycles = _gemm_alone_cycles(TINY, instr, memory)
        assert cycles < bound * steps, (transposed, cycles, steps)


@pytest.mark.parametrize("width", [32, 128])
def test_dma_programs_other_dma_widths(width):
    """LOAD and STORE move up to a DMA word per cycle: random rows, strides and alignments
    through 4- and 16-byte DMA words (the rotations differ from the 8-byte tiny default)."""
    config = dataclasses.replace(TINY, name=f"tiny-dma{width}", dma_data_width=width)
    rng = random.Random(width)
    ddr_size = 1024
    programs = [Program(f"dma {width} {i}", random_dma_program(rng, config, ddr_size, rounds=2, transfers=2,
                                                               max_row_bytes=40, max_rows=3),
                        np.frombuffer(rng.randbytes(ddr_size), np.uint8).copy()) for i in range(2)]
    golden_outcomes(config, programs)
    for program, (out, ddr) in zip(programs, _simulate(programs, ddr_size, config), strict=True):
        assert ErrorCode(out["ERROR_CODE"]) is program.golden["code"] is ErrorCode.NONE, program.name
        assert ddr == program.golden["ddr"].tobytes(), f"{program.name}: DDR differs from the golden machine"


@pytest.mark.parametrize("rows", [20, pytest.param(300, marks=pytest.mark.slow)])
def test_contiguous_dram_rows_move_as_one_transfer(rows):
    """A LOAD / STORE whose DDR rows are contiguous goes to the DMA as one row of
    ``rows * row_bytes`` bytes (with 300 rows more than 16 bits' worth, 90,000 bytes), into
    and out of spaced buffer rows; next to it rows spaced in DDR (a descriptor of many rows)."""
    config = dataclasses.replace(TINY, name="tiny-dma-long", vector_kib=128, dma_data_width=128)
    row_bytes, spaced = 300, 304
    ddr_size = 4 * rows * spaced
    rng = random.Random(11)
    words = [encode(instr) for instr in (
        Instruction(Opcode.LOAD, buffer=Buffer.VECTOR, sram_addr=0, dram_addr=5, rows=rows, row_bytes=row_bytes,
                    dram_stride=row_bytes, sram_stride=spaced),
        Instruction(Opcode.LOAD, buffer=Buffer.ACC, sram_addr=1, dram_addr=3, rows=40, row_bytes=row_bytes,
                    dram_stride=spaced, sram_stride=row_bytes, push_next=1),
        Instruction(Opcode.SYNC, queue=Queue.COMPUTE, pop_prev=1, push_next=1),
        Instruction(Opcode.STORE, buffer=Buffer.VECTOR, sram_addr=0, dram_addr=2 * rows * spaced + 7, rows=rows,
                    row_bytes=row_bytes, dram_stride=row_bytes, sram_stride=spaced, pop_prev=1),
        Instruction(Opcode.STORE, buffer=Buffer.ACC, sram_addr=1, dram_addr=rows * spaced + 1, rows=40,
                    row_bytes=row_bytes, dram_stride=spaced, sram_stride=row_bytes, push_prev=1),
        Instruction(Opcode.FINISH, pop_next=1))]
    program = Program("contiguous rows", words, np.frombuffer(rng.randbytes(ddr_size), np.uint8).copy())
    golden_outcomes(config, [program])
    assert program.golden["code"] is ErrorCode.NONE
    [(out, ddr)] = _simulate([program], ddr_size, config, max_cycles=100_000)
    assert ErrorCode(out["ERROR_CODE"]) is ErrorCode.NONE and out["STATUS"] == 0b010
    assert ddr == program.golden["ddr"].tobytes()


@pytest.mark.parametrize("row_bytes", [24, 96, 2])
def test_gemm_row_writer_stores_rows(row_bytes):
    """The GEMM drain's row writer (a shifting row register, one rotator) against a byte-level
    model: rows loaded back to back, or with gaps, at random and every edge alignment, with
    random byte masks (and a row with no byte to store), reach exactly their masked bytes at
    ``start``; a row takes one write per 16-byte word it spans, and ``free`` lets the next row
    load in the cycle of the last write."""
    from amaranth import Module

    from vitaccel.hw.accel.gemm import _RowWriter

    m = Module()
    writer = _RowWriter(m, "writer", row_bytes=row_bytes)
    rng = random.Random(13)
    rows = []
    for trial in range(300):
        lane = trial % 16 if trial < 32 else rng.randrange(16)
        values = [rng.randrange(256) for _ in range(row_bytes)]
        keep = ([rng.random() < 0.8 for _ in range(row_bytes)] if trial % 3 else [True] * row_bytes) \
            if trial % 17 else [False] * row_bytes
        rows.append((rng.randrange(1 << 16) * 16 + lane, values, keep, rng.random() < 0.3))

    async def bench(ctx):
        memory, want, loads, cycles = {}, {}, [], 0
        pending = list(rows)
        while pending or ctx.get(writer.busy):
            cycles += 1
            assert cycles < 100 * len(rows)
            if pending and ctx.get(writer.free) and not pending[0][3]:
                start, values, keep, _ = pending.pop(0)
                loads.append(cycles)
                ctx.set(writer.load, 1)
                ctx.set(writer.start, start)
                ctx.set(writer.row, int.from_bytes(bytes(values), "little"))
                ctx.set(writer.mask, sum(1 << j for j, k in enumerate(keep) if k))
                ctx.set(writer.last_index, (start % 16 + row_bytes - 1) // 16)
                want.update({start + j: v for j, (v, k) in enumerate(zip(values, keep)) if k})
            else:
                ctx.set(writer.load, 0)
                if pending and ctx.get(writer.free):   # a gap of a cycle before this row
                    pending[0] = pending[0][:3] + (False,)
            enables, addr, data = ctx.get(writer.write), ctx.get(writer.write_addr), ctx.get(writer.write_data)
            if enables:
                assert addr % 16 == 0
            for lane in range(16):
                if enables >> lane & 1:
                    memory[addr + lane] = data >> (8 * lane) & 0xFF
            await ctx.tick()
        assert memory == want
        # Row i + 1 loads in the cycle of row i's last write: a write per word it spans.
        spans = [(start % 16 + row_bytes - 1) // 16 + 1 for start, *_ in rows]
        assert [b - a for a, b in zip(loads, loads[1:])] == [span + gap for span, (*_, gap) in zip(spans, rows[1:])]

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("quick", [True, False])
def test_regress_programs_encode_on_every_preset(preset, quick):
    # zcu102's VECTOR fills the ISA's 15-bit address field: a "past the end" address must
    # still encode (the accelerator regress case stopped at program generation on zcu102).
    from vitaccel.sim.cases.accel import default_programs, golden_outcomes

    config = PRESETS[preset]
    programs = default_programs(config, seed=1575502663, quick=quick)
    golden_outcomes(config, programs)
    assert all(program.golden for program in programs)
