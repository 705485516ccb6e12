"""``vitaccel spec``: print an accelerator config and the ISA it executes."""

from __future__ import annotations

import argparse
import json

from vitaccel.hw.spec.config import load_config, preset_names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "spec", help="print a config and its ISA",
        description="Print an accelerator config (derived figures included) and the ISA: "
                    "opcodes and instruction field layouts, as hardware, golden model and "
                    "compiler all use them.",
        epilog="examples:\n  vitaccel spec --config tiny\n  vitaccel spec --config zcu102 --json > zcu102.json\n"
               "  vitaccel spec --config my_config.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", metavar="NAME|FILE",
                        help=f"preset ({', '.join(preset_names())}) or a JSON file (default: tiny)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def _isa_description() -> dict:
    from vitaccel.hw.spec import isa

    return isa.describe()


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    derived = {"macs_per_cycle": config.macs_per_cycle, "engine_dsp48e2": config.engine_dsp48e2,
               "tile_rows": config.tile_rows,
               "tile_cols": config.tile_cols, "peak_gmacs": config.peak_gmacs,
               "min_acc_width": config.min_acc_width, "hash": config.hash()}
    isa = _isa_description()
    if args.json:
        print(json.dumps({"config": config.to_dict(), "derived": derived, "isa": isa}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"config {config.name}", show_header=True)
    table.add_column("field")
    table.add_column("value")
    for key, value in {**config.to_dict(), **derived}.items():
        table.add_row(key, str(value))
    console.print(table)
    ops = Table(title=f"ISA: {isa['instruction_bits']}-bit instructions", show_header=True)
    ops.add_column("opcode")
    ops.add_column("family")
    ops.add_column("fields")
    for op in isa["opcodes"]:
        ops.add_row(op["name"], op.get("family", ""), ", ".join(f["name"] for f in op["fields"]))
    console.print(ops)
    return 0
