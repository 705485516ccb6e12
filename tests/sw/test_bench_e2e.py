"""``vitaccel bench e2e``: the record's keys and arithmetic, the per-layer attribution, the
plots, and the command on digits-vit/tiny with the performance model (RTL against the
model is tests/sim/test_perf_model.py's)."""

from __future__ import annotations

import json

import pytest

from vitaccel.hw.spec.config import load_config
from vitaccel.sw.bench import e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _counters(**changes):
    base = {"total_cycles": 300_000, "engine_busy_cycles": 90_000, "dma_read_bytes": 250_000,
            "dma_write_bytes": 50_000}
    return {**base, **changes}


def test_record_arithmetic_perf_only():
    config = load_config("zcu102")
    record = e2e.make_record(model="m", method="dense", config=config, macs=4_608_000, ddr_model="d",
                             perf=_counters(), rtl=None, wall_seconds=1.23456)
    assert tuple(record) == e2e.RECORD_KEYS
    assert record["cycles"] == 300_000 and record["source"] == "perf"
    assert record["latency_ms"] == pytest.approx(300_000 / 300e6 * 1e3)   # 1 ms at 300 MHz
    assert record["engine_utilization"] == pytest.approx(4_608_000 / (300_000 * config.macs_per_cycle))
    assert record["ddr_bytes"] == 300_000 and record["engine_busy_cycles"] == 90_000
    assert record["bit_exact"] is None and record["perf_error"] is None and record["wall_seconds"] == 1.235


def test_record_arithmetic_rtl_and_perf():
    """RTL's counters win; perf_error = |perf - rtl| / rtl; bit_exact is the RTL run's."""
    config = load_config("tiny")
    rtl = {"counters": _counters(total_cycles=200_000, engine_busy_cycles=70_000), "bit_exact": True}
    record = e2e.make_record(model="m", method="tokens", config=config, macs=1_600_000, ddr_model="d",
                             perf=_counters(total_cycles=210_000), rtl=rtl, wall_seconds=0.0)
    assert record["source"] == "rtl" and record["bit_exact"] is True
    assert record["cycles"] == 200_000 and record["engine_busy_cycles"] == 70_000
    assert record["perf_error"] == pytest.approx(0.05)
    assert record["latency_ms"] == pytest.approx(2.0)                     # 200k cycles at 100 MHz
    assert record["engine_utilization"] == pytest.approx(1_600_000 / (200_000 * 32))
    with pytest.raises(ValueError):
        e2e.make_record(model="m", method="dense", config=config, macs=1, ddr_model="d", perf=None, rtl=None,
                        wall_seconds=0.0)


@pytest.fixture(scope="module")
def digits_tiny(tmp_path_factory):
    from vitaccel.sim.perf import estimate
    from vitaccel.sw.compile import compile_model
    from vitaccel.sw.program import load_program

    directory = tmp_path_factory.mktemp("e2e") / "digits"
    compile_model("digits-vit", "tiny", directory, calib=4)
    program = load_program(directory)
    return program, estimate(program.config, list(program.words), program.ddr_size)


def test_layer_breakdown_accounts_for_every_cycle(digits_tiny):
    program, perf = digits_tiny
    rows = e2e.layer_breakdown(program, perf)
    assert sum(row["cycles"] for row in rows) == perf.total_cycles
    assert sum(row["computing"] for row in rows) == perf.engine_busy_cycles
    assert sum(row["macs"] for row in rows) == program.manifest["macs"]
    busy = sum(row["computing"] + row["gemm feed/drain"] + row["waiting for vector work"] for row in rows)
    assert busy == perf.busy["compute"]
    assert all(row[a] >= 0 for row in rows for a in e2e.ACTIVITIES)
    linear = [row for row in rows if row["kind"] == "linear"]
    assert linear and all(row["computing"] > 0 and row["ddr_bytes"] > 0 for row in linear)


def test_bench_e2e_perf_digits_tiny_with_plots(tmp_path, capsys):
    """The command on digits-vit/tiny with the perf model: one dense record with the issue's
    keys, its arithmetic, the DDR bound, and two PNG plots."""
    from vitaccel.sw.cli import main

    capsys.readouterr()
    assert main(["bench", "e2e", "--config", "tiny", "--backend", "perf", "--methods", "dense", "--json",
                 "--plot", str(tmp_path / "plots")]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["method"]) for r in records] == [("digits-vit", "dense")]
    record = records[0]
    assert set(e2e.RECORD_KEYS) <= set(record) and record["rtl_skipped"] == "--backend perf"
    assert record["source"] == "perf" and record["ddr_model"] == "zcu102-ps-ddr4-hp"
    assert record["latency_ms"] == pytest.approx(record["cycles"] / 100e3)
    assert 0 < record["engine_busy_cycles"] < record["cycles"]
    assert record["engine_utilization"] == pytest.approx(record["macs"] / (record["cycles"] * 32))
    assert 0 < record["ddr_bytes"] / record["cycles"] <= 48
    pngs = sorted((tmp_path / "plots").iterdir())
    assert [p.name for p in pngs] == ["e2e-tiny-digits-vit-layers.png", "e2e-tiny-digits-vit-roofline.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 10_000 for p in pngs)


@pytest.mark.parametrize("argv, message", [
    (["bench", "e2e", "--config", "tiny", "--methods", "nm-3:4"], "unknown method 'nm-3:4'"),
    (["bench", "gemm", "--config", "tiny", "--backend", "perf"], "only for the e2e benchmark"),
    (["bench", "gemm", "--config", "tiny", "--plot", "x"], "only for the pruning and e2e"),
])
def test_bench_e2e_bad_options(argv, message, capsys):
    from vitaccel.sw.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_e2e_nm_record_runs_in_the_top(capsys):
    """N:M 2:4 GEMMs run in the top: the record has cycles, and skipping half of the weight
    MACs makes the program faster than dense on the same performance model."""
    from vitaccel.sw.cli import main

    capsys.readouterr()
    assert main(["bench", "e2e", "--config", "tiny", "--methods", "dense", "nm-2:4", "--backend", "perf",
                 "--json"]) == 0
    dense, nm = json.loads(capsys.readouterr().out)
    assert set(e2e.RECORD_KEYS) <= set(nm) and (dense["method"], nm["method"]) == ("dense", "nm-2:4")
    assert nm.get("error") is None and 0 < nm["cycles"] < dense["cycles"]
    assert dense["macs"] / 2 < nm["macs"] < dense["macs"]
