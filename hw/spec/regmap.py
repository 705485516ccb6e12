"""AXI4-Lite control/status register map of the accelerator, defined once.

The host writes the program's DDR address and length, the DDR image base, optionally a
watchdog limit, the program checksum and the interrupt enables, then sets ``CONTROL.start``. ``STATUS`` shows
busy/done/error; on error ``ERROR_CODE`` holds an :class:`ErrorCode` and ``ERROR_PC`` the
index of the instruction at fault. All DRAM addresses inside instructions are offsets from
``DDR_BASE``. 64-bit counters are two registers, low word first; they reset on ``start``.

Program checksum: with ``PROGRAM_CHECK.crc`` set, the scan pass (which streams every
instruction word before anything executes) computes the CRC-32 of the program's bytes
(:func:`program_crc32`: zlib's CRC-32 over ``program.bin``) and stops with
``PROGRAM_CHECKSUM`` (``ERROR_PC`` 0) before executing anything if it differs from
``PROGRAM_CRC``; a checksum mismatch wins over an illegal word found in the same scan. The
check is off after reset (``PROGRAM_CHECK`` 0), so hand-written test programs run without a
checksum; the runtime (:func:`vitaccel.hw.spec.driver.run_on_accelerator`) always enables it for
compiled programs, whose manifest carries the CRC. An empty program (``PROGRAM_LENGTH`` 0)
stops with ``MISSING_FINISH`` without a scan.

The golden machine raises exceptions carrying the same :class:`ErrorCode` values, so the
RTL and the golden model report a bad program identically.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from enum import Enum as _PyEnum

from amaranth.hdl import unsigned
from amaranth.lib import enum

__all__ = ["ErrorCode", "Access", "BitField", "Register", "REGISTERS", "REGISTER_BYTES",
           "register", "describe", "program_crc32",
           "PROGRAM_CRC_POLY"]

#: Every register is one 32-bit AXI4-Lite word.
REGISTER_BYTES = 4


class ErrorCode(enum.Enum, shape=unsigned(4)):
    """Why a program stopped abnormally (``ERROR_CODE`` register, golden ``MachineError.code``)."""

    NONE = 0
    ILLEGAL_INSTRUCTION = 1      #: unknown opcode, invalid enum value or reserved bits set
    ADDRESS_OUT_OF_RANGE = 2     #: a DDR or on-chip buffer access outside its memory
    WATCHDOG = 3                 #: no instruction retired within WATCHDOG_LIMIT cycles
    DEPENDENCY_DEADLOCK = 4      #: a token wait that can never be satisfied
    MISSING_FINISH = 5           #: the program ended without FINISH (or FINISH with work queued)
    INVALID_OPERAND = 6          #: field values the unit cannot execute (sizes, missing unit)
    PROGRAM_CHECKSUM = 7         #: PROGRAM_CHECK.crc set and the program's CRC-32 is not PROGRAM_CRC


def program_crc32(program: bytes) -> int:
    """The checksum ``PROGRAM_CRC`` holds for ``program`` (a ``program.bin`` image, 16 bytes
    per instruction, little-endian): zlib's CRC-32 (reflected polynomial
    :data:`PROGRAM_CRC_POLY`, initial value and final XOR ``0xFFFFFFFF``)."""
    return zlib.crc32(bytes(program)) & 0xFFFF_FFFF


#: Reflected generator polynomial of :func:`program_crc32` (IEEE 802.3 CRC-32), what the
#: hardware's scan pass implements.
PROGRAM_CRC_POLY = 0xEDB8_8320


class Access(str, _PyEnum):
    RO = "ro"        #: read only
    RW = "rw"        #: read/write
    W1C = "w1c"      #: write 1 to clear
    W1S = "w1s"      #: write 1 to start; reads 0


@dataclass(frozen=True)
class BitField:
    name: str
    offset: int
    width: int
    description: str


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: Access
    description: str
    fields: tuple[BitField, ...] = field(default_factory=tuple)


def _counter(name: str, offset: int, description: str) -> list[Register]:
    return [Register(f"{name}_LO", offset, Access.RO, f"{description} (bits 31..0)"),
            Register(f"{name}_HI", offset + 4, Access.RO, f"{description} (bits 63..32)")]


REGISTERS: tuple[Register, ...] = (
    Register("CONTROL", 0x00, Access.W1S, "start a program",
             (BitField("start", 0, 1, "write 1 to fetch and run the program; ignored while busy"),)),
    Register("STATUS", 0x04, Access.RO, "run state",
             (BitField("busy", 0, 1, "a program is running"),
              BitField("done", 1, 1, "the last program reached FINISH"),
              BitField("error", 2, 1, "the last program stopped with ERROR_CODE != NONE"))),
    Register("INTERRUPT_ENABLE", 0x08, Access.RW, "interrupt line enables",
             (BitField("done", 0, 1, "interrupt on FINISH"),
              BitField("error", 1, 1, "interrupt on error"))),
    Register("INTERRUPT_STATUS", 0x0C, Access.W1C, "pending interrupts (write 1 to clear)",
             (BitField("done", 0, 1, "FINISH reached"), BitField("error", 1, 1, "error stop"))),
    Register("PROGRAM_ADDR_LO", 0x10, Access.RW, "DDR byte address of the first instruction (bits 31..0)"),
    Register("PROGRAM_ADDR_HI", 0x14, Access.RW, "DDR byte address of the first instruction (bits 63..32)"),
    Register("PROGRAM_LENGTH", 0x18, Access.RW, "number of 128-bit instructions in the program"),
    Register("DDR_BASE_LO", 0x1C, Access.RW, "DDR byte address that instruction dram_addr 0 refers to (bits 31..0)"),
    Register("DDR_BASE_HI", 0x20, Access.RW, "DDR base (bits 63..32)"),
    Register("DDR_SIZE", 0x24, Access.RW, "bytes of DDR reachable from DDR_BASE; larger addresses are errors"),
    Register("WATCHDOG_LIMIT", 0x28, Access.RW, "cycles without a retired instruction before WATCHDOG (0: off)"),
    Register("ERROR_CODE", 0x2C, Access.RO, "why the last program stopped (ErrorCode)",
             (BitField("code", 0, ErrorCode.as_shape().width, "ErrorCode value"),)),
    Register("ERROR_PC", 0x30, Access.RO, "index of the instruction at fault"),
    Register("PROGRAM_CRC", 0x34, Access.RW, "CRC-32 of the program's bytes (program_crc32), checked by the "
             "scan pass when PROGRAM_CHECK.crc is set"),
    Register("PROGRAM_CHECK", 0x38, Access.RW, "program integrity checks",
             (BitField("crc", 0, 1, "compare the program's CRC-32 with PROGRAM_CRC before executing; "
                       "a mismatch stops with PROGRAM_CHECKSUM"),)),
    *_counter("TOTAL_CYCLES", 0x40, "cycles from start to done/error"),
    *_counter("BUSY_CYCLES_LOAD", 0x48, "cycles the load queue executed an instruction"),
    *_counter("BUSY_CYCLES_COMPUTE", 0x50, "cycles the compute queue executed an instruction"),
    *_counter("BUSY_CYCLES_STORE", 0x58, "cycles the store queue executed an instruction"),
    *_counter("STALL_CYCLES_LOAD", 0x60, "cycles the load queue waited for a dependency token"),
    *_counter("STALL_CYCLES_COMPUTE", 0x68, "cycles the compute queue waited for a dependency token"),
    *_counter("STALL_CYCLES_STORE", 0x70, "cycles the store queue waited for a dependency token"),
    *_counter("DMA_READ_BYTES", 0x78, "bytes read from DDR (instructions and LOADs)"),
    *_counter("DMA_WRITE_BYTES", 0x80, "bytes written to DDR by STOREs"),
    *_counter("INSTRUCTIONS_RETIRED", 0x88, "instructions completed"),
    *_counter("ENGINE_BUSY_CYCLES", 0x90, "cycles the matrix engine issued a k-step (computed)"),
)

_BY_NAME = {reg.name: reg for reg in REGISTERS}


def register(name: str) -> Register:
    """The register called ``name`` (``KeyError`` naming the valid ones otherwise)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no register {name!r}; registers are {', '.join(_BY_NAME)}") from None


def describe() -> dict:
    """JSON-able register map: width, registers with offsets, access and bit fields, error codes."""
    return {
        "register_bytes": REGISTER_BYTES,
        "registers": [
            {"name": r.name, "offset": r.offset, "access": r.access.value, "description": r.description,
             "fields": [{"name": f.name, "offset": f.offset, "width": f.width, "description": f.description}
                        for f in r.fields]}
            for r in REGISTERS],
        "error_codes": {code.name: code.value for code in ErrorCode},
    }
