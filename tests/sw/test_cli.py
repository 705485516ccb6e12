"""The command line: help that teaches, one-line errors, spec output."""

import json
import subprocess
import sys

import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.sw.cli import main


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitaccel.sw.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("spec", "bench"):
        assert command in out
    assert "Typical session" in out


def test_spec_json_has_config_and_isa(capsys):
    assert main(["spec", "--config", "zcu102", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"] == PRESETS["zcu102"].to_dict()
    assert data["isa"]["opcodes"]
    # Issue 13: two int8 MACs per DSP48E2, >= 3072 MACs per cycle within 2016 DSP48E2.
    assert data["config"]["dsp_packing"] == 2
    assert data["derived"]["macs_per_cycle"] >= 3072
    assert data["derived"]["engine_dsp48e2"] == data["derived"]["macs_per_cycle"] // 2 <= 2016


def test_spec_rejects_a_bad_packing_in_one_line(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**PRESETS["tiny"].to_dict(), "dsp_packing": 2, "block_size": 3}))
    assert main(["spec", "--config", str(path), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vitaccel spec: error: ")
    assert "dsp_packing: 2 pairs the rows" in err


def test_spec_reads_a_config_file(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(PRESETS["tiny"].replace(name="mine", block_size=3).to_json())
    assert main(["spec", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["block_size"] == 3


@pytest.mark.parametrize("args, words", [
    (["spec", "--config", "no-such-config"], "unknown config 'no-such-config'"),
    (["bench", "gemm", "--config", "no-such-config"], "unknown config"),
])
def test_bad_input_is_one_line_without_traceback(args, words):
    result = _cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_invalid_config_file_is_one_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(PRESETS["tiny"].to_dict() | {"block_size": 0}))
    result = _cli("spec", "--config", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "block_size" in result.stderr
