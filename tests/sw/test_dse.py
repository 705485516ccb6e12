"""Design-space exploration: space files, skipped points, Pareto fronts, the keys that share
work between points, and a small end-to-end run (digits-vit on tiny-like configs)."""

from __future__ import annotations

import json
import random

import pytest

from vitaccel.hw.platform.boards import BOARDS, board
from vitaccel.hw.spec.config import PRESETS, AccelConfig, load_config
from vitaccel.sw.cli import main
from vitaccel.sw.dse.evaluate import compile_key, compile_task, cycles_key, cycles_task, quantize_key, quantize_task
from vitaccel.sw.dse.explore import InlineClient, best_index, explore
from vitaccel.sw.dse.pareto import pareto_front
from vitaccel.sw.dse.space import SpaceError, load_space, parse_space

TINY = PRESETS["tiny"]


@pytest.fixture(autouse=True)
def _own_cycles_cache(tmp_path, monkeypatch):
    """Every test starts without cached performance-model results (workers inherit it)."""
    monkeypatch.setenv("VITACCEL_DSE_CACHE", str(tmp_path / "dse-cache"))


# -- space files ------------------------------------------------------------------------------------

def test_space_points_are_the_product_over_the_base():
    space = parse_space({"base": "tiny", "name": "t", "fields": {"block_rows": [1, 2], "vector_lanes": [4, 8, 16]}})
    points = space.points()
    assert space.size == len(points) == 6
    assert [p.values for p in points[:3]] == [{"block_rows": 1, "vector_lanes": v} for v in (4, 8, 16)]
    for point in points:
        assert point.skipped is None
        assert point.config.name == f"t-{point.index:04d}"
        assert point.config.replace(name="tiny", **{k: getattr(TINY, k) for k in point.values}) == TINY


def test_invalid_points_are_skipped_with_a_one_line_reason():
    space = parse_space({"base": "tiny", "fields": {"vector_lanes": [3, 4], "dsp_packing": [1, 2],
                                                    "block_size": [2, 3], "dma_data_width": [64, 256]}})
    points = space.points()
    assert len(points) == 16
    reasons = {p.index: p.skipped for p in points if p.skipped}
    valid = [p for p in points if p.config is not None]
    # lanes 3 (not a power of two), packing 2 with odd b, b = 3 panels not fitting, 256-bit DMA
    assert all("\n" not in r and r for r in reasons.values())
    assert any("vector_lanes" in r for r in reasons.values())
    assert any("dsp_packing" in r for r in reasons.values())
    assert any("dma_data_width" in r for r in reasons.values())
    assert valid and all(p.values["vector_lanes"] == 4 and p.values["dma_data_width"] == 64 for p in valid)


@pytest.mark.parametrize("data, message", [
    ([1, 2], "JSON object"),
    ({"fields": {}}, "non-empty"),
    ({"fields": {"blocks": [1]}}, "not a sweepable"),
    ({"fields": {"name": ["a"]}}, "not a sweepable"),
    ({"fields": {"block_rows": 2}}, "non-empty list"),
    ({"fields": {"block_rows": []}}, "non-empty list"),
    ({"fields": {"block_rows": [1, 1]}}, "twice"),
    ({"base": "nope", "fields": {"block_rows": [1]}}, "not a preset"),
    ({"base": {"block_rows": 0}, "fields": {"block_rows": [1]}}, "base: block_rows"),
    ({"fields": {"block_rows": [1]}, "extra": 1}, "unknown key"),
    ({"fields": {f: list(range(1, 11)) for f in ("block_rows", "block_cols", "vector_kib", "acc_kib", "max_k")}},
     "more than"),
])
def test_bad_spaces_get_one_line(data, message):
    with pytest.raises(SpaceError, match=message) as info:
        parse_space(data)
    assert "\n" not in str(info.value)


def test_space_file_errors(tmp_path):
    with pytest.raises(SpaceError, match="cannot read"):
        load_space(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpaceError, match="not valid JSON"):
        load_space(bad)


def test_shipped_space_has_enough_valid_points():
    space = load_space("docs/dse/space_deit_small.json")
    valid = [p for p in space.points() if p.config is not None]
    assert len(valid) >= 200
    assert space.base == PRESETS["zcu102"]


# -- Pareto fronts ------------------------------------------------------------------------------------

def test_pareto_front_of_a_hand_made_set():
    points = [(5, 5), (1, 9), (2, 7), (3, 7), (2, 8), (9, 1), (4, 4), (4, 4), (6, 6), (1, 10)]
    # (3,7), (2,8), (6,6), (1,10) dominated; the second (4,4) duplicates the first
    assert pareto_front(points) == [1, 2, 6, 5]


