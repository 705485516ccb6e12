"""The golden machine's fast paths give the results and errors of the paths they short-cut.

* ``gemm.matmul`` on 8/16-bit operands skips the value scan; it must equal the scanned
  path (reached through int64 operands) on random and extreme inputs, errors included.
* The machine resolves LOAD/STORE SRAM views once per program; a machine forced onto the
  generic ``_load``/``_store`` must leave the same DDR, statistics and errors.
"""

import numpy as np
import pytest

from vitaccel.hw.spec import isa, nonlinear as nlspec
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Instruction, Opcode
from vitaccel.hw.spec import luts
from vitaccel.sim.golden import gemm, nonlinear
from vitaccel.sim.golden.machine import GoldenMachine, MachineError
from vitaccel.sw.backend.emitter import Pipeline, ProgramBuilder

CONFIG = PRESETS["tiny"]
NARROW = [np.int8, np.uint8, np.int16, np.uint16]


def _operand(rng, shape, dtype, extreme):
    info = np.iinfo(dtype)
    x = rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(dtype)
    if extreme and x.size:
        picks = rng.random(shape)
        x[picks < 0.3] = info.min
        x[picks > 0.7] = info.max
    return x


@pytest.mark.parametrize("a_dtype", NARROW)
@pytest.mark.parametrize("b_dtype", NARROW)
@pytest.mark.parametrize("extreme", [False, True])
def test_narrow_matmul_equals_scanned_path(a_dtype, b_dtype, extreme):
    rng = np.random.default_rng(hash((np.dtype(a_dtype).str, np.dtype(b_dtype).str, extreme)) % 2**32)
    shapes = [((5, 7), (7, 3)), ((1, 1), (1, 1)), ((0, 4), (4, 2)), ((3, 0), (0, 2)),
              ((2, 3, 6), (6, 4)), ((6,), (6, 2)), ((4, 6), (6,)), ((9, 300), (300, 17)),
              ((3, 514), (514, 2)), ((3, 515), (515, 2)), ((2, 1023), (1023, 3)), ((2, 1024), (1024, 3)),
              ((2, 2, 1536), (1536, 5)), ((1, 2047), (2047, 2))]
    for a_shape, b_shape in shapes:
        a = _operand(rng, a_shape, a_dtype, extreme)
        b = _operand(rng, b_shape, b_dtype, extreme)
        fast = gemm.matmul(a, b)
        scanned = gemm.matmul(a.astype(np.int64), b.astype(np.int64))
        assert fast.dtype == scanned.dtype == np.int64
        np.testing.assert_array_equal(fast, scanned)
        np.testing.assert_array_equal(fast, a.astype(object) @ b.astype(object) if a.size and b.size
                                      else scanned)
    # Every product at the extreme: the largest sums.
    info_a, info_b = np.iinfo(a_dtype), np.iinfo(b_dtype)
    for k in (514, 1023, 1024, 3000):
        for va, vb in [(info_a.min, info_b.min), (info_a.max, info_b.min), (info_a.max, info_b.max)]:
            a, b = np.full((2, k), va, a_dtype), np.full((k, 2), vb, b_dtype)
            assert (gemm.matmul(a, b) == k * int(va) * int(vb)).all()
    # A transposed (non-contiguous) view, as the machine passes for b_transposed.
    a = _operand(rng, (4, 8), a_dtype, extreme)
    bt = _operand(rng, (3, 8), b_dtype, extreme)
    np.testing.assert_array_equal(gemm.matmul(a, bt.T), gemm.matmul(a.astype(np.int64), bt.T.astype(np.int64)))


@pytest.mark.parametrize("a_shape,b_shape", [((2, 3), (4, 5)), ((3,), (2,)), ((), (2, 2)), ((2, 2), ())])
def test_narrow_matmul_errors_equal_scanned_path(a_shape, b_shape):
    a, b = np.ones(a_shape, np.int8), np.ones(b_shape, np.uint8)
    with pytest.raises(ValueError) as fast:
        gemm.matmul(a, b)
    with pytest.raises(ValueError) as scanned:
        gemm.matmul(a.astype(np.int64), b.astype(np.int64))
    assert str(fast.value) == str(scanned.value)


def _random_dma(rng, ddr_size):
    """A random LOAD and STORE pair, sometimes out of range or with overlapping strides."""
    buffer = Buffer(int(rng.choice([b.value for b in Buffer])))
    units = isa.buffer_bytes(CONFIG, buffer) // ADDR_UNIT
    rows = int(rng.integers(0, 5))
    row_bytes = int(rng.integers(0, 48))

    def stride():
        return int(rng.choice([row_bytes, row_bytes + int(rng.integers(1, 40)), max(row_bytes - 3, 0)]))

    def fields():
        return dict(buffer=buffer, rows=rows, row_bytes=row_bytes,
                    sram_addr=int(rng.choice([0, int(rng.integers(0, units)), units - 1])),
                    dram_addr=int(rng.choice([0, int(rng.integers(0, ddr_size)), ddr_size - row_bytes])),
                    dram_stride=stride(), sram_stride=stride())

    return Instruction(Opcode.LOAD, **fields()), Instruction(Opcode.STORE, **fields())


