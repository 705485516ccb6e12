"""The batched golden machine and the fast exact kernels equal the one-image machine and the
plain integer kernels bit for bit, errors included."""

import numpy as np
import pytest

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import Buffer, Instruction, Opcode
from vitaccel.hw.spec.nonlinear import AddParams, layernorm_params, softmax_params
from vitaccel.hw.spec.numerics import quantize, requantize, saturate
from vitaccel.sim.golden import fused, gemm, nonlinear
from vitaccel.sim.golden.machine import GoldenMachine, InvalidOperandError, MachineError, RunStats
from vitaccel.sw.backend.emitter import Pipeline, ProgramBuilder
from vitaccel.sw.models.zoo import DIGITS_CHECKPOINT

CONFIG = PRESETS["tiny"]


def _outcome(result):
    """What a run ended with, comparable across runs: statistics or the error's identity."""
    if isinstance(result, MachineError):
        return (type(result), str(result), result.pc, result.code)
    return result.to_dict()


def _single_runs(config, words, ddrs, checksum=None):
    """Each DDR row on a fresh machine, one image at a time: outcomes and final DDRs."""
    ddrs = ddrs.copy()
    outcomes = []
    for row in ddrs:
        try:
            outcomes.append(_outcome(GoldenMachine(config).run(words, row, checksum=checksum)))
        except MachineError as err:
            outcomes.append(_outcome(err))
    return outcomes, ddrs


def _program(loads, computes, stores):
    builder = ProgramBuilder()
    pipeline = Pipeline(builder)
    pipeline.tile(loads, computes, stores)
    pipeline.finish()
    return builder.words()


def _dense(opcode, buffer, unit, addr, rows, row_bytes):
    return Instruction(opcode, buffer=buffer, sram_addr=unit, dram_addr=addr, rows=rows, row_bytes=row_bytes,
                       dram_stride=row_bytes, sram_stride=row_bytes)


# -- the machine -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_program(tmp_path_factory):
    if not DIGITS_CHECKPOINT.is_file():
        pytest.skip("digits-vit checkpoint not trained yet")
    from vitaccel.sw.compile import compile_model

    return compile_model("digits-vit", "tiny", tmp_path_factory.mktemp("digits") / "prog", calib=4)


def _digits_ddrs(program, count):
    from vitaccel.sw.data import images_for
    from vitaccel.sw.device import GoldenDevice

    shape = tuple(program.manifest["model"]["input_shape"])
    images = images_for(shape, count).images[:count]
    codes = quantize(images, program.manifest["inputs"][0]["scale"]).astype(np.int8)
    device = GoldenDevice(program)
    return np.stack([device.input_ddr(code) for code in codes])


def test_digits_batch_equals_one_image_runs(digits_program):
    ddrs = _digits_ddrs(digits_program, 6)
    want_outcomes, want_ddrs = _single_runs(digits_program.config, digits_program.words, ddrs,
                                            digits_program.checksum)
    machine = GoldenMachine(digits_program.config)
    for _ in range(2):   # a second batch on the same machine starts from the buffers the first left
        got = ddrs.copy()
        outcomes = machine.run_batch(digits_program.words, got, checksum=digits_program.checksum)
        assert [_outcome(o) for o in outcomes] == want_outcomes
        assert all(isinstance(o, RunStats) for o in outcomes)
        np.testing.assert_array_equal(got, want_ddrs)
    # through the device: DDR rows it builds itself, constants declared shared (loaded once)
    from vitaccel.sw.device import GoldenDevice

    device = GoldenDevice(digits_program)
    spec, out = digits_program.manifest["inputs"][0], digits_program.manifest["outputs"][0]
    codes = ddrs[:, spec["addr"]:spec["addr"] + int(np.prod(spec["shape"]))].view(np.int8).reshape(-1, *spec["shape"])
    for _ in range(2):
        logits = device.infer_batch(codes)
        assert device.machine._shared_ddr and device.machine._uniform[Buffer.WEIGHT]   # the shared path ran
        nbytes = int(np.prod(out["shape"])) * np.dtype(out["dtype"]).itemsize
        want = want_ddrs[:, out["addr"]:out["addr"] + nbytes].view(out["dtype"]).reshape(logits.shape)
        np.testing.assert_array_equal(logits, want)
        assert [stats for stats in device.batch_stats] == want_outcomes
    # and back to one image on the same machine
    one = ddrs[2].copy()
    assert machine.run(digits_program.words, one, checksum=digits_program.checksum).to_dict() == want_outcomes[2]
    np.testing.assert_array_equal(one, want_ddrs[2])


