"""The fuzz oracle: the golden machine's verdict, the program's ordering, and the comparison.

:func:`golden_outcome` runs a program on a golden machine and records how it ended (error
code, pc, final DDR window); a Python exception other than a ``MachineError`` is a golden
crash. :func:`golden_problems` checks what must hold whatever the program: a stale checksum
stops with ``PROGRAM_CHECKSUM``, otherwise the first word that does not decode stops with
``ILLEGAL_INSTRUCTION`` at its pc, pcs are inside the program, the run stays within the time
budget.

Comparing with the RTL needs care only where the *hardware is allowed* to differ:

- **Races.** Queues run concurrently; the golden machine runs the most eager order. A
  program whose instructions in different queues touch the same bytes (one writing)
  without a dependency-token path between them, or whose FINISH is not ordered after every
  other instruction, has a timing-dependent result (:func:`ordering`). Such programs are
  counted as ``racy`` and only checked not to hang (nor stop with ``WATCHDOG``).
- **Which error first.** If the RTL stops at another instruction than the golden machine,
  that is accepted only when neither instruction is ordered before the other by tokens or
  program order (the hardware may reach either first).
- **Documented unsupported features** (:data:`vitaccel.hw.accel.UNSUPPORTED_OPCODES`, a GEMM
  with both ``accumulate`` and ``requant``): the RTL stops with ``INVALID_OPERAND`` there if
  the run reaches it; counted as ``unsupported`` when it decides the outcome.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import Buffer, Opcode, Queue
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.sim.golden.machine import merge_ranges
from vitaccel.sim.regress.fuzz_gen import FuzzProgram, crc_of

__all__ = ["Outcome", "golden_outcome", "golden_problems", "Ordering", "ordering", "compare",
           "GOLDEN_BUDGET_S", "unsupported_pcs"]

#: Wall-clock budget of one golden run (its bound is structural: every instruction runs at most
#: once, a round without progress is a deadlock); beyond it the run counts as a hang.
GOLDEN_BUDGET_S = 10.0


@dataclass
class Outcome:
    """How a run ended: ``code`` (ErrorCode name, ``HANG`` or ``CRASH``), ``pc``, final ``ddr``."""

    code: str
    pc: int | None = None
    ddr: np.ndarray | None = None
    message: str = ""
    seconds: float = 0.0
    retired: int | None = None
    cycles: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "pc": self.pc, "message": self.message[:300],
                "seconds": round(self.seconds, 4), "retired": self.retired, "cycles": self.cycles}


def golden_outcome(machine: Any, program: FuzzProgram) -> Outcome:
    """Run ``program`` on ``machine`` (a :class:`~vitaccel.sim.golden.machine.GoldenMachine`,
    whose buffers carry over from earlier programs exactly as the RTL's do)."""
    from vitaccel.sim.golden.machine import MachineError

    ddr = program.ddr.copy()
    start = time.perf_counter()
    try:
        machine.run(list(program.words), ddr, checksum=program.checksum)
        outcome = Outcome("NONE", None, ddr)
    except MachineError as err:
        outcome = Outcome(err.code.name, err.pc, None, str(err))
    except Exception as err:  # noqa: BLE001 - a golden crash is exactly what fuzzing looks for
        outcome = Outcome("CRASH", None, None, f"{type(err).__name__}: {err}")
    outcome.seconds = time.perf_counter() - start
    return outcome


def golden_problems(program: FuzzProgram, outcome: Outcome) -> list[str]:
    """Invariants of the golden verdict that hold for every program (empty: fine)."""
    if outcome.code == "CRASH":
        return [f"golden machine crashed: {outcome.message}"]
    problems = []
    if outcome.seconds > GOLDEN_BUDGET_S:
        problems.append(f"golden run took {outcome.seconds:.1f} s > {GOLDEN_BUDGET_S:g} s (hang)")
    words = program.words
    stale = program.checksum is not None and bool(words) and crc_of(words) != program.checksum
    if stale:
        if outcome.code != ErrorCode.PROGRAM_CHECKSUM.name:
            problems.append(f"stale checksum but golden {outcome.code}")
        return problems
    if outcome.code == ErrorCode.PROGRAM_CHECKSUM.name:
        problems.append("golden PROGRAM_CHECKSUM with a right checksum")
    first_illegal = next((pc for pc, word in enumerate(words) if not _decodes(word)), None)
    if first_illegal is not None and (outcome.code, outcome.pc) != (ErrorCode.ILLEGAL_INSTRUCTION.name, first_illegal):
        problems.append(f"word {first_illegal} does not decode but golden {outcome.code} at pc {outcome.pc}")
    if outcome.pc is not None and not 0 <= outcome.pc < len(words):
        problems.append(f"golden pc {outcome.pc} outside the program of {len(words)}")
    if outcome.code == "NONE" and (outcome.ddr is None or outcome.ddr.shape != program.ddr.shape):
        problems.append("golden finished without a DDR window of the same size")
    return problems


def _decodes(word: int) -> bool:
    try:
        isa.decode(word)
        return True
    except isa.IllegalInstruction:
        return False


# -- ordering: which instructions the tokens order, which touch the same bytes --------------------

_POPS = {Queue.LOAD: {"pop_next": "C2L"}, Queue.COMPUTE: {"pop_prev": "L2C", "pop_next": "S2C"},
         Queue.STORE: {"pop_prev": "C2S"}}
_PUSHES = {Queue.LOAD: {"push_next": "L2C"}, Queue.COMPUTE: {"push_prev": "C2L", "push_next": "C2S"},
           Queue.STORE: {"push_prev": "S2C"}}


def _footprint(instr: isa.Instruction) -> list[tuple[str, int, int, bool]]:
    """Conservative byte ranges ``(space, start, end, writes)`` an instruction may touch."""
    f = instr.fields
    u = isa.ADDR_UNIT
    op = instr.opcode

    def span(addr: int, nbytes: int) -> tuple[int, int]:
        return addr * u, addr * u + max(nbytes, 0)

    if op in (Opcode.LOAD, Opcode.STORE):
        rows, rb = f["rows"], f["row_bytes"]
        if rows == 0 or rb == 0:
            return []
        dram = (f["dram_addr"], f["dram_addr"] + (rows - 1) * f["dram_stride"] + rb)
        sram = (f["sram_addr"] * u, f["sram_addr"] * u + (rows - 1) * f["sram_stride"] + rb)
        load = op is Opcode.LOAD
        return [("DDR", *dram, not load), (f["buffer"].name, *sram, load)]
    if op is Opcode.GEMM:
        m, k, n = f["m"], f["k"], f["n"]
        out = [("INPUT", *span(f["a_addr"], m * k), False),
               ("WEIGHT", *span(f["b_addr"], 2 * k * n + u), False),
               ("ACC", *span(f["param_addr"], 12 * n), False)]
        if f["requant"]:
            out.append(("VECTOR", *span(f["out_addr"], m * n), True))
        else:
            out.append(("ACC", *span(f["acc_addr"], 4 * m * n), True))
        if f["accumulate"]:
            out.append(("ACC", *span(f["acc_addr"], 4 * m * n), False))
        return out
    if op in (Opcode.ADD, Opcode.REQUANT, Opcode.SOFTMAX, Opcode.GELU, Opcode.LAYERNORM):
        rows, cols = f["rows"], f["cols"]
        src = "ACC" if op in (Opcode.REQUANT, Opcode.SOFTMAX) else "VECTOR"
        width = 4 if src == "ACC" else 1
        out = [(src, *span(f["src_addr"], rows * cols * width), False),
               ("VECTOR", *span(f["dst_addr"], rows * cols), True),
               ("ACC", *span(f["param_addr"], 4 * (4 + 3 * cols)), False)]
        if op is Opcode.ADD:
            out.append(("VECTOR", *span(f["src2_addr"], rows * cols), False))
        if op is Opcode.GELU:
            out.append(("LUT", 0, isa.GELU_LUT_ENTRIES, False))
        return out
    if op is Opcode.LUT_LOAD:
        return [("VECTOR", *span(f["src_addr"], f["count"]), False), ("LUT", 0, isa.GELU_LUT_ENTRIES, True)]
    if op is Opcode.TOPK:
        rows, n, k = f["rows"], f["n"], f["k"]
        return [("VECTOR", *span(f["src_addr"], 2 * rows * n), False),
                ("VECTOR", *span(f["dst_addr"], 2 * max(rows, 1) * k), True)]
    if op is Opcode.GATHER:
        rows, cols, n = f["rows"], f["cols"], f["n"]
        return [("VECTOR", *span(f["src_addr"], n * cols), False), ("VECTOR", *span(f["index_addr"], 2 * rows), False),
                ("VECTOR", *span(f["dst_addr"], rows * cols), True)]
    if op is Opcode.PACKAGE:
        n, cols, k, heads = f["n"], f["cols"], f["k"], f["heads"]
        return [("VECTOR", *span(f["prob_addr"], heads * n), False), ("VECTOR", *span(f["src_addr"], n * cols), False),
                ("VECTOR", *span(f["index_addr"], 2 * k), False), ("VECTOR", *span(f["dst_addr"], cols), True)]
    if op is Opcode.SPARSE_ATTN:
        m, n, d = f["m"], f["n"], f["d"]
        size = max(m, n) * max(n, d)
        operands = ("q_addr", "k_addr", "v_addr") if f["predict"] else ("q_addr", "k_addr", "v_addr", "mask_addr")
        return [("VECTOR", *span(f[name], size), False) for name in operands] + \
               [("ACC", *span(f["param_addr"], 4 * isa.SPARSE_ATTN_PARAM_WORDS), False),
                ("VECTOR", *span(f["out_addr"], m * d), True)]
    return []


@dataclass
class Ordering:
    """Happens-before among a program's instructions (None if a word does not decode: the
    scan stops such programs before anything runs). ``racy`` says why the result may depend
    on timing (empty: it does not)."""

    before: list[int] | None = None   # bit j of before[i]: instruction i completes before j starts
    racy: str = ""
    queues: list[Queue] = field(default_factory=list)

    def ordered(self, a: int, b: int) -> bool:
        """Whether ``a`` and ``b`` run in a fixed order (or are the same instruction)."""
        if self.before is None or a == b:
            return True
        return bool(self.before[a] >> b & 1 or self.before[b] >> a & 1)


def ordering(words: tuple[int, ...] | list[int]) -> Ordering:
    """Token and program order of ``words``, and whether the program races (see the module docstring)."""
    try:
        instrs = [isa.decode(w) for w in words]
    except isa.IllegalInstruction:
        return Ordering()
    count = len(instrs)
    queues = [i.queue for i in instrs]
    succ = [0] * count
    last_in_queue: dict[Queue, int] = {}
    pushes: dict[str, list[int]] = {}
    pops: dict[str, list[int]] = {}
    for pc, instr in enumerate(instrs):
        q = queues[pc]
        if q in last_in_queue:
            succ[last_in_queue[q]] |= 1 << pc
        last_in_queue[q] = pc
        for flag, fifo in _POPS[q].items():
            if instr.fields[flag]:
                pops.setdefault(fifo, []).append(pc)
        for flag, fifo in _PUSHES[q].items():
            if instr.fields[flag]:
                pushes.setdefault(fifo, []).append(pc)
    for fifo, consumers in pops.items():   # the k-th pop takes the k-th push's token
        for producer, consumer in zip(pushes.get(fifo, []), consumers):
            succ[producer] |= 1 << consumer
    before = succ[:]
    for pc in reversed(range(count)):     # edges only go forward in time; close transitively
        reach = before[pc]
        bits = succ[pc]
        while bits:
            low = bits & -bits
            reach |= before[low.bit_length() - 1]
            bits ^= low
        before[pc] = reach
    # Token edges can point backwards in program order; iterate to a fixed point.
    changed = True
    while changed:
        changed = False
        for pc in range(count):
            reach = before[pc]
            bits = reach
            while bits:
                low = bits & -bits
                reach |= before[low.bit_length() - 1]
                bits ^= low
            if reach != before[pc]:
                before[pc], changed = reach, True
    order = Ordering(before=before, queues=queues)
    for pc, instr in enumerate(instrs):
        if instr.opcode is Opcode.FINISH:
            loose = [j for j in range(count) if j != pc and queues[j] is not queues[pc] and not order.ordered(pc, j)]
            if loose:
                order.racy = f"FINISH at {pc} is not ordered after instruction {loose[0]}"
                return order
    prints = [_footprint(i) for i in instrs]
    for a in range(count):
        for b in range(a + 1, count):
            if queues[a] is queues[b] or order.ordered(a, b):
                continue
            for space, lo, hi, writes in prints[a]:
                for space2, lo2, hi2, writes2 in prints[b]:
                    if space == space2 and (writes or writes2) and lo < hi2 and lo2 < hi and hi > lo and hi2 > lo2:
                        order.racy = f"instructions {a} and {b} race on {space} [{max(lo, lo2):#x}, {min(hi, hi2):#x})"
                        return order
    return order


def unsupported_pcs(words: tuple[int, ...] | list[int], config: AccelConfig) -> list[int]:
    """Instructions the RTL documents as not implemented (it stops there with INVALID_OPERAND)."""
    from vitaccel.hw.accel import UNSUPPORTED_OPCODES

    out = []
    for pc, word in enumerate(words):
        try:
            instr = isa.decode(word)
        except isa.IllegalInstruction:
            return []
        if instr.opcode in UNSUPPORTED_OPCODES or (
                instr.opcode is Opcode.GEMM and instr.accumulate and instr.requant):
            out.append(pc)
    return out


def _reachable(order: Ordering, golden: Outcome, pc: int) -> bool:
    """Whether the hardware may execute instruction ``pc`` given how the golden run ended: it
    finished or ran dry (every instruction ran), stopped *at* ``pc`` for a fault of its own, or
    stopped at an instruction that does not come before ``pc`` by tokens or program order."""
    if golden.code == "NONE" or golden.pc is None:
        return True
    if golden.pc == pc:
        return golden.code not in (ErrorCode.DEPENDENCY_DEADLOCK.name, ErrorCode.MISSING_FINISH.name)
    return not order.before[golden.pc] >> pc & 1


def compare(program: FuzzProgram, golden: Outcome, rtl: Outcome, config: AccelConfig) -> tuple[str, list[str]]:
    """The verdict on one program: ``(status, problems)``.

    ``status`` is ``passed``, ``racy`` (timing-dependent result: only hangs are checked),
    ``unsupported`` (a documented unsupported feature decided the RTL's outcome),
    ``hang`` or ``failed``; ``problems`` says what differs.
    """
    if rtl.code == "HANG":
        return "hang", [rtl.message or "no interrupt within the cycle budget"]
    if rtl.code == ErrorCode.WATCHDOG.name:
        return "hang", [f"RTL watchdog at pc {rtl.pc} (golden: {golden.code} at {golden.pc})"]
    stale = program.checksum is not None and program.words and crc_of(program.words) != program.checksum
    order = Ordering() if stale else ordering(program.words)
    if order.racy:
        return "racy", []
    expected, status = golden, "passed"
    unsupported = [] if stale or order.before is None else unsupported_pcs(program.words, config)
    if (rtl.code != golden.code or rtl.pc != golden.pc) and rtl.code == ErrorCode.INVALID_OPERAND.name \
            and rtl.pc in unsupported and _reachable(order, golden, rtl.pc):
        return "unsupported", []
    problems = []
    same_code = rtl.code == expected.code
    same_pc = expected.pc is None or rtl.pc == expected.pc
    if not (same_code and same_pc):
        either_first = (expected.code != "NONE" and rtl.code != "NONE" and expected.pc is not None
                        and rtl.pc is not None and 0 <= rtl.pc < len(program.words)
                        and not order.ordered(rtl.pc, expected.pc))
        if either_first:
            return "racy", []
        problems.append(f"RTL {rtl.code} at pc {rtl.pc}" + (f" ({rtl.message})" if rtl.message else "")
                        + f", golden {expected.code} at pc {expected.pc}"
                        + (f" ({golden.message[:200]})" if golden.message else ""))
    elif expected.code == "NONE":
        if rtl.ddr is None or expected.ddr is None or not np.array_equal(rtl.ddr, expected.ddr):
            if rtl.ddr is None or expected.ddr is None:
                problems.append("no DDR window to compare")
            else:
                diff = np.flatnonzero(rtl.ddr != expected.ddr)
                pos = int(diff[0])
                problems.append(f"DDR differs at {diff.size} bytes, first {pos:#x}: rtl {int(rtl.ddr[pos]):#04x} "
                                f"golden {int(expected.ddr[pos]):#04x}")
        if rtl.retired is not None and rtl.retired != len(program.words):
            problems.append(f"retired {rtl.retired} of {len(program.words)} instructions")
    return ("failed", problems) if problems else (status, [])


# -- scrubbing: the bytes a program may read start equal on both sides ----------------------------

_SCRUB_ROW = 256   # bytes per LOAD row of a scrub (the zero DDR row is re-read: dram_stride 0)
_SCRUB_ROWS = 16   # rows per LOAD: 4 KiB retire well within the watchdog's 20000 cycles of DMA slack


def scrub_program(config: AccelConfig, words: tuple[int, ...] | list[int]) -> list[int]:
    """A program that zeroes every on-chip byte (and the GELU table) ``words`` may read, from a
    zero DDR window; empty if it reads nothing (or a word does not decode: the scan stops it).

    On-chip memories keep their contents across programs on both machines, but after a
    program that stopped with an error (or raced) they need not hold the same bytes: the
    golden machine stops at once, the hardware's other queues may have run further. Run
    before a fuzz program on both sides, this makes its result independent of the programs
    before it, so a failure reproduces alone.
    """
    from vitaccel.hw.spec.isa import Instruction, encode

    try:
        instrs = [isa.decode(w) for w in words]
    except isa.IllegalInstruction:
        return []
    reads: dict[str, list[tuple[int, int]]] = {}
    for instr in instrs:
        for space, lo, hi, writes in _footprint(instr):
            if space != "DDR" and hi > lo:
                reads.setdefault(space, []).append((lo, hi))
    lut = "LUT" in reads
    loads = []
    if lut:   # the table comes from 256 zero bytes at VECTOR 0
        reads.setdefault("VECTOR", []).append((0, isa.GELU_LUT_ENTRIES))
    for space in sorted(set(reads) - {"LUT"}):
        size = isa.buffer_bytes(config, Buffer[space])
        for lo, hi in merge_ranges([(max(0, lo), min(hi, size)) for lo, hi in reads[space] if lo < size]):
            start = lo // isa.ADDR_UNIT * isa.ADDR_UNIT
            rows = -(-(hi - start) // _SCRUB_ROW)
            start = min(start, max(0, size - rows * _SCRUB_ROW) // isa.ADDR_UNIT * isa.ADDR_UNIT)
            while rows:
                chunk = min(rows, _SCRUB_ROWS)
                loads.append(Instruction(Opcode.LOAD, buffer=Buffer[space], sram_addr=start // isa.ADDR_UNIT,
                                         dram_addr=0, rows=chunk, row_bytes=min(_SCRUB_ROW, size - start),
                                         dram_stride=0, sram_stride=_SCRUB_ROW))
                start, rows = start + chunk * _SCRUB_ROW, rows - chunk
    if not loads:
        return []
    loads[-1] = loads[-1].replace(push_next=1)
    wait = (Instruction(Opcode.LUT_LOAD, lut=isa.LutId.GELU, offset=0, count=isa.GELU_LUT_ENTRIES, src_addr=0,
                        pop_prev=1) if lut else Instruction(Opcode.SYNC, queue=Queue.COMPUTE, pop_prev=1))
    return [encode(i) for i in (*loads, wait, Instruction(Opcode.FINISH))]
