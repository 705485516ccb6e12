"""The whole accelerator as emitted Verilog under cocotb: programs against the golden
machine with random AXI back-pressure and read latency, bad programs, a compiled ViT (slow),
and ``vitaccel emit``."""

from __future__ import annotations

import json

import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.sim.cases.accel import Program, run_program_case
from vitaccel.sim.runner import simulator_available

TINY = PRESETS["tiny"]


def _compiled(directory) -> Program:
    """The ``vitaccel compile`` output in ``directory`` as one program of the case."""
    from vitaccel.sw.program import load_program

    compiled = load_program(directory)
    return Program(directory.name, list(compiled.words), compiled.fresh_ddr())


def _check(result: dict) -> None:
    assert result["programs"], "no program ran"
    assert result["passed"], json.dumps(result["mismatches"], indent=1)
    codes = {p["error_code"] for p in result["programs"]}
    # The suite must have exercised success and every error the controller reports.
    assert {"NONE", "ILLEGAL_INSTRUCTION", "ADDRESS_OUT_OF_RANGE", "DEPENDENCY_DEADLOCK", "MISSING_FINISH",
            "INVALID_OPERAND", "WATCHDOG", "PROGRAM_CHECKSUM"} <= codes, codes


@pytest.mark.cocotb
def test_programs_bit_exact_verilator():
    _check(run_program_case(TINY, seed=0, simulator="verilator", backpressure=0.4, max_latency=6))


@pytest.mark.cocotb
def test_programs_bit_exact_icarus():
    reason = simulator_available("icarus")
    if reason:
        pytest.skip(reason)
    # Program 4 bytes past a 16-byte boundary: instruction fetch through unaligned bursts.
    _check(run_program_case(TINY, seed=1, simulator="icarus", quick=True, program_offset=4))


@pytest.mark.cocotb
@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_programs_bit_exact_more_seeds(seed):
    _check(run_program_case(TINY, seed=seed, simulator="verilator", backpressure=0.5, max_latency=10))


@pytest.mark.cocotb
@pytest.mark.cocotb
def test_single_bit_flips_stop_with_program_checksum():
    """A sample of single-bit flips anywhere in a valid program, run with the original
    checksum: each stops in the scan pass with PROGRAM_CHECKSUM, as the golden machine does."""
    import random

    import numpy as np

    from vitaccel.hw.spec.isa import INSTRUCTION_BITS
    from vitaccel.hw.spec.regmap import ErrorCode, program_crc32
    from vitaccel.sim.cases.accel import Program, random_dma_program

    rng = random.Random(5)
    ddr = np.frombuffer(rng.randbytes(2048), np.uint8).copy()
    words = random_dma_program(rng, TINY, ddr.size, rounds=2, transfers=2)
    checksum = program_crc32(b"".join(w.to_bytes(16, "little") for w in words))
    programs = [Program("intact", words, ddr, checksum=checksum)]
    for flip in range(12):
        pc, bit = rng.randrange(len(words)), rng.randrange(INSTRUCTION_BITS)
        flipped = list(words)
        flipped[pc] ^= 1 << bit
        programs.append(Program(f"flip {flip}: instruction {pc} bit {bit}", flipped, ddr,
                                checksum=checksum, expect_code=ErrorCode.PROGRAM_CHECKSUM))
    result = run_program_case(TINY, seed=2, programs=programs)
    assert result["passed"], json.dumps(result["mismatches"], indent=1)
    codes = [p["error_code"] for p in result["programs"]]
    assert codes == ["NONE"] + ["PROGRAM_CHECKSUM"] * 12
    assert all(p["golden_code"] == "PROGRAM_CHECKSUM" for p in result["programs"][1:])


@pytest.mark.slow
def test_compiled_vit_bit_exact_verilator(tmp_path):
    """A compiled tiny digits-vit end to end (LOAD / STORE / SYNC, requantizing and raw
    attention-score GEMMs, SOFTMAX, LAYERNORM, GELU, ADD): about 0.9 M cycles, minutes."""
    from vitaccel.sw.compile import compile_model

    compile_model("digits-vit", "tiny", tmp_path / "program", calib=4)
    result = run_program_case(TINY, programs=[_compiled(tmp_path / "program")], simulator="verilator",
                              max_cycles=3_000_000)
    assert result["passed"], json.dumps(result["mismatches"], indent=1)
    assert [p["error_code"] for p in result["programs"]] == ["NONE"]


def test_emit_tiny_package_lints_clean(tmp_path):
    from vitaccel.sw.commands.emit import emit_package

    result = emit_package(TINY, tmp_path, synth=False)
    suffixes = {p.rsplit(".", 1)[-1] for p in result["files"]}
    assert {"v", "xdc", "tcl", "json", "md"} <= suffixes
    assert result["lint_warnings"] == []
    verilog = (tmp_path / "vitaccel_top.v").read_text()
    for port in ("s_axi_control_awaddr", "m_axi_araddr", "m_axi_wdata", "interrupt"):
        assert port in verilog
    resources = json.loads((tmp_path / "resources.json").read_text())
    assert "DSP48E2" in resources and "BRAM36" in resources


@pytest.mark.slow
def test_emit_zcu102_with_resources(tmp_path):
    from vitaccel.sw.commands.emit import emit_package

    result = emit_package(PRESETS["zcu102"], tmp_path, synth=True)
    assert result["lint_warnings"] == []
    resources = json.loads((tmp_path / "resources.json").read_text())
    assert resources["DSP48E2"] <= 2016 and resources["BRAM36"] <= 0.8 * 912


@pytest.mark.cocotb
@pytest.mark.slow
@pytest.mark.parametrize("package_token", [False, True], ids=["evit", "spvit-package"])
def test_compiled_pruned_vit_bit_exact_verilator(tmp_path, package_token):
    """A compiled tiny digits-vit with token pruning after blocks 1, 2 and 3 (TOPK with
    ``sum_rows`` over the CLS attention rows, GATHER; PACKAGE with ``package_token``),
    end to end: minutes."""
    from vitaccel.sw.compile import compile_model

    compile_model("digits-vit", "tiny", tmp_path / "program", calib=4, prune_tokens="0.7@1,2,3",
                  package_token=package_token)
    result = run_program_case(TINY, programs=[_compiled(tmp_path / "program")], simulator="verilator",
                              max_cycles=3_000_000)
    assert result["passed"], json.dumps(result["mismatches"], indent=1)
    assert [p["error_code"] for p in result["programs"]] == ["NONE"]
