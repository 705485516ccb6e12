"""``vitaccel compile`` and ``vitaccel run`` end to end, through the CLI entry point."""

import json
import textwrap
import time

import pytest

from vitaccel.sw.cli import main
from vitaccel.sw.models.zoo import DIGITS_CHECKPOINT

SMALL_MODEL = """
import torch
from vitaccel.sw.models.vit import VisionTransformer

def build():
    torch.manual_seed(1)
    model = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32,
                              depth=2, num_heads=2, mlp_ratio=2.0)
    return model, (1, 8, 8)
"""

SORTING_MODEL = """
import torch

class Sorter(torch.nn.Module):
    def forward(self, x):
        return torch.sort(x.flatten(1), dim=1).values[:, :10]

def build():
    return Sorter(), (1, 8, 8)
"""


def run_json(capsys, *argv):
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small_vit.py"
    path.write_text(textwrap.dedent(SMALL_MODEL))
    return path


def test_compile_and_run_user_model(tmp_path, capsys, small_model_file):
    out = tmp_path / "prog"
    assert main(["compile", f"{small_model_file}:build", "--config", "tiny", "--calib", "4", "-o", str(out),
                 "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().err
    result = run_json(capsys, "run", str(out), "--backend", "golden", "--images", "12", "--json")
    for key in ("images", "float_top1", "int8_top1", "agreement", "logit_cosine", "seconds"):
        assert key in result
    assert result["images"] == 12
    assert 0.0 <= result["float_top1"] <= 1.0 and 0.0 <= result["int8_top1"] <= 1.0
    assert result["logit_cosine"] > 0.8  # int8 tracks float closely even for a random model
    assert result["macs_per_image"] > 0


def test_run_rejects_board_backend_and_missing_program(tmp_path, capsys, small_model_file):
    out = tmp_path / "prog"
    assert main(["compile", f"{small_model_file}:build", "--config", "tiny", "--calib", "2", "-o", str(out),
                 "--quiet"]) == 0
    assert main(["run", str(out), "--backend", "board", "--images", "1"]) == 2
    assert "needs PYNQ" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nothing"), "--images", "1"]) == 2
    assert "missing program.bin" in capsys.readouterr().err


def test_unsupported_operator_is_named(tmp_path, capsys):
    path = tmp_path / "sorter.py"
    path.write_text(textwrap.dedent(SORTING_MODEL))
    code = main(["compile", f"{path}:build", "--config", "tiny", "--calib", "2", "-o", str(tmp_path / "o"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "sort" in err and "Traceback" not in err


@pytest.mark.skipif(not DIGITS_CHECKPOINT.is_file(), reason="digits-vit checkpoint not trained yet")
def test_digits_vit_int8_tracks_float_on_a_test_subset(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["compile", "digits-vit", "--config", "tiny", "--calib", "16", "-o", str(out), "--quiet"]) == 0
    result = run_json(capsys, "run", str(out), "--backend", "golden", "--images", "80", "--json")
    assert result["float_top1"] > 0.5  # a trained model, far above chance (0.1)
    assert result["int8_top1"] >= result["float_top1"] - 0.04
    assert result["agreement"] >= 0.9


@pytest.mark.slow
def test_deit_small_compiles_within_60_seconds_and_runs(tmp_path, capsys):
    out = tmp_path / "deit"
    start = time.perf_counter()
    assert main(["compile", "deit-small", "--config", "zcu102", "-o", str(out), "--quiet"]) == 0
    assert time.perf_counter() - start < 60
    result = run_json(capsys, "run", str(out), "--backend", "golden", "--images", "2", "--json")
    assert result["images"] == 2 and result["logit_cosine"] > 0.5
