"""Bad input gets one line: every probe of issue 17 exits 2 with exactly one line
``vitaccel CMD: error: ...`` on stderr, no traceback, and leaves a previous program intact.

The probes run the CLI in-process (an uncaught exception fails the test, as a traceback
would fail the user); a few run it as a subprocess to check stderr as a user sees it. One
digits-vit program on ``tiny`` is compiled per module and copied for each corruption.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import Opcode
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.sw.cli import main

VITACCEL = [sys.executable, "-m", "vitaccel.sw.cli"]


@pytest.fixture(scope="module")
def program_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad-input") / "digits"
    assert main(["compile", "digits-vit", "--config", "tiny", "--calib", "2", "-o", str(out), "--quiet"]) == 0
    return out


@pytest.fixture
def copy(program_dir, tmp_path) -> Path:
    """A private copy of the compiled program to corrupt."""
    return Path(shutil.copytree(program_dir, tmp_path / "copy"))


@pytest.fixture
def user_models(tmp_path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(
        "import torch\n"
        "from vitaccel.sw.models.zoo import build_digits_vit\n"
        "def raises():\n    raise RuntimeError('no weights here')\n"
        "def string_shape():\n    return build_digits_vit(), 'abc'\n"
        "def zero_shape():\n    return build_digits_vit(), (1, 0, 8)\n"
        "def negative_shape():\n    return build_digits_vit(), (1, -8, 8)\n"
        "class Two(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.a = torch.nn.Linear(64, 4)\n"
        "    def forward(self, x):\n        y = self.a(x.flatten(1))\n        return y, 2 * y\n"
        "def two_outputs():\n    return Two(), (1, 8, 8)\n")
    return path


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _one_line_error(capsys, argv: list[str], command: str, *needles: str) -> str:
    """Run ``argv``: exit 2, exactly one stderr line ``vitaccel COMMAND: error: ...`` holding ``needles``."""
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"vitaccel {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def _subprocess_one_line(argv: list[str], cwd: Path | None = None) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run([*VITACCEL, *argv], capture_output=True, text=True, cwd=cwd, timeout=300)
    seconds = time.perf_counter() - started
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    return done.stderr.strip(), seconds


# -- corrupted programs -----------------------------------------------------------------------

@pytest.mark.parametrize("cut, needles", [(16, ("program.bin", "instructions", "manifest.json says")),
                                          (5, ("program.bin", "not a whole number of 16-byte"))])
def test_truncated_program_bin(capsys, copy, cut, needles):
    blob = (copy / "program.bin").read_bytes()
    (copy / "program.bin").write_bytes(blob[:-cut])
    _one_line_error(capsys, ["run", str(copy)], "run", *needles)


@pytest.mark.parametrize("change, word", [(-16, "truncated"), (16, "too long")])
def test_ddr_bin_wrong_size(capsys, copy, change, word):
    blob = (copy / "ddr.bin").read_bytes()
    (copy / "ddr.bin").write_bytes(blob[:change] if change < 0 else blob + bytes(change))
    _one_line_error(capsys, ["run", str(copy)], "run", "ddr.bin", word)


@pytest.mark.parametrize("text, needles", [
    (None, ("manifest.json", "not valid JSON")),
    ("[]", ("manifest.json", "expected a JSON object, got list")),
    ("drop:model", ("manifest.json", "missing 'model'")),
    ("drop:config", ("manifest.json", "missing 'config'")),
    ("config:operand_width=7", ("manifest.json", "config", "operand_width")),
])
def test_bad_manifest(capsys, copy, text, needles):
    path = copy / "manifest.json"
    if text is None:
        path.write_text(path.read_text()[: len(path.read_text()) // 2])
    elif text.startswith("drop:"):
        manifest = json.loads(path.read_text())
        del manifest[text[5:]]
        path.write_text(json.dumps(manifest))
    elif text.startswith("config:"):
        manifest = json.loads(path.read_text())
        manifest["config"]["operand_width"] = 7
        path.write_text(json.dumps(manifest))
    else:
        path.write_text(text)
    _one_line_error(capsys, ["run", str(copy)], "run", *needles)


def test_corrupt_reference_outputs(capsys, copy):
    (copy / "reference.npy").write_bytes(b"not numpy")
    _one_line_error(capsys, ["run", str(copy)], "run", "reference.npy")


def test_single_bit_flips_stop_with_program_checksum(capsys, copy, program_dir):
    """A sample of single-bit flips anywhere in program.bin (CRC-32 detects every one): the
    golden machine stops with PROGRAM_CHECKSUM before executing; one line through the CLI."""
    from vitaccel.sw.device import DeviceError, GoldenDevice
    from vitaccel.sw.program import CompiledProgram, load_program

    program = load_program(program_dir)
    image = np.zeros(program.manifest["inputs"][0]["shape"], np.int8)
    rng = random.Random(17)
    for _ in range(60):
        words = list(program.words)
        words[rng.randrange(len(words))] ^= 1 << rng.randrange(128)
        device = GoldenDevice(CompiledProgram(words, program.ddr_image, program.manifest, reference=program.reference))
        with pytest.raises(DeviceError, match="PROGRAM_CHECKSUM") as err:
            device.infer(image)
        assert err.value.code is ErrorCode.PROGRAM_CHECKSUM
    blob = bytearray((copy / "program.bin").read_bytes())
    blob[16 * 3 + 15] ^= 0x80   # the top bit of instruction 3
    (copy / "program.bin").write_bytes(bytes(blob))
    _one_line_error(capsys, ["run", str(copy), "--images", "1"], "run", "PROGRAM_CHECKSUM", "corrupted")


def test_golden_machine_error_names_instruction_and_layer(program_dir):
    """A word that passes the checksum but not the decoder: the error names the code, the
    instruction (index and disassembly) and its layer."""
    from vitaccel.sw.device import DeviceError, GoldenDevice
    from vitaccel.sw.program import load_program

    program = load_program(program_dir)
    layer = program.manifest["layers"][2]
    pc = layer["first_instruction"]
    words = list(program.words)
    words[pc] |= 1 << 127
    with pytest.raises(DeviceError, match=rf"ILLEGAL_INSTRUCTION at instruction {pc} \(layer {layer['name']}") as err:
        GoldenDevice(program.with_words(words)).infer(np.zeros(program.manifest["inputs"][0]["shape"], np.int8))
    assert err.value.pc == pc and "\n" not in str(err.value)


def test_subprocess_probes_have_no_traceback(copy, tmp_path):
    """As a user sees them: a truncated ddr.bin, a flipped bit, -o an existing file (fast)."""
    blob = (copy / "ddr.bin").read_bytes()
    (copy / "ddr.bin").write_bytes(blob[:-16])
    line, _ = _subprocess_one_line(["run", str(copy)])
    assert "ddr.bin" in line
    (copy / "ddr.bin").write_bytes(blob)
    code = bytearray((copy / "program.bin").read_bytes())
    code[16 * 7 + 2] ^= 0x04
    (copy / "program.bin").write_bytes(bytes(code))
    line, _ = _subprocess_one_line(["run", str(copy), "--images", "1"])
    assert "PROGRAM_CHECKSUM" in line
    existing = tmp_path / "EXISTING_FILE"
    existing.write_text("keep me")
    line, seconds = _subprocess_one_line(["compile", "digits-vit", "-o", str(existing)])
    assert "not a directory" in line and seconds < 5 and existing.read_text() == "keep me"


# -- compile: output paths, nothing lost ------------------------------------------------------

@pytest.mark.parametrize("target", ["file", "/dev/null", "under-file"])
def test_bad_output_path_is_refused_before_compiling(capsys, tmp_path, target):
    existing = tmp_path / "file"
    existing.write_text("keep me")
    path = {"file": str(existing), "/dev/null": "/dev/null", "under-file": str(existing / "prog")}[target]
    started = time.perf_counter()
    _one_line_error(capsys, ["compile", "digits-vit", "-o", path], "compile", "not a directory")
    assert time.perf_counter() - started < 5 and existing.read_text() == "keep me"


def test_non_program_directory_needs_force(capsys, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_line_error(capsys, ["compile", "digits-vit", "--calib", "2", "-o", str(out), "--quiet"], "compile",
                    "--force")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["compile", "digits-vit", "--calib", "2", "-o", str(out), "--quiet", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories left behind"


@pytest.mark.parametrize("function, needles", [
    ("raises", ("raises()", "RuntimeError", "no weights here")),
    ("string_shape", ("input shape", "'abc'")),
    ("zero_shape", ("input shape", "(1, 0, 8)")),
    ("negative_shape", ("input shape", "(1, -8, 8)")),
    ("two_outputs", ("2 outputs", "one output")),
])
def test_user_model_errors_keep_the_previous_program(capsys, copy, user_models, function, needles):
    before = _snapshot(copy)
    _one_line_error(capsys, ["compile", f"{user_models}:{function}", "-o", str(copy), "--quiet"], "compile",
                    *needles)
    assert _snapshot(copy) == before


def test_full_disk_keeps_the_previous_program(copy, monkeypatch):
    """ENOSPC while writing: the previous program is unchanged, no temporary directory stays."""
    from vitaccel.sw import program as program_module
    from vitaccel.sw.commands import UserError
    from vitaccel.sw.compile import compile_model

    before = _snapshot(copy)
    written = []

    def full_disk(path, data):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        path.write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(program_module, "_write_file", full_disk)
    with pytest.raises(UserError, match="No space left on device; the previous program is unchanged"):
        compile_model("digits-vit", "tiny", copy, calib=2)
    assert _snapshot(copy) == before
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]


def test_recompile_replaces_a_program(copy):
    """A program directory is replaced as a whole (no stale file survives)."""
    from vitaccel.sw.compile import compile_model
    from vitaccel.sw.program import load_program

    compile_model("digits-vit", PRESETS["tiny"].replace(name="tiny2"), copy, calib=2)
    assert load_program(copy).config.name == "tiny2"
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]


def test_calib_records_what_was_used(tmp_path):
    from vitaccel.sw.compile import compile_model

    manifest = compile_model("digits-vit", "tiny", tmp_path / "p", calib=100_000).manifest
    assert manifest["model"]["calib_images"] == 1348 and manifest["model"]["calib_requested"] == 100_000


# -- run options --------------------------------------------------------------------------------

def test_images_beyond_the_stored_references_say_so(capsys, program_dir):
    capsys.readouterr()
    assert main(["run", str(program_dir), "--images", "100000", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["images"] == 449 and result["images_requested"] == 100000
    assert captured.err.startswith("vitaccel run: note: --images 100000") and "running 449" in captured.err


def test_run_is_the_same_from_another_directory(program_dir, monkeypatch, tmp_path, capsys):
    """No relative path in a program: the result does not depend on the working directory."""
    results = []
    for cwd in (program_dir.parent, tmp_path):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        assert main(["run", str(program_dir.resolve()), "--images", "5", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out)["logit_cosine"])
    assert results[0] == results[1]


# -- configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, needles", [
    (b"\xff\xfe{}", ("not UTF-8",)),
    (b"[" * 100_000 + b"]" * 100_000, ("nested too deeply",)),
    (b'{"operand_width": 8.0}', ("operand_width", "integer", "8.0")),
    (b'{"name": "a/b"}', ("name", "'a/b'")),
    (b'{"acc_width": 32.0}', ("acc_width", "integer")),
])
def test_bad_config_files(capsys, tmp_path, content, needles):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    _one_line_error(capsys, ["spec", "--config", str(path)], "spec", "bad.json", *needles)


@pytest.mark.parametrize("preset", ["tiny", "zcu102"])
def test_spec_json_round_trip(capsys, tmp_path, preset):
    capsys.readouterr()
    assert main(["spec", "--config", preset, "--json"]) == 0
    first = capsys.readouterr().out
    path = tmp_path / "c.json"
    path.write_text(first)
    assert main(["spec", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == json.loads(first)["config"]


def test_max_tokens_refused_by_compiler_and_golden_machine(capsys, tmp_path, program_dir):
    """digits-vit has 17 tokens: a config with max_tokens=16 is refused at compile naming the
    softmax layer, and the golden machine stops at the first SOFTMAX as the RTL does."""
    from vitaccel.hw.spec import isa
    from vitaccel.sim.golden.machine import GoldenMachine, InvalidOperandError
    from vitaccel.sw.program import load_program

    small = PRESETS["tiny"].replace(name="tokens16", max_tokens=16)
    config = tmp_path / "tokens16.json"
    config.write_text(small.to_json())
    _one_line_error(capsys, ["compile", "digits-vit", "--config", str(config), "-o", str(tmp_path / "p"), "--quiet"],
                    "compile", "softmax", "max_tokens=16")
    program = load_program(program_dir)
    first_softmax = next(pc for pc, word in enumerate(program.words) if isa.decode(word).opcode is Opcode.SOFTMAX)
    with pytest.raises(InvalidOperandError, match="max_tokens=16") as err:
        GoldenMachine(small).run(program.words, program.fresh_ddr())
    assert err.value.pc == first_softmax
