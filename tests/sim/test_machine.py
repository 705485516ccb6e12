"""The golden machine on hand-written programs: every opcode against a direct golden-kernel
call, and malformed programs raising the right error quickly."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vitaccel.hw.spec import isa, nonlinear as nlspec
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Instruction, Opcode, Queue
from vitaccel.hw.spec.numerics import quantize_multiplier, requantize
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.sim.golden import attention, gemm, nonlinear, topk
from vitaccel.sim.golden.machine import (AddressError, DeadlockError, GoldenMachine, IllegalInstructionError,
                                         InvalidOperandError, MachineError, MissingFinishError, words_from_bytes,
                                         words_to_bytes)
from vitaccel.sw.backend.emitter import Pipeline, ProgramBuilder

CONFIG = PRESETS["tiny"]
RNG = np.random.default_rng(1234)
DDR_BYTES = 1 << 16


class Ddr:
    """A DDR image with a bump allocator, for writing operands and reading results."""

    def __init__(self, size: int = DDR_BYTES) -> None:
        self.bytes = np.zeros(size, dtype=np.uint8)
        self.top = 0

    def put(self, array: np.ndarray) -> int:
        data = np.ascontiguousarray(array).view(np.uint8).ravel()
        addr = self.top
        self.bytes[addr:addr + data.size] = data
        self.top = -(-(addr + data.size) // ADDR_UNIT) * ADDR_UNIT
        return addr

    def reserve(self, nbytes: int) -> int:
        return self.put(np.zeros(nbytes, dtype=np.uint8))

    def get(self, addr: int, shape: tuple, dtype) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.bytes[addr:addr + n].view(dtype).reshape(shape).copy()


def load(buffer, unit, addr, array):
    """LOAD a dense 2-D array (rows of its last axis) to ``buffer`` at unit address ``unit``."""
    array = np.atleast_2d(array)
    row = array.shape[-1] * array.itemsize
    return Instruction(Opcode.LOAD, buffer=buffer, sram_addr=unit, dram_addr=addr, rows=array.shape[0],
                       row_bytes=row, dram_stride=row, sram_stride=row)


def store(buffer, unit, addr, rows, row_bytes):
    return Instruction(Opcode.STORE, buffer=buffer, sram_addr=unit, dram_addr=addr, rows=rows,
                       row_bytes=row_bytes, dram_stride=row_bytes, sram_stride=row_bytes)


def run(ddr: Ddr, loads, computes, stores, config=CONFIG):
    builder = ProgramBuilder()
    pipeline = Pipeline(builder)
    pipeline.tile(loads, computes, stores)
    pipeline.finish()
    return GoldenMachine(config).run(builder.words(), ddr.bytes)


def int8(shape):
    return RNG.integers(-128, 128, size=shape, dtype=np.int8)


def edge_int8(shape):
    """Random int8 with a share of the extremes -128 and 127."""
    x = int8(shape)
    picks = RNG.random(shape)
    x[picks < 0.15] = -128
    x[picks > 0.85] = 127
    return x


# -- DMA ---------------------------------------------------------------------------------------

def test_load_store_with_strides_moves_exact_bytes():
    ddr = Ddr()
    src = int8((6, 40))
    src_addr = ddr.put(src)
    out_addr = ddr.reserve(6 * 64)
    # Load columns 8..23 of rows 0, 2, 4 into VECTOR with a 32-byte SRAM pitch, store them back
    # with a 64-byte DDR pitch.
    ld = Instruction(Opcode.LOAD, buffer=Buffer.VECTOR, sram_addr=3, dram_addr=src_addr + 8, rows=3, row_bytes=16,
                     dram_stride=80, sram_stride=32)
    st_ = Instruction(Opcode.STORE, buffer=Buffer.VECTOR, sram_addr=3, dram_addr=out_addr, rows=3, row_bytes=16,
                      dram_stride=64, sram_stride=32)
    stats = run(ddr, [ld], [], [st_])
    got = ddr.get(out_addr, (3, 64), np.int8)[:, :16]
    np.testing.assert_array_equal(got, src[0::2, 8:24])
    assert stats.dma_read_bytes == stats.dma_write_bytes == 48


# -- GEMM ---------------------------------------------------------------------------------------

def gemm_params(n):
    bias = RNG.integers(-5000, 5000, size=n)
    scales = [quantize_multiplier(s) for s in RNG.uniform(1e-4, 5e-3, size=n)]
    return bias, np.array([s.multiplier for s in scales]), np.array([s.shift for s in scales])


@pytest.mark.parametrize("b_transposed", [0, 1])
@pytest.mark.parametrize("unsigned_a", [0, 1])
def test_gemm_requant_bias_matches_linear(b_transposed, unsigned_a):
    m, k, n = 5, 24, 7
    a = RNG.integers(0, 256, (m, k)).astype(np.uint8) if unsigned_a else edge_int8((m, k))
    w = edge_int8((k, n))
    bias, mult, shift = gemm_params(n)
    ddr = Ddr()
    a_addr, w_addr = ddr.put(a), ddr.put(np.ascontiguousarray(w.T) if b_transposed else w)
    p_addr = ddr.put(isa.pack_gemm_params(bias, mult, shift))
    out_addr = ddr.reserve(m * n)
    loads = [load(Buffer.INPUT, 0, a_addr, a), load(Buffer.WEIGHT, 4, w_addr, w.T if b_transposed else w),
             load(Buffer.ACC, 2, p_addr, isa.pack_gemm_params(bias, mult, shift))]
    op = Instruction(Opcode.GEMM, requant=1, bias=1, unsigned_a=unsigned_a, b_transposed=b_transposed,
                     m=m, k=k, n=n, a_addr=0, b_addr=4, out_addr=8, param_addr=2)
    stats = run(ddr, loads, [op], [store(Buffer.VECTOR, 8, out_addr, m, n)])
    want = gemm.linear(a, w, bias, mult, shift)
    np.testing.assert_array_equal(ddr.get(out_addr, (m, n), np.int8), want)
    assert stats.macs == m * k * n and stats.instructions[Opcode.GEMM] == 1


@pytest.mark.parametrize("unsigned_a", [0, 1])
def test_gemm_a_vector_reads_a_from_vector(unsigned_a):
    """a_vector=1 reads A from VECTOR (INPUT holds other bytes there); a requantized output may
    feed the next GEMM's A in place; with residual it is INVALID_OPERAND, and A is checked
    against VECTOR's size."""
    m, k, n = 6, 32, 5
    a = RNG.integers(0, 256, (m, k)).astype(np.uint8) if unsigned_a else edge_int8((m, k))
    w1, w2 = edge_int8((k, n)), edge_int8((n, 3))
    bias, mult, shift = gemm_params(n)
    bias2, mult2, shift2 = gemm_params(3)
    ddr = Ddr()
    a_addr, w1_addr, w2_addr, junk_addr = ddr.put(a), ddr.put(w1), ddr.put(w2), ddr.put(int8((m, k)))
    p1 = isa.pack_gemm_params(bias, mult, shift)
    p2 = isa.pack_gemm_params(bias2, mult2, shift2)
    p1_addr, p2_addr = ddr.put(p1), ddr.put(p2)
    out_addr = ddr.reserve(m * 3)
    loads = [load(Buffer.VECTOR, 20, a_addr, a), load(Buffer.INPUT, 20, junk_addr, int8((m, k))),
             load(Buffer.WEIGHT, 0, w1_addr, w1), load(Buffer.WEIGHT, 40, w2_addr, w2),
             load(Buffer.ACC, 0, p1_addr, p1), load(Buffer.ACC, 8, p2_addr, p2)]
    computes = [Instruction(Opcode.GEMM, requant=1, bias=1, a_vector=1, unsigned_a=unsigned_a, m=m, k=k, n=n,
                            a_addr=20, b_addr=0, out_addr=4, param_addr=0),
                Instruction(Opcode.GEMM, requant=1, bias=1, a_vector=1, m=m, k=n, n=3,
                            a_addr=4, b_addr=40, out_addr=8, param_addr=8)]
    run(ddr, loads, computes, [store(Buffer.VECTOR, 8, out_addr, m, 3)])
    hidden = gemm.linear(a, w1, bias, mult, shift)
    np.testing.assert_array_equal(ddr.get(out_addr, (m, 3), np.int8), gemm.linear(hidden, w2, bias2, mult2, shift2))
    machine = GoldenMachine(CONFIG)
    with pytest.raises(InvalidOperandError):
        machine.run([isa.encode(Instruction(Opcode.GEMM, requant=1, residual=1, a_vector=1, m=1, k=1, n=1)),
                     *finish_words()], np.zeros(64, np.uint8))
    vector_units = isa.buffer_bytes(CONFIG, Buffer.VECTOR) // ADDR_UNIT
    with pytest.raises(AddressError):
        machine.run([isa.encode(Instruction(Opcode.GEMM, a_vector=1, m=2, k=16, n=1, a_addr=vector_units - 1)),
                     *finish_words()], np.zeros(64, np.uint8))


