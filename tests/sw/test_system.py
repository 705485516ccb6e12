"""System tests: whole compiled programs on the emitted ``vitaccel_top`` under cocotb, with
random AXI back-pressure (``AxiRam`` pause generators) and random read latency, bit-exact
against the golden machine: digits-vit through ``vitaccel run --backend rtl``, a
DeiT-T-shaped encoder block, and a corrupted program that must stop with its error code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vitaccel.hw.spec.isa import INSTRUCTION_BITS
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.sw.models.blocks import DEIT_BLOCK_SPEC, spec
from vitaccel.sw.system_case import compile_for_test, run_system_case
from vitaccel.sim.runner import simulator_available

pytestmark = [pytest.mark.cocotb,
              pytest.mark.skipif(simulator_available("verilator") is not None,
                                 reason=str(simulator_available("verilator")))]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return compile_for_test("digits-vit", tmp_path_factory.mktemp("system") / "digits", config="tiny")


def _passed(result: dict) -> None:
    assert result["runs"], "no run"
    assert result["passed"], json.dumps(result["mismatches"], indent=1)
    assert all(run["bit_exact"] and run["cycles"] > 0 for run in result["runs"])


def test_digits_vit_rtl_backend_bit_exact(digits_dir, capsys):
    """The issue's acceptance command: 2 images in one launch, bit-exact, cycles counted."""
    from vitaccel.sw.cli import main

    capsys.readouterr()
    assert main(["run", str(digits_dir), "--backend", "rtl", "--images", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bit_exact_vs_golden"] is True, result["problems"]
    assert result["cycles"] > 0 and len(result["cycles_by_image"]) == 2 and min(result["cycles_by_image"]) > 0
    assert result["simulator"] == "verilator" and result["images"] == 2
    assert result["int8_top1"] is not None


def test_deit_tiny_block_bit_exact():
    """One DeiT-T encoder block (dim 192, 3 heads, MLP 768) on 4 patches + CLS, harder
    back-pressure and latency than the default."""
    _passed(run_system_case("tiny", model=DEIT_BLOCK_SPEC, images=1, seed=3, backpressure=0.5, max_latency=8))


@pytest.mark.slow
def test_deit_tiny_block_17_tokens_bit_exact():
    _passed(run_system_case("tiny", model=spec("deit_tiny_block_16"),
                            images=1, seed=4))


@pytest.mark.slow
@pytest.mark.parametrize("option", [["--sparse-attention", "0.5"], ["--nm", "2:4"]], ids=["sparse-attention", "nm"])
def test_digits_vit_sparse_programs_rtl_bit_exact(tmp_path, capsys, option):
    """Issue 16's acceptance commands: SPARSE_ATTN with on-chip mask prediction, and nm=1
    GEMMs on a tiny config with nm_sparsity [2, 4], bit-exact in the top."""
    from vitaccel.hw.spec.config import PRESETS
    from vitaccel.sw.cli import main

    config = tmp_path / "tiny_nm24.json"
    config.write_text(PRESETS["tiny"].replace(name="tiny_nm24", nm_sparsity=(2, 4)).to_json())
    out = tmp_path / "D"
    assert main(["compile", "digits-vit", "--config", str(config), *option, "--quiet", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["run", str(out), "--backend", "rtl", "--images", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bit_exact_vs_golden"] is True, result["problems"]
    opcode = "SPARSE_ATTN" if option[0] == "--sparse-attention" else "GEMM"
    assert result["instruction_counts"][opcode] > 0 and result["cycles"] > 0


@pytest.mark.slow
def test_digits_vit_icarus_bit_exact(digits_dir):
    _passed(run_system_case(program_dir=digits_dir, images=1, simulator="icarus", seed=5))


def test_corrupted_program_stops_with_its_code(digits_dir):
    """A reserved bit set mid-program: ILLEGAL_INSTRUCTION at that pc, like the golden
    machine, through the rtl device (a DeviceError naming code, pc and layer), no hang."""
    from vitaccel.sw.device import DeviceError, open_device
    from vitaccel.sw.program import load_program

    program = load_program(digits_dir)
    pc = 40
    words = list(program.words)
    words[pc] |= 1 << (INSTRUCTION_BITS - 1)
    device = open_device("rtl", program.with_words(words), seed=2)   # checksum updated: the decoder finds it
    image = np.zeros(program.manifest["inputs"][0]["shape"], np.int8)
    with pytest.raises(DeviceError, match=f"ILLEGAL_INSTRUCTION at instruction {pc} .*golden machine agrees") as err:
        device.infer(image)
    assert err.value.code is ErrorCode.ILLEGAL_INSTRUCTION and err.value.pc == pc


def test_flipped_bit_stops_with_program_checksum(digits_dir, capsys):
    """Single bits flipped in program.bin after compilation (a sample: the last bit of one
    instruction, the opcode of another, a field of a third): `vitaccel run --backend rtl`
    stops with PROGRAM_CHECKSUM in the scan pass, before anything executes, as the golden
    machine does; one line, exit 2."""
    import shutil

    from vitaccel.sw.cli import main

    blob = bytearray((digits_dir / "program.bin").read_bytes())
    flipped_dir = digits_dir.parent / "flipped"
    for instruction, bit in ((len(blob) // 16 - 1, 127), (40, 0), (1234 % (len(blob) // 16), 77)):
        shutil.copytree(digits_dir, flipped_dir, dirs_exist_ok=True)
        corrupted = bytearray(blob)
        corrupted[16 * instruction + bit // 8] ^= 1 << bit % 8
        (flipped_dir / "program.bin").write_bytes(bytes(corrupted))
        capsys.readouterr()
        assert main(["run", str(flipped_dir), "--backend", "rtl", "--images", "1"]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "PROGRAM_CHECKSUM" in err and "golden machine agrees" in err, err

