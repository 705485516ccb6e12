"""``vitaccel regress``: every unit's RTL against the golden model, bit for bit, for a config."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys

from rich.console import Console

from vitaccel.hw.spec.config import load_config
from vitaccel.sim.runner import simulator_available
from vitaccel.sw.commands import UserError

DESCRIPTION = """\
Generate the design for a config and run every unit's cocotb testbench (matrix engine,
softmax, GELU, LayerNorm, top-k, sparse attention, ...) against the golden model with
random seeds, on Verilator or Icarus. Every case is independent; the simulator build of a
design is made once per machine and reused by every seed and case.

Results stream in as cases finish; then a summary table shows each case, seed, simulator,
cycles and result, with the first mismatching element (position, expected, got) and the
command that reproduces a failing case alone. The exit status is 0 only if every case
passed. Cases whose unit is not built yet, or that the config leaves out, are listed as
"unavailable" / "disabled" and not counted.
"""

EPILOG = """\
examples:
  vitaccel regress --config tiny --quick          one seed, small shapes: a few minutes
  vitaccel regress --config my.json --seeds 5 --jobs 2 --junit out/regress.xml
  vitaccel regress --config tiny --case softmax --seeds 10
  vitaccel regress --config tiny --case selftest_mac:steps=24 --seed 1234 --sim icarus
  vitaccel regress --config tiny --quick --json > regress.json      (progress on stderr)
  vitaccel regress --config tiny --vectors 100000 --case softmax --seed 1   10^5 rows, one launch

fuzzing (generated programs, golden machine against the RTL; see docs/regress.md):
  vitaccel regress --config tiny --fuzz 10000 --backend golden --json   golden invariants, ~15 s
  vitaccel regress --config tiny --fuzz 200 --json          golden and RTL, 100 programs per launch
  vitaccel regress --config tiny --fuzz 1000 --scheduler tcp://127.0.0.1:8786
  vitaccel regress --config tiny --replay fuzz-failures/FILE.json      replay a shrunk reproducer

on a Dask cluster (started beforehand; each worker builds what it needs):
  dask scheduler --port 8786 &
  dask worker tcp://127.0.0.1:8786 --nworkers 2 --nthreads 1 &
  vitaccel regress --config tiny --scheduler tcp://127.0.0.1:8786

seeds: without --seed a random base seed is drawn; cases run with seeds S, S+1, ...,
S+N-1. --seed S alone runs exactly seed S, as the printed reproduce commands do.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "regress", help="run every unit's RTL against the golden model (bit-exact regression)",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="NAME|FILE",
                        help="preset name (tiny, zcu102) or JSON config file")
    parser.add_argument("--sim", default="verilator", metavar="SIMULATOR",
                        help="verilator (default) or icarus")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="random seeds per case (default: 3, or 1 with --quick or --seed)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="first seed (default: random)")
    parser.add_argument("--quick", action="store_true",
                        help="small shapes and one seed: minutes on 2 cores, for CI and iterating")
    parser.add_argument("--case", default=None, metavar="NAME",
                        help="run only this case (e.g. softmax) or parameter set (e.g. softmax:rows=2,width=8)")
    parser.add_argument("--vectors", type=int, default=None, metavar="N",
                        help="random-vector mode: each unit case (matrix engine rows, softmax/GELU/LayerNorm rows, "
                             "attention query rows) checks N random vectors, edge cases among them, in one "
                             "simulator launch per seed; cases without such a mode are listed as not run")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="parallel local processes (default: CPU count); ignored with --scheduler")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on an existing Dask cluster, e.g. tcp://127.0.0.1:8786")
    parser.add_argument("--junit", default=None, metavar="FILE", help="also write JUnit XML here")
    parser.add_argument("--json", action="store_true",
                        help="print only the JSON summary on stdout (progress and table go to stderr)")
    fuzz = parser.add_argument_group("fuzzing (instead of the unit cases)")
    fuzz.add_argument("--fuzz", type=int, default=None, metavar="N",
                      help="run N generated programs (one mutation of a valid program, corruptions with a "
                           "stale checksum, random words) and compare golden with RTL")
    fuzz.add_argument("--backend", choices=("golden", "rtl"), default=None,
                      help="rtl (default; with --replay: the reproducer's): golden machine against the RTL; "
                           "golden: golden machine alone (crashes, invariants, time budget)")
    fuzz.add_argument("--start", type=int, default=0, metavar="I", help="first program index (default 0)")
    fuzz.add_argument("--batch", type=int, default=None, metavar="N",
                      help="programs per task / simulator launch (default 100 rtl, 500 golden)")
    fuzz.add_argument("--fuzz-out", default="fuzz-failures", metavar="DIR",
                      help="where shrunk reproducers of failures go (default ./fuzz-failures)")
    fuzz.add_argument("--no-shrink", action="store_true", help="write failures as found, unshrunk")
    fuzz.add_argument("--replay", default=None, metavar="FILE", help="run one reproducer file's program alone")
    parser.set_defaults(func=run)


