"""The host's register-level driver sequence: how software runs one program on the accelerator.

It is part of the register-map contract (:mod:`vitaccel.hw.spec.regmap`): which registers a
host writes, in which order, and what it reads back. It is written once, against an abstract
:class:`ControlPort`, and shared by every host: the runtime's board device (PYNQ-style MMIO,
:mod:`vitaccel.sw.device`) and the cocotb testbench of the emitted Verilog
(:mod:`vitaccel.sim.cocotb.tb_system`, cocotbext-axi's ``AxiLiteMaster``). Living here, below
both ``sw`` and ``sim``, neither has to import the other for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from vitaccel.hw.spec.regmap import REGISTERS, Access

__all__ = ["ControlPort", "run_on_accelerator", "program_layout", "COUNTERS", "STATUS_BUSY", "STATUS_DONE",
           "STATUS_ERROR"]

#: ``STATUS`` bits (hw/spec/regmap.py).
STATUS_BUSY, STATUS_DONE, STATUS_ERROR = 0b001, 0b010, 0b100

#: The 64-bit performance counters, from the register map: every read-only ``*_LO`` register.
COUNTERS: tuple[str, ...] = tuple(r.name[:-3] for r in REGISTERS if r.name.endswith("_LO") and r.access is Access.RO)


class ControlPort(ABC):
    """The accelerator's AXI4-Lite control port, as a driver sees it (registers by name)."""

    @abstractmethod
    async def write(self, name: str, value: int) -> None:
        """Write the 32-bit register ``name``."""

    @abstractmethod
    async def read(self, name: str) -> int:
        """Read the 32-bit register ``name``."""

    @abstractmethod
    async def wait_interrupt(self, max_cycles: int) -> tuple[bool, int]:
        """Wait until the interrupt line is high or ``max_cycles`` pass (the port's notion of a
        cycle; a board converts to time). Returns (interrupt seen, cycles waited)."""


async def run_on_accelerator(port: ControlPort, *, program_addr: int, length: int, ddr_base: int,
                             ddr_size: int, watchdog: int = 0, max_cycles: int,
                             checksum: int | None = None) -> dict[str, Any]:
    """Run one program that is already in DDR; what the host can observe afterwards.

    Parameters
    ----------
    port : ControlPort
        The control registers.
    program_addr, length : int
        DDR byte address of the first instruction, number of 128-bit instructions.
    ddr_base, ddr_size : int
        The DDR window instruction addresses are relative to.
    watchdog : int
        ``WATCHDOG_LIMIT`` (cycles without a retired instruction; 0: off).
    max_cycles : int
        How long the host waits for the interrupt before it declares a hang.
    checksum : int, optional
        The program's CRC-32 (:func:`~vitaccel.hw.spec.regmap.program_crc32`, a compiled
        program's ``manifest["checksum"]``): written to ``PROGRAM_CRC`` with
        ``PROGRAM_CHECK.crc`` set, so a corrupted program stops with ``PROGRAM_CHECKSUM``
        before anything executes. ``None`` turns the check off.

    Returns
    -------
    dict
        ``interrupt``, ``waited``, ``status``, ``error_code``, ``error_pc``,
        ``interrupt_status`` and one lower-case entry per counter in :data:`COUNTERS`.
    """
    await port.write("INTERRUPT_ENABLE", 0b11)
    await port.write("PROGRAM_ADDR_LO", program_addr & 0xFFFF_FFFF)
    await port.write("PROGRAM_ADDR_HI", program_addr >> 32)
    await port.write("PROGRAM_LENGTH", length)
    await port.write("DDR_BASE_LO", ddr_base & 0xFFFF_FFFF)
    await port.write("DDR_BASE_HI", ddr_base >> 32)
    await port.write("DDR_SIZE", ddr_size)
    await port.write("WATCHDOG_LIMIT", watchdog)
    await port.write("PROGRAM_CRC", checksum or 0)
    await port.write("PROGRAM_CHECK", int(checksum is not None))
    await port.write("CONTROL", 1)
    interrupt, waited = await port.wait_interrupt(max_cycles)
    record: dict[str, Any] = {"interrupt": interrupt, "waited": waited}
    for name in ("STATUS", "ERROR_CODE", "ERROR_PC", "INTERRUPT_STATUS"):
        record[name.lower()] = await port.read(name)
    for name in COUNTERS:
        record[name.lower()] = (await port.read(f"{name}_LO")) | ((await port.read(f"{name}_HI")) << 32)
    if interrupt:
        await port.write("INTERRUPT_STATUS", 0b11)  # acknowledge: the line drops for the next run
    return record


def program_layout(ddr_size: int, words: int, *, ddr_base: int = 0x1000) -> dict[str, int]:
    """Where a run's DDR window and program go in one host buffer: the window at
    ``ddr_base``, the program after it on a 4 KiB boundary; ``buffer_bytes`` in total."""
    program_addr = -(-(ddr_base + ddr_size) // 4096) * 4096
    return {"ddr_base": ddr_base, "ddr_size": ddr_size, "program_addr": program_addr,
            "buffer_bytes": program_addr + 16 * words}
