"""Post-training quantization: structure of the QGraph, observers, accuracy of digits-vit."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.nonlinear import SOFTMAX_OUTPUT_SCALE
from vitaccel.sw import data
from vitaccel.sw.models.zoo import get_model
from vitaccel.sw.quantize import MinMaxObserver, PercentileObserver, make_observer, quantize_model
from vitaccel.sw.reference import quantize_images, run_reference
from vitaccel.sw.torch_util import torch_threads

#: Calibration images of the digits tests (from the training split: never the test split).
CALIB = 128


def _logits(qgraph, images: np.ndarray) -> np.ndarray:
    out = run_reference(qgraph, quantize_images(qgraph, images), keep_all=False)[qgraph.outputs[0]]
    return out.reshape(len(images), -1).astype(np.float64) * qgraph.tensors[qgraph.outputs[0]].scale


@pytest.fixture(scope="module")
def digits_model():
    return get_model("digits-vit")


@pytest.fixture(scope="module")
def digits_qgraph(digits_model):
    model, shape = digits_model
    return quantize_model(model, shape, data.digits("train").images[:CALIB], method="minmax",
                          config=PRESETS["tiny"], name="digits-vit")


def test_digits_vit_int8_accuracy(digits_model, digits_qgraph):
    """Goal: float >= 0.97 and int8 within 0.5 points; acceptance: int8 >= float - 0.01."""
    model, _ = digits_model
    test = data.digits("test")
    with torch.no_grad(), torch_threads(1):
        float_logits = model(torch.from_numpy(test.images)).numpy()
    int8_logits = _logits(digits_qgraph, test.images)
    float_top1 = float((float_logits.argmax(1) == test.labels).mean())
    int8_top1 = float((int8_logits.argmax(1) == test.labels).mean())
    print(f"digits-vit test split ({len(test)} images): float top-1 {float_top1:.4f}, "
          f"int8 top-1 {int8_top1:.4f}")
    assert float_top1 >= 0.97
    assert int8_top1 >= float_top1 - 0.01
    cosine = np.sum(float_logits * int8_logits, 1) / (
        np.linalg.norm(float_logits, axis=1) * np.linalg.norm(int8_logits, axis=1))
    assert cosine.mean() > 0.97


def test_qgraph_structure(digits_qgraph):
    g = digits_qgraph
    g.verify()
    kinds = [op.kind for op in g.ops]
    assert kinds[:2] == ["im2col", "linear"]
    assert kinds.count("softmax") == 4 and kinds.count("layernorm") == 9 and kinds.count("gelu") == 4
    for op in g.ops:
        out = g.tensors[op.output]
        if op.kind == "softmax":
            assert g.tensors[op.inputs[0]].dtype == "int32" and out.dtype == "uint8"
            assert out.scale == SOFTMAX_OUTPUT_SCALE
        if op.kind == "linear":
            w = g.constants[op.inputs[1]]
            assert w.dtype == np.int8 and np.abs(w.astype(int)).max(axis=0).min() == 127  # per-channel
            assert g.constants[op.inputs[2]].dtype == np.int32
            assert op.source  # every op says where it came from
    assert g.constants["blocks.0.attn.qkv.weight"].shape == (64, 192)
    assert g.tensors[g.outputs[0]].shape == (1, 10)
    assert g.meta["calibration"] == {"method": "minmax", "images": CALIB}


def test_integer_reference_tracks_float_layer_by_layer(digits_model, digits_qgraph):
    """Every int8 activation dequantizes close to the float IR value of the same node."""
    from vitaccel.sw.passes import lower_model

    model, shape = digits_model
    graph = lower_model(model, shape)
    images = data.digits("test").images[:16]
    with torch.no_grad(), torch_threads(1):
        floats = graph.evaluate(torch.from_numpy(images), keep=True)
    ints = run_reference(digits_qgraph, quantize_images(digits_qgraph, images))
    checked = 0
    for name, tensor in digits_qgraph.tensors.items():
        if name in floats and tensor.dtype == "int8" and name not in digits_qgraph.constants:
            real = ints[name].astype(np.float64) * tensor.scale
            expected = floats[name].numpy().reshape(real.shape)
            error = np.abs(real - expected).mean() / (np.abs(expected).mean() + 1e-9)
            assert error < 0.15, f"{name}: relative error {error:.3f}"
            checked += 1
    assert checked > 30


def test_percentile_clips_outliers_and_quantizes():
    observer_a, observer_b = MinMaxObserver(), PercentileObserver(99.0)

    class Fake:
        name = "n"

    values = torch.cat([torch.linspace(-1, 1, 10001), torch.tensor([50.0])])
    observer_a(Fake, values)
    observer_b(Fake, values)
    assert observer_a.amax("n") == 50.0
    assert 0.97 < observer_b.amax("n") < 1.0
    with pytest.raises(ValueError, match="calibration method"):
        make_observer("kl")


def test_hf_vit_quantizes_and_runs():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(4)
    config = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    num_labels=5)
    model = transformers.ViTForImageClassification(config).eval()
    images = np.random.default_rng(0).normal(size=(24, 1, 8, 8)).astype(np.float32)
    qgraph = quantize_model(model, (1, 8, 8), images[:16], method="percentile")
    assert [op.kind for op in qgraph.ops].count("split_heads") == 3
    with torch.no_grad():
        expected = model(torch.from_numpy(images[16:])).logits.numpy()
    got = _logits(qgraph, images[16:])
    cosine = np.sum(expected * got, 1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1))
    assert cosine.mean() > 0.9


@pytest.mark.slow
def test_deit_small_captures_and_quantizes_quickly(digits_qgraph):
    """Warm (torch.export and scipy already imported by the digits fixture: ~10 s once per process)."""
    model, shape = get_model("deit-small")
    images = data.generated_images(2, shape).images
    start = time.perf_counter()
    qgraph = quantize_model(model, shape, images, name="deit-small")
    seconds = time.perf_counter() - start
    print(f"deit-small capture + calibration + quantization: {seconds:.1f} s")
    assert [op.kind for op in qgraph.ops].count("softmax") == 12
    # Issue goal: a whole deit-small compile in <= 10 s. This front half alone measured 12.7 s
    # warm on the shared 2-core machine at load ~11; the bound catches regressions (the
    # acceptance limit for the whole compile is 60 s).
    assert seconds < 30
