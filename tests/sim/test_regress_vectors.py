"""``vitaccel regress --vectors N``: planning, the vector runners, and that a wrong result fails."""

from __future__ import annotations

import json

import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.sim.regress import make_plan
from vitaccel.sim.regress.vectors import combine, split, sub_seeds
from vitaccel.sim.runner import simulator_available
from vitaccel.sw.cli import main

CONFIG = PRESETS["tiny"]


def _need(simulator: str) -> None:
    reason = simulator_available(simulator)
    if reason:
        pytest.skip(reason)


# -- planning (no simulator) ------------------------------------------------------------------

def test_vector_plan_runs_each_unit_with_a_vector_mode_once_per_seed():
    plan = make_plan(CONFIG, config_source="tiny", simulator="verilator", seeds=[4, 5], quick=False, vectors=1000)
    by_case = {}
    for task in plan.tasks:
        by_case.setdefault(task.case, []).append(task)
    assert {"matrix_engine", "softmax", "gelu", "layernorm"} <= by_case.keys()
    for tasks in by_case.values():
        assert [t.seed for t in tasks] == [4, 5] and all(t.vectors == 1000 for t in tasks)
        assert "--vectors 1000" in tasks[0].reproduce and "--seed 4" in tasks[0].reproduce
    assert by_case["softmax"][0].function == "run_vectors_case" and by_case["softmax"][0].args == ("softmax",)
    not_run = {n.case: n.reason for n in plan.not_run}
    assert "no random-vector mode" in not_run["axi_lite"]
    assert set(not_run).isdisjoint(by_case)
    one = make_plan(CONFIG, config_source="tiny", simulator="verilator", seeds=[1], quick=True, vectors=3,
                    case="softmax:rows=2,width=8")
    assert [t.case for t in one.tasks] == ["softmax"] and one.not_run == []
    with pytest.raises(ValueError, match="at least one vector"):
        make_plan(CONFIG, config_source="tiny", simulator="verilator", seeds=[1], quick=False, vectors=0)


def test_split_seeds_and_combine():
    assert split(10, 4) == [4, 4, 2] and split(3, 8) == [3]
    assert sub_seeds(2, 3) == [2_000_006, 2_000_007, 2_000_008]
    assert set(sub_seeds(1, 1000)).isdisjoint(sub_seeds(2, 1000))
    ok = {"passed": True, "cycles": 5, "mismatch": None}
    bad = {"passed": False, "cycles": 7, "mismatch": {"position": [0, 1], "expected": 3, "got": 2}}
    assert combine([ok, ok], 8, sizes=[4, 4]) == {"passed": True, "vectors": 8, "cases": 2, "cycles": 10,
                                                  "mismatch": None}
    verdict = combine([ok, bad], 8, sizes=[4, 4])
    assert not verdict["passed"] and verdict["mismatch"] == {"case": 1, "first_vector": 4, "position": [0, 1],
                                                             "expected": 3, "got": 2}
    assert not combine([ok], 8, sizes=[4, 4])["passed"]   # a case that never reported


def test_vectors_must_be_positive_one_line(capsys):
    code = main(["regress", "--config", "tiny", "--vectors", "0"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--vectors" in err


# -- real simulations -------------------------------------------------------------------------

@pytest.mark.cocotb
@pytest.mark.parametrize("unit", ["softmax", "matrix_engine",
                                  pytest.param("sparse_attention", marks=pytest.mark.slow)])  # ~35 s, two launches
def test_small_vector_run_passes_and_a_wrong_result_fails(unit):
    """A few vectors (two GEMMs of the engine) pass; the same run with one expected value
    flipped fails and names where."""
    _need("verilator")
    if unit == "softmax":
        from vitaccel.sim.cases.nonlinear import run_vectors_case

        def run(**kw):
            return run_vectors_case("softmax", CONFIG, seed=3, vectors=24, width=8, **kw)
    elif unit == "matrix_engine":
        from vitaccel.sim.cases.matrix_engine import run_vectors_case

        def run(**kw):
            return run_vectors_case(CONFIG, seed=3, vectors=9, rows_per_gemm=5, **kw)
    else:
        from vitaccel.sim.cases.sparse import run_attention_vectors_case

        def run(**kw):
            return run_attention_vectors_case(CONFIG, seed=3, vectors=9, tokens=5, head_dim=4, **kw)
    good = run()
    assert good["passed"] and good["mismatch"] is None and good["vectors"] in (24, 9), good
    bad = run(break_reference=True)
    assert not bad["passed"] and bad["mismatch"] is not None, bad
    if unit != "softmax":   # two cases of 5 and 4 vectors: the second one is wrong
        assert bad["mismatch"]["case"] == 1 and bad["mismatch"]["first_vector"] == 5, bad


@pytest.mark.cocotb
def test_cli_vectors_json_reports_vectors_and_rate(capsys):
    _need("verilator")
    code = main(["regress", "--config", "tiny", "--case", "gelu", "--vectors", "50", "--seed", "2", "--jobs", "1",
                 "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0 and document["vectors"] == 50 and document["passed"] == 1
    record = document["cases"][0]
    assert record["vectors"] == 50 and record["vectors_per_s"] > 0 and "--vectors 50" in record["reproduce"]
