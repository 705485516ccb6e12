"""The AXI DMA and register file as emitted Verilog under cocotb, with cocotbext-axi's
``AxiRam`` (random pauses on every channel, random read latency) and ``AxiLiteMaster``."""

from __future__ import annotations

import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.sim.cases.axi import run_dma_case, run_dma_throughput, run_lite_case
from vitaccel.sim.runner import simulator_available

TINY = PRESETS["tiny"]


def _need(simulator: str) -> None:
    reason = simulator_available(simulator)
    if reason:
        pytest.skip(reason)


def _assert_passed(result: dict) -> None:
    assert result["passed"], f"mismatch: {result['mismatch']}"
    assert result["cycles"] > 0


@pytest.mark.cocotb
@pytest.mark.parametrize("seed,backpressure", [
    (1, 0.5), pytest.param(2, 0.8, marks=pytest.mark.slow)])
def test_dma_random_transfers_verilator(seed, backpressure):
    _need("verilator")
    result = run_dma_case(TINY, seed=seed, quick=True, backpressure=backpressure)
    _assert_passed(result)
    assert result["transfers"] >= 12


@pytest.mark.cocotb
def test_dma_short_bursts_zcu102_width_icarus():
    """Icarus cross-check at 128 bits (the ZCU102's HP ports) with 8-beat bursts: many burst
    splits per row. (Icarus builds in seconds; a second Verilator build would not.)"""
    _need("icarus")
    _assert_passed(run_dma_case(PRESETS["zcu102"], seed=3, quick=True, max_burst_beats=8,
                                simulator="icarus"))


@pytest.mark.slow
@pytest.mark.cocotb
@pytest.mark.parametrize("preset", ["tiny", "zcu102"])
def test_dma_full_random_regression_verilator(preset):
    """The full-size case (24 transfers each way, rows up to 2000 bytes, 50% back-pressure)."""
    _need("verilator")
    _assert_passed(run_dma_case(PRESETS[preset], seed=11, backpressure=0.5))


@pytest.mark.cocotb
@pytest.mark.parametrize("direction", ["read", "write"])
def test_dma_long_aligned_transfer_runs_near_full_rate(direction):
    _need("verilator")
    result = run_dma_throughput(TINY, direction=direction, total_bytes=8192)
    _assert_passed(result)
    lane_bytes = TINY.dma_data_width // 8
    assert result["bytes_per_cycle"] >= 0.9 * lane_bytes, result


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_register_file_semantics(simulator):
    _need(simulator)
    _assert_passed(run_lite_case(TINY, seed=5, quick=True, simulator=simulator))
