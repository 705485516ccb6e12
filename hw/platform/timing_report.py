"""Which registers of one part of the accelerator top miss the clock: the tool for pipelining.

``resources.json`` names one worst path per part; closing timing needs every failing end point,
grouped by register, with the named nets along each path. This synthesizes one part of the emitted top as ``vitaccel emit`` does (same
``synth_xilinx`` run, same black boxes and cut memories) but keeps net names, then lists them::

    python -m vitaccel.hw.platform.timing_report zcu102 tokens            # 300 MHz: the preset's clock
    python -m vitaccel.hw.platform.timing_report zcu102 logic --clock 250 --netlist /tmp/logic.json
    python -m vitaccel.hw.platform.timing_report --from-netlist /tmp/logic.json vitaccel_top --clock 300
    python -m vitaccel.hw.platform.timing_report zcu102 core.gemm         # one module of the logic

Parts: ``logic`` and those of :func:`vitaccel.hw.platform.synth.split_modules`. Output is JSON
(``fmax_mhz_estimate``, ``failing``: one group per register). An estimate, not sign-off
(docs/timing.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["part_timing_report"]


def part_timing_report(config: Any, part: str, *, clock_mhz: float | None = None, netlist: Path | None = None,
                       limit: int = 40, timeout: float | None = None) -> dict[str, Any]:
    """Synthesize ``part`` of ``config``'s accelerator top and list its end points that miss
    ``clock_mhz`` (default: the config's clock), worst register first (at most ``limit``)."""
    from vitaccel.hw.accel import ACCEL_TOP_NAME
    from vitaccel.hw.platform.synth import part_runs, split_memories, split_modules, synthesize
    from vitaccel.hw.platform.verilog import accelerator_verilog

    runs, _ = part_runs(accelerator_verilog(config), ACCEL_TOP_NAME, modules=split_modules(config),
                        memories=split_memories(config))
    if part.startswith("core."):
        verilog, top, extra = _submodule_run(config, runs["logic"][0], part)
    elif part in runs:
        verilog, top, extra = runs[part]
    else:
        raise ValueError(f"part must be one of {', '.join(sorted(runs))} or a module of the logic "
                         f"(core.gemm, core.vector, ...), got {part!r}")
    with tempfile.TemporaryDirectory(prefix="vitaccel-timing-") as tmp:
        out = netlist or Path(tmp) / "netlist.json"
        result = synthesize(verilog, top, "xcup", timeout=timeout, netlist_out=out, **extra)
        return _report(json.loads(Path(out).read_text()), top, clock_mhz or config.clock_mhz, limit,
                       {key: result[key] for key in ("LUT", "FF", "DSP48E2", "BRAM36")})


def _submodule_run(config: Any, logic_verilog: str, module: str) -> tuple[str, str, dict]:
    """One module of the logic part alone (``core.gemm``: the GEMM controller and the engine's
    control), with the logic part's black boxes and cut memories: minutes of yosys where the
    whole logic part takes an hour."""
    from vitaccel.hw.accel import ACCEL_TOP_NAME
    from vitaccel.hw.platform.synth import _extract, black_box, memory_declarations, split_memories, verilog_modules

    full = f"{ACCEL_TOP_NAME}.{module}"
    if full not in verilog_modules(logic_verilog):
        raise ValueError(f"no module {module!r} in the logic part")
    top = module.replace(".", "_")
    text = _extract(logic_verilog, full, top)   # drops the black boxes' attributes: set again
    # The logic part marks its black boxes already (synth.black_box): read them, not the
    # split patterns over the whole Verilog again.
    boxed = re.findall(r"^\(\* blackbox \*\)\nmodule\s+\\?(\S+)", logic_verilog, flags=re.M)
    text = black_box(text, [top + name[len(full):] for name in boxed if name.startswith(full + ".")])
    declared = {memory for _, memory, _, _ in memory_declarations(text)}
    return text, top, {"cut_memories": tuple(m for m in split_memories(config) if m in declared)}


def _report(netlist: dict[str, Any], top: str, clock_mhz: float, limit: int,
            counts: dict[str, Any] | None = None) -> dict[str, Any]:
    from vitaccel.hw.platform.timing import timing_with_failures

    timing, failing = timing_with_failures(netlist, top, clock_mhz)
    return {"top": top, "clock_mhz": clock_mhz, **(counts or {}),
            "fmax_mhz_estimate": timing["fmax_mhz_estimate"], "lut_levels": timing["lut_levels"],
            "failing_bits": sum(group["bits"] for group in failing), "failing_registers": len(failing),
            "failing": failing[:limit], "note": timing["note"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitaccel.hw.platform.timing_report",
                                     description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="preset or JSON config (not with --from-netlist)")
    parser.add_argument("part", help="logic, tokens, requant, softmax, layernorm, gelu, block_unit, ..., or a "
                        "module of the logic alone (core.gemm, core.vector, core.dma); with --from-netlist: "
                        "the module (vitaccel_top for logic, core_gemm for core.gemm)")
    parser.add_argument("--clock", type=float, default=None, metavar="MHZ",
                        help="target clock (default: the config's clock_mhz; 300 with --from-netlist)")
    parser.add_argument("--netlist", type=Path, default=None, help="also keep the mapped netlist here")
    parser.add_argument("--from-netlist", type=Path, default=None, metavar="FILE",
                        help="analyse a netlist kept by an earlier run instead of synthesizing")
    parser.add_argument("--limit", type=int, default=40, help="registers listed (default: 40)")
    args = parser.parse_args(argv)
    try:
        if args.from_netlist is not None:
            report = _report(json.loads(args.from_netlist.read_text()), args.part, args.clock or 300.0, args.limit)
        else:
            from vitaccel.hw.spec.config import load_config

            if args.config is None:
                parser.error("give a config, or --from-netlist")
            report = part_timing_report(load_config(args.config), args.part, clock_mhz=args.clock,
                                        netlist=args.netlist, limit=args.limit)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"timing_report: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
