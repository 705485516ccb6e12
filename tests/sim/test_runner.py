"""The simulator runner: builds, runs, passes parameters, returns outputs, reports failures."""

import pytest
from amaranth import Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim.runner import (SimulationFailed, emit_verilog, run_testbench,
                                 simulator_available)


class _Mac(wiring.Component):
    a: In(signed(8))
    b: In(signed(8))
    clear: In(1)
    acc: Out(signed(32))

    def elaborate(self, platform):
        from amaranth import Module
        m = Module()
        with m.If(self.clear):
            m.d.sync += self.acc.eq(0)
        with m.Else():
            m.d.sync += self.acc.eq(self.acc + self.a * self.b)
        return m


def _run(simulator, **params):
    reason = simulator_available(simulator)
    if reason:
        pytest.skip(reason)
    return run_testbench(verilog=emit_verilog(_Mac(), "selftest_mac"), toplevel="selftest_mac",
                         test_module="vitaccel.sim.cocotb.tb_selftest", simulator=simulator,
                         params=params)


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_runner_passes_params_and_returns_outputs(simulator):
    result = _run(simulator, seed=3, steps=20)
    assert result.passed and "acc" in result.output


@pytest.mark.cocotb
def test_runner_reports_a_failing_testbench():
    with pytest.raises(SimulationFailed, match="expected"):
        _run("verilator", seed=1, steps=5, break_reference=True)


def test_unknown_simulator_is_named():
    assert "unknown simulator" in simulator_available("modelsim")


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_waves_on_request(simulator):
    reason = simulator_available(simulator)
    if reason:
        pytest.skip(reason)
    result = run_testbench(verilog=emit_verilog(_Mac(), "selftest_mac"), toplevel="selftest_mac",
                           test_module="vitaccel.sim.cocotb.tb_selftest", simulator=simulator,
                           params={"steps": 4}, waves=True)
    assert result.waves is not None and result.waves.stat().st_size > 0
    assert "acc" in result.waves.read_bytes().decode(errors="replace") or simulator == "icarus"
