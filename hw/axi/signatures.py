"""AXI4 and AXI4-Lite interface signatures, and the flattening that gives Vivado its port names.

The signatures are written from the **manager** (master) side: ``awvalid`` is ``Out``,
``awready`` is ``In``. A subordinate (slave) port is the flipped signature
(``In(AxiLiteSignature(...))``).

Amaranth names a nested member ``outer__inner`` in Verilog, but Vivado's interface
inference and cocotbext-axi's ``AxiBus.from_prefix(dut, "m_axi")`` expect
``m_axi_araddr``. :class:`FlatPortsWrapper` wraps any component and re-exposes chosen
interface members as flat ports ``<prefix>_<signal>``; every other member passes through
unchanged.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from amaranth import Const, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "AXI_RESP_OKAY", "AXI_RESP_EXOKAY", "AXI_RESP_SLVERR", "AXI_RESP_DECERR", "AXI_BURST_INCR",
    "AXI_BOUNDARY_BYTES", "AXI_MAX_BURST_BEATS",
    "Axi4Signature", "AxiLiteSignature", "flat_members", "FlatPortsWrapper",
]

#: ``xRESP`` encodings (AXI spec A3.4.4).
AXI_RESP_OKAY = 0b00
AXI_RESP_EXOKAY = 0b01
AXI_RESP_SLVERR = 0b10
AXI_RESP_DECERR = 0b11
#: ``AxBURST`` encoding of an incrementing burst.
AXI_BURST_INCR = 0b01
#: A burst must not cross a 4 KiB address boundary (AXI spec A3.4.1).
AXI_BOUNDARY_BYTES = 4096
#: Longest INCR burst in AXI4.
AXI_MAX_BURST_BEATS = 256


def _check_widths(addr_width: int, data_width: int, allowed_data: Iterable[int]) -> None:
    allowed_data = tuple(allowed_data)
    if isinstance(addr_width, bool) or not isinstance(addr_width, int) or not 12 <= addr_width <= 64:
        raise ValueError(f"addr_width: must be an integer in 12..64, got {addr_width!r}")
    if data_width not in allowed_data:
        raise ValueError(f"data_width: must be one of {', '.join(map(str, allowed_data))}, got {data_width!r}")


class Axi4Signature(wiring.Signature):
    """AXI4 (full) manager interface: five channels, flat member names as in the AXI spec.

    Parameters
    ----------
    addr_width : int
        Address bits (12..64). The ZCU102's HP ports take 49.
    data_width : int
        Data bits: 32, 64, 128, 256, 512 or 1024.
    id_width : int
        Transaction ID bits (at least 1, so that Vivado sees the ports).
    """

    def __init__(self, *, addr_width: int, data_width: int, id_width: int = 1):
        _check_widths(addr_width, data_width, (32, 64, 128, 256, 512, 1024))
        if isinstance(id_width, bool) or not isinstance(id_width, int) or not 1 <= id_width <= 16:
            raise ValueError(f"id_width: must be an integer in 1..16, got {id_width!r}")
        self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
        members: dict[str, wiring.Member] = {}
        for ch in ("aw", "ar"):
            members.update({
                f"{ch}id": Out(id_width), f"{ch}addr": Out(addr_width), f"{ch}len": Out(8),
                f"{ch}size": Out(3), f"{ch}burst": Out(2), f"{ch}lock": Out(1),
                f"{ch}cache": Out(4), f"{ch}prot": Out(3), f"{ch}qos": Out(4),
                f"{ch}valid": Out(1), f"{ch}ready": In(1),
            })
        members.update({
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })
        super().__init__(members)

    def __eq__(self, other):
        return (type(other) is type(self) and (self.addr_width, self.data_width, self.id_width)
                == (other.addr_width, other.data_width, other.id_width))

    def __hash__(self):
        return hash((type(self), self.addr_width, self.data_width, self.id_width))

    def __repr__(self):
        return f"Axi4Signature(addr_width={self.addr_width}, data_width={self.data_width}, id_width={self.id_width})"


class AxiLiteSignature(wiring.Signature):
    """AXI4-Lite manager interface.

    Parameters
    ----------
    addr_width : int
        Address bits (12..64).
    data_width : int
        32 or 64.
    """

    def __init__(self, *, addr_width: int, data_width: int = 32):
        _check_widths(addr_width, data_width, (32, 64))
        self.addr_width, self.data_width = addr_width, data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })

    def __eq__(self, other):
        return (type(other) is type(self)
                and (self.addr_width, self.data_width) == (other.addr_width, other.data_width))

    def __hash__(self):
        return hash((type(self), self.addr_width, self.data_width))

    def __repr__(self):
        return f"AxiLiteSignature(addr_width={self.addr_width}, data_width={self.data_width})"


def flat_members(prefix: str, member: wiring.Member) -> dict[str, wiring.Member]:
    """The port members of an interface ``member`` renamed ``<prefix>_<name>``.

    ``member`` is the member as it appears on a component (``Out(Axi4Signature(...))`` for a
    manager port, ``In(...)`` for a subordinate port); the flows of the result are the
    effective flows on that component.
    """
    if not member.is_signature:
        raise ValueError(f"{prefix}: only interface members can be flattened, got a port {member!r}")
    out: dict[str, wiring.Member] = {}
    for path, sub, _ in member.signature.flatten(member.signature.create()):
        out[prefix + "_" + "_".join(str(p) for p in path)] = sub
    return out


def _assign(m: Module, flow: wiring.Flow, outer, inner) -> None:
    """Drive the outward-facing side from the inner one according to the member's flow."""
    if isinstance(outer, Const) or isinstance(inner, Const):
        return  # a constant member (an always-ready stream's ``ready``) needs no wire
    if flow == wiring.Out:
        m.d.comb += outer.eq(inner)
    else:
        m.d.comb += inner.eq(outer)


class FlatPortsWrapper(wiring.Component):
    """``inner`` with some interface members exposed as flat ``<prefix>_<signal>`` ports.

    Parameters
    ----------
    inner : wiring.Component
        The component to wrap (it becomes the only submodule, named ``core``).
    prefixes : mapping of str to str
        Member name of ``inner`` -> port prefix, e.g. ``{"bus": "m_axi"}``.

    Every other member of ``inner`` is re-exposed under its own name.
    """

    def __init__(self, inner: wiring.Component, *, prefixes: Mapping[str, str]):
        members = dict(inner.signature.members)
        for name in prefixes:
            if name not in members:
                raise ValueError(f"prefixes: {type(inner).__name__} has no member {name!r}")
        self._inner = inner
        self._prefixes = dict(prefixes)
        outer: dict[str, wiring.Member] = {}
        for name, member in members.items():
            if name in self._prefixes:
                flat = flat_members(self._prefixes[name], member)
                clash = set(flat) & (set(members) | set(outer))
                if clash:
                    raise ValueError(f"prefixes: flattened port names clash with members: {sorted(clash)}")
                outer.update(flat)
            else:
                outer[name] = member
        super().__init__(outer)

    @property
    def inner(self) -> wiring.Component:
        return self._inner

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self._inner
        for path, member, inner_value in core.signature.flatten(core):
            top = path[0]
            if top in self._prefixes:
                name = self._prefixes[top] + "_" + "_".join(str(p) for p in path[1:])
                outer_value = getattr(self, name)
            else:
                outer_value = self
                for p in path:
                    outer_value = outer_value[p] if isinstance(p, int) else getattr(outer_value, p)
            _assign(m, member.flow, outer_value, inner_value)
        return m
