"""AXI4-Lite subordinate register file generated from a register-map description.

The description is a :class:`RegisterMap` of :class:`RegisterSpec` entries (name, byte
offset, access, width, reset value, fields). :func:`accelerator_register_map` builds it from
the accelerator's one register map, :mod:`vitaccel.hw.spec.regmap`.

Each register becomes ports in the component's ``regs`` interface (lower-case names):

========  ==========================================================================
access    ports
========  ==========================================================================
``rw``    ``<name>``: Out(width), the value the host wrote (``reset`` after reset).
``ro``    ``<name>``: In(width), the value the host reads.
``w1c``   ``<name>_set``: In(width), bits the hardware sets (a set wins over a clear
          in the same cycle, so no event is lost); ``<name>``: Out(width), the pending
          bits; the host writes 1s to clear them.
``w1s``   ``<name>``: Out(width), a one-cycle pulse of the 1 bits the host wrote; reads 0.
========  ==========================================================================

Byte strobes are honoured. A write to a read-only register is ignored (OKAY); an access
to an address no register occupies answers SLVERR (reads return 0).
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass, field
from typing import Any, Iterable

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .signatures import AXI_RESP_OKAY, AXI_RESP_SLVERR, AxiLiteSignature

__all__ = ["ACCESS_KINDS", "FieldSpec", "RegisterSpec", "RegisterMap", "AxiLiteRegisters",
           "accelerator_register_map"]

#: The access kinds a register may have.
ACCESS_KINDS = ("rw", "ro", "w1c", "w1s")
_DATA_WIDTH = 32
_MIN_ADDR_WIDTH = 12  # Vivado's smallest address range for an AXI4-Lite slave is 4 KiB


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name.lower()):
        raise ValueError(f"{what}: {name!r} is not a valid identifier")


@dataclass(frozen=True)
class FieldSpec:
    """A named bit range of a register (documentation and host-side decoding only)."""

    name: str
    offset: int
    width: int

    def __post_init__(self):
        _check_name(self.name, "field name")
        if self.offset < 0 or self.width < 1:
            raise ValueError(f"field {self.name}: offset must be >= 0 and width >= 1, "
                             f"got offset={self.offset}, width={self.width}")


@dataclass(frozen=True)
class RegisterSpec:
    """One 32-bit-aligned register.

    Parameters
    ----------
    name : str
        Identifier; the port is its lower-case form.
    offset : int
        Byte offset, a multiple of 4.
    access : str
        ``"rw"``, ``"ro"``, ``"w1c"`` or ``"w1s"``.
    width : int
        Implemented bits (1..32), from bit 0; the rest read 0.
    reset : int
        Reset value (``rw`` and ``w1c`` only; must fit ``width``).
    fields : tuple of FieldSpec
        Named bit ranges inside ``width``, not overlapping.
    """

    name: str
    offset: int
    access: str
    width: int = _DATA_WIDTH
    reset: int = 0
    fields: tuple[FieldSpec, ...] = field(default_factory=tuple)

    def __post_init__(self):
        _check_name(self.name, "register name")
        if self.access not in ACCESS_KINDS:
            raise ValueError(f"register {self.name}: access must be one of {', '.join(ACCESS_KINDS)}, "
                             f"got {self.access!r}")
        if not isinstance(self.offset, int) or self.offset < 0 or self.offset % 4:
            raise ValueError(f"register {self.name}: offset must be a non-negative multiple of 4, got {self.offset!r}")
        if not 1 <= self.width <= _DATA_WIDTH:
            raise ValueError(f"register {self.name}: width must be in 1..{_DATA_WIDTH}, got {self.width}")
        if not 0 <= self.reset < 1 << self.width:
            raise ValueError(f"register {self.name}: reset {self.reset:#x} does not fit {self.width} bits")
        if self.reset and self.access in ("ro", "w1s"):
            raise ValueError(f"register {self.name}: a {self.access} register has no reset value")
        used = 0
        for f in self.fields:
            mask = ((1 << f.width) - 1) << f.offset
            if f.offset + f.width > self.width:
                raise ValueError(f"register {self.name}: field {f.name} exceeds the register's {self.width} bits")
            if used & mask:
                raise ValueError(f"register {self.name}: field {f.name} overlaps another field")
            used |= mask

    @property
    def port_name(self) -> str:
        return self.name.lower()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port_name, "offset": self.offset, "access": self.access,
                "width": self.width, "reset": self.reset,
                "fields": [{"name": f.name, "offset": f.offset, "width": f.width} for f in self.fields]}


@dataclass(frozen=True)
class RegisterMap:
    """An ordered set of registers with distinct names, offsets and port names."""

    registers: tuple[RegisterSpec, ...]

    def __post_init__(self):
        if not self.registers:
            raise ValueError("a register map needs at least one register")
        seen_offsets: dict[int, str] = {}
        seen_ports: set[str] = set()
        for reg in self.registers:
            if reg.offset in seen_offsets:
                raise ValueError(f"registers {seen_offsets[reg.offset]} and {reg.name} share offset {reg.offset:#x}")
            seen_offsets[reg.offset] = reg.name
            ports = {reg.port_name, reg.port_name + "_set"} if reg.access == "w1c" else {reg.port_name}
            if ports & seen_ports:
                raise ValueError(f"register {reg.name}: port name clashes with another register")
            seen_ports |= ports

    @property
    def addr_width(self) -> int:
        """Address bits the map needs (at least 12)."""
        top = max(r.offset for r in self.registers) + 4
        return max(_MIN_ADDR_WIDTH, (top - 1).bit_length())

    def to_dict(self) -> dict[str, Any]:
        return {"addr_width": self.addr_width, "registers": [r.to_dict() for r in self.registers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RegisterMap":
        return cls(tuple(
            RegisterSpec(r["name"], r["offset"], r["access"], r["width"], r["reset"],
                         tuple(FieldSpec(f["name"], f["offset"], f["width"]) for f in r["fields"]))
            for r in data["registers"]))


def accelerator_register_map(registers: Iterable[Any] | None = None) -> RegisterMap:
    """The :class:`RegisterMap` of the accelerator, from :data:`vitaccel.hw.spec.regmap.REGISTERS`.

    A register with bit fields implements exactly the bits up to its highest field; one
    without fields is a full 32-bit word. Reset values are 0.
    """
    if registers is None:
        from vitaccel.hw.spec.regmap import REGISTERS as registers
    specs = []
    for reg in registers:
        fields = tuple(FieldSpec(f.name, f.offset, f.width) for f in reg.fields)
        width = max((f.offset + f.width for f in fields), default=_DATA_WIDTH)
        specs.append(RegisterSpec(reg.name, reg.offset, str(reg.access.value), width, 0, fields))
    return RegisterMap(tuple(specs))


def _regs_signature(register_map: RegisterMap) -> wiring.Signature:
    members: dict[str, wiring.Member] = {}
    for reg in register_map.registers:
        if reg.access == "ro":
            members[reg.port_name] = In(reg.width)
        elif reg.access == "w1c":
            members[reg.port_name] = Out(reg.width, init=reg.reset)
            members[reg.port_name + "_set"] = In(reg.width)
        else:
            members[reg.port_name] = Out(reg.width, init=reg.reset)
    return wiring.Signature(members)


class AxiLiteRegisters(wiring.Component):
    """AXI4-Lite (32-bit) register file for ``register_map`` (see the module docstring).

    Parameters
    ----------
    register_map : RegisterMap
        The registers.
    addr_width : int, optional
        Bus address bits; default ``register_map.addr_width``. Upper bits are ignored, so the
        file answers at any base address the interconnect assigns.
    """

    def __init__(self, register_map: RegisterMap, *, addr_width: int | None = None):
        if not isinstance(register_map, RegisterMap):
            raise TypeError(f"register_map: expected a RegisterMap, got {type(register_map).__name__}")
        addr_width = register_map.addr_width if addr_width is None else addr_width
        if addr_width < register_map.addr_width:
            raise ValueError(f"addr_width: the map needs {register_map.addr_width} bits, got {addr_width}")
        self.register_map = register_map
        super().__init__({
            "bus": In(AxiLiteSignature(addr_width=addr_width, data_width=_DATA_WIDTH)),
            "regs": Out(_regs_signature(register_map)),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        index_bits = self.register_map.addr_width - 2

        # Write: address and data may arrive in either order; both are held until the response.
        aw_full, w_full, b_valid = Signal(), Signal(), Signal()
        aw_index = Signal(index_bits)
        w_data = Signal(_DATA_WIDTH)
        w_strb = Signal(_DATA_WIDTH // 8)
        b_resp = Signal(2)
        m.d.comb += [bus.awready.eq(~aw_full), bus.wready.eq(~w_full),
                     bus.bvalid.eq(b_valid), bus.bresp.eq(b_resp)]
        with m.If(bus.awvalid & ~aw_full):
            m.d.sync += [aw_full.eq(1), aw_index.eq(bus.awaddr[2:self.register_map.addr_width])]
        with m.If(bus.wvalid & ~w_full):
            m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        with m.If(b_valid & bus.bready):
            m.d.sync += b_valid.eq(0)
        commit = aw_full & w_full & ~b_valid
        with m.If(commit):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), b_valid.eq(1)]
        bit_mask = Signal(_DATA_WIDTH)
        m.d.comb += bit_mask.eq(Cat(bit.replicate(8) for bit in w_strb))
        written = Signal(_DATA_WIDTH)  # the 1 bits of the strobed bytes
        m.d.comb += written.eq(w_data & bit_mask)

        # Read: one outstanding read, answered the cycle after the address.
        r_valid = Signal()
        r_data = Signal(_DATA_WIDTH)
        r_resp = Signal(2)
        m.d.comb += [bus.arready.eq(~r_valid), bus.rvalid.eq(r_valid), bus.rdata.eq(r_data),
                     bus.rresp.eq(r_resp)]
        with m.If(r_valid & bus.rready):
            m.d.sync += r_valid.eq(0)
        read = bus.arvalid & ~r_valid
        ar_index = bus.araddr[2:self.register_map.addr_width]
        with m.If(read):
            m.d.sync += [r_valid.eq(1), r_data.eq(0), r_resp.eq(AXI_RESP_SLVERR)]

        with m.If(commit):
            m.d.sync += b_resp.eq(AXI_RESP_SLVERR)
        for reg in self.register_map.registers:
            port = getattr(self.regs, reg.port_name)
            hit_write = commit & (aw_index == reg.offset // 4)
            with m.If(hit_write):
                m.d.sync += b_resp.eq(AXI_RESP_OKAY)
            with m.If(read & (ar_index == reg.offset // 4)):
                readable = 0 if reg.access == "w1s" else port
                m.d.sync += [r_data.eq(readable), r_resp.eq(AXI_RESP_OKAY)]
            if reg.access == "rw":
                with m.If(hit_write):
                    m.d.sync += port.eq((port & ~bit_mask) | written)
            elif reg.access == "w1s":
                m.d.sync += port.eq(0)
                with m.If(hit_write):
                    m.d.sync += port.eq(written)
            elif reg.access == "w1c":
                cleared = Signal(reg.width, name=f"{reg.port_name}_cleared")
                m.d.comb += cleared.eq(port)
                with m.If(hit_write):
                    m.d.comb += cleared.eq(port & ~written)
                m.d.sync += port.eq(cleared | getattr(self.regs, reg.port_name + "_set"))
        return m
