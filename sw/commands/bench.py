"""``vitaccel bench``: measured performance and accuracy, printed as JSON.

Each benchmark is a module ``vitaccel.sim.bench.<name>`` (units and programs: no compiler) or
``vitaccel.sw.bench.<name>`` (whole compiled models) with
``run(config, *, simulator, quick, progress) -> list[dict]``; cycle counts in its records
come from RTL simulation.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from vitaccel.hw.spec.config import load_config
from vitaccel.sim.runner import SIMULATORS, simulator_available
from vitaccel.sw.commands import UserError

BENCHMARKS = {
    "gemm": "matrix engine: DeiT-S GEMM shapes, cycles and utilisation in RTL",
    "nonlinear": "softmax / GELU / LayerNorm: error against float and cycles per row in RTL",
    "sparse": "top-k engine and sparse attention: cycles against density in RTL",
    "dma": "AXI DMA: read/write throughput in bytes per cycle, with and without back-pressure",
    "pruning": "pruned models: accuracy, executed MACs and cycles per pruning method",
    "e2e": "whole models at batch 1: cycles, latency, utilisation, DDR bytes (RTL and/or perf model)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    lines = "\n".join(f"  {name:<10} {text}" for name, text in BENCHMARKS.items())
    parser = subparsers.add_parser(
        "bench", help="run a benchmark and print its measurements",
        description=f"Run a benchmark. Cycles are measured in RTL simulation; only e2e may also use the performance "
                    f"model (calibrated against RTL), and its records say which in 'source'.\n\n"
                    f"benchmarks:\n{lines}\n  all        every benchmark above",
        epilog="examples:\n  vitaccel bench gemm --config tiny --json\n"
               "  vitaccel bench nonlinear --config tiny --quick\n"
               "  vitaccel bench pruning --json --plot docs/pruning.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--config", default="tiny", metavar="NAME|FILE", help="preset or JSON file (default: tiny)")
    parser.add_argument("--sim", default="verilator", choices=SIMULATORS, help="RTL simulator (default: verilator)")
    parser.add_argument("--quick", action="store_true", help="small shapes: seconds instead of minutes")
    parser.add_argument("--json", action="store_true", help="print only the JSON list on stdout")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="pruning: also write int8 accuracy against cycles to PATH (e.g. docs/pruning.png); "
                             "e2e: a directory for the per-layer cycle and roofline plots")
    parser.add_argument("--models", nargs="+", metavar="MODEL", default=None,
                        help="e2e only: models (default: the config's, e.g. deit-tiny deit-small on zcu102)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD", default=None,
                        help="e2e only: dense, tokens, nm-2:4 (default: dense tokens)")
    parser.add_argument("--backend", default=None, choices=("rtl", "perf", "both"),
                        help="e2e only: RTL simulation, the performance model, or both (default: both; RTL runs "
                             "whose extrapolated time exceeds 30 min are skipped and say so)")
    parser.set_defaults(func=run)


#: Benchmarks that compile models live on the compiler's side of the sw -> sim dependency.
COMPILING_BENCHMARKS = ("pruning", "e2e")


def _load(name: str):
    module = f"vitaccel.{'sw' if name in COMPILING_BENCHMARKS else 'sim'}.bench.{name}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == module:
            raise UserError(f"benchmark {name!r} is not available in this build") from None
        raise


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    reason = simulator_available(args.sim)
    if reason:
        raise UserError(reason)
    if args.plot is not None and args.benchmark not in ("pruning", "e2e"):
        raise UserError("--plot is only for the pruning and e2e benchmarks")
    e2e_options = {"models": args.models, "methods": args.methods, "backend": args.backend}
    if args.benchmark != "e2e" and any(value is not None for value in e2e_options.values()):
        raise UserError("--models, --methods and --backend are only for the e2e benchmark")
    if args.benchmark == "e2e":
        from vitaccel.sw.bench.e2e import METHODS, MODELS

        for method in args.methods or ():
            if method not in METHODS:
                raise UserError(f"unknown method {method!r}; methods are {', '.join(METHODS)}")
        if not args.models and config.name not in MODELS:
            raise UserError(f"no default e2e models for config {config.name!r}: name them with --models")
    e2e_options = {"models": args.models, "methods": args.methods, "backend": args.backend or "both",
                   "plot_dir": args.plot if args.benchmark == "e2e" else None}
    names = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    modules = {name: _load(name) for name in names} if args.benchmark != "all" else {}
    if args.benchmark == "all":
        for name in names:
            try:
                modules[name] = _load(name)
            except UserError as err:
                print(f"skipping: {err}", file=sys.stderr)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    records: list[dict] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=args.json) as bar:
        for name, module in modules.items():
            task = bar.add_task(name, total=1.0)

            def progress(description: str, fraction: float, task=task, name=name) -> None:
                bar.update(task, description=f"{name}: {description}", completed=fraction)

            options = e2e_options if name == "e2e" else {}
            try:
                produced = module.run(config, simulator=args.sim, quick=args.quick, progress=progress, **options)
            except ValueError as err:
                if name != "e2e":
                    raise
                raise UserError(str(err)) from None
            for record in produced:
                records.append({"benchmark": name, **record} if args.benchmark == "all" else record)
            bar.update(task, completed=1.0)
    if args.plot is not None and args.benchmark == "pruning":
        modules["pruning"].plot(records, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        from rich.console import Console as _Console
        from rich.table import Table

        table = Table(title=f"vitaccel bench {args.benchmark} --config {config.name}")
        keys = sorted({key for record in records for key in record}, key=lambda k: (k != "name", k))
        for key in keys:
            table.add_column(key)
        for record in records:
            table.add_row(*(_fmt(record.get(key, "")) for key in keys))
        _Console().print(table)
    return 0


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