def _seeds(args: argparse.Namespace) -> list[int]:
    count = args.seeds if args.seeds is not None else (1 if args.quick or args.seed is not None else 3)
    if count < 1:
        raise UserError(f"--seeds: must be at least 1, got {count}")
    base = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if base < 0:
        raise UserError(f"--seed: must be non-negative, got {base}")
    return [base + i for i in range(count)]


def _console(*, stderr: bool) -> Console:
    # Not a terminal (CI logs, pipes): wide enough that the table and the reproduce
    # commands stay readable instead of rich's 80-column default.
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200)


def _run_fuzz(args: argparse.Namespace, config) -> int:
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vitaccel.sim.regress import ClusterError
    from vitaccel.sim.regress.fuzz import replay, run_fuzz

    if args.backend is None and not args.replay:
        args.backend = "rtl"
    if args.backend == "rtl":
        reason = simulator_available(args.sim)
        if reason:
            raise UserError(reason)
    console = _console(stderr=True)
    if args.replay:
        try:
            document = replay(Path(args.replay), backend=args.backend, simulator=args.sim)
        except ValueError as err:
            raise UserError(str(err)) from None
        if not args.json:
            console.print("\n".join(document["listing"]), highlight=False)
        console.print(f"{document['status']}: " + ("; ".join(document["problems"]) or "golden and "
                      + document["backend"] + " agree"), highlight=False)
        if args.json:
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return 0 if document["status"] not in ("failed", "hang") else 1
    if args.fuzz < 1:
        raise UserError(f"--fuzz: need at least one program, got {args.fuzz}")
    if args.start < 0:
        raise UserError(f"--start: must be non-negative, got {args.start}")
    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch: must be at least 1, got {args.batch}")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if seed < 0:
        raise UserError(f"--seed: must be non-negative, got {seed}")
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"fuzz {config.name} seed {seed} on {args.backend}", total=args.fuzz)
        try:
            document = run_fuzz(config, config_source=args.config, count=args.fuzz, seed=seed, backend=args.backend,
                                simulator=args.sim, start=args.start, batch=args.batch, jobs=args.jobs,
                                scheduler=args.scheduler, out_dir=Path(args.fuzz_out), shrink=not args.no_shrink,
                                progress=lambda done: bar.update(task, completed=done))
        except ClusterError as err:
            raise UserError(str(err)) from None
    console.print(f"fuzz {document['config']} seed {seed} on {document['backend']}: {document['programs']} programs, "
                  f"{document['passed']} passed ({document['racy']} racy, {document['unsupported']} unsupported), "
                  f"{document['failed']} failed, {document['hangs']} hangs in {document['duration_s']} s",
                  highlight=False)
    for failure in document["failures"]:
        console.print(f"[red]{failure['status'].upper()}[/red] {failure['name']} ({failure['change']}): "
                      f"{'; '.join(failure['problems'])}\n  reproduce: {failure['reproduce']}", highlight=False)
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        sys.stdout.flush()
    return 0 if document["failed"] == 0 and document["hangs"] == 0 else 1


def run(args: argparse.Namespace) -> int:
    if args.fuzz is not None or args.replay is not None:
        return _run_fuzz(args, load_config(args.config))
    from vitaccel.sim.regress import CASES, ClusterError, make_plan, print_summary, run_regression, write_junit
    from vitaccel.sw.system_case import SYSTEM_CASES

    config = load_config(args.config)  # ConfigError -> one-line message from the CLI
    reason = simulator_available(args.sim)
    if reason:
        raise UserError(reason)
    if args.jobs < 1:
        raise UserError(f"--jobs: must be at least 1, got {args.jobs}")
    try:
        if args.vectors is not None and args.vectors < 1:
            raise UserError(f"--vectors: need at least one vector, got {args.vectors}")
        plan = make_plan(config, config_source=args.config, simulator=args.sim, seeds=_seeds(args),
                         quick=args.quick, case=args.case, cases=CASES + SYSTEM_CASES, vectors=args.vectors)
    except ValueError as err:
        raise UserError(str(err)) from None

    progress_console = _console(stderr=True)
    try:
        document = run_regression(plan, jobs=args.jobs, scheduler=args.scheduler, console=progress_console)
    except ClusterError as err:
        raise UserError(str(err)) from None

    summary_console = progress_console if args.json else _console(stderr=False)
    print_summary(document, summary_console)
    if args.junit:
        write_junit(document, args.junit)
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        sys.stdout.flush()
    if document["total"] == 0:
        print("vitaccel regress: no case ran (see the cases listed as not run)", file=sys.stderr)
        return 1
    return 0 if document["failed"] == 0 else 1