def test_digits_fast_kernels_equal_integer_kernels(digits_program, monkeypatch):
    """The whole program with every fast path switched off (the integer code of the kernels)
    leaves the same DDR bytes."""
    ddrs = _digits_ddrs(digits_program, 3)
    fast = ddrs.copy()
    GoldenMachine(digits_program.config).run_batch(digits_program.words, fast)
    numpy_only = ddrs.copy()   # the blocked NumPy kernels without the compiled (Numba) passes
    monkeypatch.setattr(fused, "ENABLED", False)
    GoldenMachine(digits_program.config).run_batch(digits_program.words, numpy_only)
    np.testing.assert_array_equal(fast, numpy_only)
    monkeypatch.setattr(nonlinear, "_softmax_unmasked", lambda *args: None)
    monkeypatch.setattr(nonlinear, "_layernorm_float", lambda *args: None)
    monkeypatch.setattr(gemm, "_requantize_float", lambda *args: None)
    monkeypatch.setattr(gemm, "exact_product", lambda a, b: None)
    for name, module in (("linear_into", gemm), ("softmax_into", nonlinear), ("layernorm_into", nonlinear),
                         ("add_into", nonlinear), ("gelu_into", nonlinear)):
        monkeypatch.setattr(module, name, lambda *args: False)
    slow = ddrs.copy()
    GoldenMachine(digits_program.config).run_batch(digits_program.words, slow)
    np.testing.assert_array_equal(fast, slow)


def _gemm_batch(images, rng, *, same_weights, same_params):
    """DDR rows for LOAD A, W, params; GEMM requant+bias; STORE (weights and/or parameters
    differing between images when asked)."""
    m, k, n = 5, 40, 6
    a_addr, w_addr, p_addr, out_addr = 0, 256, 2048, 4096
    ddrs = np.zeros((images, 8192), dtype=np.uint8)
    w0 = rng.integers(-128, 128, (k, n), dtype=np.int8)
    for i in range(images):
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        w = w0 if same_weights else rng.integers(-128, 128, (k, n), dtype=np.int8)
        bias = np.full(n, 100 if same_params else 100 * i, dtype=np.int64)
        mult = np.full(n, 1 << 30, dtype=np.int64)
        shift = np.full(n, 40 if same_params else 38 + i % 4, dtype=np.int64)
        params = isa.pack_gemm_params(bias, mult, shift)
        for addr, value in ((a_addr, a), (w_addr, w), (p_addr, params)):
            raw = np.ascontiguousarray(value).view(np.uint8).ravel()
            ddrs[i, addr:addr + raw.size] = raw
    loads = [_dense(Opcode.LOAD, Buffer.INPUT, 0, a_addr, m, k), _dense(Opcode.LOAD, Buffer.WEIGHT, 0, w_addr, k, n),
             _dense(Opcode.LOAD, Buffer.ACC, 0, p_addr, 1, 3 * n * 4)]
    computes = [Instruction(Opcode.GEMM, requant=1, bias=1, m=m, k=k, n=n, a_addr=0, b_addr=0, out_addr=0,
                            param_addr=0)]
    return _program(loads, computes, [_dense(Opcode.STORE, Buffer.VECTOR, 0, out_addr, m, n)]), ddrs


@pytest.mark.parametrize("same_weights,same_params", [(True, True), (False, True), (True, False), (False, False)])
def test_gemm_batch_with_per_image_weights_and_parameters(same_weights, same_params):
    rng = np.random.default_rng(7)
    words, ddrs = _gemm_batch(5, rng, same_weights=same_weights, same_params=same_params)
    want_outcomes, want_ddrs = _single_runs(CONFIG, words, ddrs)
    outcomes = GoldenMachine(CONFIG).run_batch(words, ddrs)
    assert [_outcome(o) for o in outcomes] == want_outcomes
    np.testing.assert_array_equal(ddrs, want_ddrs)


