"""The in-place blocked kernels (``linear_into``, ``layernorm_into``, ``softmax_into``) equal the
plain integer kernels bit for bit, with the compiled (Numba) passes and with NumPy alone, on
random and extreme operands, written into strided views of a batch buffer as the golden
machine does."""

import numpy as np
import pytest

from vitaccel.hw.spec.nonlinear import layernorm_params, softmax_params
from vitaccel.hw.spec.numerics import requantize, saturate
from vitaccel.sim.golden import fused, gemm, nonlinear


@pytest.fixture(params=["compiled", "numpy"])
def kernels(request, monkeypatch):
    """Each test runs with the compiled passes (when Numba is installed) and without them."""
    if request.param == "compiled" and fused.kernels() is None:
        pytest.skip("Numba is not installed: only the NumPy path exists")
    monkeypatch.setattr(fused, "ENABLED", request.param == "compiled")
    return request.param


def _views(rng, images, shape, dtype, row_bytes=4096):
    """A (images, *shape) view of ``dtype`` inside a (images, row_bytes) byte buffer, at an offset."""
    memory = np.zeros((images, row_bytes), np.uint8)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    start = 8 * int(rng.integers(1, 16))
    return memory[:, start:start + nbytes].view(dtype).reshape(images, *shape)


def _exact(a, w):
    return np.matmul(a.astype(np.int64), w.astype(np.int64))


def test_linear_into_equals_integer_linear(kernels):
    rng = np.random.default_rng(31)
    for trial in range(40):
        images, m, k, n = int(rng.integers(1, 40)), int(rng.integers(1, 20)), \
            int(rng.choice([1, 17, 64, 300, 1100, 1536])), int(rng.integers(1, 70))   # 1100, 1536: K-chunks
        unsigned = trial % 3 == 0
        a = rng.integers(0, 256, (images, m, k)) if unsigned else rng.integers(-128, 128, (images, m, k))
        a = a.astype(np.uint8 if unsigned else np.int8)
        per_image = trial % 4 == 1
        w = rng.integers(-128, 128, (images, k, n) if per_image else (k, n)).astype(np.int8)
        if trial % 5 == 0:   # the extremes: every product at its largest
            a[...] = 255 if unsigned else -128
            w[...] = -128
        bias = rng.integers(-(1 << 20), 1 << 20, n)
        mult = rng.integers(1 << 20, 1 << 26, n)   # (K 255 128 + |bias|) M < 2^52: the exact float path
        shift = rng.integers(25, 45, n)
        if trial % 7 == 0:   # exact ties of the rounding
            mult[:], shift[:] = 1 << 24, 25
        out = _views(rng, images, (m, n), np.int8, row_bytes=8192)
        assert gemm.linear_into(out, a, w, bias, mult, shift)
        want = requantize(saturate(_exact(a, w) + bias, 32), mult, shift)
        np.testing.assert_array_equal(out, want)


def test_linear_into_declines_what_it_cannot_prove(kernels):
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (2, 3, 1100)).astype(np.int8)
    w = rng.integers(-128, 128, (1100, 4)).astype(np.int8)
    out = np.zeros((2, 3, 4), np.int8)
    args = (np.zeros(4, np.int64), np.full(4, 1 << 30), np.full(4, 40))
    assert not gemm.linear_into(out, a, w, *args)   # (K 2^14) M >= 2^52: float64 would round
    assert not gemm.linear_into(out, a.astype(np.int16), w, *args)   # not 8-bit operands
    assert not gemm.linear_into(out, a[..., :64], w[:64], np.full(4, 1 << 31), *args[1:])   # bias may saturate
    assert not gemm.linear_into(out, a[..., :64], w[:64], args[0], args[1], np.full(4, 50))  # shift > 44
    assert not (out != 0).any()   # nothing written


