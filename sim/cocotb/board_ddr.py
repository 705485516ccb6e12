"""The board-like DDR in Verilog (``board_ddr.v``) wrapped around the accelerator top, for
latency records without Python in every clock cycle.

cocotbext-axi's ``AxiRam`` resumes Python coroutines on every clock edge while a channel is
busy, and its inputs to the design make Verilator re-evaluate the combinational logic they
reach on every ``eval()``; with the DDR inside the simulated design the only top-level
inputs left are the clock, the reset and the control port, and cocotb wakes only to drive
the control port and at the end-of-program interrupt. :func:`board_ddr_top` writes that
design: the accelerator, ``vitaccel_board_ddr`` with the named DDR model's timing, and a top
(:data:`BOARD_TOP_NAME`) with the accelerator's control port, ``interrupt``, and the DDR's
``ddr_load`` / ``ddr_dump`` / ``ddr_protocol_error``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = ["BOARD_TOP_NAME", "board_ddr_top", "write_memory_hex", "read_memory_hex", "PROTOCOL_ERRORS"]

BOARD_TOP_NAME = "vitaccel_board_sim"
MODEL_SOURCE = Path(__file__).with_name("board_ddr.v")

#: ``ddr_protocol_error`` codes of ``board_ddr.v``.
PROTOCOL_ERRORS = {
    1: "read burst type other than INCR", 2: "read beat narrower or wider than the bus",
    3: "read burst across a 4 KiB boundary", 4: "write burst type other than INCR",
    5: "write beat narrower or wider than the bus", 6: "write burst across a 4 KiB boundary",
    7: "WLAST not on the burst's last beat", 8: "more bursts in flight than the model holds",
    9: "W data before its AW",
}

_PORT = re.compile(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s*)?([A-Za-z_][\w$]*)\s*;", re.M)
_MANAGER_SIGNALS = ("awvalid", "awready", "awaddr", "awlen", "awsize", "awburst", "awid",
                    "wvalid", "wready", "wdata", "wstrb", "wlast", "bvalid", "bready", "bresp", "bid",
                    "arvalid", "arready", "araddr", "arlen", "arsize", "arburst", "arid",
                    "rvalid", "rready", "rdata", "rresp", "rid", "rlast")


def _ports(verilog: str, top: str) -> list[tuple[str, int, str]]:
    start = re.search(rf"^module {re.escape(top)}\(", verilog, re.M)
    if start is None:
        raise ValueError(f"no module {top!r} in the Verilog")
    body = verilog[start.end():verilog.index("endmodule", start.end())]
    return [(direction, int(msb) + 1 if msb else 1, name) for direction, msb, name in _PORT.findall(body)]


def board_ddr_top(verilog: str, top: str, *, words: int, read_latency: int, prefix: str = "m_axi") -> str:
    """The design ``verilog`` (top module ``top``) with its AXI manager port ``prefix_*`` on a
    ``words``-word board-like DDR of ``read_latency`` cycles, under a new top
    :data:`BOARD_TOP_NAME`. The other ports of ``top`` pass through unchanged."""
    ports = _ports(verilog, top)
    widths = {name: width for _, width, name in ports}
    manager = {f"{prefix}_{signal}" for signal in _MANAGER_SIGNALS}
    missing = sorted(manager - widths.keys())
    if missing:
        raise ValueError(f"module {top!r} lacks AXI manager ports {', '.join(missing)}")
    data_bytes = widths[f"{prefix}_rdata"] // 8
    outer = [(direction, width, name) for direction, width, name in ports if name not in manager]
    # The ports are all a testbench may touch: built with --no-public-flat-rw, only they are
    # visible to VPI (see vitaccel.sim.runner.run_testbench's build_args).
    public = " /*verilator public_flat_rw*/"
    declarations = [f"  {d} {'[' + str(w - 1) + ':0] ' if w > 1 else ''}{n}{public};" for d, w, n in outer]
    declarations += [f"  input ddr_load{public};", f"  input ddr_dump{public};",
                     f"  output [7:0] ddr_protocol_error{public};"]
    declarations += [f"  wire {'[' + str(widths[n] - 1) + ':0] ' if widths[n] > 1 else ''}{n};" for n in sorted(manager)]
    names = [n for _, _, n in outer] + ["ddr_load", "ddr_dump", "ddr_protocol_error"]
    design = ",\n".join(f"    .{n}({'rst_registered' if n == 'rst' else n})" for _, _, n in ports)
    memory = ",\n".join([f"    .{s}({prefix}_{s})" for s in _MANAGER_SIGNALS]
                        + ["    .clk(clk)", "    .rst(rst_registered)", "    .ddr_load(ddr_load)", "    .ddr_dump(ddr_dump)",
                           "    .protocol_error(ddr_protocol_error)"])
    wrapper = (f"\nmodule {BOARD_TOP_NAME}({', '.join(names)});\n" + "\n".join(declarations) + "\n"
               "  // Registered: Amaranth's next-state logic reads the reset, and logic reading a\n"
               "  // top-level input is re-evaluated by Verilator on every eval() call.\n"
               "  reg rst_registered = 1'b1;\n  always @(posedge clk) rst_registered <= rst;\n"
               f"  {top} accelerator (\n{design}\n  );\n"
               f"  vitaccel_board_ddr #(.ADDR_WIDTH({widths[f'{prefix}_araddr']}), .DATA_BYTES({data_bytes}),\n"
               f"    .WORDS({words}), .READ_LATENCY({read_latency})) ddr (\n{memory}\n  );\nendmodule\n")
    design_text = re.sub(r"^\(\* top = +1 +\*\)\n", "", verilog, flags=re.M)   # no longer the root
    return design_text + "\n" + MODEL_SOURCE.read_text() + wrapper


def write_memory_hex(path: Path, memory: bytes | np.ndarray, word_bytes: int) -> None:
    """``memory`` (a multiple of ``word_bytes`` long) as ``$readmemh`` text: one word a line,
    little-endian (byte 0 is the word's least significant)."""
    data = np.frombuffer(bytes(memory), np.uint8).reshape(-1, word_bytes)[:, ::-1]
    text = data.tobytes().hex()
    step = 2 * word_bytes
    Path(path).write_text("\n".join(text[i:i + step] for i in range(0, len(text), step)) + "\n")


def read_memory_hex(path: Path, word_bytes: int) -> bytes:
    """The bytes of a ``$writememh`` dump written by :func:`write_memory_hex`'s inverse."""
    lines = [line.strip() for line in Path(path).read_text().split("\n")]
    words = [line for line in lines if line and not line.startswith(("//", "@"))]
    data = np.frombuffer(bytes.fromhex("".join(word.rjust(2 * word_bytes, "0") for word in words)), np.uint8)
    return data.reshape(-1, word_bytes)[:, ::-1].tobytes()
