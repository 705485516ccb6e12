"""HuggingFace ViT and DeiT classifiers (DeiT with and without the distillation token) compile
and run: int8 logits against the float model's on a few shapes, through the CLI's paths.

HF's DeiT initialises its class and distillation tokens and position embeddings to zero; an
untrained model then has class tokens made of sub-LSB attention outputs, which per-tensor
int8 cannot hold (trained checkpoints do not look like that). The DeiT cases therefore give
those three parameters ViT's initialisation (truncated normal, std 0.02).
"""

from __future__ import annotations

import json
import textwrap

import pytest

transformers = pytest.importorskip("transformers")

MODELS = textwrap.dedent("""\
    import torch
    import transformers
    from transformers import DeiTConfig, ViTConfig


    def vit(image=32, patch=4, width=64, depth=2, heads=2, channels=3, labels=10):
        torch.manual_seed(0)
        config = ViTConfig(image_size=image, patch_size=patch, hidden_size=width, num_hidden_layers=depth,
                           num_attention_heads=heads, intermediate_size=2 * width, num_labels=labels,
                           num_channels=channels)
        return transformers.ViTForImageClassification(config).eval(), (1, channels, image, image)


    def _deit(cls, image, patch, width, depth, heads, labels):
        torch.manual_seed(0)
        config = DeiTConfig(image_size=image, patch_size=patch, hidden_size=width, num_hidden_layers=depth,
                            num_attention_heads=heads, intermediate_size=2 * width, num_labels=labels)
        model = cls(config).eval()
        embeddings = model.deit.embeddings
        for parameter in (embeddings.cls_token, embeddings.distillation_token, embeddings.position_embeddings):
            torch.nn.init.trunc_normal_(parameter, std=0.02)
        return model, (3, image, image)


    def acceptance():   # issue 17's acceptance model
        return vit()


    def vit_narrow():
        return vit(image=24, patch=6, width=48, depth=1, heads=3, channels=1, labels=7)


    def deit():
        return _deit(transformers.DeiTForImageClassification, 32, 8, 48, 2, 3, 5)


    def deit_distilled():
        return _deit(transformers.DeiTForImageClassificationWithTeacher, 32, 8, 48, 2, 3, 5)


    def deit_distilled_deeper():
        return _deit(transformers.DeiTForImageClassificationWithTeacher, 16, 4, 64, 3, 4, 10)
""")


@pytest.fixture(scope="module")
def models_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "hf_models.py"
    path.write_text(MODELS)
    return path


@pytest.mark.parametrize("function, min_cosine", [
    ("acceptance", 0.97), ("vit_narrow", 0.95), ("deit", 0.97), ("deit_distilled", 0.95),
    ("deit_distilled_deeper", 0.95),
])
def test_hf_classifier_compiles_and_runs(models_file, tmp_path, monkeypatch, capsys, function, min_cosine):
    """compile + run through the CLI; the same result from another working directory (the
    program carries its float reference outputs and no relative path)."""
    from vitaccel.sw.cli import main

    out = tmp_path / "program"
    assert main(["compile", f"{models_file}:{function}", "--config", "tiny", "-o", str(out), "--quiet"]) == 0
    cosines = []
    for cwd in (tmp_path, models_file.parent):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        assert main(["run", str(out), "--images", "4", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["images"] == 4
        cosines.append(result["logit_cosine"])
    assert cosines[0] == cosines[1]
    assert cosines[0] >= min_cosine, cosines