def test_pareto_front_against_brute_force():
    rng = random.Random(7)
    for _ in range(50):
        points = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(rng.randint(1, 30))]
        front = set(pareto_front(points))
        for i, p in enumerate(points):
            dominated = any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)
            duplicate_later = any(points[j] == p for j in range(i))
            assert (i in front) == (not dominated and not duplicate_later)


def test_best_is_the_fastest_feasible_point():
    def record(index, latency, feasible, dsp=1):
        return {"index": index, "latency_ms": latency, "feasible": feasible, "status": "evaluated",
                "resources": {"DSP48E2": dsp, "BRAM36": 1, "LUT": 1, "FF": 1}}

    records = [record(0, 3.0, True), record(1, 1.0, False), record(2, 2.0, True, dsp=9), record(3, 2.0, True, dsp=5)]
    assert best_index(records) == 3
    assert best_index([record(0, 1.0, False)]) is None


# -- keys that share work -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_quantized():
    return quantize_task("digits-vit", TINY.to_json())


def test_left_out_fields_change_neither_program_nor_cycles(digits_quantized):
    """What the keys leave out is irrelevant: equal programs for different geometry, lanes,
    bus, clock and packing, and equal cycles for different clock and packing."""
    other = TINY.replace(block_rows=1, block_cols=3, block_size=4, dsp_packing=2, vector_lanes=8, topk_lanes=8,
                         dma_data_width=128, clock_mhz=250.0, sparse_pe_rows=2, input_spad_kib=64,
                         weight_spad_kib=64)
    assert compile_key(other) != compile_key(TINY)
    same_program = other.replace(input_spad_kib=16, weight_spad_kib=16)
    assert compile_key(same_program) == compile_key(TINY) and quantize_key(other) == quantize_key(TINY)
    first = compile_task(digits_quantized, TINY.to_json())
    second = compile_task(quantize_task("digits-vit", same_program.to_json()), same_program.to_json())
    assert "error" not in first and first["words"] == second["words"] and first["ddr_size"] == second["ddr_size"]
    retimed = TINY.replace(clock_mhz=300.0, dsp_packing=2)
    assert cycles_key(retimed) == cycles_key(TINY)
    assert cycles_task(first, TINY.to_json()) == cycles_task(first, retimed.to_json())
    # and the fields the keys keep do matter
    assert cycles_task(first, TINY.replace(vector_lanes=8).to_json())["cycles"] != \
        cycles_task(first, TINY.to_json())["cycles"]


def test_cycles_are_cached_by_program_and_key(digits_quantized, monkeypatch):
    import vitaccel.sim.perf

    compiled = compile_task(digits_quantized, TINY.to_json())
    first = cycles_task(compiled, TINY.to_json())

    def no_model(*args, **kwargs):
        raise AssertionError("the performance model ran for a cached result")

    monkeypatch.setattr(vitaccel.sim.perf, "estimate", no_model)
    assert cycles_task(compiled, TINY.replace(clock_mhz=50.0).to_json()) == first
    with pytest.raises(AssertionError, match="cached"):
        cycles_task(compiled, TINY.replace(vector_lanes=8).to_json())
    monkeypatch.setenv("VITACCEL_DSE_CACHE", "off")
    with pytest.raises(AssertionError, match="cached"):
        cycles_task(compiled, TINY.to_json())


def test_compile_failure_skips_the_points_of_its_key(digits_quantized):
    small = TINY.replace(acc_kib=1)
    result = compile_task(digits_quantized, small.to_json())
    assert "error" in result and "\n" not in result["error"]
    assert "error" in cycles_task(result, small.to_json())


# -- a small run ------------------------------------------------------------------------------------------

SMALL_SPACE = {"base": "tiny", "name": "small",
               "fields": {"block_rows": [1, 2], "block_size": [2, 3], "dsp_packing": [1, 2], "vector_lanes": [4, 8],
                          "clock_mhz": [100.0, 200.0]}}


