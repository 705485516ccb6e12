"""The float IR's verifier and each graph pass on small graphs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitaccel.sw.frontend import capture
from vitaccel.sw.ir import Graph, IRError, Node
from vitaccel.sw.models.vit import VisionTransformer
from vitaccel.sw.passes import (ClassifyLayouts, ComposeLayouts, DeadCodeElimination, EliminateIdentity,
                                ExpandAttention, FoldConstants, FoldScaleIntoMatmul, LowerAten,
                                MatmulTransposeB, PatchEmbedToLinear, run_pipeline)
from vitaccel.sw.passes.layouts import classify, reference_map


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(3)
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=4, embed_dim=16, depth=1,
                             num_heads=2, mlp_ratio=2.0).eval()


@pytest.fixture(scope="module")
def raw_graph() -> Graph:
    return capture(tiny_vit(), (1, 8, 8))


def fresh(raw: Graph) -> Graph:
    return Graph([Node(n.name, n.kind, list(n.inputs), n.shape, dict(n.attrs), n.source) for n in raw.nodes],
                 list(raw.outputs), meta=dict(raw.meta))


def lowered(raw: Graph, upto) -> Graph:
    graph = fresh(raw)
    for make in upto:
        make().run(graph)
        graph.verify()
    return graph


def _const(name: str, shape) -> Node:
    return Node(name, "const", [], tuple(shape), {"value": torch.zeros(shape)})


def test_verifier_catches_use_before_definition():
    graph = Graph([Node("x", "input", [], (1, 4)), Node("y", "gelu", ["z"], (1, 4)),
                   Node("z", "gelu", ["x"], (1, 4))], ["y"])
    with pytest.raises(IRError, match="used before it is defined"):
        graph.verify()


@pytest.mark.parametrize("nodes, outputs, message", [
    ([Node("x", "input", [], (1, 4)), Node("x", "gelu", ["x"], (1, 4))], ["x"], "defined twice"),
    ([Node("x", "input", [], (1, 4)), Node("y", "frobnicate", ["x"], (1, 4))], ["y"], "unknown kind"),
    ([Node("x", "input", [], (1, 4)), Node("y", "add", ["x"], (1, 4))], ["y"], "takes 2..2 inputs"),
    ([Node("x", "input", [], (1, 4))], ["nope"], "not defined"),
    ([Node("x", "input", [], (1, 4)),
      Node("y", "layout", ["x"], (1, 2), {"index": torch.tensor([[0, 9]])})], ["y"], "outside"),
    ([Node("x", "input", [], (1, 4)),
      Node("y", "layout", ["x"], (1, 3), {"index": torch.tensor([[0, 1]])})], ["y"], "index map shape"),
    ([Node("c", "const", [], (2, 2), {"value": torch.zeros(3)})], [], "value has shape"),
])
def test_verifier_catches_broken_graphs(nodes, outputs, message):
    with pytest.raises(IRError, match=message):
        Graph(nodes, outputs).verify()


def test_fold_constants_folds_the_cls_expand(raw_graph):
    graph = fresh(raw_graph)
    assert FoldConstants().run(graph)
    assert not any(n.kind == "aten" and "expand" in str(n.attrs["target"]) for n in graph)
    assert not FoldConstants().run(graph)  # fixed point


def test_lower_aten_maps_every_zoo_op(raw_graph):
    graph = lowered(raw_graph, [FoldConstants, LowerAten])
    kinds = {n.kind for n in graph}
    assert "aten" not in kinds
    assert {"conv_patch", "linear", "layernorm", "gelu", "softmax", "matmul", "scale", "add", "concat",
            "layout"} <= kinds
    with torch.no_grad():
        torch.testing.assert_close(graph.evaluate(torch.ones(1, 1, 8, 8)), tiny_vit()(torch.ones(1, 1, 8, 8)))


def test_eliminate_identity_removes_eval_dropout():
    class WithDropout(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.drop = nn.Dropout(0.1)

        def forward(self, x):
            return self.drop(self.fc(x.flatten(1)))

    graph = capture(WithDropout().eval(), (1, 2, 2))
    LowerAten().run(graph)
    assert graph.count("identity") == 1
    assert EliminateIdentity().run(graph) and graph.count("identity") == 0
    graph.verify()


def test_compose_layouts_collapses_chains(raw_graph):
    graph = lowered(raw_graph, [FoldConstants, LowerAten])
    before = graph.count("layout")
    assert ComposeLayouts().run(graph)
    graph.verify()
    assert graph.count("layout") < before
    assert all(graph.node(n.inputs[0]).kind != "layout" for n in graph if n.kind == "layout")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(graph.evaluate(x), tiny_vit()(x))


def test_fold_scale_moves_the_attention_scale_into_the_matmul(raw_graph):
    graph = lowered(raw_graph, [FoldConstants, LowerAten])
    assert graph.count("scale") == 1
    assert FoldScaleIntoMatmul().run(graph)
    assert graph.count("scale") == 0
    scores = next(n for n in graph if n.kind == "matmul" and graph.users(n.name)[0].kind == "softmax")
    assert scores.attrs["alpha"] == pytest.approx(8 ** -0.5)


def test_patch_embed_becomes_patch_linear(raw_graph):
    graph = lowered(raw_graph, [FoldConstants, LowerAten, ComposeLayouts])
    assert PatchEmbedToLinear().run(graph)
    assert graph.count("conv_patch") == 0 and graph.count("patch_linear") == 1
    assert graph.node(graph.users(next(n.name for n in graph if n.kind == "patch_linear"))[0].name).kind == "concat"


def test_matmul_transpose_b_and_classify_layouts(raw_graph):
    graph = lowered(raw_graph, [FoldConstants, LowerAten, ComposeLayouts])
    assert MatmulTransposeB().run(graph)
    scores = next(n for n in graph if n.kind == "matmul" and n.attrs["transpose_b"])
    assert ClassifyLayouts().run(graph)
    k = graph.node(scores.inputs[1])
    assert k.attrs["pattern"] == ("split_heads", {"num_heads": 2, "chunks": 3, "index": 1})
    assert not ClassifyLayouts().run(graph)


def test_expand_attention_rewrites_sdpa():
    class Sdpa(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 24)

        def forward(self, x):
            q, k, v = self.qkv(x.flatten(2).transpose(1, 2)).reshape(1, 4, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
            return nn.functional.scaled_dot_product_attention(q, k, v)

    model = Sdpa().eval()
    graph = capture(model, (8, 2, 2))
    LowerAten().run(graph)
    assert graph.count("sdpa") == 1
    assert ExpandAttention().run(graph)
    graph.verify()
    assert graph.count("sdpa") == 0 and graph.count("softmax") == 1 and graph.count("matmul") == 2
    x = torch.randn(1, 8, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(graph.evaluate(x), model(x))


def test_dead_code_elimination():
    graph = Graph([Node("x", "input", [], (1, 4)), Node("unused", "gelu", ["x"], (1, 4)),
                   Node("y", "softmax", ["x"], (1, 4))], ["y"])
    assert DeadCodeElimination().run(graph)
    assert [n.name for n in graph] == ["x", "y"]
    assert not DeadCodeElimination().run(graph)


def test_pipeline_reaches_a_fixed_point_and_verifies(raw_graph):
    log: list[str] = []
    graph = run_pipeline(fresh(raw_graph), log=log.append)
    assert log and all(":" in line for line in log)
    graph.verify()


@pytest.mark.parametrize("pattern, shape, params", [
    ("split_heads", (5, 24), {"num_heads": 2, "chunks": 3, "index": 2}),
    ("split_heads", (5, 8), {"num_heads": 4, "chunks": 1, "index": 0}),
    ("merge_heads", (2, 5, 4), {}),
    ("select_token", (5, 8), {"index": 3}),
    ("transpose", (2, 3, 4), {"perm": (0, 2, 1)}),
])
def test_layout_classification_round_trips(pattern, shape, params):
    assert classify(reference_map(pattern, shape, **params), shape) == (pattern, params)


def test_layout_classification_rejects_a_shuffle():
    index = torch.randperm(40, generator=torch.Generator().manual_seed(0)).reshape(5, 8)
    assert classify(index, (5, 8)) is None


def test_fuse_qkv_merges_separate_projections():
    transformers = pytest.importorskip("transformers")
    from vitaccel.sw.passes import PIPELINE, FuseQKV

    torch.manual_seed(5)
    config = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    num_labels=3)
    model = transformers.ViTForImageClassification(config).eval()
    graph = run_pipeline(capture(model, (1, 8, 8)), [p for p in PIPELINE if p is not FuseQKV])
    assert graph.count("linear") == 7
    assert FuseQKV().run(graph)
    graph.verify()
    assert graph.count("linear") == 5
    splits = [n.attrs["pattern"][1] for n in graph if n.kind == "layout" and n.attrs["pattern"][0] == "split_heads"]
    assert sorted(s["index"] for s in splits) == [0, 1, 2] and {s["chunks"] for s in splits} == {3}
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(graph.evaluate(x), model(x).logits, rtol=1e-5, atol=1e-5)
    assert not FuseQKV().run(graph)