def test_batch_image_that_faults_stops_alone():
    """GATHER with an index out of range in some images only: those stop there with the error a
    one-image run raises (their DDR as at the fault: the STORE after it never happens), the
    others finish."""
    n, cols, rows = 6, 16, 4
    src_addr, idx_addr, out_addr = 0, 512, 1024
    rng = np.random.default_rng(3)
    ddrs = np.zeros((5, 2048), dtype=np.uint8)
    ddrs[:, out_addr:out_addr + rows * cols] = 0xAB
    for i in range(5):
        source = rng.integers(-128, 128, (n, cols), dtype=np.int8)
        indices = rng.integers(0, n, rows).astype(np.uint16)
        if i in (1, 3):
            indices[i % rows] = n + i   # outside the n source rows
        ddrs[i, src_addr:src_addr + source.size] = source.view(np.uint8).ravel()
        ddrs[i, idx_addr:idx_addr + indices.nbytes] = indices.view(np.uint8)
    words = _program([_dense(Opcode.LOAD, Buffer.VECTOR, 0, src_addr, n, cols),
                      _dense(Opcode.LOAD, Buffer.VECTOR, 20, idx_addr, 1, rows * 2)],
                     [Instruction(Opcode.GATHER, rows=rows, cols=cols, n=n, src_addr=0, dst_addr=30, index_addr=20)],
                     [_dense(Opcode.STORE, Buffer.VECTOR, 30, out_addr, rows, cols)])
    want_outcomes, want_ddrs = _single_runs(CONFIG, words, ddrs)
    outcomes = GoldenMachine(CONFIG).run_batch(words, ddrs)
    assert [_outcome(o) for o in outcomes] == want_outcomes
    assert [isinstance(o, InvalidOperandError) for o in outcomes] == [False, True, False, True, False]
    np.testing.assert_array_equal(ddrs, want_ddrs)
    assert (ddrs[1, out_addr:out_addr + rows * cols] == 0xAB).all()


def test_batch_static_faults_reach_every_image():
    words = _program([], [Instruction(Opcode.GATHER, rows=1, cols=1, n=1, src_addr=(1 << 15) - 1)], [])
    outcomes = GoldenMachine(CONFIG).run_batch(words, np.zeros((3, 64), np.uint8))
    assert len({_outcome(o) for o in outcomes}) == 1 and isinstance(outcomes[0], MachineError)
    assert GoldenMachine(CONFIG).run_batch(words[:-1], np.zeros((2, 64), np.uint8), checksum=1)[0].code.name \
        == "PROGRAM_CHECKSUM"


def test_run_batch_rejects_a_flat_ddr():
    with pytest.raises(TypeError, match="two-dimensional"):
        GoldenMachine(CONFIG).run_batch([], np.zeros(16, np.uint8))


# -- the fast exact GEMM -----------------------------------------------------------------------

def _exact(a, b):
    return np.array(a.astype(object) @ b.astype(object), dtype=np.int64)


@pytest.mark.parametrize("a_dtype", [np.int8, np.uint8])
def test_float32_chunked_matmul_exact_at_the_extremes(a_dtype):
    """Every product at its extreme over the longest K the configs allow: partial sums at the
    float32 limit (-128 x -128 x 1024 = 2^24 per chunk) and past it (chunks summed in float64)."""
    info = np.iinfo(a_dtype)
    longest = max(config.max_k for config in PRESETS.values())
    for k in (1, 513, 514, 515, 1023, 1024, 1025, 2048, longest):
        for va, vb in [(info.min, -128), (info.max, -128), (info.max, 127), (info.min, 127)]:
            a, b = np.full((3, k), va, a_dtype), np.full((k, 2), vb, np.int8)
            got = gemm.exact_product(a, b)
            assert got is not None and got.dtype in (np.float32, np.float64)
            assert (got == k * int(va) * int(vb)).all() and (gemm.matmul(a, b) == k * int(va) * int(vb)).all()
    rng = np.random.default_rng(11)
    for k in (700, 1536, longest):
        a = rng.integers(info.min, int(info.max) + 1, (4, k)).astype(a_dtype)
        b = rng.integers(-128, 128, (k, 3)).astype(np.int8)
        a[:, ::3], b[::2] = info.min, -128
        np.testing.assert_array_equal(gemm.matmul(a, b), _exact(a, b))
        np.testing.assert_array_equal(gemm.matmul(a[None].repeat(2, 0), b), np.stack([_exact(a, b)] * 2))


def test_batched_weights_product_equals_per_image_products():
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (3, 4, 700), dtype=np.int8)
    b = rng.integers(-128, 128, (3, 700, 5), dtype=np.int8)
    np.testing.assert_array_equal(gemm.matmul(a, b), np.stack([_exact(a[i], b[i]) for i in range(3)]))


def _linear_reference(a, w, bias, mult, shift, residual=None):
    acc = saturate(_exact(a, w) + bias, 32)
    out = requantize(acc, mult, shift)
    return out if residual is None else saturate(out + residual, 8)


