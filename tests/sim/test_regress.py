"""``vitaccel regress``: planning, local and Dask execution, failure reporting, outputs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vitaccel.hw.spec.config import PRESETS
from vitaccel.sim.regress import make_plan, registry, selftest
from vitaccel.sim.regress.registry import CaseSpec
from vitaccel.sim.runner import simulator_available
from vitaccel.sw.cli import main

VENV_BIN = Path(sys.executable).parent
SELFTEST = "selftest_mac"


def _need(simulator: str) -> None:
    reason = simulator_available(simulator)
    if reason:
        pytest.skip(reason)


def _regress(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``vitaccel regress`` in this process (so monkeypatches apply); (rc, stdout, stderr)."""
    capsys.readouterr()
    code = main(["regress", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- planning (no simulator) ------------------------------------------------------------------

def test_plan_expands_cases_seeds_and_lists_unavailable_units():
    fake = CaseSpec("ghost", "vitaccel.sim.cases.no_such_unit", "run_case",
                    quick=({"n": 4},), full=({"n": 4}, {"n": 8}))
    table = (registry.CASES[0], fake)
    plan = make_plan(PRESETS["tiny"], config_source="tiny", simulator="verilator", seeds=[5, 6],
                     quick=False, cases=table)
    assert [(t.case, t.seed) for t in plan.tasks] == [
        ("selftest_mac:steps=24", 5), ("selftest_mac:steps=24", 6),
        ("selftest_mac:steps=400", 5), ("selftest_mac:steps=400", 6)]
    assert [(n.case, n.status) for n in plan.not_run] == [("ghost:n=4", "unavailable"), ("ghost:n=8", "unavailable")]
    assert "vitaccel.sim.cases.no_such_unit" in plan.not_run[0].reason
    assert plan.tasks[2].reproduce == ("vitaccel regress --config tiny --case selftest_mac:steps=400 "
                                       "--seed 5 --sim verilator")


def test_plan_selects_one_variant_and_skips_units_the_config_leaves_out():
    plan = make_plan(PRESETS["tiny"], config_source="tiny", simulator="icarus", seeds=[1], quick=True,
                     case="selftest_mac:steps=400")  # a full-run variant, named exactly
    assert [t.case for t in plan.tasks] == ["selftest_mac:steps=400"] and plan.tasks[0].quick
    no_topk = PRESETS["tiny"].replace(has_topk=False)
    plan = make_plan(no_topk, config_source="x.json", simulator="verilator", seeds=[1], quick=True, case="topk")
    assert not plan.tasks and plan.not_run[0].status == "disabled" and "has_topk" in plan.not_run[0].reason
    with pytest.raises(ValueError, match="unknown case 'nope'"):
        make_plan(PRESETS["tiny"], config_source="tiny", simulator="verilator", seeds=[1], quick=True, case="nope")


def test_a_case_that_raises_is_a_failure_not_a_crash(capsys, monkeypatch):
    def crashing_case(config, **kwargs):
        raise RuntimeError("simulator crashed: segmentation fault [/x]")  # not rich markup

    monkeypatch.setattr(selftest, "run_case", crashing_case)
    code, out, err = _regress(capsys, "--config", "tiny", "--quick", "--case", SELFTEST, "--seed", "3", "--jobs", "1",
                              "--json")
    document = json.loads(out)
    assert code == 1 and (document["total"], document["failed"]) == (1, 1)
    assert "RuntimeError: simulator crashed: segmentation fault [/x]" in document["cases"][0]["message"]
    assert "segmentation fault [/x]" in err and document["cases"][0]["reproduce"] in err


# -- one-line user errors ---------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--config", "{bad}"], "block_size: must be in 1..16, got 99"),
    (["--config", "tiny", "--sim", "modelsim"], "unknown simulator 'modelsim'"),
    (["--config", "tiny", "--scheduler", "localhost"], "must look like tcp://HOST:PORT"),
    (["--config", "tiny", "--scheduler", "tcp://127.0.0.1:{port}"], "cannot reach Dask scheduler"),
    (["--config", "tiny", "--case", "nope"], "unknown case 'nope'"),
])
def test_user_errors_are_one_line(capsys, tmp_path, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"block_size": 99}))
    args = [a.replace("{bad}", str(bad)).replace("{port}", str(_free_port())) for a in args]
    code, out, err = _regress(capsys, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


# -- real simulations -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_json(tmp_path_factory):
    """``vitaccel regress --quick --json`` as a user runs it (a subprocess), with JUnit."""
    _need("verilator")
    junit = tmp_path_factory.mktemp("regress") / "junit.xml"
    proc = subprocess.run([str(VENV_BIN / "vitaccel"), "regress", "--config", "tiny", "--quick",
                           "--case", SELFTEST, "--seed", "11", "--seeds", "2", "--jobs", "2",
                           "--json", "--junit", str(junit)],
                          capture_output=True, text=True, timeout=300)
    return proc, junit


@pytest.mark.cocotb
def test_quick_run_passes_and_prints_json_counts(quick_json):
    proc, _ = quick_json
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)  # stdout is only the JSON
    assert document["total"] == document["passed"] == 2 and document["failed"] == 0
    assert [(c["name"], c["seed"], c["simulator"], c["result"]) for c in document["cases"]] == [
        ("selftest_mac:steps=24", 11, "verilator", "passed"), ("selftest_mac:steps=24", 12, "verilator", "passed")]
    assert all(c["cycles"] == 24 and c["mismatch"] is None for c in document["cases"])
    assert "pass selftest_mac:steps=24 seed=11" in proc.stderr  # live progress on stderr