def test_layernorm_into_equals_integer_layernorm(kernels):
    rng = np.random.default_rng(32)
    for channels, out_scale, images in ((64, 0.05, 300), (7, 0.001, 5), (384, 0.3, 3), (64, 4.0, 2)):
        params = layernorm_params(0.05, rng.uniform(0.2, 3, channels), rng.normal(0, 1, channels), out_scale,
                                  rsqrt_lut_bits=8)
        x = _views(rng, images, (9, channels), np.int8)
        x[...] = rng.integers(-128, 128, x.shape)
        x[0, 0], x[0, 1, ::2], x[-1, 2] = -128, 127, 5   # extremes and a constant row
        want = nonlinear.layernorm(x.astype(np.int64), params)
        out = _views(rng, images, (9, channels), np.int8)
        assert nonlinear.layernorm_into(out, x, params)
        np.testing.assert_array_equal(out, want)
        assert nonlinear.layernorm_into(x, x, params)   # in place, as LAYERNORM src == dst
        np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("shape", [(300, 17, 17), (3, 5, 150), (40, 2, 64)])
def test_softmax_into_equals_integer_softmax(kernels, shape):
    rng = np.random.default_rng(33)
    for scale in (1e-5, 1e-4, 0.02):
        params = softmax_params(scale)
        for dtype in (np.int32, np.int16):
            info = np.iinfo(dtype)
            scores = _views(rng, shape[0], shape[1:], dtype, row_bytes=65536)
            scores[...] = rng.integers(info.min, info.max, shape, endpoint=True)
            scores[0] = rng.integers(-300, 300, shape[1:])
            scores[1, ..., 0], scores[1, ..., 1] = info.max, info.min
            scores[2, 0] = 7   # a row of ties
            out = _views(rng, shape[0], shape[1:], np.uint8, row_bytes=65536)
            assert nonlinear.softmax_into(out, scores, params)
            np.testing.assert_array_equal(out, nonlinear.softmax(scores.astype(np.int64), params))


def test_layernorm_into_declines_partly_overlapping_rows():
    """A destination that overlaps the source shifted (not in place) is left to the plain kernel."""
    rng = np.random.default_rng(34)
    params = layernorm_params(0.05, rng.uniform(0.2, 3, 64), rng.normal(0, 1, 64), 0.05, rsqrt_lut_bits=8)
    memory = rng.integers(0, 256, (4, 4096)).astype(np.uint8)
    x = memory[:, 64:64 + 2 * 64].view(np.int8).reshape(4, 2, 64)
    for start, fits in ((96, False), (0, False), (64, True), (192, True), (4096 - 128, True)):
        out = memory[:, start:start + 2 * 64].view(np.int8).reshape(4, 2, 64)
        assert nonlinear.layernorm_into(out.copy(), x, params) is True   # a separate array: always
        assert nonlinear.layernorm_into(out, x.copy(), params) is True
        assert nonlinear.layernorm_into(out, x, params) is fits, start
        memory[:, 64:192] = rng.integers(0, 256, (4, 128))
    far = memory[:, 1024:1024 + 128].view(np.int8).reshape(4, 2, 64)
    want = nonlinear.layernorm(x.astype(np.int64), params)
    assert nonlinear.layernorm_into(far, x, params)
    np.testing.assert_array_equal(far, want)


def test_add_and_gelu_into_equal_integer_kernels(kernels):
    from vitaccel.hw.spec.nonlinear import AddParams

    rng = np.random.default_rng(35)
    a = _views(rng, 30, (17, 64), np.int8)
    b = _views(rng, 30, (17, 64), np.int8)
    a[...], b[...] = rng.integers(-128, 128, (2, 30, 17, 64))
    a[0], b[1] = -128, 127
    table = rng.integers(-128, 128, 256).astype(np.int8)
    for params in (AddParams(40000, 65535, 16), AddParams(-3, 7, 0), AddParams(1 << 20, -(1 << 20), 29)):
        want = nonlinear.add(a.astype(np.int64), b.astype(np.int64), params)
        out = _views(rng, 30, (17, 64), np.int8)
        assert nonlinear.add_into(out, a, b, params) == (kernels == "compiled")
        if kernels == "compiled":
            np.testing.assert_array_equal(out, want)
            keep = b.copy()
            assert nonlinear.add_into(b, a, b, params)   # in place, as a residual ADD
            np.testing.assert_array_equal(b, want)
            b[...] = keep
    out = _views(rng, 30, (17, 64), np.int8)
    assert nonlinear.gelu_into(out, a, table) == (kernels == "compiled")
    if kernels == "compiled":
        np.testing.assert_array_equal(out, nonlinear.gelu(a.astype(np.int64), table))
