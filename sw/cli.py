"""The ``vitaccel`` command line: ``vitaccel --help`` lists the subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

from vitaccel.hw.spec.config import ConfigError
from vitaccel.sw.commands import COMMAND_MODULES, UserError

DESCRIPTION = """\
vitaccel: run Vision Transformers on FPGA accelerators generated from one config.

Typical session:
  vitaccel spec --config tiny            what the hardware is and what its ISA looks like
  vitaccel demo                          compile a small ViT, run it, compare int8 with float
  vitaccel compile deit-small --config zcu102 -o out/deit-s
  vitaccel run out/deit-s --backend golden --json
  vitaccel bench gemm --config tiny --json   RTL-measured cycles and utilisation
  vitaccel emit --config zcu102 -o zcu102/   Verilog, constraints and Vivado scripts
  vitaccel dse --space docs/dse/space_deit_small.json --model deit-small   explore configs

Configs are preset names (tiny, zcu102) or JSON files written by `vitaccel spec --json`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitaccel", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"vitaccel.sw.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"vitaccel.sw.commands.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError) as err:
        print(f"vitaccel {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