@pytest.mark.cocotb
def test_junit_is_written_and_parseable(quick_json):
    proc, junit = quick_json
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0"
    names = [case.get("name") for case in suite.iter("testcase")]
    assert names == ["selftest_mac:steps=24[seed=11]", "selftest_mac:steps=24[seed=12]"]


@pytest.mark.cocotb
def test_broken_golden_kernel_fails_with_case_name_and_reproduce_command(capsys, monkeypatch, tmp_path):
    _need("verilator")
    real_reference = selftest.mac_reference

    def off_by_one_after_step_5(a, b, clear):
        expected = real_reference(a, b, clear)
        expected[5:] += 1
        return expected

    monkeypatch.setattr(selftest, "mac_reference", off_by_one_after_step_5)
    junit = tmp_path / "junit.xml"
    # Two jobs: the cases run in pool worker processes, the real parallel path.
    code, out, err = _regress(capsys, "--config", "tiny", "--quick", "--case", SELFTEST, "--seed", "21", "--seeds", "2",
                              "--jobs", "2", "--json", "--junit", str(junit))
    assert code == 1
    document = json.loads(out)
    assert (document["total"], document["failed"]) == (2, 2)
    failure = document["cases"][0]
    assert failure["name"] == "selftest_mac:steps=24" and failure["result"] == "failed"
    assert failure["mismatch"]["position"] == [5]
    assert failure["mismatch"]["expected"] == failure["mismatch"]["got"] + 1
    reproduce = "vitaccel regress --config tiny --case selftest_mac:steps=24 --seed 21 --sim verilator --quick"
    assert failure["reproduce"] == reproduce
    assert reproduce in err and "selftest_mac:steps=24" in err  # the summary names it
    assert "failure" in junit.read_text() and reproduce in junit.read_text()

    # The reproduce command runs that case alone, with the same seed and the same mismatch.
    code, out, _ = _regress(capsys, *shlex.split(reproduce)[2:], "--json")
    again = json.loads(out)
    assert code == 1 and again["total"] == 1
    assert (again["cases"][0]["seed"], again["cases"][0]["mismatch"]) == (21, failure["mismatch"])


@pytest.mark.cocotb
def test_icarus_cross_check(capsys):
    _need("icarus")
    code, out, err = _regress(capsys, "--config", "tiny", "--quick", "--case", SELFTEST, "--seed", "4",
                              "--sim", "icarus", "--json")
    document = json.loads(out)
    assert code == 0, err
    assert [(c["simulator"], c["result"], c["cycles"]) for c in document["cases"]] == [("icarus", "passed", 24)]


# -- a real local Dask cluster ----------------------------------------------------------------

def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what we started
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A ``dask scheduler`` and a ``dask worker`` with two worker processes, on loopback."""
    pytest.importorskip("dask.distributed")
    from dask.distributed import Client

    workdir = tmp_path_factory.mktemp("dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    common = dict(cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    started = [subprocess.Popen([str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                 "--no-dashboard"], **common)]
    try:
        started.append(subprocess.Popen([str(VENV_BIN / "dask"), "worker", address, "--nworkers", "2",
                                         "--nthreads", "1", "--no-dashboard", "--local-directory", str(workdir)],
                                        **common))
        with Client(address, timeout="60s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for proc in reversed(started):
            _stop(proc)


@pytest.mark.cocotb
def test_dask_cluster_runs_the_same_cases(capsys, quick_json, dask_cluster):
    local = json.loads(quick_json[0].stdout)
    code, out, err = _regress(capsys, "--config", "tiny", "--quick", "--case", SELFTEST, "--seed", "11",
                              "--seeds", "2", "--scheduler", dask_cluster, "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["total"] == local["total"] and document["failed"] == 0
    assert [(c["name"], c["seed"]) for c in document["cases"]] == [(c["name"], c["seed"]) for c in local["cases"]]
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert all(c["host"] != here for c in document["cases"])  # ran in the workers, not here


@pytest.mark.slow
@pytest.mark.cocotb
def test_every_registered_quick_case_passes():
    """Acceptance 1 literally: every unit's quick case (minutes once all units exist)."""
    _need("verilator")
    proc = subprocess.run([str(VENV_BIN / "vitaccel"), "regress", "--config", "tiny", "--quick", "--json"],
                          capture_output=True, text=True, timeout=1800)
    document = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert document["failed"] == 0 and document["passed"] == document["total"] > 0


@pytest.mark.slow  # builds the top-k engine: a minute cold on a busy machine
@pytest.mark.cocotb
def test_broken_golden_kernel_of_a_real_unit_fails(capsys, monkeypatch):
    """The same through a unit built by another engineer (top-k), when it exists."""
    _need("verilator")
    try:
        registry.resolve_runner("vitaccel.sim.cases.sparse", "run_topk_case")
        golden = __import__("vitaccel.sim.golden.topk", fromlist=["topk"])
    except (registry.CaseUnavailable, ImportError) as err:
        pytest.skip(f"top-k unit not built yet: {err}")
    real_topk = golden.topk

    def reversed_indices(scores, k):
        indices, keep = real_topk(scores, k)
        return indices[::-1].copy(), keep  # k >= 2 distinct indices: wrong from position 0

    monkeypatch.setattr(golden, "topk", reversed_indices)
    code, out, err = _regress(capsys, "--config", "tiny", "--quick", "--case", "topk", "--seed", "2", "--json")
    document = json.loads(out)
    assert code == 1 and document["failed"] == document["total"] == 1
    failure = document["cases"][0]
    assert failure["name"].startswith("topk:") and failure["result"] == "failed"
    assert failure["reproduce"] in err
