"""Execution of regression tasks: in this process, in a local process pool, or on Dask.

Every backend yields one result record per task *as it finishes*, so progress is live and a
long case never hides the results of short ones. A case that raises (build error, simulator
crash, a broken case runner) becomes a failed record carrying the exception message; it
never stops the regression.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import socket
import threading
import time
import traceback
from typing import Any, Iterator, Mapping

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.sim.regress.plan import Task
from vitaccel.sim.regress.registry import resolve_runner

__all__ = ["execute_task", "run_local", "run_on_cluster", "connect_scheduler", "ClusterError",
           "failure_record"]


# ``run_testbench`` sets PATH/MAKEFLAGS in ``os.environ`` while a simulator runs, which is
# process-wide: tasks sharing a process (a Dask worker started with --nthreads > 1) take turns.
_ONE_SIMULATION_PER_PROCESS = threading.Lock()


class ClusterError(RuntimeError):
    """The Dask scheduler cannot be used (not installed, bad address, unreachable)."""


def _jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars/arrays and tuples turned into JSON types."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _record(task: Task, *, result: str, cycles: int | None, mismatch: Any, message: str,
            duration_s: float) -> dict[str, Any]:
    vectors = {} if task.vectors is None else {"vectors": task.vectors,
                                               "vectors_per_s": round(task.vectors / max(duration_s, 1e-9), 1)}
    return {**vectors,
        "name": task.case, "seed": task.seed, "simulator": task.simulator, "result": result,
        "cycles": cycles, "mismatch": _jsonable(mismatch), "message": message,
        "params": dict(task.params), "duration_s": round(duration_s, 3),
        "host": f"{socket.gethostname()}:{os.getpid()}", "reproduce": task.reproduce,
    }


def failure_record(task: Task, message: str, duration_s: float = 0.0) -> dict[str, Any]:
    """The record of a task that failed before its case runner could report anything."""
    return _record(task, result="failed", cycles=None, mismatch=None, message=message,
                   duration_s=duration_s)


def execute_task(task: Task) -> dict[str, Any]:
    """Run one task where it is called (a pool process or a Dask worker).

    The case runner builds the design it needs; :func:`vitaccel.sim.runner.run_testbench`
    caches that build by design content on this machine, so every seed after the first, and
    every task of the same design on this machine, reuses it.
    """
    with _ONE_SIMULATION_PER_PROCESS:
        return _execute(task)


def _execute(task: Task) -> dict[str, Any]:
    start = time.monotonic()
    try:
        runner = resolve_runner(task.module, task.function)
        config = AccelConfig.from_dict(dict(task.config))
        extra = {} if task.vectors is None else {"vectors": task.vectors}
        outcome = runner(*task.args, config, seed=task.seed, simulator=task.simulator,
                         quick=task.quick, **extra, **task.params)
        if not isinstance(outcome, Mapping) or not isinstance(outcome.get("passed"), (bool, np.bool_)):
            raise TypeError(f"{task.module}.{task.function} must return a dict with a bool 'passed', "
                            f"got {outcome!r:.200}")
        passed = bool(outcome["passed"])
        mismatch = outcome.get("mismatch")
        message = "" if passed else str(outcome.get("message") or
                                        ("mismatch against the golden model" if mismatch else
                                         "the case runner reported a failure"))
        cycles = outcome.get("cycles")
        return _record(task, result="passed" if passed else "failed",
                       cycles=int(cycles) if cycles is not None else None, mismatch=mismatch,
                       message=message, duration_s=time.monotonic() - start)
    except Exception as err:  # noqa: BLE001 - any error is this case's failure, not the run's
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        return failure_record(task, detail, time.monotonic() - start)


def _inline(tasks: list[Task]) -> Iterator[dict[str, Any]]:
    for task in tasks:
        yield execute_task(task)


def run_local(tasks: list[Task], *, jobs: int) -> Iterator[dict[str, Any]]:
    """Run ``tasks`` on this machine, ``jobs`` at a time; yields records as they finish.

    The pool is started and every task submitted *before* this returns, so the worker
    processes are forked before the caller starts its progress display thread. ``fork``
    also lets workers see the parent's state exactly (a test's monkeypatched golden kernel
    included), as a spawned interpreter would not.
    """
    if jobs < 1:
        raise ValueError(f"jobs: must be at least 1, got {jobs}")
    if jobs == 1 or len(tasks) <= 1:
        return _inline(tasks)
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=min(jobs, len(tasks)), mp_context=multiprocessing.get_context("fork"))
    futures = {pool.submit(execute_task, task): task for task in tasks}

    def results() -> Iterator[dict[str, Any]]:
        try:
            for future in concurrent.futures.as_completed(futures):
                try:
                    yield future.result()
                except Exception as err:  # noqa: BLE001 - a worker process died
                    yield failure_record(futures[future], f"worker process failed: {err}")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    return results()


def connect_scheduler(address: str, *, timeout_s: float = 5.0) -> Any:
    """A ``dask.distributed.Client`` of the running scheduler at ``address``.

    Raises
    ------
    ClusterError
        One-line reason: Dask missing, malformed address, or nothing answering in time.
    """
    scheme, sep, rest = address.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or scheme not in ("tcp", "tls") or not colon or not host or not port.isdigit():
        raise ClusterError(f"scheduler address must look like tcp://HOST:PORT, got {address!r}")
    try:
        from dask.distributed import Client
    except ImportError:
        raise ClusterError("Dask is not installed: pip install 'vitaccel[cluster]'") from None
    try:
        return Client(address, timeout=f"{timeout_s}s", set_as_default=False)
    except Exception as err:  # noqa: BLE001 - OSError, TimeoutError, comm errors: all one message
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ClusterError(f"cannot reach Dask scheduler at {address} within {timeout_s:g} s: {reason}") from None


def run_on_cluster(tasks: list[Task], client: Any) -> Iterator[dict[str, Any]]:
    """Run ``tasks`` on the Dask cluster behind ``client``; yields records as they finish.

    Each task is an independent Dask task (``pure=False``: a seed is a fresh run, never a
    cached result); each worker builds the designs its tasks need in its own build cache.
    """
    from dask.distributed import as_completed

    futures = {client.submit(execute_task, task, pure=False,
                             key=f"regress-{task.case}-{task.seed}-{index}-{time.time_ns()}"): task
               for index, task in enumerate(tasks)}

    def results() -> Iterator[dict[str, Any]]:
        try:
            for future in as_completed(list(futures), loop=client.loop):
                try:
                    yield future.result()
                except Exception as err:  # noqa: BLE001 - a worker died or lost the task
                    yield failure_record(futures[future], f"Dask task failed: {type(err).__name__}: {err}")
        finally:
            for future in futures:
                future.release()

    return results()
