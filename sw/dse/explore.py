"""Design-space exploration: every point of a space through the compiler, the performance
model and the resource model, on a Dask cluster or a local pool of Dask workers.

:func:`explore` returns the JSON report of ``vitaccel dse``: ``points`` (each evaluated or
skipped with its reason), ``pareto`` (points on the latency-vs-DSP48E2 or latency-vs-BRAM36
front of the feasible points), ``best`` (the fastest feasible point's config, loadable with
``--config``) and ``baseline`` (the space's base config evaluated the same way).

Tasks are grouped by what they depend on (:mod:`.evaluate`): one quantization per
distinct set of numerics, one compilation per distinct set of buffers, one performance-model
run per distinct cycle key. The result does not depend on where tasks run or in which order
they finish: records are assembled by point index, and every task is deterministic.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from vitaccel.hw.platform.boards import Board
from vitaccel.hw.platform.resource_model import RESOURCE_KEYS, estimate_resources, violations
from vitaccel.hw.spec.config import AccelConfig, ConfigError

from .evaluate import compile_key, compile_task, cycles_key, cycles_task, quantize_key, quantize_task
from .pareto import pareto_front
from .space import DesignSpace, check_point

__all__ = ["explore", "InlineClient", "local_client", "FRONTS", "best_index"]

#: The resources a Pareto front is taken against (each with latency).
FRONTS = ("DSP48E2", "BRAM36")

Progress = Callable[[int, int], Any]


class _Done:
    """A finished inline task (the result, held like a future)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class InlineClient:
    """Runs each task at submission, in this process: the ``--jobs 1`` path and the tests'.

    It offers the two calls :func:`explore` makes of a ``dask.distributed.Client``
    (``submit``, taking earlier results as arguments, and ``gather``-free ``result``).
    """

    def submit(self, func: Callable[..., Any], *args: Any, **_: Any) -> _Done:
        return _Done(func(*(a.value if isinstance(a, _Done) else a for a in args)))


def local_client(jobs: int) -> tuple[Any, Callable[[], None]]:
    """A Dask client of a fresh local cluster of ``jobs`` single-threaded worker processes,
    and the function that shuts both down."""
    import logging

    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    client = Client(cluster, set_as_default=False)

    def close() -> None:
        client.close()
        cluster.close()

    return client, close


def _completed(futures: list[Any], client: Any) -> Iterator[Any]:
    if isinstance(client, InlineClient):
        yield from futures
        return
    from dask.distributed import as_completed

    yield from as_completed(futures, loop=client.loop)


def best_index(records: list[dict[str, Any]]) -> int | None:
    """Index of the fastest feasible point (ties: fewer DSP48E2, BRAM36, LUT, then lower index)."""
    feasible = [r for r in records if r.get("feasible")]
    if not feasible:
        return None
    best = min(feasible, key=lambda r: (r["latency_ms"], *(r["resources"][k] for k in ("DSP48E2", "BRAM36", "LUT")),
                                        r["index"]))
    return best["index"]


def _metrics(config: AccelConfig, cycles: dict[str, Any], board: Board) -> dict[str, Any]:
    resources = estimate_resources(config)
    over = violations(resources, board)
    limits = board.limits
    return {
        "cycles": cycles["cycles"],
        "latency_ms": round(cycles["cycles"] / (config.clock_mhz * 1e3), 4),
        "engine_utilization": round(cycles["macs"] / (cycles["cycles"] * config.macs_per_cycle), 4),
        "ddr_bytes": cycles["ddr_bytes"],
        "resources": {key: resources[key] for key in RESOURCE_KEYS},
        "utilization": {key: round(resources[key] / board.resources[key], 4) for key in RESOURCE_KEYS},
        "limits": {key: limits[key] for key in RESOURCE_KEYS},
        "feasible": not over,
        "violations": over,
    }


