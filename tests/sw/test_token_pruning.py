"""EViT token pruning (and SPViT's package token) through the compiler: QGraph ops, lowering,
golden-machine bit-exactness, the compile option and its errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import Opcode
from vitaccel.sim.golden import topk
from vitaccel.sim.golden.machine import GoldenMachine
from vitaccel.sw.backend import BackendError, compile_qgraph
from vitaccel.sw.cli import main
from vitaccel.sw.commands import UserError
from vitaccel.sw.compile import compile_model, token_pruning_model
from vitaccel.sw.data import digits, images_for
from vitaccel.sw.device import GoldenDevice
from vitaccel.sw.models.zoo import get_model
from vitaccel.sw.prune import TokenPruningViT, count_macs
from vitaccel.sw.prune.tokens import parse_token_pruning, prune_tokens, select_tokens
from vitaccel.sw.qgraph import QGraph, QGraphError, QOp, QTensor
from vitaccel.sw.quantize import quantize_model
from vitaccel.sw.reference import OP_SEMANTICS, quantize_images, run_reference

CONFIG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def digits_vit():
    model, shape = get_model("digits-vit")
    return model, shape


def _pruned(digits_vit, package: bool):
    model, shape = digits_vit
    wrapper = TokenPruningViT(copy.deepcopy(model), keep=0.7, package=package)
    return wrapper, quantize_model(wrapper, shape, images_for(shape, 8, split="train").images, config=CONFIG)


@pytest.fixture(scope="module")
def pruned_qgraph(digits_vit):
    """digits-vit (shipped weights, not fine-tuned) pruned at keep 0.7 after blocks 1, 2, 3."""
    return _pruned(digits_vit, package=False)


@pytest.fixture(scope="module")
def pruned_program_all_tensors(pruned_qgraph):
    return compile_qgraph(pruned_qgraph[1], CONFIG, reuse_ddr=False)


def assert_bit_exact_on_every_tensor(qgraph, program, count):
    images = quantize_images(qgraph, digits("test").images[:count])
    reference = run_reference(qgraph, images)
    checked = [t["name"] for t in program.manifest["tensors"] if t["name"] not in qgraph.constants]
    assert any(name.endswith(".kept") for name in checked)
    machine = GoldenMachine(CONFIG)
    spec = program.manifest["inputs"][0]
    for index, image in enumerate(images):
        ddr = program.fresh_ddr()
        ddr[spec["addr"]:spec["addr"] + image.nbytes] = image.view(np.uint8).ravel()
        stats = machine.run(program.words, ddr)
        for name in checked:
            np.testing.assert_array_equal(program.tensor_values(ddr, name), reference[name][index],
                                          err_msg=f"tensor {name}, image {index}")
    assert stats.macs == program.manifest["macs"]


# -- QGraph ops ------------------------------------------------------------------------------------

def test_token_scores_and_topk_reference_follow_the_top_k_engine():
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 4, (3, 2, 9, 9)).astype(np.uint8)  # batch 3, 2 heads: many ties
    scores = OP_SEMANTICS["token_scores"](QOp("token_scores", ["p"], "s"), probs)
    np.testing.assert_array_equal(scores, probs[:, :, 0, 1:].sum(1))
    kept = OP_SEMANTICS["topk"](QOp("topk", ["s"], "i", {"k": 4}), scores)
    for b in range(3):
        np.testing.assert_array_equal(kept[b], topk.topk(scores[b], 4)[0])
    # The sum over heads ranks like EViT's mean: same selection from the float mean.
    mean = torch.from_numpy(probs[:, :, 0, 1:].astype(np.float32)).mean(1)
    np.testing.assert_array_equal(kept, select_tokens(mean, 4).numpy())


def _graph(ops, tensors, inputs=("x",)):
    return QGraph({t.name: t for t in tensors}, ops, list(inputs), [ops[-1].output])


def test_qgraph_validates_token_selection_ops():
    probs = QTensor("p", (4, 9, 9), "uint8", 1 / 255)
    scores = QTensor("s", (8,), "uint16", 1 / 255)
    _graph([QOp("token_scores", ["p"], "s"), QOp("topk", ["s"], "i", {"k": 3})],
           [probs, scores, QTensor("i", (3,), "uint16", 1.0)], ["p"]).verify()
    with pytest.raises(QGraphError, match="k in 0..n"):
        _graph([QOp("topk", ["s"], "i", {"k": 9})], [scores, QTensor("i", (9,), "uint16", 1.0)], ["s"]).verify()
    with pytest.raises(QGraphError, match="overflow a uint16"):
        _graph([QOp("token_scores", ["p"], "s")], [QTensor("p", (258, 9, 9), "uint8", 1.0), scores], ["p"]).verify()
    with pytest.raises(QGraphError, match="must be uint8"):
        _graph([QOp("token_scores", ["p"], "s")], [QTensor("p", (4, 9, 9), "int8", 1.0), scores], ["p"]).verify()
    x = np.zeros((1, 5, 2), np.int8)
    with pytest.raises(QGraphError, match="outside the 5 tokens"):
        OP_SEMANTICS["gather_tokens"](QOp("gather_tokens", ["x", "i"], "y"), x, np.array([[1, 5]], np.uint16))


# -- the float operator ----------------------------------------------------------------------------

def test_prune_tokens_operator_is_a_gather_with_gradients_to_x_only():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 5, requires_grad=True)
    probs = torch.rand(2, 3, 9, 9).softmax(-1)
    kept = select_tokens(probs[:, :, 0, 1:].mean(1), 4)
    want = torch.cat([x[:, :1], torch.gather(x[:, 1:], 1, kept[:, :, None].expand(-1, -1, 5))], 1)
    got = prune_tokens(x, probs, 4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    weights = torch.randn_like(got)
    (grad,) = torch.autograd.grad((got * weights).sum(), x)
    (grad_want,) = torch.autograd.grad((want * weights).sum(), x)
    torch.testing.assert_close(grad, grad_want, rtol=0, atol=0)


# -- compiled programs -----------------------------------------------------------------------------

def test_pruned_digits_vit_is_bit_exact_on_every_tensor(pruned_qgraph, pruned_program_all_tensors):
    counts = pruned_program_all_tensors.manifest["instruction_counts"]
    assert counts["TOPK"] == 3 == counts["GATHER"] and "PACKAGE" not in counts
    assert_bit_exact_on_every_tensor(pruned_qgraph[1], pruned_program_all_tensors, 3)


def test_package_token_is_bit_exact_and_counted(digits_vit):
    wrapper, qgraph = _pruned(digits_vit, package=True)
    assert [op.kind for op in qgraph.ops].count("package_token") == 3
    program = compile_qgraph(qgraph, CONFIG, reuse_ddr=False)
    assert program.manifest["instruction_counts"]["PACKAGE"] == 3
    assert_bit_exact_on_every_tensor(qgraph, program, 2)
    assert program.manifest["macs"] == count_macs(wrapper, digits_vit[1])
    assert [layer["shape"][0] for layer in program.manifest["layers"] if layer["kind"] == "concat"][1:] == \
        wrapper.token_counts(16)[1:]


def test_reduced_token_counts_flow_into_layers_and_macs(digits_vit, pruned_qgraph, pruned_program_all_tensors):
    model, shape = digits_vit
    wrapper, qgraph = pruned_qgraph
    layers = pruned_program_all_tensors.manifest["layers"]
    qkv_rows = [layer["shape"][0] for layer in layers if layer["kind"] == "linear" and layer["shape"][1] == 192]
    assert qkv_rows == wrapper.token_counts(16) == [17, 13, 10, 8]
    assert [layer["shape"] for layer in layers if layer["kind"] == "topk"] == [[12], [9], [7]]
    assert pruned_program_all_tensors.manifest["macs"] == count_macs(wrapper, shape)
    assert count_macs(wrapper, shape) <= 0.75 * count_macs(model, shape)


def test_gather_is_tiled_by_columns_in_a_small_vector_buffer(pruned_qgraph):
    _, qgraph = pruned_qgraph
    config = CONFIG.replace(vector_kib=2)
    program = compile_qgraph(qgraph, config)
    tags = program.tags
    gathers = [i for i, instr in enumerate(program.words) if tags[i].endswith(".gathered")
               and (instr & 0x3F) == Opcode.GATHER.value]
    assert len(gathers) > 3  # more than one column tile per pruning point
    images = quantize_images(qgraph, digits("test").images[:2])
    np.testing.assert_array_equal(GoldenDevice(program).infer_batch(images),
                                  run_reference(qgraph, images, keep_all=False)[qgraph.outputs[0]])


def test_backend_needs_the_top_k_engine_and_reads_scores_only_there(pruned_qgraph):
    with pytest.raises(BackendError, match="has no top-k engine"):
        compile_qgraph(pruned_qgraph[1], CONFIG.replace(has_topk=False, has_sparse_attention=False))
    scores_out = _graph([QOp("token_scores", ["p"], "s")],
                        [QTensor("p", (2, 5, 5), "uint8", 1 / 256), QTensor("s", (4,), "uint16", 1 / 256)], ["p"])
    with pytest.raises(BackendError, match="only topk and package_token may read them"):
        compile_qgraph(scores_out, CONFIG)


# -- options and errors ----------------------------------------------------------------------------

def test_parse_token_pruning():
    assert parse_token_pruning("0.7") == (0.7, None)
    assert parse_token_pruning("0.5@1,3") == (0.5, (1, 3))
    for bad, message in (("x", "not a number"), ("0", r"in \(0, 1\]"), ("0.7@", "no pruning points"),
                         ("0.7@1,b", "block numbers")):
        with pytest.raises(ValueError, match=message):
            parse_token_pruning(bad)


def test_token_pruning_model_errors(digits_vit):
    model, _ = digits_vit
    with pytest.raises(UserError, match="points must be distinct ascending blocks in 1..3"):
        token_pruning_model(model, "0.7@1,4")
    with pytest.raises(UserError, match="points given twice"):
        token_pruning_model(model, "0.7@1", [2])
    with pytest.raises(UserError, match="already prunes tokens"):
        token_pruning_model(TokenPruningViT(model), 0.7)


def test_compile_option_and_cli(tmp_path, capsys):
    with pytest.raises(UserError, match="package_token needs token pruning"):
        compile_model("digits-vit", "tiny", tmp_path / "a", package_token=True)
    assert main(["compile", "digits-vit", "--prune-tokens", "0.7@0", "-o", str(tmp_path / "b"), "--quiet"]) == 2
    assert "points must be distinct ascending blocks" in capsys.readouterr().err
    assert main(["compile", "digits-vit", "--prune-tokens", "0.5@2", "--package-token", "--calib", "4",
                 "-o", str(tmp_path / "c"), "--quiet"]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["model"]["token_pruning"] == {"keep": [0.5], "points": [2], "package": True,
                                                  "tokens_per_block": [17, 17, 10, 10]}
    assert manifest["instruction_counts"]["PACKAGE"] == 1