def test_gemm_accumulate_into_acc_then_residual():
    m, k, n = 4, 16, 8
    a1, a2, w1, w2 = int8((m, k)), int8((m, k)), int8((k, n)), int8((k, n))
    residual = edge_int8((m, n))
    bias, mult, shift = gemm_params(n)
    ddr = Ddr()
    addrs = [ddr.put(x) for x in (a1, a2, w1, w2, residual)]
    p_addr = ddr.put(isa.pack_gemm_params(bias, mult, shift))
    acc_out, vec_out = ddr.reserve(m * n * 4), ddr.reserve(m * n)
    loads = [load(Buffer.INPUT, 0, addrs[0], a1), load(Buffer.INPUT, 8, addrs[1], a2),
             load(Buffer.WEIGHT, 0, addrs[2], w1), load(Buffer.WEIGHT, 8, addrs[3], w2),
             load(Buffer.VECTOR, 0, addrs[4], residual),
             load(Buffer.ACC, 40, p_addr, isa.pack_gemm_params(bias, mult, shift))]
    computes = [Instruction(Opcode.GEMM, m=m, k=k, n=n, a_addr=0, b_addr=0, acc_addr=16),   # ACC = a1 w1
                Instruction(Opcode.GEMM, accumulate=1, m=m, k=k, n=n, a_addr=8, b_addr=8, acc_addr=16),
                Instruction(Opcode.GEMM, accumulate=1, requant=1, bias=1, residual=1, m=m, k=k, n=n,
                            a_addr=8, b_addr=8, acc_addr=16, out_addr=0, param_addr=40)]
    stores = [store(Buffer.ACC, 16, acc_out, m, n * 4), store(Buffer.VECTOR, 0, vec_out, m, n)]
    run(ddr, loads, computes, stores)
    partial = gemm.matmul(a1, w1) + gemm.matmul(a2, w2)
    np.testing.assert_array_equal(ddr.get(acc_out, (m, n), np.int32), partial)
    want = gemm.linear(a2, w2, partial + bias, mult, shift, residual=residual)
    np.testing.assert_array_equal(ddr.get(vec_out, (m, n), np.int8), want)