def _check_report(report, points):
    assert report["evaluated"] + report["skipped"] == len(points) == len(report["points"])
    assert report["evaluated"] > 0 and report["skipped"] > 0
    evaluated = [p for p in report["points"] if p["status"] == "evaluated"]
    for p in evaluated:
        assert set(p) >= {"cycles", "latency_ms", "resources", "feasible", "violations", "values", "name"}
        assert p["latency_ms"] == round(p["cycles"] / (p["values"]["clock_mhz"] * 1e3), 4)
    # clock and packing share cycles
    by_key = {}
    for p in evaluated:
        key = tuple((k, v) for k, v in sorted(p["values"].items()) if k not in ("clock_mhz", "dsp_packing"))
        by_key.setdefault(key, set()).add(p["cycles"])
    assert all(len(c) == 1 for c in by_key.values())
    assert report["pareto"] and all(p["fronts"] for p in report["pareto"])
    feasible = [p for p in evaluated if p["feasible"]]
    for p in report["pareto"]:   # nothing feasible dominates a front point on its front
        for resource in p["fronts"]:
            assert not any(q["latency_ms"] <= p["latency_ms"] and q["resources"][resource] <= p[resource]
                           and (q["latency_ms"], q["resources"][resource]) != (p["latency_ms"], p[resource])
                           for q in feasible)
    best = AccelConfig.from_dict(report["best"])
    chosen = report["best_point"]
    assert chosen["feasible"] and chosen["latency_ms"] == min(p["latency_ms"] for p in feasible)
    assert best.replace(name="x") == PRESETS["tiny"].replace(name="x", **chosen["values"])


def test_small_dse_inline():
    space = parse_space(SMALL_SPACE)
    report = explore(space, "digits-vit", board("zcu102"), client=InlineClient())
    _check_report(report, space.points())
    assert report["tasks"] == {"quantize": 1, "compile": 1, "cycles": 4}
    assert report["baseline"]["name"] == "tiny" and report["baseline"]["feasible"]


def test_small_dse_cli_json_plot_and_best_config(tmp_path, capsys):
    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(SMALL_SPACE))
    best = tmp_path / "best.json"
    assert main(["dse", "--space", str(space_file), "--model", "digits-vit", "--jobs", "1", "--json",
                 "--plot", str(tmp_path / "plots"), "-o", str(best), "--board", "kv260"]) == 0
    report = json.loads(capsys.readouterr().out)
    _check_report(report, parse_space(SMALL_SPACE).points())
    assert report["board"]["device"] == BOARDS["kv260"].device
    assert load_config(str(best)).to_dict() == report["best"]
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"pareto_DSP48E2.png", "pareto_BRAM36.png"}


@pytest.mark.parametrize("args, message", [
    (["--space", "missing.json", "--model", "digits-vit"], "cannot read space file"),
    (["--space", "docs/dse/space_deit_small.json", "--model", "digits-vit", "--board", "nope"], "unknown board"),
    (["--space", "docs/dse/space_deit_small.json", "--model", "digits-vit", "--scheduler", "nonsense"],
     "scheduler address"),
])
def test_dse_bad_input_is_one_line(args, message, capsys):
    assert main(["dse", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _without_run_details(report):
    return {k: v for k, v in report.items() if k not in ("wall_seconds", "cluster", "files")}


def test_dask_cluster_gives_the_inline_result(capsys):
    """``--scheduler`` on a running cluster (workers in their own processes) and the inline run
    agree exactly."""
    import logging

    from dask.distributed import LocalCluster

    space = {**SMALL_SPACE, "fields": {"block_size": [2, 3], "dsp_packing": [1, 2], "vector_lanes": [4, 8]}}
    inline = explore(parse_space(space), "digits-vit", board("zcu102"), client=InlineClient())
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            space_file = Path(tmp) / "space.json"
            space_file.write_text(json.dumps(space))
            assert main(["dse", "--space", str(space_file), "--model", "digits-vit", "--json",
                         "--scheduler", cluster.scheduler_address]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["cluster"] == f"Dask cluster {cluster.scheduler_address}"
    assert _without_run_details(remote) == json.loads(json.dumps(_without_run_details(inline)))


def test_resource_model_constants_are_the_calibration_fit():
    """The coefficients the resource model hard-codes are the fit of the checked-in calibration."""
    import vitaccel.hw.platform.resource_model as model
    from vitaccel.sw.dse.calibrate import fit

    fitted = fit(json.loads(model.CALIBRATION_FILE.read_text()))
    assert model._BLOCK_LUT[1] == pytest.approx(fitted["block_lut_p1"], abs=0.01)
    assert model._BLOCK_LUT[2] == pytest.approx(fitted["block_lut_p2"], abs=0.01)
    assert model._BLOCK_FF == pytest.approx(fitted["block_ff"], abs=0.01)
    assert model._POST_LUT_PER_COL == pytest.approx(fitted["post_lut"][0], abs=0.01)
    assert model._LOGIC == {key: fitted[f"logic_{key}"][0] for key in ("DSP48E2", "LUT", "FF")}