def _outcome(machine, words, ddr):
    try:
        stats = machine.run(words, ddr).to_dict()
    except MachineError as err:
        stats = (type(err), str(err), err.pc, err.code)
    return stats, ddr, {b: m.copy() for b, m in machine.buffers.items()}


def test_dma_fast_path_equals_generic_load_store(monkeypatch):
    rng = np.random.default_rng(6)
    fast, generic = GoldenMachine(CONFIG), GoldenMachine(CONFIG)
    monkeypatch.setattr(generic, "_dma_handler",
                        lambda instr, writing_ddr: generic._store if writing_ddr else generic._load)
    errors = 0
    for _ in range(300):
        ddr_size = int(rng.choice([64, 257, 4096]))
        builder = ProgramBuilder()
        pipeline = Pipeline(builder)
        loads, stores = zip(*(_random_dma(rng, ddr_size) for _ in range(int(rng.integers(1, 4)))))
        pipeline.tile(list(loads), [], list(stores))
        pipeline.finish()
        words = builder.words()
        ddr = rng.integers(0, 256, size=ddr_size, dtype=np.uint8)
        got = _outcome(fast, words, ddr.copy())
        want = _outcome(generic, words, ddr.copy())
        assert got[0] == want[0]
        np.testing.assert_array_equal(got[1], want[1])
        for buffer in Buffer:
            np.testing.assert_array_equal(got[2][buffer], want[2][buffer])
        errors += isinstance(got[0], tuple)
        # The same decoded program on a different DDR size re-checks the DDR side.
        small = rng.integers(0, 256, size=48, dtype=np.uint8)
        got, want = _outcome(fast, words, small.copy()), _outcome(generic, words, small.copy())
        assert got[0] == want[0]
        np.testing.assert_array_equal(got[1], want[1])
    assert 0 < errors < 300  # both outcomes were exercised


@pytest.mark.parametrize("build,low", [(luts.exp2_table, 1), (luts.reciprocal_table, 1), (luts.rsqrt_table, 2)])
def test_cached_tables_equal_built_tables_and_bad_widths_still_raise(build, low):
    for bits in [*range(low, 13), np.int64(6)]:
        np.testing.assert_array_equal(nonlinear._table(build, bits), build(bits))
        assert nonlinear._table(build, bits) is nonlinear._table(build, bits)
    for bad in [low - 1, 13, True, 6.0, "6", [6]]:
        with pytest.raises(ValueError) as cached:
            nonlinear._table(build, bad)
        with pytest.raises(ValueError) as built:
            build(bad)
        assert str(cached.value) == str(built.value)


def _dense_dma(opcode, buffer, unit, addr, rows, row_bytes):
    return Instruction(opcode, buffer=buffer, sram_addr=unit, dram_addr=addr, rows=rows, row_bytes=row_bytes,
                       dram_stride=row_bytes, sram_stride=row_bytes)


def test_layernorm_parameters_memoised_by_content_follow_the_buffer():
    """One machine, parameter blocks changing between runs (and back): always the kernel's result."""
    rng = np.random.default_rng(3)
    rows, cols = 3, 24
    machine = GoldenMachine(CONFIG)
    blocks = [nlspec.layernorm_params(0.05, rng.uniform(0.5, 1.5, cols), rng.normal(0, 0.2, cols), 0.03,
                                      rsqrt_lut_bits=CONFIG.rsqrt_lut_bits) for _ in range(2)]
    for params in [blocks[0], blocks[1], blocks[0]]:
        x = rng.integers(-128, 128, size=(rows, cols), dtype=np.int8)
        words = isa.pack_layernorm_params(params)
        ddr = np.zeros(4096, dtype=np.uint8)
        ddr[:x.size] = x.view(np.uint8).ravel()
        ddr[1024:1024 + words.nbytes] = words.view(np.uint8)
        builder = ProgramBuilder()
        pipeline = Pipeline(builder)
        pipeline.tile([_dense_dma(Opcode.LOAD, Buffer.VECTOR, 0, 0, rows, cols),
                       _dense_dma(Opcode.LOAD, Buffer.ACC, 0, 1024, 1, words.nbytes)],
                      [Instruction(Opcode.LAYERNORM, rows=rows, cols=cols, src_addr=0, dst_addr=16, param_addr=0)],
                      [_dense_dma(Opcode.STORE, Buffer.VECTOR, 16, 2048, rows, cols)])
        pipeline.finish()
        machine.run(builder.words(), ddr)
        got = ddr[2048:2048 + x.size].view(np.int8).reshape(rows, cols)
        np.testing.assert_array_equal(got, nonlinear.layernorm(x, params))