def explore(space: DesignSpace, model: str, board: Board, *, client: Any = None,
            progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate every point of ``space`` for ``model`` against ``board``.

    Parameters
    ----------
    space : DesignSpace
        The points (:meth:`DesignSpace.points`); invalid ones are reported as skipped.
    model : str
        Zoo name or ``file.py:function`` (as ``vitaccel compile`` takes).
    board : Board
        Feasibility is each resource within ``board.limits``.
    client : dask.distributed.Client or InlineClient, optional
        Where tasks run (default: an :class:`InlineClient`).
    progress : callable, optional
        ``progress(done, total)`` as tasks finish.

    Returns
    -------
    dict
        The JSON report (see the module docstring); ``evaluated``, ``skipped`` and
        ``feasible`` count points.
    """
    client = client if client is not None else InlineClient()
    started = time.perf_counter()
    points = space.points()
    valid = [p for p in points if p.config is not None]
    baseline = space.base
    try:
        check_point(baseline)
    except ConfigError as err:
        baseline_error: str | None = str(err)
    else:
        baseline_error = None
    configs = [p.config for p in valid] + ([baseline] if baseline_error is None else [])

    # One task per distinct key, each depending on the one before.
    quantized, compiled, cycled = {}, {}, {}
    for config in configs:
        qk, ck, yk = quantize_key(config), compile_key(config), cycles_key(config)
        if qk not in quantized:
            quantized[qk] = client.submit(quantize_task, model, config.to_json(), pure=False)
        if ck not in compiled:
            compiled[ck] = client.submit(compile_task, quantized[qk], config.to_json(), pure=False)
        if yk not in cycled:
            cycled[yk] = client.submit(cycles_task, compiled[ck], config.to_json(), pure=False)
    futures = [*quantized.values(), *compiled.values(), *cycled.values()]
    total = len(futures)
    results: dict[str, dict[str, Any]] = {}
    by_future = {id(f): key for key, f in cycled.items()}
    for done, future in enumerate(_completed(futures, client), 1):
        if id(future) in by_future:
            results[by_future[id(future)]] = future.result()
        if progress is not None:
            progress(done, total)

    records: list[dict[str, Any]] = []
    for point in points:
        record: dict[str, Any] = {"index": point.index, "name": f"{space.name}-{point.index:04d}",
                                  "values": point.values}
        if point.config is None:
            records.append({**record, "status": "skipped", "reason": point.skipped})
            continue
        cycles = results[cycles_key(point.config)]
        if "error" in cycles:
            records.append({**record, "status": "skipped", "reason": cycles["error"]})
            continue
        records.append({**record, "status": "evaluated", **_metrics(point.config, cycles, board)})
    evaluated = [r for r in records if r["status"] == "evaluated"]
    feasible = [r for r in evaluated if r["feasible"]]

    fronts: dict[int, list[str]] = {}
    for resource in FRONTS:
        for i in pareto_front([(r["latency_ms"], r["resources"][resource]) for r in feasible]):
            fronts.setdefault(feasible[i]["index"], []).append(resource)
    pareto = [{"index": r["index"], "name": r["name"], "latency_ms": r["latency_ms"],
               **{key: r["resources"][key] for key in RESOURCE_KEYS}, "fronts": fronts[r["index"]]}
              for r in sorted(feasible, key=lambda r: (r["latency_ms"], r["index"])) if r["index"] in fronts]
    best = best_index(records)
    best_config = None
    if best is not None:
        best_config = next(p.config for p in valid if p.index == best).replace(name=f"{space.name}-best").to_dict()

    base_record: dict[str, Any] = {"name": baseline.name, "config": baseline.to_dict()}
    if baseline_error is not None:
        base_record["error"] = baseline_error
    elif "error" in results[cycles_key(baseline)]:
        base_record["error"] = results[cycles_key(baseline)]["error"]
    else:
        base_record.update(_metrics(baseline, results[cycles_key(baseline)], board))
    comparison = None
    if best is not None and "latency_ms" in base_record:
        chosen = records[best]
        comparison = {"baseline_latency_ms": base_record["latency_ms"], "best_latency_ms": chosen["latency_ms"],
                      "speedup": round(base_record["latency_ms"] / chosen["latency_ms"], 3),
                      "best_beats_baseline": chosen["latency_ms"] < base_record["latency_ms"],
                      "baseline_feasible": base_record["feasible"]}
    return {
        "model": model,
        "board": {"name": board.name, "device": board.device, "limits": board.limits},
        "space": {"name": space.name, "base": baseline.name, "fields": {k: list(v) if isinstance(v, tuple) else v
                                                                         for k, v in space.fields.items()},
                  "size": space.size},
        "evaluated": len(evaluated), "skipped": len(records) - len(evaluated), "feasible": len(feasible),
        "tasks": {"quantize": len(quantized), "compile": len(compiled), "cycles": len(cycled)},
        "points": records,
        "pareto": pareto,
        "best": best_config,
        "best_point": records[best] if best is not None else None,
        "baseline": base_record,
        "vs_baseline": comparison,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
