"""The vector controller (``hw/accel/vector.py``) alone in Amaranth's simulator, on edge inputs.

VECTOR and ACC are modelled in Python (synchronous, non-transparent reads as the core's
``Memory`` ports); every result is compared with the golden kernels of
``vitaccel.sim.golden.nonlinear`` over the whole VECTOR buffer (bytes outside the destination
must not change), and every instruction's cycles with the performance model's formula
(``sim/perf/units.py``: the core's DECIDE cycle plus the controller's cycles to ``done``).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from vitaccel.hw.accel.decode import first_failure
from vitaccel.hw.accel.vector import VectorController
from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import ADDR_UNIT, Instruction, Opcode, encode
from vitaccel.hw.spec.nonlinear import gelu_table, layernorm_params, softmax_params
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.sim.golden import nonlinear
from vitaccel.sim.golden.nonlinear import AddParams
from vitaccel.sim.perf.units import compute_cycles

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

TINY = PRESETS["tiny"]
#: Buffers kept small so that the simulator's memories stay cheap.
VECTOR_BYTES, ACC_BYTES = 4096, 4096
#: tiny (4 lanes: four beats per word); 16 lanes (zcu102's: a word per beat); 32 lanes (more
#: lanes than a word: a beat is still 16 bytes), without the row units to keep it quick.
CONFIGS = {
    "lanes4": TINY,
    "lanes16": TINY.replace(name="tiny16", vector_lanes=16),
    "lanes32": TINY.replace(name="tiny32", vector_lanes=32, has_softmax=False, has_layernorm=False,
                            has_sparse_attention=False),
}


def _simulate(config, steps: list[tuple[Instruction, bool]], vector: bytearray, acc: bytearray) -> list[dict]:
    """Run ``steps`` (instruction, expected to fail) one after another on one controller with
    VECTOR / ACC modelled as ``vector`` / ``acc`` (updated in place). Returns, per step, the
    busy cycles (DECIDE included) and the error code (None when it retired)."""
    dut = VectorController(config=config)
    results = []

    def word_at(memory: bytearray, address: int) -> int:
        base = (address // ADDR_UNIT) * ADDR_UNIT
        return int.from_bytes(memory[base:base + ADDR_UNIT], "little")

    async def bench(ctx):
        for instr, _ in steps:
            ctx.set(dut.word, encode(instr))
            ctx.set(dut.start, 1)
            cycles = 1   # the core's DECIDE cycle, where start is raised
            await ctx.tick()
            ctx.set(dut.start, 0)
            while True:
                assert cycles < 20_000, f"{instr.opcode.name}: no done / error"
                done, error = ctx.get(dut.done), ctx.get(dut.error)
                code = ErrorCode(ctx.get(dut.error_code)) if error else None
                reads = [(ctx.get(dut.vector_read), ctx.get(dut.vector_read_addr), vector, dut.vector_read_data),
                         (ctx.get(dut.acc_read), ctx.get(dut.acc_read_addr), acc, dut.acc_read_data)]
                enables, address = ctx.get(dut.vector_write), ctx.get(dut.vector_write_addr)
                data = ctx.get(dut.vector_write_data)
                # Reads see the memory before this cycle's write (non-transparent ports).
                read_words = [(port, word_at(memory, addr)) for enable, addr, memory, port in reads if enable]
                base = (address // ADDR_UNIT) * ADDR_UNIT
                for lane in range(ADDR_UNIT):
                    if enables >> lane & 1:
                        vector[base + lane] = (data >> (8 * lane)) & 0xFF
                cycles += 1
                await ctx.tick()
                for port, value in read_words:
                    ctx.set(port, value)
                if done or error:
                    results.append({"cycles": cycles, "error": code})
                    break

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def _words(memory: bytearray, unit: int, values: np.ndarray) -> None:
    raw = values.tobytes()
    memory[unit * ADDR_UNIT:unit * ADDR_UNIT + len(raw)] = raw


def _view(memory: bytearray, unit: int, count: int, dtype) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    return np.frombuffer(bytes(memory[unit * ADDR_UNIT:unit * ADDR_UNIT + count * size]), dtype).copy()


def _check(config, steps, vector, acc, expected_vector) -> None:
    results = _simulate(config, steps, vector, acc)
    for (instr, fails), result in zip(steps, results, strict=True):
        if fails:
            assert result["error"] is not None, instr
            continue
        assert result["error"] is None, (instr, result)
        assert result["cycles"] == compute_cycles(config, instr), (instr.opcode.name, instr.fields, result)
    assert bytes(vector) == bytes(expected_vector)


def _int8(rng: np.random.Generator, n: int, edges: bool = True) -> np.ndarray:
    values = rng.integers(-128, 128, n).astype(np.int8)
    if edges and n:
        values[: min(n, 3)] = [-128, 127, 0][: min(n, 3)]
    return values


# -- GELU ----------------------------------------------------------------------------------------

#: (rows, cols, src unit, dst unit): no elements, fewer than a beat, a beat, not a multiple of
#: the lanes or of a word, several words; odd unit addresses; in place; dst one word below src.
GELU_CASES = [(0, 5, 3, 9), (1, 1, 1, 7), (1, 3, 5, 5), (1, 4, 2, 20), (3, 5, 7, 7), (1, 16, 4, 11),
              (1, 17, 10, 9), (3, 11, 13, 13), (2, 50, 22, 21), (1, 200, 30, 51)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gelu_edges_match_golden(name):
    config = CONFIGS[name]
    rng = np.random.default_rng(1)
    vector, acc = bytearray(rng.integers(0, 256, VECTOR_BYTES, dtype=np.uint8).tobytes()), bytearray(ACC_BYTES)
    table = gelu_table(0.05, 0.03)
    lut_unit = 200
    _words(vector, lut_unit, table.astype(np.int8))
    steps = [(Instruction(Opcode.LUT_LOAD, offset=0, count=256, src_addr=lut_unit), False)]
    for rows, cols, src, dst in GELU_CASES:
        _words(vector, src, _int8(rng, rows * cols))
        steps.append((Instruction(Opcode.GELU, rows=rows, cols=cols, src_addr=src, dst_addr=dst), False))
    # The instructions run in order on one buffer: the golden result of each on the state the
    # previous ones left (a later source may be an earlier destination).
    expected = bytearray(vector)
    for rows, cols, src, dst in GELU_CASES:
        x = _view(expected, src, rows * cols, np.int8).astype(np.int64)
        if rows * cols:
            _words(expected, dst, nonlinear.gelu(x, table).astype(np.int8))
    _check(config, steps, vector, acc, expected)


# -- ADD -----------------------------------------------------------------------------------------

#: (rows, cols, src, src2, dst, a_multiplier, b_multiplier, shift)
ADD_CASES = [(0, 4, 1, 2, 3, 1 << 14, 1 << 14, 15), (1, 1, 1, 2, 3, 1 << 14, 1 << 14, 15),
             (1, 5, 3, 4, 3, 1 << 20, 1 << 20, 15),     # saturating, in place over src
             (2, 9, 5, 7, 7, 3000, 70000, 16),          # in place over src2
             (1, 16, 9, 10, 11, 1 << 14, 1 << 14, 15), (3, 17, 12, 16, 20, 123456, 654321, 20),
             (1, 100, 24, 31, 40, (1 << 31) - 1, 1, 31), (2, 3, 45, 46, 47, 0, 0, 1)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_add_edges_match_golden(name):
    config = CONFIGS[name]
    rng = np.random.default_rng(2)
    vector, acc = bytearray(rng.integers(0, 256, VECTOR_BYTES, dtype=np.uint8).tobytes()), bytearray(ACC_BYTES)
    steps = []
    saturated = 0
    for index, (rows, cols, src, src2, dst, a_mult, b_mult, shift) in enumerate(ADD_CASES):
        n = rows * cols
        a, b = _int8(rng, n), _int8(rng, n)
        if n:
            a[0], b[0] = -128, -128
        _words(vector, src, a)
        _words(vector, src2, b)
        _words(acc, index, isa.pack_add_params(AddParams(a_mult, b_mult, shift)).astype("<i4"))
        steps.append((Instruction(Opcode.ADD, rows=rows, cols=cols, src_addr=src, src2_addr=src2, dst_addr=dst,
                                  param_addr=index), False))
    expected = bytearray(vector)   # in order, on the state the previous instructions left
    for rows, cols, src, src2, dst, a_mult, b_mult, shift in ADD_CASES:
        n = rows * cols
        if n:
            a = _view(expected, src, n, np.int8).astype(np.int64)
            b = _view(expected, src2, n, np.int8).astype(np.int64)
            y = nonlinear.add(a, b, AddParams(a_mult, b_mult, shift))
            saturated += int(np.count_nonzero((y == -128) | (y == 127)))
            _words(expected, dst, y.astype(np.int8))
    assert saturated > 0
    _check(config, steps, vector, acc, expected)


# -- SOFTMAX and LAYERNORM (row stream) ----------------------------------------------------------

def _softmax_setup(config, seed: int):
    """A random generator, VECTOR (random bytes), ACC with softmax parameters at unit 0, the
    expected VECTOR (a copy) and the parameters."""
    rng = np.random.default_rng(seed)
    vector, acc = bytearray(rng.integers(0, 256, VECTOR_BYTES, dtype=np.uint8).tobytes()), bytearray(ACC_BYTES)
    params = softmax_params(0.01, exp_lut_bits=config.exp_lut_bits, recip_lut_bits=config.recip_lut_bits)
    _words(acc, 0, isa.pack_softmax_params(params).astype("<i4"))
    return rng, vector, acc, bytearray(vector), params


@pytest.mark.parametrize("name", ["lanes4", "lanes16"])
def test_softmax_edges_match_golden(name):
    """All-equal rows, int32 limits (saturated differences), rows not a multiple of the lanes,
    no rows."""
    config = CONFIGS[name]
    rng, vector, acc, expected, params = _softmax_setup(config, 3)
    steps = []
    unit = 1
    dst = 3
    for rows, cols, kind in ((2, 5, "equal"), (1, 7, "limits"), (3, 17, "random"), (0, 4, "random")):
        n = rows * cols
        scores = rng.integers(-3000, 3000, n).astype(np.int64).reshape(rows, cols)
        if kind == "equal":
            scores[:] = 1234
        elif kind == "limits":
            scores[:] = -(1 << 31)
            scores[0, 3] = (1 << 31) - 1
        _words(acc, unit, scores.astype("<i4"))
        if n:
            _words(expected, dst, nonlinear.softmax(scores, params).astype(np.uint8))
        steps.append((Instruction(Opcode.SOFTMAX, rows=rows, cols=cols, src_addr=unit, dst_addr=dst,
                                  param_addr=0), False))
        unit += -(-4 * n // ADDR_UNIT) + 1
        dst += -(-n // ADDR_UNIT) + 2
    _check(config, steps, vector, acc, expected)


@pytest.mark.parametrize("name", ["lanes4", "lanes16"])
def test_layernorm_edges_match_golden(name):
    """Zero-variance rows, -128 / 127 rows, rows not a multiple of the lanes, in place."""
    config = CONFIGS[name]
    rng = np.random.default_rng(4)
    vector, acc = bytearray(rng.integers(0, 256, VECTOR_BYTES, dtype=np.uint8).tobytes()), bytearray(ACC_BYTES)
    expected = bytearray(vector)
    steps = []
    param_unit, src = 0, 1
    for rows, cols, out_scale in ((3, 9, 0.02), (2, 20, 0.002)):
        x = rng.integers(-128, 128, rows * cols).astype(np.int64).reshape(rows, cols)
        x[0] = rng.choice([-128, 127], cols)
        x[1] = -7   # zero variance
        gamma, beta = rng.uniform(-2, 2, cols), rng.uniform(-1, 1, cols)
        params = layernorm_params(0.05, gamma, beta, out_scale, 1e-5, rsqrt_lut_bits=config.rsqrt_lut_bits)
        block = isa.pack_layernorm_params(params).astype("<i4")
        _words(acc, param_unit, block)
        _words(vector, src, x.astype(np.int8))
        _words(expected, src, nonlinear.layernorm(x, params).astype(np.int8))
        steps.append((Instruction(Opcode.LAYERNORM, rows=rows, cols=cols, src_addr=src, dst_addr=src,
                                  param_addr=param_unit), False))
        param_unit += -(-len(block) * 4 // ADDR_UNIT)
        src += -(-rows * cols // ADDR_UNIT) + 1
    _check(config, steps, vector, acc, expected)


#: (rows, cols, src unit, dst unit): rows streaming while earlier rows' outputs are written --
#: a destination apart, one word behind the source (rows still stream), in place, one and
#: two words ahead inside the source (a row's output lands on a later row's input: the
#: controller waits for each row's writes), rows of one element, long rows.
OVERLAP_CASES = [(6, 21, 2, 100), (5, 19, 10, 9), (7, 13, 20, 20), (6, 17, 30, 31), (4, 33, 40, 42),
                 (9, 1, 60, 61), (3, 60, 70, 71)]


@pytest.mark.parametrize("name", ["lanes4", "lanes16"])
def test_layernorm_rows_overlap_with_writes(name):
    """Several rows in flight at once, and source / destination overlaps: each row reads what
    the rows before it wrote, as ``for i in range(rows)`` in the ISA says."""
    config = CONFIGS[name]
    rng = np.random.default_rng(5)
    vector, acc = bytearray(rng.integers(0, 256, VECTOR_BYTES, dtype=np.uint8).tobytes()), bytearray(ACC_BYTES)
    expected = bytearray(vector)
    steps = []
    param_unit = 0
    for rows, cols, src, dst in OVERLAP_CASES:
        gamma, beta = rng.uniform(-2, 2, cols), rng.uniform(-1, 1, cols)
        params = layernorm_params(0.05, gamma, beta, 0.02, 1e-5, rsqrt_lut_bits=config.rsqrt_lut_bits)
        block = isa.pack_layernorm_params(params).astype("<i4")
        _words(acc, param_unit, block)
        x = _int8(rng, rows * cols)
        _words(vector, src, x)
        _words(expected, src, x)
        for row in range(rows):   # on the state the earlier rows left
            start = src * ADDR_UNIT + row * cols
            xs = np.frombuffer(bytes(expected[start:start + cols]), np.int8).astype(np.int64).reshape(1, cols)
            out = dst * ADDR_UNIT + row * cols
            expected[out:out + cols] = nonlinear.layernorm(xs, params).astype(np.int8).tobytes()
        steps.append((Instruction(Opcode.LAYERNORM, rows=rows, cols=cols, src_addr=src, dst_addr=dst,
                                  param_addr=param_unit), False))
        param_unit += -(-len(block) * 4 // ADDR_UNIT)
    _check(config, steps, vector, acc, expected)


@pytest.mark.parametrize("name", ["lanes4", "lanes16"])
def test_softmax_many_rows_stream(name):
    """More rows than the unit's row slots, short and long: the sender runs ahead of the
    writes while the unit holds rows in each stage."""
    config = CONFIGS[name]
    rng, vector, acc, expected, params = _softmax_setup(config, 6)
    steps = []
    unit, dst = 1, 7
    for rows, cols in ((12, 1), (9, 3), (7, 18), (5, 37)):
        scores = rng.integers(-5000, 5000, (rows, cols)).astype(np.int64)
        scores[0] = 42   # an all-equal row
        _words(acc, unit, scores.astype("<i4"))
        _words(expected, dst, nonlinear.softmax(scores, params).astype(np.uint8))
        steps.append((Instruction(Opcode.SOFTMAX, rows=rows, cols=cols, src_addr=unit, dst_addr=dst,
                                  param_addr=0), False))
        unit += -(-4 * rows * cols // ADDR_UNIT) + 1
        dst += -(-rows * cols // ADDR_UNIT) + 3
    _check(config, steps, vector, acc, expected)


# -- checks --------------------------------------------------------------------------------------

def test_bad_operands_stop_in_golden_order():
    """The first failing check wins: a GELU reaching past VECTOR, an ADD with a shift the
    rounding rule rejects and a destination past VECTOR (INVALID_OPERAND first)."""
    vector_units = isa.buffer_bytes(TINY, isa.Buffer.VECTOR) // ADDR_UNIT
    vector, acc = bytearray(isa.buffer_bytes(TINY, isa.Buffer.VECTOR)), bytearray(ACC_BYTES)
    _words(acc, 0, isa.pack_add_params(AddParams(1, 1, 200)).astype("<i4"))
    steps = [(Instruction(Opcode.GELU, rows=1, cols=32, src_addr=vector_units - 1, dst_addr=0), True),
             (Instruction(Opcode.ADD, rows=1, cols=32, src_addr=0, src2_addr=4, dst_addr=vector_units - 1,
                          param_addr=0), True)]
    results = _simulate(TINY, steps, vector, acc)
    assert [r["error"] for r in results] == [ErrorCode.ADDRESS_OUT_OF_RANGE, ErrorCode.INVALID_OPERAND]


def test_first_failure_takes_the_first_condition():
    from amaranth import Const

    failed, code = first_failure([(Const(0), ErrorCode.INVALID_OPERAND), (Const(1), ErrorCode.ADDRESS_OUT_OF_RANGE),
                                  (Const(1), ErrorCode.WATCHDOG)])

    async def bench(ctx):
        assert ctx.get(failed) == 1
        assert ErrorCode(ctx.get(code)) is ErrorCode.ADDRESS_OUT_OF_RANGE

    sim = Simulator(VectorController(config=TINY))
    sim.add_testbench(bench)
    sim.run()
