"""A static timing estimate of a ``synth_xilinx``-mapped netlist: the deepest
register-to-register path and the clock it allows.

This is an **estimate for comparing designs and finding what to pipeline, not sign-off**:
there is no placement, so every net gets one modelled routing delay (:class:`DelayModel`),
and cell delays are measured Artix-7 figures scaled to UltraScale+ -2 (docs/timing.md gives
each figure's source). Vivado's report after place and route is the real number.

The walk (:func:`estimate_timing`) takes yosys's ``write_json`` of the flattened top:

* **start points**: flip-flop outputs (clock-to-Q), block-RAM outputs (clock-to-out, with or
  without ``DO*_REG``), DSP48E2 outputs behind any internal register, and the top's input
  ports (a part's inputs come from registers of the neighbouring part);
* **combinational cells**: LUT1-6 (per-pin delay), MUXF7/8/9, CARRY4/CARRY8 (per pin pair,
  with the dedicated ``CO -> CI`` chain unrouted), DSP48E2 with no register on a pin's path,
  distributed-RAM read ports;
* **end points**: flip-flop ``D``/``CE``/``R``/``S`` (setup), block-RAM inputs, DSP48E2
  inputs into a register (the register's setup, after the multiplier when ``MREG``/``PREG``
  only), and the top's output ports;
* **black boxes** (parts synthesized apart) and cell types the model lacks are boundaries,
  like ports: their inputs end paths and their outputs start them (reported as ``boundaries``).

The result names the worst path cell by cell with its LUT levels, carry-chain length, and
the register use of every DSP48E2 and block RAM on it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Mapping

__all__ = ["DelayModel", "ULTRASCALE_PLUS_2", "estimate_timing", "failing_endpoints", "timing_with_failures", "worst_of",
           "TimingError"]


class TimingError(ValueError):
    """The netlist cannot be walked (for example a combinational loop)."""


@dataclass(frozen=True)
class DelayModel:
    """Delays of one device family and speed grade, in nanoseconds.

    Cell delays are the Artix-7 -1 figures that yosys's ``cells_sim.v`` carries from Project
    X-Ray's measured SDF files, multiplied by ``logic_scale`` (LUT, MUX, carry, flip-flop),
    ``dsp_scale`` (DSP48) and ``bram_scale`` (block RAM): the ratio of the two families'
    data-sheet maximum frequencies for that block.
    """

    name: str
    logic_scale: float
    dsp_scale: float
    bram_scale: float
    #: Routing delay of one fabric net from its driver to a load (no placement: one figure).
    route_ns: float
    #: Extra routing per doubling of a net's fanout (high-fanout nets are slower).
    route_fanout_ns: float
    #: Clock skew and jitter allowance subtracted from every period.
    clock_uncertainty_ns: float

    def describe(self) -> dict[str, Any]:
        return asdict(self)


#: Zynq UltraScale+ -2 (the ZCU102's XCZU9EG-2), see docs/timing.md for the sources.
ULTRASCALE_PLUS_2 = DelayModel(
    name="ultrascale+-2 (prjxray artix7 -1 cell delays, scaled by data-sheet Fmax ratios)",
    logic_scale=0.60, dsp_scale=464 / 775, bram_scale=388 / 737,
    route_ns=0.40, route_fanout_ns=0.05, clock_uncertainty_ns=0.10)

# -- Artix-7 -1 cell delays in picoseconds (yosys techlibs/xilinx/cells_sim.v, Project X-Ray) --

#: LUT6 input pin -> O; a LUTk's pin i behaves as LUT6 pin ``6 - k + i`` (the fast pins last).
_LUT6_PS = (642, 631, 472, 407, 238, 127)
_MUXF_PS = {"MUXF7": {"I0": 217, "I1": 223, "S": 296},
            "MUXF8": {"I0": 104, "I1": 94, "S": 273},
            "MUXF9": {"I0": 104, "I1": 94, "S": 273}}  # UltraScale's MUXF9: as MUXF8
# CARRY4 (input pin, output pin) -> ps; inputs CI, CYINIT, DI0-3, S0-3; outputs O0-3, CO0-3.
_CARRY4_PS: dict[tuple[str, str], int] = {}
for _out, _row in {
    "O0": {"CYINIT": 482, "S0": 223, "CI": 222},
    "O1": {"CYINIT": 598, "DI0": 407, "S0": 400, "S1": 205, "CI": 334},
    "O2": {"CYINIT": 584, "DI0": 556, "DI1": 537, "S0": 523, "S1": 558, "S2": 226, "CI": 239},
    "O3": {"CYINIT": 642, "DI0": 615, "DI1": 596, "DI2": 438, "S0": 582, "S1": 618, "S2": 330, "S3": 227,
           "CI": 313},
    "CO0": {"CYINIT": 536, "DI0": 379, "S0": 340, "CI": 271},
    "CO1": {"CYINIT": 494, "DI0": 465, "DI1": 445, "S0": 433, "S1": 469, "CI": 157},
    "CO2": {"CYINIT": 592, "DI0": 540, "DI1": 520, "DI2": 356, "S0": 512, "S1": 548, "S2": 292, "CI": 228},
    "CO3": {"CYINIT": 580, "DI0": 526, "DI1": 507, "DI2": 398, "DI3": 385, "S0": 508, "S1": 528, "S2": 378,
            "S3": 380, "CI": 114},
}.items():
    for _pin, _ps in _row.items():
        _CARRY4_PS[(_pin, _out)] = _ps
_FF_CLK_TO_Q_PS = 303
_FF_SETUP_PS = {"D": 0, "CE": 109, "R": 404, "S": 404}  # D's setup is negative (-46): taken as 0
_FF_TYPES = ("FDRE", "FDSE", "FDCE", "FDPE")
_BRAM_CLK_TO_OUT_PS = {False: 2454, True: 882}          # without / with the output register
_BRAM_SETUP_PS = {"ADDR": 566, "WE": 532, "EN": 566, "DIN": 737, "RST": 342, "REGCE": 360}
_DISTRIBUTED_RAM_WRITE_SETUP_PS = 600                  # like a LUT input, plus the write strobe
_SRL_CLK_TO_Q_PS = 1200

# DSP48E1 figures (cells_sim.v); DSP48E2 uses them with ``dsp_scale``.
_DSP_COMB_PS = {"A": 2823, "B": 2690, "C": 1325, "D": 3806, "PCIN": 1107}    # pin -> P, no register
_DSP_COMB_NO_MULT_PS = {"A": 1523, "B": 1509, "C": 1325, "D": 1325, "PCIN": 1107}
#: DSP48 pipeline-register parameters (0 or 1 each).
_DSP_REGISTERS = ("AREG", "BREG", "CREG", "DREG", "ADREG", "MREG", "PREG")


def _param_int(cell: Mapping[str, Any], name: str, default: int = 0) -> int:
    value = cell.get("parameters", {}).get(name)
    if value is None:
        return default
    text = str(value).strip()
    try:
        return int(text, 2) if set(text) <= {"0", "1"} else int(text)
    except ValueError:
        return default


def _dsp_register(cell: Mapping[str, Any], pin: str) -> tuple[int | None, int | None]:
    """``(setup ps if pin ends in a register, comb ps to P if it does not)`` of a DSP48 pin
    (the ``X.required`` / ``X.P.comb`` functions of yosys's DSP48E1 model)."""
    reg = {name: _param_int(cell, name) for name in _DSP_REGISTERS}
    mult = str(cell.get("parameters", {}).get("USE_MULT", "MULTIPLY")).strip('"') != "NONE"
    dport = str(cell.get("parameters", {}).get("USE_DPORT", "FALSE")).strip('"') == "TRUE"
    if pin == "A" or pin == "ACIN":
        if reg["AREG"]:
            return 254, None
        if mult and dport and (reg["ADREG"] or reg["MREG"]):
            return (1283 if reg["ADREG"] else 2400), None
        if mult and reg["MREG"]:
            return 1416, None
        if reg["PREG"]:
            return (3723 if mult and dport else 2739 if mult else 1441), None
        return None, (3806 if mult and dport else _DSP_COMB_PS["A"] if mult else _DSP_COMB_NO_MULT_PS["A"])
    if pin == "B" or pin == "BCIN":
        if reg["BREG"]:
            return 324, None
        if mult and reg["MREG"]:
            return 1285, None
        if reg["PREG"]:
            return (2608 if mult else 1428), None
        return None, (_DSP_COMB_PS["B"] if mult else _DSP_COMB_NO_MULT_PS["B"])
    if pin == "D":
        if reg["DREG"]:
            return 248, None
        if reg["ADREG"]:
            return 1195, None
        if reg["MREG"]:
            return 2310, None
        if reg["PREG"]:
            return 3635, None
        return None, _DSP_COMB_PS["D"]
    if pin == "C":
        if reg["CREG"]:
            return 168, None
        if reg["PREG"]:
            return 1244, None
        return None, _DSP_COMB_PS["C"]
    if pin in ("PCIN", "CARRYIN", "CARRYCASCIN", "MULTSIGNIN"):
        return (_DSP_COMB_PS["PCIN"], None) if reg["PREG"] else (None, _DSP_COMB_PS["PCIN"])
    return None, None  # control pins (OPMODE, ALUMODE, INMODE, CE*, RST*): static in our designs


def _dsp_output_arrival(cell: Mapping[str, Any]) -> int | None:
    """Clock-to-P ps when an internal register drives P (yosys's ``P.arrival``), else None."""
    reg = {name: _param_int(cell, name) for name in _DSP_REGISTERS}
    if reg["PREG"]:
        return 329
    if reg["CREG"] or reg["MREG"]:
        return 1687
    if reg["AREG"] or reg["DREG"]:
        return 3935 if str(cell.get("parameters", {}).get("USE_DPORT", "FALSE")).strip('"') == "TRUE" else 2952
    if reg["ADREG"]:
        return 2958
    if reg["BREG"]:
        return 2813
    return None


def _carry8_ps(pin: str, out: str) -> int | None:
    """CARRY8 as two chained CARRY4 halves (UltraScale has one 8-bit chain per slice)."""
    def split(name: str) -> tuple[str, int]:
        stem = name.rstrip("0123456789")
        return stem, int(name[len(stem):]) if name[len(stem):] else 0
    out_stem, out_bit = split(out)
    in_stem, in_bit = split(pin)
    if in_stem == "CI_TOP":
        in_stem, in_bit = "CI", 4
    out_half, out_low = divmod(out_bit, 4)
    if in_stem == "CI":
        in_half = in_bit // 4
        if in_half > out_half:
            return None
        if in_half == out_half:
            return _CARRY4_PS.get(("CI", f"{out_stem}{out_low}"))
        return _CARRY4_PS[("CI", "CO3")] + _CARRY4_PS[("CI", f"{out_stem}{out_low}")]
    if in_stem not in ("DI", "S"):
        return None
    in_half, in_low = divmod(in_bit, 4)
    if in_half > out_half:
        return None
    if in_half == out_half:
        return _CARRY4_PS.get((f"{in_stem}{in_low}", f"{out_stem}{out_low}"))
    return _CARRY4_PS[(f"{in_stem}{in_low}", "CO3")] + _CARRY4_PS[("CI", f"{out_stem}{out_low}")]


def _carry4_ps(pin: str, out: str) -> int | None:
    return _CARRY4_PS.get((pin, out))


def _bram_setup(port: str) -> int | None:
    """Setup ps of a block-RAM input (``ADDRARDADDR``, ``WEBWE``, ``ENARDEN``, ``DINADIN``, ...)."""
    return next((ps for prefix, ps in _BRAM_SETUP_PS.items() if port.startswith(prefix)), None)


def _bits(cell: Mapping[str, Any], port: str) -> list[Any]:
    return list(cell.get("connections", {}).get(port, []))


def _pin_names(port: str, width: int) -> list[str]:
    return [port] if width == 1 else [f"{port}{i}" for i in range(width)]


class _Graph:
    """Timing arcs of one flattened module: ``arcs[src_net] -> [(dst_net, ps, cell, kind)]``."""

    def __init__(self, module: Mapping[str, Any], model: DelayModel) -> None:
        self.model = model
        self.module = module
        self.cells = module.get("cells", {})
        self.starts: dict[Any, tuple[float, str]] = {}        # net -> (arrival ns, cell)
        self.ends: list[tuple[Any, float, str, str]] = []       # (net, setup ns, cell, pin)
        self.arcs: dict[Any, list[tuple[Any, float, str]]] = defaultdict(list)
        self.dedicated: set[Any] = set()                         # nets with no fabric routing
        self.fanout: dict[Any, int] = defaultdict(int)
        self.boundaries: dict[str, int] = defaultdict(int)
        for name, port in module.get("ports", {}).items():
            for bit in port.get("bits", []):
                # A port is a part boundary: its one route is counted inside the part.
                self.dedicated.add(bit)
                if port.get("direction") == "input":
                    self.starts[bit] = (0.0, f"input {name}")
                else:
                    self.ends.append((bit, 0.0, f"output {name}", name))
        for name, cell in self.cells.items():
            self._add_cell(name, cell)
            for port, direction in cell.get("port_directions", {}).items():
                if direction == "input":
                    for bit in _bits(cell, port):
                        self.fanout[bit] += 1

    def _comb(self, name: str, cell: Mapping[str, Any], delay_ps: Any, scale: float) -> None:
        """Arcs from every input pin to every output pin, ``delay_ps(in_pin, out_pin)``."""
        directions = cell.get("port_directions", {})
        inputs = [(p, b) for p, d in directions.items() if d == "input" for p, b in
                  zip(_pin_names(p, len(_bits(cell, p))), _bits(cell, p))]
        outputs = [(p, b) for p, d in directions.items() if d == "output" for p, b in
                   zip(_pin_names(p, len(_bits(cell, p))), _bits(cell, p))]
        for out_pin, out_bit in outputs:
            if isinstance(out_bit, str):
                continue
            for in_pin, in_bit in inputs:
                if isinstance(in_bit, str):
                    continue
                ps = delay_ps(in_pin, out_pin)
                if ps is not None:
                    self.arcs[in_bit].append((out_bit, ps * scale / 1000, name))

    def _add_cell(self, name: str, cell: Mapping[str, Any]) -> None:
        kind, m = cell.get("type", ""), self.model
        if kind.startswith("LUT") and kind[3:].isdigit():
            k = int(kind[3:])
            self._comb(name, cell, lambda pin, out: _LUT6_PS[6 - k + int(pin[1:])], m.logic_scale)
        elif kind in _MUXF_PS:
            self._comb(name, cell, lambda pin, out: _MUXF_PS[kind][pin], m.logic_scale)
        elif kind in ("CARRY4", "CARRY8"):
            self._comb(name, cell, _carry4_ps if kind == "CARRY4" else _carry8_ps, m.logic_scale)
            for bit in _bits(cell, "CO")[-1:]:
                self.dedicated.add(bit)
        elif kind in _FF_TYPES:
            for bit in _bits(cell, "Q"):
                self.starts[bit] = (_FF_CLK_TO_Q_PS * m.logic_scale / 1000, name)
            for pin, ps in _FF_SETUP_PS.items():
                for bit in _bits(cell, pin):
                    self.ends.append((bit, ps * m.logic_scale / 1000, name, pin))
        elif kind.startswith("DSP48"):
            self._add_dsp(name, cell)
        elif kind.startswith("RAMB"):
            registered = {"A": bool(_param_int(cell, "DOA_REG")), "B": bool(_param_int(cell, "DOB_REG"))}
            for port, direction in cell.get("port_directions", {}).items():
                if direction == "output":
                    side = "A" if "A" in port.replace("CAS", "")[:5] else "B"
                    arrival = _BRAM_CLK_TO_OUT_PS[registered[side]] * m.bram_scale / 1000
                    for bit in _bits(cell, port):
                        self.starts[bit] = (arrival, name)
                elif direction == "input" and not port.startswith("CLK"):
                    ps = _bram_setup(port)
                    if ps is not None:
                        for bit in _bits(cell, port):
                            self.ends.append((bit, ps * m.bram_scale / 1000, name, port))
        elif kind.startswith(("RAM32", "RAM64", "RAM128", "RAM256")):
            # Distributed RAM: reads are LUT-like from the read address, writes end at the clock.
            directions = cell.get("port_directions", {})
            for port, direction in directions.items():
                if direction == "input" and port not in ("WCLK",):
                    is_write = port.startswith(("D", "WE", "WADR", "I"))
                    if is_write and not port.startswith("DPRA"):
                        for bit in _bits(cell, port):
                            self.ends.append((bit, _DISTRIBUTED_RAM_WRITE_SETUP_PS * m.logic_scale / 1000,
                                              name, port))
            self._comb(name, cell, lambda pin, out: _LUT6_PS[0] if pin.startswith(("A", "DPRA", "ADDR"))
                       else None, m.logic_scale)
        elif kind.startswith(("SRL16", "SRLC")):
            for bit in _bits(cell, "Q") + _bits(cell, "Q31"):
                self.starts[bit] = (_SRL_CLK_TO_Q_PS * m.logic_scale / 1000, name)
            for pin in ("D", "CE", "A"):
                for bit in _bits(cell, pin):
                    self.ends.append((bit, _DISTRIBUTED_RAM_WRITE_SETUP_PS * m.logic_scale / 1000, name, pin))
        elif kind in ("IBUF", "OBUF", "BUFG", "IBUFG", "OBUFT", "INV", "BUF"):
            self._comb(name, cell, lambda pin, out: 0 if pin in ("I",) else None, 1.0)
        else:
            # A black box (a part synthesized apart) or a cell type this model lacks: a part
            # boundary, as the part's own ports are. Reported, so that a missing type shows.
            self.boundaries[kind] += 1
            for port, direction in cell.get("port_directions", {}).items():
                for bit in _bits(cell, port):
                    if direction == "output":
                        self.starts[bit] = (0.0, name)
                        self.dedicated.add(bit)
                    elif direction == "input":
                        self.ends.append((bit, 0.0, name, port))

    def _add_dsp(self, name: str, cell: Mapping[str, Any]) -> None:
        m = self.model
        arrival = _dsp_output_arrival(cell)
        outputs = [b for p in ("P", "PCOUT") for b in _bits(cell, p) if not isinstance(b, str)]
        for bit in _bits(cell, "PCOUT") + _bits(cell, "ACOUT") + _bits(cell, "BCOUT"):
            self.dedicated.add(bit)
        if arrival is not None:
            for bit in outputs:
                self.starts[bit] = (arrival * m.dsp_scale / 1000, name)
        for port, direction in cell.get("port_directions", {}).items():
            if direction != "input":
                continue
            setup, comb = _dsp_register(cell, port)
            for bit in _bits(cell, port):
                if isinstance(bit, str):
                    continue
                if setup is not None:
                    self.ends.append((bit, setup * m.dsp_scale / 1000, name, port))
                elif comb is not None:
                    for out in outputs:
                        self.arcs[bit].append((out, comb * m.dsp_scale / 1000, name))

    def route(self, net: Any) -> float:
        if net in self.dedicated:
            return 0.0
        fanout = max(1, self.fanout.get(net, 1))
        return self.model.route_ns + self.model.route_fanout_ns * math.log2(fanout)


def estimate_timing(netlist: Mapping[str, Any], top: str, model: DelayModel = ULTRASCALE_PLUS_2,
                    *, clock_mhz: float | None = None) -> dict[str, Any]:
    """Deepest register-to-register path of module ``top`` of a yosys JSON netlist.

    Parameters
    ----------
    netlist : mapping
        ``write_json`` output of a flattened ``synth_xilinx`` run.
    top : str
        The module to walk.
    model : DelayModel
        Device delays (default :data:`ULTRASCALE_PLUS_2`).
    clock_mhz : float, optional
        Target clock; adds ``slack_ns`` to the result.

    Returns
    -------
    dict
        ``fmax_mhz_estimate``, ``critical_ns``, ``worst_path`` (list of
        ``{cell, type, arrival_ns}`` from start to end point), ``lut_levels``,
        ``carry_cells``, ``dsp`` and ``bram`` (register use of those on the path),
        ``boundaries`` (cell types taken as part boundaries: black boxes, and any type the
        model lacks), ``model`` and ``note``.

    Raises
    ------
    TimingError
        If ``top`` is missing or the netlist has a combinational loop.
    """
    return _worst(*_propagate(netlist, top, model), model, clock_mhz)


def _worst(graph: _Graph, arrival: Mapping[Any, float], came_from: Mapping[Any, tuple[Any, str]],
           model: DelayModel, clock_mhz: float | None) -> dict[str, Any]:
    """:func:`estimate_timing` of a propagated graph."""
    worst = (0.0, None, "", "")
    for net, setup, cell, pin in graph.ends:
        if isinstance(net, str) or net not in arrival:
            continue
        total = arrival[net] + graph.route(net) + setup
        if total > worst[0]:
            worst = (total, net, cell, pin)
    critical = worst[0] + model.clock_uncertainty_ns
    path = _trace(graph, came_from, arrival, worst[1], worst[2], worst[3], critical)
    types = [step["type"] for step in path]
    result: dict[str, Any] = {
        "fmax_mhz_estimate": round(1000.0 / critical, 1) if critical > 0 else None,
        "critical_ns": round(critical, 3),
        "worst_path": path,
        "lut_levels": sum(1 for t in types if t.startswith("LUT")),
        "carry_cells": sum(1 for t in types if t.startswith("CARRY")),
        "dsp": [step["registers"] for step in path if step["type"].startswith("DSP48")],
        "bram": [step["registers"] for step in path if step["type"].startswith("RAMB")],
        "boundaries": dict(graph.boundaries),
        "model": model.name,
        "note": "estimate without placement (one modelled delay per net), not timing sign-off",
    }
    if clock_mhz is not None:
        result["slack_ns"] = round(1000.0 / clock_mhz - critical, 3)
    return result


def _propagate(netlist: Mapping[str, Any], top: str, model: DelayModel
               ) -> tuple[_Graph, dict[Any, float], dict[Any, tuple[Any, str]]]:
    """The timing graph of ``top`` and each net's latest arrival (ns) with the arc it came by."""
    modules = netlist.get("modules", {})
    module = modules.get(top) or modules.get(f"\\{top}")
    if module is None:
        raise TimingError(f"no module {top!r} in the netlist (modules: {', '.join(sorted(modules))})")
    graph = _Graph(module, model)
    arrival: dict[Any, float] = {}
    came_from: dict[Any, tuple[Any, str]] = {}
    indegree: dict[Any, int] = defaultdict(int)
    for src, arcs in graph.arcs.items():
        for dst, _, _ in arcs:
            indegree[dst] += 1
    for net, (time, _) in graph.starts.items():
        arrival[net] = time
    # Kahn's order over nets: a net's arrival is final once every arc into it is relaxed.
    ready = [net for net in set(graph.arcs) | set(graph.starts) if indegree.get(net, 0) == 0]
    while ready:
        net = ready.pop()
        base = arrival.get(net)
        for dst, delay, cell in graph.arcs.get(net, ()):
            if base is not None:
                time = base + graph.route(net) + delay
                if time > arrival.get(dst, -1.0):
                    arrival[dst] = time
                    came_from[dst] = (net, cell)
            indegree[dst] -= 1
            if indegree[dst] == 0:
                ready.append(dst)
    if any(count > 0 for count in indegree.values()):
        looped = sum(1 for count in indegree.values() if count > 0)
        raise TimingError(f"{top}: combinational loop through {looped} nets")
    return graph, arrival, came_from


def failing_endpoints(netlist: Mapping[str, Any], top: str, clock_mhz: float,
                      model: DelayModel = ULTRASCALE_PLUS_2) -> list[dict[str, Any]]:
    """Every end point of ``top`` whose estimated path misses ``clock_mhz``, grouped by the
    name of the net it ends on (a register's bits together), worst group first.

    :func:`estimate_timing` names one path; pipelining needs to know how many end points
    fail and which registers they are. Each group has ``net`` (the end net's name, when the
    netlist kept it: synthesize without ``opt_clean -purge``), ``bits`` (failing end points),
    ``worst_ns``, ``cell`` / ``pin`` / ``src`` of the worst end, and ``path``: the names of
    the named nets along its path, start first, with each one's arrival.
    """
    return _failing(*_propagate(netlist, top, model), model, clock_mhz)


def timing_with_failures(netlist: Mapping[str, Any], top: str, clock_mhz: float,
                         model: DelayModel = ULTRASCALE_PLUS_2) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """:func:`estimate_timing` and :func:`failing_endpoints` from one walk of the netlist."""
    walk = _propagate(netlist, top, model)
    return _worst(*walk, model, clock_mhz), _failing(*walk, model, clock_mhz)


def _failing(graph: _Graph, arrival: Mapping[Any, float], came_from: Mapping[Any, tuple[Any, str]],
             model: DelayModel, clock_mhz: float) -> list[dict[str, Any]]:
    """:func:`failing_endpoints` of a propagated graph."""
    names = _net_names(graph.module)
    period = 1000.0 / clock_mhz
    groups: dict[str, dict[str, Any]] = {}
    for net, setup, cell, pin in graph.ends:
        if isinstance(net, str) or net not in arrival:
            continue
        total = arrival[net] + graph.route(net) + setup + model.clock_uncertainty_ns
        if total <= period:
            continue
        name = names.get(net, f"<net {net}>").split("[")[0]
        group = groups.setdefault(name, {"net": name, "bits": 0, "worst_ns": 0.0})
        group["bits"] += 1
        if total > group["worst_ns"]:
            path, step = [], net
            while step in came_from:
                if step in names and not names[step].startswith("$"):   # yosys's own names say nothing
                    path.append((names[step], round(arrival[step], 3)))
                step = came_from[step][0]
            start = graph.starts.get(step)
            path.append((names.get(step, start[1] if start else f"<net {step}>"), round(arrival.get(step, 0.0), 3)))
            group.update(worst_ns=round(total, 3), cell=cell, pin=pin,
                         src=graph.cells.get(cell, {}).get("attributes", {}).get("src", ""),
                         path=list(reversed(path)))
    return sorted(groups.values(), key=lambda g: -g["worst_ns"])


def _net_names(module: Mapping[str, Any]) -> dict[Any, str]:
    """Net bit -> its best name: a public (not hidden) name first, the shortest among equals."""
    names: dict[Any, tuple[int, int, str]] = {}
    for name, entry in module.get("netnames", {}).items():
        bits = entry.get("bits", [])
        rank = (int(entry.get("hide_name", 0)), len(name))
        for index, bit in enumerate(bits):
            if isinstance(bit, str):
                continue
            label = name if len(bits) == 1 else f"{name}[{index}]"
            if bit not in names or rank < names[bit][:2]:
                names[bit] = (*rank, label)
    return {bit: label for bit, (_, _, label) in names.items()}


def _registers(cell: Mapping[str, Any]) -> dict[str, int]:
    kind = cell.get("type", "")
    names = _DSP_REGISTERS if kind.startswith("DSP48") \
        else ("DOA_REG", "DOB_REG")
    return {name: _param_int(cell, name) for name in names}


def _trace(graph: _Graph, came_from: Mapping[Any, tuple[Any, str]], arrival: Mapping[Any, float],
           end_net: Any, end_cell: str, end_pin: str, critical: float) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    if end_net is None:
        return steps
    cells = graph.cells
    steps.append({"cell": end_cell, "type": cells.get(end_cell, {}).get("type", "port"), "pin": end_pin,
                  "arrival_ns": round(critical, 3)})
    net = end_net
    while net in came_from:
        previous, cell = came_from[net]
        steps.append({"cell": cell, "type": cells[cell]["type"], "arrival_ns": round(arrival[net], 3)})
        net = previous
    start = graph.starts.get(net)
    if start is not None:
        steps.append({"cell": start[1], "type": cells.get(start[1], {}).get("type", "port"),
                      "arrival_ns": round(start[0], 3)})
    steps.reverse()
    for step in steps:
        if step["type"].startswith(("DSP48", "RAMB")):
            step["registers"] = _registers(cells[step["cell"]])
    return steps


def worst_of(parts: Mapping[str, Mapping[str, Any]]) -> tuple[str, Mapping[str, Any]] | None:
    """The part with the lowest ``fmax_mhz_estimate`` among ``parts`` that have one."""
    timed = [(name, part) for name, part in parts.items() if part.get("fmax_mhz_estimate")]
    return min(timed, key=lambda item: item[1]["fmax_mhz_estimate"]) if timed else None