# -- vector unit ---------------------------------------------------------------------------------

def test_requant_matches_numerics():
    rows, cols = 3, 12
    acc = RNG.integers(-(1 << 20), 1 << 20, (rows, cols)).astype(np.int32)
    acc[0, 0], acc[0, 1] = (1 << 31) - 1 - 5000, -(1 << 31) + 5000
    bias, mult, shift = gemm_params(cols)
    words = isa.pack_gemm_params(bias, mult, shift)
    ddr = Ddr()
    acc_addr, p_addr, out_addr = ddr.put(acc), ddr.put(words), ddr.reserve(rows * cols)
    run(ddr, [load(Buffer.ACC, 0, acc_addr, acc), load(Buffer.ACC, 20, p_addr, words)],
        [Instruction(Opcode.REQUANT, rows=rows, cols=cols, src_addr=0, dst_addr=2, param_addr=20)],
        [store(Buffer.VECTOR, 2, out_addr, rows, cols)])
    want = requantize(acc.astype(np.int64) + bias, mult, shift)
    np.testing.assert_array_equal(ddr.get(out_addr, (rows, cols), np.int8), want)


def test_softmax_matches_kernel_including_equal_rows():
    rows, cols = 4, 17
    scores = RNG.integers(-3000, 3000, (rows, cols)).astype(np.int32)
    scores[1] = 77  # all-equal row
    params = nlspec.softmax_params(0.002, exp_lut_bits=CONFIG.exp_lut_bits, recip_lut_bits=CONFIG.recip_lut_bits)
    words = isa.pack_softmax_params(params)
    ddr = Ddr()
    s_addr, p_addr, out_addr = ddr.put(scores), ddr.put(words), ddr.reserve(rows * cols)
    run(ddr, [load(Buffer.ACC, 0, s_addr, scores), load(Buffer.ACC, 30, p_addr, words)],
        [Instruction(Opcode.SOFTMAX, rows=rows, cols=cols, src_addr=0, dst_addr=5, param_addr=30)],
        [store(Buffer.VECTOR, 5, out_addr, rows, cols)])
    np.testing.assert_array_equal(ddr.get(out_addr, (rows, cols), np.uint8), nonlinear.softmax(scores, params))


def test_lut_load_then_gelu_matches_kernel():
    x = edge_int8((3, 32))
    table = nlspec.gelu_table(0.05, 0.04)
    ddr = Ddr()
    t_addr, x_addr, out_addr = ddr.put(table), ddr.put(x), ddr.reserve(x.size)
    run(ddr, [load(Buffer.VECTOR, 0, t_addr, table), load(Buffer.VECTOR, 32, x_addr, x)],
        [Instruction(Opcode.LUT_LOAD, lut=isa.LutId.GELU, offset=0, count=256, src_addr=0),
         Instruction(Opcode.GELU, rows=3, cols=32, src_addr=32, dst_addr=40)],
        [store(Buffer.VECTOR, 40, out_addr, 3, 32)])
    np.testing.assert_array_equal(ddr.get(out_addr, x.shape, np.int8), nonlinear.gelu(x, table))


def test_layernorm_matches_kernel_including_constant_row():
    rows, cols = 3, 24
    x = edge_int8((rows, cols))
    x[2] = -7  # zero variance
    params = nlspec.layernorm_params(0.05, RNG.uniform(0.5, 1.5, cols), RNG.normal(0, 0.2, cols), 0.03,
                                     rsqrt_lut_bits=CONFIG.rsqrt_lut_bits)
    words = isa.pack_layernorm_params(params)
    ddr = Ddr()
    x_addr, p_addr, out_addr = ddr.put(x), ddr.put(words), ddr.reserve(x.size)
    run(ddr, [load(Buffer.VECTOR, 0, x_addr, x), load(Buffer.ACC, 0, p_addr, words)],
        [Instruction(Opcode.LAYERNORM, rows=rows, cols=cols, src_addr=0, dst_addr=16, param_addr=0)],
        [store(Buffer.VECTOR, 16, out_addr, rows, cols)])
    np.testing.assert_array_equal(ddr.get(out_addr, x.shape, np.int8), nonlinear.layernorm(x, params))


