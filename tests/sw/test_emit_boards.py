"""``vitaccel emit --board NAME`` from the command line: the KV260 package names the XCK26
everywhere and checks the counts against its limits (yosys faked: the real counts are the
slow tests of tests/hw); a bad board or target combination is one line."""

from __future__ import annotations

import json

import pytest

from vitaccel.hw.platform.boards import BOARDS
from vitaccel.sw.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--board", "zcu106"], "unknown board 'zcu106': use one of zcu102, zcu104, kv260"),
    (["--board", "kv260", "--target", "asic"], "--board applies to --target fpga"),
])
def test_bad_board_is_one_line(tmp_path, capsys, argv, message):
    assert main(["emit", "--config", "tiny", "-o", str(tmp_path / "E"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "E").exists()


def test_emit_kv260_writes_the_xck26_package_and_fails_the_check(tmp_path, capsys, monkeypatch):
    """The block unit reports 300 DSP48E2 (the other parts none): tiny's four then exceed the
    XCK26's 998 (80 % of 1248), so the check fails (exit 1) and the package is still written."""
    import vitaccel.hw.platform.synth as synth

    def fake(verilog, top, family="xcup", *, timeout=None, cut_memories=(), cache=True):
        return {"DSP48E2": 300 if top == "block_unit" else 0, "LUT": 10, "FF": 10, "BRAM36": 0, "CARRY": 0, "cells": {}}

    monkeypatch.setattr(synth, "synthesize", fake)
    out = tmp_path / "E"
    assert main(["emit", "--board", "kv260", "--config", "tiny", "-o", str(out), "--synth-jobs", "1"]) == 1
    stdout = capsys.readouterr().out
    kv260 = BOARDS["kv260"]
    tcl, xdc = (out / "vitaccel_top.tcl").read_text(), (out / "vitaccel_top.xdc").read_text()
    assert "module vitaccel_top" in (out / "vitaccel_top.v").read_text()
    assert f"set part {kv260.part}\n" in tcl and kv260.part in xdc and "xczu9eg" not in tcl + xdc
    assert f"set board_part_pattern {kv260.board_part_pattern}\n" in tcl and "kv260_carrier" in tcl
    data = json.loads((out / "resources.json").read_text())
    assert (data["device"], data["board"], data["part"]) == ("XCK26", "kv260", kv260.part)
    assert data["limits"] == kv260.limits and data["available"] == dict(kv260.resources)
    assert data["DSP48E2"] == 300 * 4 > kv260.limits["DSP48E2"] and data["check"]["over"] == ["DSP48E2"]
    assert "resource check on the XCK26 (kv260): does NOT fit: DSP48E2" in stdout
    assert "verilator --lint-only -Wall: clean" in stdout
