"""Frontend: torch.export capture of zoo, HuggingFace and user models; unsupported operators."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from vitaccel.sw.commands import UserError
from vitaccel.sw.frontend import UnsupportedOperator, capture
from vitaccel.sw.models.vit import VisionTransformer
from vitaccel.sw.models.zoo import get_model
from vitaccel.sw.passes import CANONICAL_KINDS, lower_model


def tiny_vit(**overrides) -> VisionTransformer:
    torch.manual_seed(1)
    options = dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=16, depth=2,
                   num_heads=2, mlp_ratio=2.0)
    options.update(overrides)
    return VisionTransformer(**options).eval()


def tiny_hf_vit():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(2)
    config = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=16,
                                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                    num_labels=10)
    return transformers.ViTForImageClassification(config).eval()


def _canonical_kinds(graph) -> set[str]:
    return {node.kind for node in graph}


def test_zoo_vit_lowers_to_canonical_ir_equal_to_torch():
    model = tiny_vit()
    graph = lower_model(model, (1, 8, 8))
    assert _canonical_kinds(graph) <= CANONICAL_KINDS
    assert graph.count("softmax") == 2 and graph.count("layernorm") == 5 and graph.count("gelu") == 2
    patterns = sorted(n.attrs["pattern"][0] for n in graph if n.kind == "layout")
    assert patterns == ["merge_heads"] * 2 + ["select_token"] + ["split_heads"] * 6
    images = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(graph.evaluate(images), model(images), rtol=1e-5, atol=1e-5)


def test_hf_vit_lowers_to_the_same_form_as_the_zoo_vit():
    model = tiny_hf_vit()
    graph = lower_model(model, (1, 8, 8))
    zoo = lower_model(tiny_vit(), (1, 8, 8))
    core = ("matmul", "softmax", "layernorm", "gelu", "add", "concat", "patch_linear")
    assert {k: graph.count(k) for k in core} == {k: zoo.count(k) for k in core}
    assert graph.count("linear") == zoo.count("linear")  # q, k, v projections fused (FuseQKV)
    qkv = [n for n in graph if n.kind == "const" and n.attrs.get("qualified_name", "").endswith(".qkv.weight")]
    assert [n.attrs["qualified_name"] for n in qkv] == [f"vit.layers.{i}.attention.qkv.weight" for i in range(2)]
    images = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(graph.evaluate(images), model(images).logits, rtol=1e-5, atol=1e-5)


def test_source_locations_name_module_and_line():
    graph = capture(tiny_vit(), (1, 8, 8))
    qkv = next(n for n in graph if n.kind == "aten" and "linear" in str(n.attrs["target"])
               and "qkv" in n.source)
    assert qkv.source.startswith("blocks.0.attn.qkv")


class SortingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, 8, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return torch.sort(x, dim=1).values[:, 0]


def test_unsupported_operator_names_op_and_source():
    with pytest.raises(UnsupportedOperator) as info:
        lower_model(SortingModel(), (1, 8, 8))
    message = str(info.value)
    assert "sort" in message
    assert "test_frontend.py" in message and "torch.sort" in message
    assert isinstance(info.value, UserError)


def test_model_file_function_with_shape(tmp_path: Path):
    source = tmp_path / "mine.py"
    source.write_text(textwrap.dedent("""
        from vitaccel.sw.models.vit import VisionTransformer
        def build():
            return VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3,
                                     embed_dim=8, depth=1, num_heads=2), (1, 8, 8)
        def not_a_model():
            return 42
    """))
    model, shape = get_model(f"{source}:build")
    assert shape == (1, 8, 8) and isinstance(model, VisionTransformer) and not model.training
    with pytest.raises(UserError, match="not a torch.nn.Module"):
        get_model(f"{source}:not_a_model")
    with pytest.raises(UserError, match="has no function 'missing'"):
        get_model(f"{source}:missing")
    with pytest.raises(UserError, match="does not exist"):
        get_model(f"{tmp_path / 'nope.py'}:build")
    with pytest.raises(UserError, match="unknown model 'deit-huge'"):
        get_model("deit-huge")


def test_weights_load_by_timm_names(tmp_path: Path):
    model = tiny_vit()
    names = set(model.state_dict())
    for expected in ("patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.1.norm1.weight",
                     "blocks.1.attn.qkv.weight", "blocks.1.attn.proj.bias", "blocks.1.mlp.fc1.weight",
                     "blocks.1.mlp.fc2.bias", "norm.weight", "head.weight"):
        assert expected in names
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    path = tmp_path / "w.pt"
    torch.save({"model": state}, path)  # DeiT release checkpoints wrap the state dict
    digits, _ = get_model("digits-vit", weights=None)
    with pytest.raises(UserError, match="do not fit"):
        get_model("digits-vit", weights=path)
    torch.save(digits.state_dict(), path)
    reloaded, shape = get_model("digits-vit", weights=path)
    assert shape == (1, 8, 8)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), digits.state_dict().values()))


def test_deit_shapes():
    model, shape = get_model("deit-tiny")
    assert shape == (3, 224, 224)
    params = sum(p.numel() for p in model.parameters())
    assert 5.5e6 < params < 5.9e6  # DeiT-T: 5.7 M
    assert len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 3
    assert model.pos_embed.shape == (1, 197, 192)


def test_sort_in_a_model_file_fails_with_a_user_error(tmp_path: Path):
    source = tmp_path / "sorter.py"
    source.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class Sorter(nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = nn.Linear(8, 4)
            def forward(self, x):
                return self.proj(torch.sort(x.flatten(2), dim=-1).values.flatten(1))
        def build():
            return Sorter(), (1, 2, 4)
    """))
    model, shape = get_model(f"{source}:build")
    with pytest.raises(UserError) as info:  # the CLI prints a UserError as one line
        lower_model(model, shape)
    assert "sort" in str(info.value) and "sorter.py" in str(info.value)
