"""``vitaccel run DIR --backend golden``: run a compiled program and report accuracy."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a compiled program on its test images",
        description="Run the program in DIR (written by `vitaccel compile`) on the model's test images "
                    "(digits-vit: the digits test split; DeiT: fixed generated images) and compare the "
                    "int8 logits with the float model.",
        epilog="examples:\n  vitaccel run out/digits --backend golden --json\n"
               "  vitaccel run out/deit-s --backend golden --images 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", metavar="DIR")
    parser.add_argument("--backend", default="golden", choices=("golden", "rtl", "board"),
                        help="golden machine, RTL simulation or board (default: golden)")
    parser.add_argument("--images", type=int, default=None, metavar="N",
                        help="number of images (default: the whole digits test split, or 8 generated)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    from vitaccel.sw.run import run_program_dir

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), console=console,
                  disable=args.json, transient=True) as bar:
        task = bar.add_task("running", total=1.0)
        result = run_program_dir(args.directory, backend=args.backend, images=args.images,
                                 progress=lambda text, fraction: bar.update(task, description=text,
                                                                           completed=fraction))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    out = Console()
    for key, value in result.items():
        out.print(f"{key:>24}: {value}")
    return 0
