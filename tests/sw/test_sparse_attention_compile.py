"""Sanger sparse attention through the compiler (``--sparse-attention SPEC``): SPEC parsing,
margin calibration, the QGraph rewrite (bit-exact with dense at a keep-everything margin),
SPARSE_ATTN programs bit-exact on the golden machine, composition with token pruning, and
one-line errors."""

import json

import numpy as np
import pytest
import torch

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import Opcode
from vitaccel.hw.spec.sparse import PREDICT_MARGIN_LIMIT, MaskPredictParams
from vitaccel.sim.golden.attention import predict_mask
from vitaccel.sw.backend import compile_qgraph
from vitaccel.sw.data import images_for
from vitaccel.sw.device import GoldenDevice
from vitaccel.sw.models.zoo import ZOO
from vitaccel.sw.prune.sparse_attention import (SparseAttentionSpec, find_attentions, margin_for_density,
                                                predicted_gaps, sparsify_attention)
from vitaccel.sw.quantize import quantize_model
from vitaccel.sw.reference import quantize_images, run_reference

TINY = PRESETS["tiny"]
CALIB = 8


@pytest.fixture(scope="module")
def digits():
    """A digits-vit with random weights (bit-exactness needs no training), its QGraph and
    int8 calibration and test images."""
    torch.manual_seed(0)
    model = ZOO["digits-vit"]().eval()
    shape = model.input_shape
    calib = images_for(shape, CALIB, split="train").images
    qgraph = quantize_model(model, shape, calib, config=TINY, name="digits-vit")
    test = quantize_images(qgraph, images_for(shape, 6, split="test").images)
    return qgraph, quantize_images(qgraph, calib), test


def sparse_attns(program):
    return [instr for instr in map(isa.decode, program.words) if instr.opcode is Opcode.SPARSE_ATTN]


