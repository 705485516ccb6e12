"""N:M sparse weights through the compiler: magnitude-pruned digits-vit compiles to compressed
weights and ``nm=1`` GEMMs and runs bit-exact on the golden machine; clear errors for bad
options."""

import copy

import numpy as np
import pytest
import torch

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import Opcode
from vitaccel.sw.backend import compile_qgraph
from vitaccel.sw.commands import UserError
from vitaccel.sw.data import images_for
from vitaccel.sw.device import GoldenDevice
from vitaccel.sw.models.zoo import ZOO
from vitaccel.sw.prune.nm import parse_nm, prune_nm
from vitaccel.sw.quantize import quantize_model
from vitaccel.sw.reference import quantize_images, run_reference

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def dense_model():
    torch.manual_seed(0)
    return ZOO["digits-vit"]().eval()  # random weights: bit-exactness does not need training


def quantized(model, config):
    shape = model.input_shape
    return quantize_model(model, shape, images_for(shape, 8, split="train").images, config=config, name="digits-vit")


def gemms(program):
    return [isa.decode(w) for w in program.words if isa.decode(w).opcode is Opcode.GEMM]


@pytest.mark.parametrize("pattern", [(2, 4), (1, 4)])
def test_pruned_digits_vit_runs_nm_gemms_bit_exact(dense_model, pattern):
    config = TINY.replace(nm_sparsity=pattern)
    model = copy.deepcopy(dense_model)
    masks = prune_nm(model, *pattern)
    qgraph = quantized(model, config)
    program = compile_qgraph(qgraph, config)
    sparse = [layer for layer in program.manifest["layers"] if layer["nm"]]
    assert len(sparse) == len(masks.masks) == 4 * len(model.blocks)  # qkv, proj, fc1, fc2 per block
    n, m = pattern
    for layer in sparse:
        assert layer["nm"]["compressed_k"] == -(-layer["nm"]["k"] // m) * n
        rows = int(np.prod(layer["shape"][:-1]))
        assert layer["macs"] == rows * layer["nm"]["compressed_k"] * layer["nm"]["columns"]
    # Only the pruned linears are sparse: attention matmuls, patch embedding and head stay dense.
    ops = gemms(program)
    assert any(op.nm for op in ops) and any(not op.nm for op in ops)
    assert not any(op.nm and op.b_transposed for op in ops)
    assert sum(op.m * n * -(-op.k // m) * op.n for op in ops if op.nm) == sum(layer["macs"] for layer in sparse)
    images = quantize_images(qgraph, images_for(model.input_shape, 3, split="test").images)
    device = GoldenDevice(program)
    got = device.infer_batch(images)
    want = run_reference(qgraph, images, keep_all=False)[qgraph.outputs[0]]
    np.testing.assert_array_equal(got, want)
    assert device.last_stats["macs"] == program.manifest["macs"]  # executed MACs agree


def test_dense_weights_or_config_without_nm_stay_dense(dense_model):
    config = TINY.replace(nm_sparsity=(2, 4))
    program = compile_qgraph(quantized(dense_model, config), config)  # dense weights: nothing to compress
    assert not any(op.nm for op in gemms(program))
    model = copy.deepcopy(dense_model)
    prune_nm(model, 2, 4)
    program = compile_qgraph(quantized(model, TINY), TINY)  # sparse weights, no sparse mode
    assert not any(op.nm for op in gemms(program))
    assert not any(layer["nm"] for layer in program.manifest["layers"])


@pytest.mark.parametrize("text, want", [("2:4", (2, 4)), (" 1:4", (1, 4)), ("4:8", (4, 8))])
def test_parse_nm(text, want):
    assert parse_nm(text) == want


@pytest.mark.parametrize("text", ["2-4", "2:3", "4:4", "a:4", "2:4:8", "0:4", ""])
def test_parse_nm_rejects_bad_patterns(text):
    with pytest.raises(ValueError, match="N:M"):
        parse_nm(text)


def test_compile_nm_option_errors(tmp_path):
    from vitaccel.sw.compile import compile_model

    with pytest.raises(UserError, match="nm_sparsity"):
        compile_model("digits-vit", "tiny", tmp_path / "a", nm="2:4", calib=2)
    with pytest.raises(UserError, match="N:M"):
        compile_model("digits-vit", TINY.replace(nm_sparsity=(2, 4)), tmp_path / "b", nm="2/4", calib=2)
    with pytest.raises(UserError, match="2:4"):
        compile_model("digits-vit", TINY.replace(nm_sparsity=(2, 4)), tmp_path / "c", nm="1:4", calib=2)


def test_compile_nm_option_prunes_and_emits_nm_gemms(tmp_path):
    from vitaccel.sw.compile import compile_model

    program = compile_model("digits-vit", TINY.replace(nm_sparsity=(2, 4)), tmp_path / "p", nm="2:4", calib=2)
    assert program.manifest["model"]["nm_pruning"] == {"n": 2, "m": 4, "layers": 16, "finetuned": False}
    assert sum(1 for layer in program.manifest["layers"] if layer["nm"]) == 16
    assert any(op.nm for op in gemms(program))


def test_bench_deit_s_shapes_and_acceptance_and_plot(tmp_path):
    from vitaccel.sw.bench.pruning import acceptance, deit_s_gemms, plot

    dense, sparse, tokens = deit_s_gemms(), deit_s_gemms(nm=(2, 4)), deit_s_gemms(keep=0.7)
    assert len(dense) == len(sparse) == len(tokens) == 1 + 12 * (4 + 2 * 6) + 1
    assert sum(1 for g in sparse if g[3] == (2, 4)) == 12 * 4  # only the block linears are sparse
    assert sorted({g[0] for g in tokens if g[2] == 1152}) == [69, 98, 139, 197]  # after blocks 3, 6, 9
    records = [{"model": "digits-vit", "method": "dense", "int8_top1": 0.98, "cycles": 300, "engine_cycles": 100,
                "macs": 100},
               {"model": "digits-vit", "method": "nm-2:4", "int8_top1": 0.971, "cycles": 280, "engine_cycles": 70,
                "macs": 50},
               {"model": "digits-vit", "method": "tokens", "int8_top1": 0.969, "cycles": 250, "engine_cycles": 80,
                "macs": 75},
               {"model": "digits-vit", "method": "sparse-attention", "int8_top1": 0.975, "cycles": 290,
                "engine_cycles": 90, "macs": 100, "attention_density": 0.52},
               {"model": "deit-s shapes", "method": "dense", "int8_top1": None, "cycles": 5, "macs": 9}]
    holds = {name: figure["holds"] for name, figure in acceptance(records).items()}
    # Issue 8's N:M bound is on the engine's cycles (70 of 100), not the whole program's (280 of 300).
    assert holds == {"nm-2:4 int8_top1 >= dense - 0.01": True, "nm-2:4 engine cycles <= 0.7 x dense": True,
                     "tokens macs <= 0.75 x dense": True, "tokens int8_top1 >= dense - 0.01": False,
                     "digits-vit sparse-attention int8_top1 >= dense - 0.01": True,
                     "digits-vit sparse-attention cycles < dense": True,
                     "digits-vit sparse-attention density <= 0.5": False}
    plot(records, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    records[1]["engine_cycles"] = 75
    figure = acceptance(records)["nm-2:4 engine cycles <= 0.7 x dense"]
    assert (figure["value"], figure["limit"], figure["holds"]) == (75, 70.0, False)
