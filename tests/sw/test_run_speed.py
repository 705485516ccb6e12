"""``vitaccel run --json`` compares the device with the float model at the same batch size."""

import json
import textwrap

import numpy as np
import pytest

from vitaccel.sw.cli import main

SMALL_MODEL = """
import torch
from vitaccel.sw.models.vit import VisionTransformer

def build():
    torch.manual_seed(2)
    model = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32,
                              depth=1, num_heads=2, mlp_ratio=2.0)
    return model, (1, 8, 8)
"""


@pytest.fixture(scope="module")
def program_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    model = root / "small_vit.py"
    model.write_text(textwrap.dedent(SMALL_MODEL))
    out = root / "prog"
    assert main(["compile", f"{model}:build", "--config", "tiny", "--calib", "2", "-o", str(out), "--quiet"]) == 0
    return out, model


def _run(capsys, *argv):
    capsys.readouterr()
    assert main(["run", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_reports_batch_and_ratio_against_rebuilt_float_model(program_dir, capsys):
    out, _ = program_dir
    whole = _run(capsys, out, "--images", 10)
    assert whole["images"] == whole["batch"] == 10
    assert whole["seconds"] > 0 and whole["torch_seconds"] > 0
    # the ratio of the unrounded times; the printed seconds are rounded to 0.1 ms
    low = max(whole["seconds"] - 5e-5, 1e-9) / (whole["torch_seconds"] + 5e-5)
    high = (whole["seconds"] + 5e-5) / max(whole["torch_seconds"] - 5e-5, 1e-9)
    assert low - 0.01 <= whole["device_vs_torch"] <= high + 0.01
    assert "rebuilt" in whole["timing"]["torch"] and whole["timing"]["threads"] == 1
    assert "warm-up" in whole["timing"]["device"]
    split = _run(capsys, out, "--images", 10, "--batch", 4)
    assert split["images"] == 10 and split["batch"] == 4
    # the same outputs whatever the batching
    for key in ("int8_top1", "agreement", "logit_cosine", "macs_per_image"):
        assert split[key] == whole[key]


def test_run_falls_back_to_compile_time_torch_figure_when_the_model_is_gone(program_dir, capsys, tmp_path):
    out, model = program_dir
    moved = tmp_path / "moved.py"
    moved.write_text(model.read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    copy = tmp_path / "prog"
    copy.mkdir()
    for path in out.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    manifest["model"]["spec"] = str(tmp_path / "gone.py") + ":build"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = _run(capsys, copy, "--images", 3)
    assert "compile-time" in result["timing"]["torch"] and "cannot rebuild" in result["timing"]["torch"]
    want = manifest["reference"]["torch_seconds_per_image"] * 3
    assert result["torch_seconds"] == pytest.approx(want, rel=0.01, abs=1e-4)
    assert np.isfinite(result["device_vs_torch"])


def test_run_rejects_a_batch_below_one(program_dir, capsys):
    out, _ = program_dir
    assert main(["run", str(out), "--batch", "0"]) == 2
    err = capsys.readouterr().err
    assert "--batch must be at least 1" in err and "Traceback" not in err


@pytest.mark.slow
def test_digits_whole_test_split_in_one_batch_is_within_a_few_times_pytorch(tmp_path, capsys):
    """Acceptance 1's command. A guard, not the goal: image by image the golden machine was
    about 10x PyTorch at batch 1; batched it measured about 3x PyTorch at the same batch on a
    loaded 2-core machine (docs/golden_speed.md)."""
    from vitaccel.sw.models.zoo import DIGITS_CHECKPOINT

    if not DIGITS_CHECKPOINT.is_file():
        pytest.skip("digits-vit checkpoint not trained yet")
    out = tmp_path / "D"
    assert main(["compile", "digits-vit", "--config", "tiny", "-o", str(out), "--quiet"]) == 0
    result = _run(capsys, out)
    assert result["images"] == result["batch"] == 449
    assert result["device_vs_torch"] < 6.0
