"""ZCU102-class boards as data: the Zynq UltraScale+ parts users own, their resources, their
PS-DDR ports and the budget a design may take of them.

Everything board-specific that ``emit`` (constraints, Tcl, the resource check) and ``dse``
(feasibility) need is here; nothing else names a part. Resource counts are from Xilinx DS891
(Zynq UltraScale+ MPSoC Data Sheet: Overview, table "Zynq UltraScale+ MPSoC: EG/EV device
feature summary") and the Kria K26 SOM data sheet DS987; the board part strings are the ones
Vivado's board store uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["Board", "BOARDS", "DEFAULT_BUDGET", "board"]

#: Share of each resource a design may use (the brief's 80 % DSP/BRAM, 70 % LUT): routing and
#: timing closure degrade quickly beyond these.
DEFAULT_BUDGET: Mapping[str, float] = {"DSP48E2": 0.80, "BRAM36": 0.80, "LUT": 0.70, "FF": 0.70}


@dataclass(frozen=True)
class Board:
    """One board: its FPGA part and what the accelerator may use of it.

    Attributes
    ----------
    name : str
        The name users type (``--board NAME``).
    title : str
        The board's full name, for documents.
    device : str
        The FPGA (``XCZU9EG``).
    part : str
        Vivado part string, speed grade included.
    board_part : str
        Vivado board-store part (``xilinx.com:zcu102:part0:3.4``).
    resources : mapping
        ``DSP48E2``, ``LUT``, ``FF``, ``BRAM36`` (and ``URAM288``) of the device.
    hp_ports : int
        128-bit PS-DDR high-performance AXI ports (S_AXI_HP0..3_FPD).
    clock_mhz : float
        The fabric clock the board flow sets ``pl_clk0`` to by default.
    hp_port : int
        The HP port (``S_AXI_HP<n>_FPD``, ``0 .. hp_ports - 1``) the accelerator's DMA uses.
    board_connections : str
        Vivado ``board_connections`` of the project: the carrier card a SOM sits on
        (``""`` for a board that is not a SOM).
    budget : mapping
        Share of each resource a design may use.
    """

    name: str
    title: str
    device: str
    part: str
    board_part: str
    resources: Mapping[str, int]
    hp_ports: int = 4
    clock_mhz: float = 300.0
    hp_port: int = 0
    board_connections: str = ""
    budget: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_BUDGET))

    def __post_init__(self) -> None:
        if not 0 <= self.hp_port < self.hp_ports:
            raise ValueError(f"board {self.name}: hp_port {self.hp_port} is not one of its {self.hp_ports} HP ports")

    @property
    def board_part_pattern(self) -> str:
        """``board_part`` with any file version (``xilinx.com:zcu102:part0:*``), for
        ``get_board_parts``: the newest installed board files then match."""
        return self.board_part.rsplit(":", 1)[0] + ":*"

    @property
    def limits(self) -> dict[str, int]:
        """The most of each budgeted resource a design may use (``resources x budget``)."""
        return {key: int(self.resources[key] * share) for key, share in self.budget.items()
                if key in self.resources}


BOARDS: dict[str, Board] = {
    "zcu102": Board(
        name="zcu102", title="Xilinx Zynq UltraScale+ MPSoC ZCU102", device="XCZU9EG",
        part="xczu9eg-ffvb1156-2-e", board_part="xilinx.com:zcu102:part0:3.4",
        resources={"DSP48E2": 2520, "LUT": 274080, "FF": 548160, "BRAM36": 912, "URAM288": 0}),
    "zcu104": Board(
        name="zcu104", title="Xilinx Zynq UltraScale+ MPSoC ZCU104", device="XCZU7EV",
        part="xczu7ev-ffvc1156-2-e", board_part="xilinx.com:zcu104:part0:1.1",
        resources={"DSP48E2": 1728, "LUT": 230400, "FF": 460800, "BRAM36": 312, "URAM288": 96}),
    "kv260": Board(
        name="kv260", title="AMD Kria KV260 Vision AI Starter Kit (K26 SOM)", device="XCK26",
        part="xck26-sfvc784-2LV-c", board_part="xilinx.com:kv260_som:part0:1.4",
        # The SOM's board files describe the K26 (PS DDR4 preset); the carrier's connector
        # tells Vivado it sits on the KV260.
        board_connections="som240_1_connector xilinx.com:kv260_carrier:som240_1_connector:1.3",
        resources={"DSP48E2": 1248, "LUT": 117120, "FF": 234240, "BRAM36": 144, "URAM288": 64}),
}


def board(name: str) -> Board:
    """The board called ``name``; a one-line :class:`ValueError` naming the known ones otherwise."""
    try:
        return BOARDS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown board {name!r}: use one of {', '.join(BOARDS)}") from None
