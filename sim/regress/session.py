"""One regression run: plan, execute (locally or on Dask) with live progress, summarise."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn)

from vitaccel.sim.regress.execute import connect_scheduler, run_local, run_on_cluster
from vitaccel.sim.regress.plan import Plan
from vitaccel.sim.regress.report import format_mismatch, summary_document

__all__ = ["run_regression"]


def run_regression(plan: Plan, *, jobs: int = 1, scheduler: str | None = None,
                   console: Console | None = None, scheduler_timeout_s: float = 5.0) -> dict[str, Any]:
    """Execute ``plan`` and return its summary document (see :func:`summary_document`).

    Parameters
    ----------
    plan : Plan
        From :func:`vitaccel.sim.regress.plan.make_plan`.
    jobs : int
        Local worker processes (ignored with ``scheduler``).
    scheduler : str, optional
        ``tcp://HOST:PORT`` of a running Dask scheduler: run the tasks on its workers.
    console : rich.console.Console, optional
        Where live progress goes (default: stderr).
    scheduler_timeout_s : float
        How long to wait for the scheduler to answer.

    Raises
    ------
    vitaccel.sim.regress.execute.ClusterError
        If the scheduler cannot be reached.
    """
    console = console or Console(stderr=True)
    start = time.monotonic()
    records: list[dict[str, Any]] = []
    client = connect_scheduler(scheduler, timeout_s=scheduler_timeout_s) if scheduler else None
    try:
        # Start the executor before the progress thread: local workers fork here.
        stream = run_on_cluster(plan.tasks, client) if client else run_local(plan.tasks, jobs=jobs)
        where = f"Dask {scheduler}" if client else f"{min(jobs, max(len(plan.tasks), 1))} local job(s)"
        with Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False) as progress:
            bar = progress.add_task(f"regress {plan.config.name} on {plan.simulator}, {where}",
                                    total=len(plan.tasks))
            for record in stream:
                records.append(record)
                progress.advance(bar)
                mark = "[green]pass[/green]" if record["result"] == "passed" else "[red]FAIL[/red]"
                detail = "" if record["result"] == "passed" else \
                    f" {format_mismatch(record['mismatch']) or (record['message'].splitlines() or [''])[0]}"
                progress.console.print(f"{mark} {escape(record['name'])} seed={record['seed']} "
                                       f"cycles={record['cycles']} ({record['duration_s']:.1f} s){escape(detail)}",
                                       highlight=False)
    finally:
        if client is not None:
            client.close()
    return summary_document(plan, records, duration_s=time.monotonic() - start)
