"""``vitaccel demo``: the main job on the embedded default, end to end.

Compiles the shipped digits-vit (trained on scikit-learn's digits, no download) for the
``tiny`` config, runs the program on the golden machine over the whole digits test split,
and prints float versus int8 accuracy and what the program contains.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="compile digits-vit for tiny, run it, compare int8 with float",
        description="End to end on the embedded default: compile the shipped digits-vit for the "
                    "`tiny` config, execute the instruction stream on the bit-accurate golden "
                    "machine over the digits test split, and report accuracy and program contents.",
        epilog="examples:\n  vitaccel demo\n  vitaccel demo --config zcu102 -o out/demo --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", metavar="NAME|FILE", help="accelerator config (default: tiny)")
    parser.add_argument("-o", "--output", metavar="DIR", help="keep the compiled program here")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from vitaccel.sw.compile import compile_model
    from vitaccel.sw.program import load_program
    from vitaccel.sw.run import run_program_dir

    console = Console(stderr=args.json)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.output or Path(scratch) / "digits-vit")
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("compile", total=1.0)

            def progress(text: str, fraction: float) -> None:
                bar.update(task, description=text, completed=fraction)

            compile_model("digits-vit", args.config, out, progress=progress)
            bar.update(task, description="run on the golden machine", completed=0.0)
            result = run_program_dir(out, backend="golden", progress=progress)
        program = load_program(out)
        opcodes = Counter(program.manifest["instruction_counts"])
        summary = {**result, "config": program.config.name, "program_dir": str(out) if args.output else None,
                   "ddr_bytes": program.manifest["ddr_size"], "opcodes": dict(opcodes)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    table = Table(title=f"digits-vit on '{summary['config']}': {result['images']} test images, golden machine")
    table.add_column("")
    table.add_column("value", justify="right")
    for key in ("float_top1", "int8_top1", "agreement", "logit_cosine", "macs_per_image",
                "dma_bytes_per_image", "ddr_bytes", "seconds_per_image", "torch_seconds_per_image"):
        value = summary.get(key)
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print("instructions: " + ", ".join(f"{name} x{count}" for name, count in opcodes.most_common()))
    if args.output:
        console.print(f"program, DDR image, manifest and listing in {out}/")
    return 0
