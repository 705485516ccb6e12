"""``vitaccel regress --fuzz N``: generated programs on the golden machine and the RTL, compared.

The N programs of a seed (:func:`vitaccel.sim.regress.fuzz_gen.generate`) are split into
batches of consecutive indices. A batch (:func:`run_batch`) is one task: it regenerates its
programs, runs them in order on one golden machine and, with the ``rtl`` backend, in ONE
simulator launch on the emitted ``vitaccel_top`` (:mod:`vitaccel.sim.regress.fuzz_rtl`),
and judges each program (:mod:`vitaccel.sim.regress.fuzz_check`). Batches run in this
process, in a local process pool or on a Dask cluster. Each failure is then shrunk
(:mod:`vitaccel.sim.regress.shrink`) and written as a JSON reproducer with the commands that
replay it.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import shlex
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.sim.regress.fuzz_check import Outcome, compare, golden_outcome, golden_problems, scrub_program
from vitaccel.sim.regress.fuzz_gen import FuzzProgram, generate

__all__ = ["run_batch", "judge", "run_fuzz", "replay", "write_reproducer", "BACKENDS", "STATUSES"]

BACKENDS = ("golden", "rtl")
#: Per-program verdicts; ``racy`` and ``unsupported`` are agreements checked as far as the
#: hardware is bound (see :mod:`vitaccel.sim.regress.fuzz_check`).
STATUSES = ("passed", "racy", "unsupported", "failed", "hang")


def judge(config: AccelConfig, programs: list[FuzzProgram], *, backend: str, simulator: str = "verilator",
          seed: int = 0) -> list[dict[str, Any]]:
    """Run ``programs`` in order (one golden machine; with ``rtl`` one simulator launch), each
    after its scrub program (:func:`~vitaccel.sim.regress.fuzz_check.scrub_program`), and return
    per program ``status``, ``problems`` and both outcomes."""
    import dataclasses

    import numpy as np

    from vitaccel.sim.golden.machine import GoldenMachine

    runs: list[FuzzProgram] = []
    scrubbed: list[bool] = []
    for program in programs:
        scrub = scrub_program(config, program.words)
        if scrub:
            runs.append(dataclasses.replace(program, kind="scrub", change="", words=tuple(scrub),
                                            ddr=np.zeros_like(program.ddr), checksum=None))
        scrubbed.append(bool(scrub))
        runs.append(program)
    machine = GoldenMachine(config)
    golden = [golden_outcome(machine, run) for run in runs]
    rtl: list[Outcome | None] = [None] * len(runs)
    if backend == "rtl":
        from vitaccel.sim.regress.execute import _ONE_SIMULATION_PER_PROCESS
        from vitaccel.sim.regress.fuzz_rtl import run_rtl_batch

        with _ONE_SIMULATION_PER_PROCESS:
            rtl = run_rtl_batch(config, runs, simulator=simulator, seed=seed)
    verdicts, at = [], 0
    for program, has_scrub in zip(programs, scrubbed):
        problems = []
        if has_scrub:
            for side, outcome in (("golden", golden[at]), ("rtl", rtl[at])):
                if outcome is not None and outcome.code != "NONE":
                    problems.append(f"its scrub program stopped on {side} with {outcome.code} at pc {outcome.pc}"
                                    + (f" ({outcome.message})" if outcome.message else ""))
            at += 1
        g, r = golden[at], rtl[at]
        at += 1
        problems += golden_problems(program, g)
        if problems:
            status = "hang" if any("(hang)" in p for p in problems) or (r is not None and r.code == "HANG") \
                else "failed"
        elif r is None:
            status = "passed"
        else:
            status, problems = compare(program, g, r, config)
        verdicts.append({"status": status, "problems": problems, "golden": g.to_dict(),
                         "rtl": r.to_dict() if r is not None else None})
    return verdicts


def run_batch(config: dict[str, Any], seed: int, start: int, count: int, backend: str,
              simulator: str = "verilator") -> dict[str, Any]:
    """Programs ``start .. start + count - 1`` of ``seed``: counts per status and the failures
    (program, verdict and position). Picklable in and out: a Dask or pool task."""
    began = time.perf_counter()
    accel = AccelConfig.from_dict(dict(config))
    programs = [generate(accel, seed, index) for index in range(start, start + count)]
    try:
        verdicts = judge(accel, programs, backend=backend, simulator=simulator, seed=seed + start)
    except Exception as err:  # noqa: BLE001 - a broken batch is its programs' failure, not the run's
        verdicts = [{"status": "failed", "problems": [f"batch failed: {type(err).__name__}: {err}"],
                     "golden": None, "rtl": None} for _ in programs]
    counts = Counter(v["status"] for v in verdicts)
    failures = [{"program": p.to_dict(), "name": p.name, "change": p.change, **v}
                for p, v in zip(programs, verdicts) if v["status"] in ("failed", "hang")]
    return {"start": start, "count": count, "counts": dict(counts), "failures": failures,
            "seconds": time.perf_counter() - began}


def _batches(total: int, size: int, first: int) -> list[tuple[int, int]]:
    return [(first + at, min(size, total - at)) for at in range(0, total, size)]


def _run_local(jobs: int, calls: list[tuple]) -> Iterator[dict[str, Any]]:
    if jobs <= 1 or len(calls) <= 1:
        for call in calls:
            yield run_batch(*call)
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(jobs, len(calls)),
                                                mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(run_batch, *call) for call in calls]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def _run_dask(client: Any, calls: list[tuple]) -> Iterator[dict[str, Any]]:
    from dask.distributed import as_completed

    futures = [client.submit(run_batch, *call, pure=False, key=f"fuzz-{call[1]}-{call[2]}-{time.time_ns()}")
               for call in calls]
    try:
        for future in as_completed(futures, loop=client.loop):
            yield future.result()
    finally:
        for future in futures:
            future.release()


def reproduce_command(config_source: str, *, backend: str, simulator: str, seed: int | None = None,
                      start: int | None = None, count: int | None = None, replay: str | None = None) -> str:
    """The command that reruns a batch (``seed``/``start``/``count``) or replays a reproducer file."""
    words = ["vitaccel", "regress", "--config", config_source, "--backend", backend]
    if backend == "rtl" and simulator != "verilator":
        words += ["--sim", simulator]
    if replay is not None:
        words += ["--replay", replay]
    else:
        words += ["--fuzz", str(count), "--seed", str(seed), "--start", str(start), "--batch", str(count)]
    return shlex.join(words)


def write_reproducer(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as JSON to ``path`` atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(document, out, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _still_fails(config: AccelConfig, backend: str, simulator: str) -> Callable[[list[FuzzProgram]], list[bool]]:
    def check(candidates: list[FuzzProgram]) -> list[bool]:
        return [v["status"] in ("failed", "hang")
                for v in judge(config, candidates, backend=backend, simulator=simulator)]
    return check


def run_fuzz(config: AccelConfig, *, config_source: str, count: int, seed: int, backend: str,
             simulator: str = "verilator", start: int = 0, batch: int | None = None, jobs: int = 1,
             scheduler: str | None = None, out_dir: Path = Path("fuzz-failures"), shrink: bool = True,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Fuzz ``count`` programs of ``seed`` from index ``start``; returns the JSON summary.

    ``batch`` programs go to one task (one simulator launch with ``rtl``; default 100 for
    ``rtl``, 500 for ``golden``). ``progress(programs_done)`` is called as batches finish.
    """
    from vitaccel.sim.regress.execute import connect_scheduler
    from vitaccel.sim.regress.shrink import shrink as shrink_program

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if count < 1:
        raise ValueError(f"--fuzz: need at least one program, got {count}")
    size = batch or (100 if backend == "rtl" else 500)
    if size < 1:
        raise ValueError(f"--batch: must be at least 1, got {size}")
    began = time.monotonic()
    calls = [(config.to_dict(), seed, first, n, backend, simulator) for first, n in _batches(count, size, start)]
    client = connect_scheduler(scheduler) if scheduler else None
    counts: Counter = Counter()
    failures: list[dict[str, Any]] = []
    batch_seconds = []
    done = 0
    try:
        stream = _run_dask(client, calls) if client else _run_local(jobs, calls)
        for result in stream:
            counts.update(result["counts"])
            batch_seconds.append(round(result["seconds"], 2))
            for failure in result["failures"]:
                failure["batch"] = {"start": result["start"], "count": result["count"]}
            failures.extend(result["failures"])
            done += result["count"]
            if progress:
                progress(done)
    finally:
        if client is not None:
            client.close()
    fuzz_seconds = time.monotonic() - began
    reports = []
    for failure in sorted(failures, key=lambda f: f["program"]["index"]):
        program = FuzzProgram.from_dict(failure["program"])
        report = {"name": failure["name"], "index": program.index, "status": failure["status"],
                  "change": failure["change"], "problems": failure["problems"], "golden": failure["golden"],
                  "rtl": failure["rtl"],
                  "reproduce_batch": reproduce_command(config_source, backend=backend, simulator=simulator,
                                                       seed=seed, start=failure["batch"]["start"],
                                                       count=failure["batch"]["count"])}
        document = {"config": config.to_dict(), "config_source": config_source, "backend": backend,
                    "simulator": simulator, "program": program.to_dict(), "verdict": failure}
        if shrink:
            result = shrink_program(program, _still_fails(config, backend, simulator))
            document["shrunk"] = result.program.to_dict()
            document["shrink"] = {"alone": result.alone, "steps": result.steps, "evaluations": result.evaluations}
            report["shrunk_words"] = len(result.program.words)
            report["fails_alone"] = result.alone
            if result.alone:
                from vitaccel.hw.spec.isa import disassemble

                report["shrunk"] = disassemble(result.program.words).splitlines()
        path = out_dir / f"fuzz-{config.name}-{backend}-seed{seed}-{program.index}.json"
        report["reproducer"] = str(path)
        report["reproduce"] = reproduce_command(config_source, backend=backend, simulator=simulator,
                                                replay=str(path))
        document["reproduce"] = report["reproduce"]
        write_reproducer(path, document)
        reports.append(report)
    passed = sum(counts[s] for s in ("passed", "racy", "unsupported"))
    return {"mode": "fuzz", "config": config.name, "backend": backend,
            "simulator": simulator if backend == "rtl" else None, "seed": seed, "start": start, "programs": done,
            "passed": passed, "failed": counts["failed"], "hangs": counts["hang"],
            "racy": counts["racy"], "unsupported": counts["unsupported"], "exact": counts["passed"],
            "batch": size, "batches": len(calls), "where": f"Dask {scheduler}" if scheduler else f"{jobs} local job(s)",
            "batch_seconds": batch_seconds, "fuzz_seconds": round(fuzz_seconds, 2),
            "duration_s": round(time.monotonic() - began, 2), "failures": reports}


def replay(path: Path, *, backend: str | None = None, simulator: str = "verilator") -> dict[str, Any]:
    """Run a reproducer file's program (the shrunk one if there is one) alone; its verdict."""
    try:
        document = json.loads(Path(path).read_text())
        config = AccelConfig.from_dict(document["config"])
        program = FuzzProgram.from_dict(document.get("shrunk") or document["program"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read reproducer {path}: {err}") from None
    backend = backend or document.get("backend", "golden")
    if backend == "rtl":
        from vitaccel.sim.runner import simulator_available

        reason = simulator_available(simulator)
        if reason:
            raise ValueError(reason)
    verdict = judge(config, [program], backend=backend, simulator=simulator)[0]
    from vitaccel.hw.spec.isa import disassemble

    return {"mode": "replay", "file": str(path), "backend": backend, "program": program.name,
            "status": verdict["status"], "problems": verdict["problems"], "golden": verdict["golden"],
            "rtl": verdict["rtl"], "listing": disassemble(program.words).splitlines()}