def test_add_matches_kernel():
    a, b = edge_int8((5, 20)), edge_int8((5, 20))
    params = nlspec.add_params(0.05, 0.11, 0.09)
    words = isa.pack_add_params(params)
    ddr = Ddr()
    a_addr, b_addr, p_addr, out_addr = ddr.put(a), ddr.put(b), ddr.put(words), ddr.reserve(a.size)
    run(ddr, [load(Buffer.VECTOR, 0, a_addr, a), load(Buffer.VECTOR, 10, b_addr, b), load(Buffer.ACC, 0, p_addr, words)],
        [Instruction(Opcode.ADD, rows=5, cols=20, src_addr=0, src2_addr=10, dst_addr=20, param_addr=0)],
        [store(Buffer.VECTOR, 20, out_addr, 5, 20)])
    np.testing.assert_array_equal(ddr.get(out_addr, a.shape, np.int8), nonlinear.add(a, b, params))


# -- top-k and sparse attention ------------------------------------------------------------------

@pytest.mark.parametrize("k", [0, 3, 10])
def test_topk_matches_kernel_with_ties(k):
    rows, n = 3, 10
    scores = RNG.integers(0, 6, (rows, n)).astype(np.uint16)  # many ties
    ddr = Ddr()
    s_addr, out_addr = ddr.put(scores), ddr.reserve(rows * max(k, 1) * 2)
    run(ddr, [load(Buffer.VECTOR, 0, s_addr, scores)],
        [Instruction(Opcode.TOPK, rows=rows, n=n, k=k, src_addr=0, dst_addr=8)],
        [store(Buffer.VECTOR, 8, out_addr, rows, k * 2)] if k else [])
    if k:
        got = ddr.get(out_addr, (rows, k), np.uint16)
        for row in range(rows):
            np.testing.assert_array_equal(got[row], topk.topk(scores[row], k)[0])


