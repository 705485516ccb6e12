"""Non-linear units on the emitted Verilog under cocotb, bit-exact against the golden kernels.

Verilator for every unit (with random stalls on both stream sides); one Icarus cross-check.
"""

import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.sim.cases.nonlinear import make_case, run_case
from vitaccel.sim.runner import simulator_available

TINY = PRESETS["tiny"]


def _need(simulator):
    reason = simulator_available(simulator)
    if reason:
        pytest.skip(reason)


@pytest.mark.cocotb
@pytest.mark.parametrize("unit,width", [("softmax", 197), ("gelu", 64), ("gelu_int16", 30),
                                        ("layernorm", 192)])
def test_unit_rtl_matches_golden_verilator(unit, width):
    _need("verilator")
    result = run_case(unit, TINY, seed=7, rows=8, width=width, stall=0.3)
    assert result["passed"], result["mismatch"]
    assert result["cycles"] > 0


@pytest.mark.cocotb
@pytest.mark.parametrize("unit,width", [("softmax", 197), ("gelu", 192), ("layernorm", 192)])
def test_unit_keeps_one_beat_per_cycle_on_back_to_back_rows(unit, width):
    _need("verilator")
    result = run_case(unit, TINY, seed=10, rows=6, width=width, stall=0.0)
    beats = -(-width // TINY.vector_lanes)
    assert result["passed"], result["mismatch"]
    assert result["steady_cycles_per_row"] <= beats + 1, result


@pytest.mark.cocotb
def test_layernorm_rtl_odd_width_verilator():
    _need("verilator")
    result = run_case("layernorm", TINY, seed=8, rows=6, width=101, stall=0.2)
    assert result["passed"], result["mismatch"]


@pytest.mark.cocotb
@pytest.mark.parametrize("unit,width", [("softmax", 23), ("gelu", 16), ("layernorm", 37)])
def test_unit_rtl_matches_golden_icarus(unit, width):
    _need("icarus")
    result = run_case(unit, TINY, seed=9, rows=6, width=width, simulator="icarus", stall=0.3)
    assert result["passed"], result["mismatch"]


@pytest.mark.cocotb
def test_run_case_reports_a_mismatch():
    _need("verilator")
    case = make_case("gelu", TINY, seed=3, rows=2, width=16)
    case.expected[1, 5] += 1  # a wrong expectation must be caught, with its position
    result = run_case("gelu", TINY, seed=3, case=case)
    assert not result["passed"]
    assert result["mismatch"]["position"] == [1, 5]