@pytest.mark.parametrize("text, density, margin", [
    ("0.5", 0.5, None), (" density = 0.25 ", 0.25, None), ("1", 1.0, None), ("margin=40", None, 40),
    ("margin=0", None, 0), (0.3, 0.3, None),
])
def test_spec_parses(text, density, margin):
    spec = SparseAttentionSpec.parse(text)
    assert (spec.density, spec.margin) == (density, margin)
    assert SparseAttentionSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text, message", [
    ("0", "density must be in (0, 1]"), ("1.5", "density must be in (0, 1]"), ("-0.2", "density must be"),
    ("margin=-1", "margin must be an integer"), (f"margin={PREDICT_MARGIN_LIMIT}", "margin must be an integer"),
    ("margin=1.5", "is not a number"), ("half", "is not a number"), ("density=0.5,margin=3", "is not a SPEC"),
    ("top=3", "is not a SPEC"),
])
def test_spec_rejects(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SparseAttentionSpec.parse(text)


def test_predicted_gaps_follow_the_golden_rule():
    rng = np.random.default_rng(3)
    q = rng.integers(-128, 128, (2, 19, 16))
    k = rng.integers(-128, 128, (2, 19, 16))
    q[1, :, :] = -128   # -128 everywhere: every score ties at the maximum
    gaps = predicted_gaps(q, k)
    assert gaps.min() == 0 and (gaps.min(axis=-1) == 0).all()
    for margin in (0, 7, 40, 300):
        for head in range(2):
            np.testing.assert_array_equal(gaps[head] <= margin, predict_mask(q[head], k[head], MaskPredictParams(margin)))


def test_margin_for_density_is_the_largest_within_the_target():
    gaps = np.array([0, 0, 1, 1, 1, 3, 5, 5, 8, 9])
    assert margin_for_density(gaps, 0.5) == (2, 0.5)     # 5 of 10 within margin 2; margin 3 keeps 6
    assert margin_for_density(gaps, 0.55) == (2, 0.5)
    assert margin_for_density(gaps, 0.6) == (4, 0.6)
    assert margin_for_density(gaps, 1.0) == (9, 1.0)
    assert margin_for_density(gaps, 0.1) == (0, 0.2)     # margin 0 keeps the two ties: above the target
    assert margin_for_density(np.zeros(7, int), 0.3) == (0, 1.0)


def test_keep_everything_margin_is_bit_exact_with_dense(digits):
    qgraph, calib, test = digits
    sparse, record = sparsify_attention(qgraph, SparseAttentionSpec(margin=PREDICT_MARGIN_LIMIT - 1), calib)
    assert [op.kind for op in sparse.ops].count("sparse_attention") == len(find_attentions(qgraph)) == 4
    assert "softmax" not in {op.kind for op in sparse.ops} and record["mean_density"] == 1.0
    out = qgraph.outputs[0]
    np.testing.assert_array_equal(run_reference(sparse, test, keep_all=False)[out],
                                  run_reference(qgraph, test, keep_all=False)[out])


def test_target_density_program_is_bit_exact_on_the_golden_machine(digits):
    qgraph, calib, test = digits
    sparse, record = sparsify_attention(qgraph, SparseAttentionSpec(density=0.4), calib)
    layers = record["layers"]
    assert len(layers) == 4 and all(0 < layer["density"] <= 0.4 for layer in layers)
    assert record["mean_density"] <= 0.4 and record["calib_images"] == CALIB
    assert len({layer["margin"] for layer in layers}) > 1 or layers[0]["margin"] > 0
    # The calibration density is what the reference's masks keep on the calibration images.
    values = run_reference(sparse, calib)
    first = next(op for op in sparse.ops if op.kind == "sparse_attention")
    gaps = predicted_gaps(values[first.inputs[0]], values[first.inputs[1]])
    assert np.mean(gaps <= layers[0]["margin"]) == pytest.approx(layers[0]["density"], abs=1e-6)
    program = compile_qgraph(sparse, TINY)
    attends = sparse_attns(program)
    heads, tokens, head_dim = sparse.tensors[first.inputs[0]].shape
    assert len(attends) == 4 * heads and all(a.predict == 1 and a.n == tokens and a.d == head_dim for a in attends)
    assert program.manifest["instruction_counts"]["SPARSE_ATTN"] == 4 * heads
    assert not any(layer["kind"] == "softmax" for layer in program.manifest["layers"])
    device = GoldenDevice(program)
    np.testing.assert_array_equal(device.infer_batch(test), run_reference(sparse, test, keep_all=False)[sparse.outputs[0]])
    # The machine executes only the kept scores: fewer MACs than the dense-equivalent count.
    assert device.last_stats["macs"] < program.manifest["macs"]


def test_fixed_margin_and_perf_model(digits):
    from vitaccel.sim.perf import estimate

    qgraph, calib, _ = digits
    sparse, record = sparsify_attention(qgraph, SparseAttentionSpec.parse("margin=20"), calib)
    assert {layer["margin"] for layer in record["layers"]} == {20}
    program = compile_qgraph(sparse, TINY)
    dense = compile_qgraph(qgraph, TINY)
    sparse_run, dense_run = (estimate(TINY, p.words, p.ddr_size) for p in (program, dense))
    # One SPARSE_ATTN per head in place of QK^T, softmax and attn @ v: no softmax, fewer GEMM
    # cycles. (Not fewer cycles in all: since QK^T and its softmax run tile by tile with the
    # scores in ACC, the dense attention of 17 tokens costs less than the unit's byte-wide
    # loads; docs/results.md.)
    assert sparse_run.by_opcode["SPARSE_ATTN"] > 0 and "SOFTMAX" not in sparse_run.by_opcode and dense_run.by_opcode["SOFTMAX"] > 0
    assert sparse_run.by_opcode["GEMM"] < dense_run.by_opcode["GEMM"]


def test_compile_cli_sparse_attention_writes_the_record(tmp_path, capsys):
    from vitaccel.sw.cli import main

    out = tmp_path / "D"
    assert main(["compile", "digits-vit", "--sparse-attention", "0.5", "--calib", "8", "--quiet", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["model"]["sparse_attention"]
    assert record["spec"] == "density=0.5" and len(record["layers"]) == 4
    assert all(set(layer) >= {"name", "margin", "density", "heads", "tokens", "head_dim"} for layer in record["layers"])
    assert manifest["instruction_counts"]["SPARSE_ATTN"] == 16
    capsys.readouterr()
    assert main(["run", str(out), "--images", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["instruction_counts"]["SPARSE_ATTN"] == 16 and result["images"] == 4


def test_composes_with_token_pruning(tmp_path):
    from vitaccel.sw.compile import compile_model

    program = compile_model("digits-vit", TINY, tmp_path / "D", calib=8, prune_tokens="0.7@1,2",
                            sparse_attention=0.5)
    record = program.manifest["model"]["sparse_attention"]
    dense = [layer for layer in record["layers"] if "dense" in layer]
    # Blocks 1 and 2 rank tokens by their attention probabilities: those stay dense.
    assert len(dense) == 2 and all("prune_tokens" in layer["dense"] or "token_scores" in layer["dense"]
                                   for layer in dense)
    sparse = [layer for layer in record["layers"] if "margin" in layer]
    assert len(sparse) == 2 and all(layer["tokens"] < 17 for layer in sparse)   # after pruning
    counts = program.manifest["instruction_counts"]
    assert counts["SPARSE_ATTN"] == 2 * 4 and counts["TOPK"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--sparse-attention", "lots"], "--sparse-attention: 'lots': 'lots' is not a number"),
    (["--sparse-attention", "margin=99999"], "--sparse-attention: margin must be an integer in 0..65535"),
    (["--sparse-attention", "0.5", "--config", "NOSPARSE"], "has no sparse attention unit"),
])
def test_compile_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    from vitaccel.sw.cli import main

    config = tmp_path / "nosparse.json"
    config.write_text(json.dumps({**json.loads(TINY.to_json()), "name": "nosparse", "has_sparse_attention": False}))
    argv = [str(config) if a == "NOSPARSE" else a for a in argv]
    assert main(["compile", "digits-vit", *argv, "-o", str(tmp_path / "D")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "D").exists()


def test_predicted_masks_patch_the_float_attention_and_restore_it(digits):
    from vitaccel.sw.prune.predicted_attention import predicted_masks

    qgraph, calib, _ = digits
    torch.manual_seed(0)
    model = ZOO["digits-vit"]().eval()   # the weights the digits fixture quantized
    x = torch.from_numpy(images_for(model.input_shape, 4, split="test").images)
    with torch.no_grad():
        dense = model(x)
        everything, record = sparsify_attention(qgraph, SparseAttentionSpec(margin=PREDICT_MARGIN_LIMIT - 1), calib)
        with predicted_masks(model, everything, record):
            torch.testing.assert_close(model(x), dense)          # every entry kept: the same attention
        sparse, record = sparsify_attention(qgraph, SparseAttentionSpec(margin=0), calib)
        with predicted_masks(model, sparse, record):
            assert not torch.allclose(model(x), dense)
        torch.testing.assert_close(model(x), dense)              # restored on exit
    with pytest.raises(ValueError, match="2 attention records for 4"):
        with predicted_masks(model, sparse, {**record, "layers": record["layers"][:2]}):
            pass