@pytest.mark.parametrize("rows", [1, 3, 257])
def test_topk_sum_rows_selects_by_column_sums(rows):
    n, k = 12, 5
    probs = RNG.integers(250, 256, (rows, n)).astype(np.uint8)  # sums near the 16-bit limit, ties
    ddr = Ddr()
    p_addr, out_addr = ddr.put(probs), ddr.reserve(k * 2)
    dst = -(-probs.size // ADDR_UNIT)
    run(ddr, [load(Buffer.VECTOR, 0, p_addr, probs)],
        [Instruction(Opcode.TOPK, rows=rows, n=n, k=k, src_addr=0, dst_addr=dst, sum_rows=1)],
        [store(Buffer.VECTOR, dst, out_addr, 1, k * 2)])
    want = topk.topk(probs.astype(np.int64).sum(0), k)[0]
    np.testing.assert_array_equal(ddr.get(out_addr, (k,), np.uint16), want)


def test_topk_sum_rows_rejects_sums_wider_than_a_score():
    with pytest.raises(InvalidOperandError, match="rows <= 257"):
        run(Ddr(64), [], [Instruction(Opcode.TOPK, rows=258, n=1, k=1, sum_rows=1)], [])
    with pytest.raises(InvalidOperandError, match="got rows=0"):
        run(Ddr(64), [], [Instruction(Opcode.TOPK, rows=0, n=1, k=1, sum_rows=1)], [])


def test_gather_copies_indexed_rows():
    n, cols = 9, 20
    source = int8((n, cols))
    indices = np.array([0, 3, 3, 8, 5], dtype=np.uint16)  # any order, repeats allowed
    ddr = Ddr()
    s_addr, i_addr, out_addr = ddr.put(source), ddr.put(indices), ddr.reserve(indices.size * cols)
    run(ddr, [load(Buffer.VECTOR, 0, s_addr, source), load(Buffer.VECTOR, 20, i_addr, indices)],
        [Instruction(Opcode.GATHER, rows=indices.size, cols=cols, n=n, src_addr=0, dst_addr=30, index_addr=20)],
        [store(Buffer.VECTOR, 30, out_addr, indices.size, cols)])
    np.testing.assert_array_equal(ddr.get(out_addr, (indices.size, cols), np.int8), source[indices])


def test_gather_errors():
    indices = np.array([1, 4], dtype=np.uint16)
    ddr = Ddr()
    i_addr = ddr.put(indices)
    with pytest.raises(InvalidOperandError, match=r"GATHER: index 4 \(entry 1 .*outside the 4 source rows") as err:
        run(ddr, [load(Buffer.VECTOR, 0, i_addr, indices)],
            [Instruction(Opcode.GATHER, rows=2, cols=3, n=4, src_addr=1, dst_addr=2, index_addr=0)], [])
    assert err.value.code is ErrorCode.INVALID_OPERAND
    vector_units = isa.buffer_bytes(CONFIG, Buffer.VECTOR) // ADDR_UNIT
    with pytest.raises(AddressError, match="VECTOR access"):
        run(Ddr(64), [], [Instruction(Opcode.GATHER, rows=1, cols=32, n=1, src_addr=vector_units - 1)], [])
    with pytest.raises(InvalidOperandError, match="has_topk"):
        run(Ddr(64), [], [Instruction(Opcode.GATHER, rows=1, cols=1, n=1)], [], config=CONFIG.replace(
            has_sparse_attention=False, has_topk=False))


@pytest.mark.parametrize("zero_scores", [False, True])
def test_package_fuses_the_pruned_rows(zero_scores):
    n, cols, heads = 10, 24, 3
    x = edge_int8((n, cols))
    probs = RNG.integers(0, 256, (heads, n)).astype(np.uint8) * (not zero_scores)
    kept = np.array([1, 4, 7], dtype=np.uint16)
    ddr = Ddr()
    addrs = [ddr.put(a) for a in (x, probs, kept)]
    out_addr = ddr.reserve(cols)
    run(ddr, [load(Buffer.VECTOR, 20 * i, addr, a) for i, (addr, a) in enumerate(zip(addrs, (x, probs, kept)))],
        [Instruction(Opcode.PACKAGE, n=n, cols=cols, k=kept.size, heads=heads, src_addr=0, prob_addr=20,
                     index_addr=40, dst_addr=60)],
        [store(Buffer.VECTOR, 60, out_addr, 1, cols)])
    pruned = np.setdiff1d(np.arange(n), kept)
    want = topk.package_token(x, probs.astype(np.int64).sum(0), pruned)
    np.testing.assert_array_equal(ddr.get(out_addr, (cols,), np.int8), want)
    assert zero_scores == (not want.any())


def test_package_errors():
    kept = np.array([0, 9], dtype=np.uint16)
    ddr = Ddr()
    k_addr = ddr.put(kept)
    with pytest.raises(InvalidOperandError, match=r"PACKAGE: index 9 \(entry 1 .*outside the 4 source rows"):
        run(ddr, [load(Buffer.VECTOR, 0, k_addr, kept)],
            [Instruction(Opcode.PACKAGE, n=4, cols=2, k=2, heads=1, src_addr=1, prob_addr=2, index_addr=0,
                         dst_addr=3)], [])
    with pytest.raises(InvalidOperandError, match="rows <= 257"):
        run(Ddr(64), [], [Instruction(Opcode.PACKAGE, n=4, cols=2, k=2, heads=300)], [])
    with pytest.raises(InvalidOperandError, match="k <= n"):
        run(Ddr(64), [], [Instruction(Opcode.PACKAGE, n=2, cols=2, k=3, heads=1)], [])


@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_sparse_attention_matches_kernel(density):
    n, d = 12, 8
    q, k, v = int8((n, d)), int8((n, d)), int8((n, d))
    mask = (RNG.random((n, n)) < density).astype(np.uint8)
    sm = nlspec.softmax_params(0.01, exp_lut_bits=CONFIG.exp_lut_bits, recip_lut_bits=CONFIG.recip_lut_bits)
    out_scale = quantize_multiplier(0.02)
    words = isa.pack_sparse_attn_params(sm, out_scale.multiplier, out_scale.shift)
    ddr = Ddr()
    addrs = [ddr.put(x) for x in (q, k, v, mask)]
    p_addr, out_addr = ddr.put(words), ddr.reserve(n * d)
    loads = [load(Buffer.VECTOR, 10 * i, addr, x) for i, (addr, x) in enumerate(zip(addrs, (q, k, v, mask)))]
    loads.append(load(Buffer.ACC, 0, p_addr, words))
    run(ddr, loads, [Instruction(Opcode.SPARSE_ATTN, m=n, n=n, d=d, q_addr=0, k_addr=10, v_addr=20, mask_addr=30,
                                 out_addr=40, param_addr=0)],
        [store(Buffer.VECTOR, 40, out_addr, n, d)])
    want = attention.masked_attention(q, k, v, mask.astype(bool), sm, out_scale.multiplier, out_scale.shift)
    np.testing.assert_array_equal(ddr.get(out_addr, (n, d), np.int8), want)


def run_sparse_attention(q, k, v, *, predict, margin=0, mask=None, config=CONFIG, d=None):
    """SPARSE_ATTN on (q, k, v) through the machine; the output and the softmax/requant params."""
    n = q.shape[0]
    d = q.shape[1] if d is None else d
    sm = nlspec.softmax_params(0.004, exp_lut_bits=CONFIG.exp_lut_bits, recip_lut_bits=CONFIG.recip_lut_bits)
    out_scale = quantize_multiplier(0.02)
    words = isa.pack_sparse_attn_params(sm, out_scale.multiplier, out_scale.shift, margin)
    garbage = RNG.integers(0, 2, (n, n)).astype(np.uint8)   # predict=1 ignores what mask_addr holds
    ddr = Ddr()
    operands = (q, k, v, garbage if mask is None else mask.astype(np.uint8))
    addrs = [ddr.put(x) for x in operands]
    p_addr, out_addr = ddr.put(words), ddr.reserve(n * q.shape[1])
    stride = 128   # units of 16 bytes between operands: room for 32 x 64 int8
    loads = [load(Buffer.VECTOR, stride * i, addr, x) for i, (addr, x) in enumerate(zip(addrs, operands))]
    loads.append(load(Buffer.ACC, 0, p_addr, words))
    run(ddr, loads, [Instruction(Opcode.SPARSE_ATTN, m=n, n=n, d=d, q_addr=0, k_addr=stride, v_addr=2 * stride,
                                 mask_addr=3 * stride, out_addr=4 * stride, param_addr=0, predict=int(predict))],
        [store(Buffer.VECTOR, 4 * stride, out_addr, n, q.shape[1])], config=config)
    return ddr.get(out_addr, (n, q.shape[1]), np.int8), sm, out_scale


def numpy_predicted_mask(q, k, margin):
    """Sanger's keep rule written out independently of the golden kernel."""
    q4 = np.clip((q.astype(np.int64) + 8) >> 4, -8, 7)   # round half up by 16, saturate to int4
    k4 = np.clip((k.astype(np.int64) + 8) >> 4, -8, 7)
    pred = q4 @ k4.T
    return pred >= pred.max(axis=1, keepdims=True) - margin


@pytest.mark.parametrize("margin", [0, 5, 40])
def test_sparse_attention_predict_uses_the_run_time_mask(margin):
    n, d = 20, 16
    q, k, v = edge_int8((n, d)), edge_int8((n, d)), int8((n, d))
    got, sm, out_scale = run_sparse_attention(q, k, v, predict=True, margin=margin)
    mask = numpy_predicted_mask(q, k, margin)
    assert mask.all(axis=1).sum() < n and mask.any(axis=1).all()   # sparse, never an empty row
    want = attention.masked_attention(q, k, v, mask, sm, out_scale.multiplier, out_scale.shift)
    np.testing.assert_array_equal(got, want)


def test_sparse_attention_predict_margin_zero_keeps_only_row_maxima_with_ties():
    n, d = 8, 4
    q = np.full((n, d), 16, np.int8)                  # q4 = 1 everywhere
    k = np.zeros((n, d), np.int8)
    k[[2, 5]] = 32                                    # keys 2 and 5 tie for every row's maximum
    k[3] = 24                                         # 24 rounds to 2 as well: a tie in int4
    k[6] = 23                                         # 23 rounds to 1: just below
    v = int8((n, d))
    got, sm, out_scale = run_sparse_attention(q, k, v, predict=True, margin=0)
    mask = np.zeros((n, n), bool)
    mask[:, [2, 3, 5]] = True
    np.testing.assert_array_equal(numpy_predicted_mask(q, k, 0), mask)
    want = attention.masked_attention(q, k, v, mask, sm, out_scale.multiplier, out_scale.shift)
    np.testing.assert_array_equal(got, want)
    unmasked = attention.masked_attention(q, k, v, np.ones((n, n), bool), sm, out_scale.multiplier,
                                          out_scale.shift)
    assert not np.array_equal(want, unmasked)         # the mask mattered


def test_sparse_attention_predict_large_margin_is_dense_attention():
    n, d = 16, 64                                     # d = the presets' sparse_max_head_dim
    q, k, v = edge_int8((n, d)), edge_int8((n, d)), edge_int8((n, d))
    got, sm, out_scale = run_sparse_attention(q, k, v, predict=True, margin=isa_margin_limit() - 1)
    probs = nonlinear.softmax(q.astype(np.int64) @ k.astype(np.int64).T, sm).astype(np.int64)
    np.testing.assert_array_equal(got, requantize(probs @ v.astype(np.int64), out_scale.multiplier, out_scale.shift))


def isa_margin_limit():
    from vitaccel.hw.spec.sparse import PREDICT_MARGIN_LIMIT
    return PREDICT_MARGIN_LIMIT


def test_sparse_attention_predict_zero_reads_the_mask_and_ignores_the_margin():
    n, d = 10, 8
    q, k, v = int8((n, d)), int8((n, d)), int8((n, d))
    mask = RNG.random((n, n)) < 0.4
    got, sm, out_scale = run_sparse_attention(q, k, v, predict=False, margin=(1 << 32) - 1, mask=mask)
    np.testing.assert_array_equal(got, attention.masked_attention(q, k, v, mask, sm, out_scale.multiplier,
                                                                  out_scale.shift))


def test_sparse_attention_rejects_bad_margin_and_head_dim():
    q = int8((4, 8))
    with pytest.raises(InvalidOperandError, match="margin must be below 65536") as err:
        run_sparse_attention(q, q, q, predict=True, margin=isa_margin_limit())
    assert err.value.code is ErrorCode.INVALID_OPERAND
    narrow = CONFIG.replace(sparse_max_head_dim=4)
    with pytest.raises(InvalidOperandError, match=r"1 <= d <= sparse_max_head_dim \(4\); got m=4 n=4 d=8"):
        run_sparse_attention(q, q, q, predict=True, config=narrow)
    with pytest.raises(InvalidOperandError, match="d=0"):
        run_sparse_attention(q, q, q, predict=False, d=0)


# -- malformed programs ----------------------------------------------------------------------------

def finish_words():
    b = ProgramBuilder()
    Pipeline(b).finish()
    return b.words()


def test_program_bin_round_trip_and_finish_only_program():
    words = finish_words()
    assert words_from_bytes(words_to_bytes(words)) == words
    stats = GoldenMachine(CONFIG).run(words_to_bytes(words), np.zeros(16, np.uint8))
    assert stats.instructions[Opcode.FINISH] == 1


def test_illegal_opcode_raises_with_pc():
    words = [isa.encode(Instruction(Opcode.SYNC, queue=Queue.COMPUTE)), 63, *finish_words()]
    with pytest.raises(IllegalInstructionError, match="illegal opcode 63") as err:
        GoldenMachine(CONFIG).run(words, np.zeros(16, np.uint8))
    assert err.value.pc == 1 and err.value.code is ErrorCode.ILLEGAL_INSTRUCTION


def test_ddr_address_out_of_range():
    ddr = Ddr(256)
    ld = Instruction(Opcode.LOAD, buffer=Buffer.VECTOR, sram_addr=0, dram_addr=200, rows=2, row_bytes=64,
                     dram_stride=64, sram_stride=64)
    with pytest.raises(AddressError, match="DDR access") as err:
        run(ddr, [ld], [], [])
    assert err.value.code is ErrorCode.ADDRESS_OUT_OF_RANGE


def test_buffer_address_out_of_range():
    units = isa.buffer_bytes(CONFIG, Buffer.INPUT) // ADDR_UNIT
    op = Instruction(Opcode.GEMM, m=4, k=16, n=4, a_addr=units - 1)
    with pytest.raises(AddressError, match="INPUT access"):
        run(Ddr(64), [], [op], [])


def test_token_deadlock_is_detected():
    words = [isa.encode(Instruction(Opcode.GEMM, m=1, k=1, n=1, pop_prev=1)),  # nobody pushes L2C
             isa.encode(Instruction(Opcode.STORE, buffer=Buffer.VECTOR, rows=1, row_bytes=1, pop_prev=1)),
             isa.encode(Instruction(Opcode.FINISH))]
    with pytest.raises(DeadlockError, match="compute queue at instruction 0 .*pop_prev") as err:
        GoldenMachine(CONFIG).run(words, np.zeros(64, np.uint8))
    assert err.value.code is ErrorCode.DEPENDENCY_DEADLOCK


def test_missing_finish_and_finish_with_pending_work():
    words = [isa.encode(Instruction(Opcode.SYNC, queue=Queue.LOAD))]
    with pytest.raises(MissingFinishError, match="without FINISH"):
        GoldenMachine(CONFIG).run(words, np.zeros(16, np.uint8))
    words = [isa.encode(Instruction(Opcode.FINISH)), isa.encode(Instruction(Opcode.SYNC, queue=Queue.STORE))]
    with pytest.raises(MissingFinishError, match="still queued"):
        GoldenMachine(CONFIG).run(words, np.zeros(16, np.uint8))


def test_missing_unit_and_bad_operands():
    config = CONFIG.replace(has_sparse_attention=False, has_topk=False)
    with pytest.raises(InvalidOperandError, match="has_topk"):
        run(Ddr(64), [], [Instruction(Opcode.TOPK, rows=1, n=4, k=2)], [], config=config)
    with pytest.raises(InvalidOperandError, match="max_k"):
        run(Ddr(64), [], [Instruction(Opcode.GEMM, m=1, k=CONFIG.max_k + 1, n=1)], [])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, (1 << 128) - 1), min_size=1, max_size=6), st.booleans())