@pytest.mark.parametrize("unsigned_a", [False, True])
def test_linear_float_requantization_equals_integer(unsigned_a):
    """Random and extreme operands, biases that saturate 32 bits, multipliers and shifts across
    their range (shifts above 44 take the integer path), residuals, ties of the rounding."""
    rng = np.random.default_rng(21)
    for trial in range(60):
        m, k, n = int(rng.integers(1, 6)), int(rng.choice([1, 16, 300, 1100])), int(rng.integers(1, 7))
        a = (rng.integers(0, 256, (m, k)) if unsigned_a else rng.integers(-128, 128, (m, k))).astype(
            np.uint8 if unsigned_a else np.int8)
        w = rng.integers(-128, 128, (k, n)).astype(np.int8)
        if trial % 4 == 0:
            a[:] = 255 if unsigned_a else -128
            w[:] = -128
        bias = rng.integers(-(1 << 31), 1 << 31, n) if trial % 3 == 0 else rng.integers(-5000, 5000, n)
        mult = rng.integers(0, 1 << 31, n)
        shift = rng.integers(1, 63, n) if trial % 2 else rng.integers(20, 45, n)
        if trial % 5 == 0:   # exact ties: v * M = (2j + 1) 2^(shift-1)
            mult[:], shift[:] = 1 << 30, 31
        residual = rng.integers(-128, 128, (m, n)) if trial % 3 == 1 else None
        want = _linear_reference(a, w, bias, mult, shift, residual)
        np.testing.assert_array_equal(gemm.linear(a, w, bias, mult, shift, residual=residual), want)
        np.testing.assert_array_equal(gemm.linear(a, w, bias, mult, shift, residual=residual, dtype=np.int8), want)


# -- fast non-linear paths against the integer code --------------------------------------------

def test_softmax_fast_path_equals_integer_path():
    rng = np.random.default_rng(2)
    assert nonlinear._exp_of_diff(softmax_params(1e-4)) is not None   # the difference table ...
    assert nonlinear._exp_of_diff(softmax_params(1e-5)) is None       # ... and the shift path
    for scale in (1e-5, 1e-4, 0.02, 0.5):
        params = softmax_params(scale)
        scores = rng.integers(-(1 << 31), 1 << 31, (3, 5, 17)).astype(np.int32)
        scores[0] = rng.integers(-50, 50, (5, 17))
        scores[1, 0] = scores[1, 0, 0]   # a row of ties
        np.testing.assert_array_equal(nonlinear.softmax(scores, params),
                                      nonlinear.softmax(scores.astype(np.int64), params))
        # many short rows: worked on transposed
        for shape in ((20, 17, 17), (300, 64), (2, 150, 3)):
            scores = rng.integers(-(1 << 31), 1 << 31, shape).astype(np.int32)
            scores[0] = rng.integers(-3000, 3000, shape[1:])
            scores[1, ..., 0] = (1 << 31) - 1
            scores[1, ..., 1] = -(1 << 31)
            np.testing.assert_array_equal(nonlinear.softmax(scores, params),
                                          nonlinear.softmax(scores.astype(np.int64), params))


def test_layernorm_fast_path_equals_integer_path():
    rng = np.random.default_rng(4)
    for channels, out_scale in ((64, 0.05), (7, 0.001), (384, 0.3)):
        params = layernorm_params(0.05, rng.uniform(0.2, 3, channels), rng.normal(0, 1, channels), out_scale,
                                  rsqrt_lut_bits=8)
        x = rng.integers(-128, 128, (2, 9, channels)).astype(np.int8)
        x[0, 0], x[0, 1, ::2], x[1, 2] = -128, 127, 5   # extremes and a constant row
        np.testing.assert_array_equal(nonlinear.layernorm(x, params), nonlinear.layernorm(x.astype(np.int64), params))


def test_add_and_gelu_fast_paths_equal_integer_paths():
    rng = np.random.default_rng(8)
    a, b = rng.integers(-128, 128, (2, 4, 33)).astype(np.int8)
    a[0], b[1] = -128, 127
    for params in (AddParams(40000, 65535, 16), AddParams(-3, 7, 0), AddParams(1 << 20, -(1 << 20), 29)):
        np.testing.assert_array_equal(nonlinear.add(a, b, params),
                                      nonlinear.add(a.astype(np.int64), b.astype(np.int64), params))
    big_a, big_b = rng.integers(-128, 128, (2, 2, nonlinear._ADD_TABLE_MIN)).astype(np.int8)   # the table path
    big_a[0, :300], big_b[1, :300] = -128, 127
    for params in (AddParams(40000, 65535, 16), AddParams(-3, 7, 0)):
        np.testing.assert_array_equal(nonlinear.add(big_a, big_b, params),
                                      nonlinear.add(big_a.astype(np.int64), big_b.astype(np.int64), params))
    table = rng.integers(-128, 128, 256).astype(np.int8)
    np.testing.assert_array_equal(nonlinear.gelu(a, table), nonlinear.gelu(a.astype(np.int64), table))


