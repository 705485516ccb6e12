"""The simulator runner: builds, runs, passes parameters, returns outputs, reports failures,
dumps waveforms. Exercised on the self-test MAC unit of the regression suite."""

import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.sim.regress.selftest import TESTBENCH, TOPLEVEL, MacUnit, mac_reference, make_stimulus
from vitaccel.sim.runner import SimulationFailed, emit_verilog, run_testbench, simulator_available


def _run(simulator, steps=12, waves=False, **extra):
    reason = simulator_available(simulator)
    if reason:
        pytest.skip(reason)
    stimulus = make_stimulus(PRESETS["tiny"], seed=3, steps=steps)
    params = {port: values.tolist() for port, values in stimulus.items()} | extra
    unit = MacUnit(operand_width=8, acc_width=32)
    result = run_testbench(verilog=emit_verilog(unit, TOPLEVEL), toplevel=TOPLEVEL,
                           test_module=TESTBENCH, simulator=simulator, params=params, waves=waves)
    return result, mac_reference(stimulus["a"], stimulus["b"], stimulus["clear"])


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_runner_passes_params_and_returns_outputs(simulator):
    result, expected = _run(simulator)
    assert result.passed
    assert result.output["acc"] == expected.tolist()


@pytest.mark.cocotb
def test_runner_reports_a_failing_testbench():
    _, expected = _run("verilator")
    with pytest.raises(SimulationFailed, match=f"expected {int(expected[-1]) + 1}"):
        _run("verilator", expected_final=int(expected[-1]) + 1)


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_waves_on_request(simulator):
    result, _ = _run(simulator, steps=4, waves=True)
    assert result.waves is not None and result.waves.stat().st_size > 0


def test_unknown_simulator_is_named():
    assert "unknown simulator" in simulator_available("modelsim")


def test_build_cache_is_keyed_on_the_linked_cocotb_libraries(monkeypatch):
    """A Verilator build links cocotb's libraries by absolute path: a build from another
    environment (a copied cache, a recreated virtualenv) must be a cache miss, not a binary
    that exits with status 127."""
    import cocotb

    from vitaccel.sim import runner

    here = runner.build_name("module m; endmodule", toplevel="m", simulator="verilator")
    assert here == runner.build_name("module m; endmodule", toplevel="m", simulator="verilator")
    assert str(runner.toolchain_identity("verilator")).count(cocotb.__version__)
    monkeypatch.setattr(cocotb, "__file__", "/elsewhere/.venv/site-packages/cocotb/__init__.py")
    assert runner.build_name("module m; endmodule", toplevel="m", simulator="verilator") != here