def test_random_words_raise_machine_errors_only(words, legal_opcodes):
    if legal_opcodes:  # force a valid opcode and clear reserved bits half of the time
        fixed = []
        for i, word in enumerate(words):
            op = list(Opcode)[word % len(Opcode)]
            used = sum(f.width for name, f in isa.LAYOUTS[op] if name != "reserved")
            fixed.append(((word >> 6) << 6 | op.value) & ((1 << used) - 1))
        words = fixed
    try:
        GoldenMachine(CONFIG).run(words, np.zeros(4096, np.uint8))
    except MachineError as err:
        assert err.code is not ErrorCode.NONE


# -- GEMM with N:M sparse weights (nm=1) -------------------------------------------------------

NM_CONFIG = CONFIG.replace(nm_sparsity=(2, 4))


def nm_operands(k, n, pattern=(2, 4)):
    """A random N:M-sparse int8 W[k, n] and its compressed form."""
    from vitaccel.hw.spec.nm import compress, magnitude_keep_mask

    w = edge_int8((k, n))
    w[~magnitude_keep_mask(w, *pattern)] = 0
    return w, compress(w, *pattern)


def nm_gemm_program(ddr, a, nmw, *, requant, b_unit=4, indices=None, **fields):
    """Loads of A, the compressed B (values, then ``indices`` (default: ``nmw``'s) at the next
    16-byte unit) and parameters; one nm=1 GEMM; the store of its result.
    Returns (loads, gemm, stores, out_addr, (bias, multiplier, shift))."""
    m, k = a.shape
    indices = nmw.indices if indices is None else indices
    n = nmw.values.shape[1]
    layout = isa.nm_weight_layout(k, n, (nmw.n, nmw.m))
    bias, mult, shift = gemm_params(n)
    params = isa.pack_gemm_params(bias, mult, shift)
    loads = [load(Buffer.INPUT, 0, ddr.put(a), a), load(Buffer.WEIGHT, b_unit, ddr.put(nmw.values), nmw.values),
             load(Buffer.WEIGHT, b_unit + layout.indices_offset // ADDR_UNIT, ddr.put(indices), indices),
             load(Buffer.ACC, 64, ddr.put(params), params)]
    out_bytes = 1 if requant else 4
    out_addr = ddr.reserve(m * n * out_bytes)
    op = Instruction(Opcode.GEMM, nm=1, requant=int(requant), bias=1, m=m, k=k, n=n, a_addr=0, b_addr=b_unit,
                     out_addr=8 if requant else 0, acc_addr=0 if requant else 8, param_addr=64, **fields)
    buffer = Buffer.VECTOR if requant else Buffer.ACC
    return loads, op, [store(buffer, 8, out_addr, m, n * out_bytes)], out_addr, (bias, mult, shift)


@pytest.mark.parametrize("pattern", [(2, 4), (1, 4)])
@pytest.mark.parametrize("k", [24, 30])  # 30: a partial last group
def test_gemm_nm_requant_matches_dense_linear_and_counts_executed_macs(pattern, k):
    m, n = 5, 7
    a = edge_int8((m, k))
    w, nmw = nm_operands(k, n, pattern)
    ddr = Ddr()
    loads, op, stores, out_addr, (bias, mult, shift) = nm_gemm_program(ddr, a, nmw, requant=True)
    stats = run(ddr, loads, [op], stores, config=CONFIG.replace(nm_sparsity=pattern))
    np.testing.assert_array_equal(ddr.get(out_addr, (m, n), np.int8), gemm.linear(a, w, bias, mult, shift))
    assert stats.macs == m * -(-k // pattern[1]) * pattern[0] * n


def test_gemm_nm_raw_int32_with_bias_matches_matmul():
    m, k, n = 3, 16, 6
    a = edge_int8((m, k))
    w, nmw = nm_operands(k, n)
    ddr = Ddr()
    loads, op, stores, out_addr, (bias, _, _) = nm_gemm_program(ddr, a, nmw, requant=False)
    run(ddr, loads, [op], stores, config=NM_CONFIG)
    np.testing.assert_array_equal(ddr.get(out_addr, (m, n), np.int32), gemm.matmul(a, w) + bias)


def test_gemm_nm_invalid_operands():
    a = edge_int8((2, 8))
    _, nmw = nm_operands(8, 4)
    for config, fields, match in ((CONFIG, {}, "no nm_sparsity"), (NM_CONFIG, {"b_transposed": 1}, "b_transposed")):
        ddr = Ddr()
        loads, op, stores, _, _ = nm_gemm_program(ddr, a, nmw, requant=True)
        with pytest.raises(InvalidOperandError, match=match):
            run(ddr, loads, [op.replace(**fields)], stores, config=config)
    # Folded into the shape checks: reported before an out-of-range address.
    with pytest.raises(InvalidOperandError, match="no nm_sparsity"):
        run(Ddr(64), [], [Instruction(Opcode.GEMM, nm=1, m=1, k=8, n=1, a_addr=(1 << 15) - 1)], [])
    bad_index = nmw.indices.copy()
    bad_index[0, 0] = 4
    bad_pair = nmw.indices.copy()
    bad_pair[1, 0] = bad_pair[0, 0]
    for indices, match in ((bad_index, "outside the group"), (bad_pair, "position twice")):
        ddr = Ddr()
        loads, op, stores, _, _ = nm_gemm_program(ddr, a, nmw, requant=True, indices=indices)
        with pytest.raises(InvalidOperandError, match=match):
            run(ddr, loads, [op], stores, config=NM_CONFIG)


def test_gemm_nm_address_check_covers_values_and_indices():
    k, n = 64, 16  # values 32 x 16 = 512 bytes, then indices: 1024 bytes from b_addr
    layout = isa.nm_weight_layout(k, n, (2, 4))
    assert (layout.rows, layout.indices_offset, layout.nbytes) == (32, 512, 1024)
    top = isa.buffer_bytes(NM_CONFIG, Buffer.WEIGHT) // ADDR_UNIT
    op = Instruction(Opcode.GEMM, nm=1, m=1, k=k, n=n, out_addr=0)
    # The values alone would fit below the end of WEIGHT; the indices do not.
    with pytest.raises(AddressError, match="WEIGHT"):
        run(Ddr(64), [], [op.replace(b_addr=top - 40)], [], config=NM_CONFIG)
    with pytest.raises(AddressError, match="WEIGHT"):
        run(Ddr(64), [], [op.replace(b_addr=top - 63)], [], config=NM_CONFIG)