def test_normalize_float_path_equals_shifts(monkeypatch):
    rng = np.random.default_rng(12)
    big = (rng.integers(-(1 << 40), 1 << 40, 4000), rng.integers(16, 60, 4000))        # right shifts
    small = (np.concatenate([rng.integers(-70, 70, 4000), [1, -1, 3, -3, 5, -5]]),
             np.concatenate([rng.integers(-10, 60, 4000), [17, 17, 17, 17, 18, 18]]))  # and exact halves
    edge = (np.array([(1 << 50) - 1, -(1 << 50)]), np.array([16, 80]))
    # the float path must serve these: the integer shifts are not reachable
    monkeypatch.setattr(nonlinear, "round_shift", None)
    for x, exponent in (big, small):
        got = nonlinear.normalize(x, exponent, 16)
        want = [(int(v) + (1 << (int(e) - 17))) >> (int(e) - 16) if e > 16 else int(v) << (16 - int(e))
                for v, e in zip(x, exponent)]
        assert got.tolist() == want
    monkeypatch.undo()
    x, exponent = edge   # a shift past 62: the integer path and its error
    with pytest.raises(ValueError, match="shift must be in 0..62"):
        nonlinear.normalize(x, exponent, 16)


def test_shared_weights_then_per_image_weights_in_the_same_place():
    """A LOAD from a range declared shared makes WEIGHT bytes the same for every image; a later
    LOAD of per-image data to the same place must end that (the second GEMM differs per image)."""
    rng = np.random.default_rng(9)
    m, k, n = 3, 32, 5
    images, a_addr, w_addr, w2_addr, p_addr = 4, 0, 256, 512, 1024
    ddrs = np.zeros((images, 4096), dtype=np.uint8)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    params = isa.pack_gemm_params(np.zeros(n, np.int64), np.full(n, 1 << 30, np.int64), np.full(n, 36, np.int64))
    for i in range(images):
        for addr, value in ((a_addr, rng.integers(-128, 128, (m, k), dtype=np.int8)), (w_addr, w),
                            (w2_addr, rng.integers(-128, 128, (k, n), dtype=np.int8)), (p_addr, params)):
            raw = np.ascontiguousarray(value).view(np.uint8).ravel()
            ddrs[i, addr:addr + raw.size] = raw
    gemm_op = Instruction(Opcode.GEMM, requant=1, bias=1, m=m, k=k, n=n, a_addr=0, b_addr=0, out_addr=0, param_addr=0)
    builder = ProgramBuilder()
    pipeline = Pipeline(builder)
    common = [_dense(Opcode.LOAD, Buffer.INPUT, 0, a_addr, m, k), _dense(Opcode.LOAD, Buffer.ACC, 0, p_addr, 1, 3 * n * 4)]
    pipeline.tile(common + [_dense(Opcode.LOAD, Buffer.WEIGHT, 0, w_addr, k, n)], [gemm_op],
                  [_dense(Opcode.STORE, Buffer.VECTOR, 0, 2048, m, n)])
    pipeline.tile([_dense(Opcode.LOAD, Buffer.WEIGHT, 0, w2_addr, k, n)], [gemm_op],
                  [_dense(Opcode.STORE, Buffer.VECTOR, 0, 2560, m, n)])
    pipeline.finish()
    words = builder.words()
    want_outcomes, want_ddrs = _single_runs(CONFIG, words, ddrs)
    machine = GoldenMachine(CONFIG)
    outcomes = machine.run_batch(words, ddrs, shared=[(w_addr, w_addr + k * n), (p_addr, p_addr + 3 * n * 4)])
    assert [_outcome(o) for o in outcomes] == want_outcomes
    np.testing.assert_array_equal(ddrs, want_ddrs)
    assert machine._uniform[Buffer.WEIGHT] == []   # the per-image LOAD ended the shared range
    assert len({ddrs[i, 2560:2560 + m * n].tobytes() for i in range(images)}) == images
