"""The queue/token scheduler: an event simulation of ``AcceleratorCore`` over a program.

It composes the other modules the way ``hw/accel/core.py`` composes the units:

* **Scan and fetch** (the fetcher): one DMA transfer streams the program (``rows = length``
  rows of 16 bytes: one burst per instruction), then one transfer per instruction. A fetched
  instruction is dispatched the cycle after its last word if its queue's FIFO has room
  (``QUEUE_DEPTH``); the next fetch is requested the cycle after that. Instructions are
  offered at the FIFO head ``FIFO_LATENCY`` cycles after dispatch (``SyncFIFOBuffered``).
* **The read engine** is shared by the fetcher and the load unit, one transfer at a time;
  when both request in the same cycle the load unit wins. It is free again the cycle after
  the transfer's last word was taken.
* **Queues** issue their head in order when the unit is idle, every token counter it pops
  is non-zero and every one it pushes is below ``TOKEN_FIFO_DEPTH``; pops happen at issue,
  pushes the cycle after the instruction completes; a unit takes its next instruction the
  cycle after it completes.
* **Load unit**: DECIDE, CHECK, REQUEST (until the read engine is granted, then one cycle for
  the owner flag), MOVE (one chunk per cycle: :func:`~vitaccel.sim.perf.dma.chunk_counts`, as
  words arrive: :func:`~vitaccel.sim.perf.dma.read_transfer`), DRAIN (one cycle).
* **Store unit**: DECIDE, CHECK, READ (one chunk per cycle, words to the DMA through a
  small FIFO), WAIT_DONE (the last B response: :func:`~vitaccel.sim.perf.dma.write_transfer`).
* **Compute unit**: :func:`~vitaccel.sim.perf.units.compute_cycles` and
  :func:`~vitaccel.sim.perf.gemm.gemm_cycles`. FINISH completes in its DECIDE cycle and
  ends the run. A SPARSE_ATTN's cycles depend on its mask (the packed waves), which the
  program alone does not give: they are estimated at ``units.SPARSE_ESTIMATE_DENSITY``.

The busy and stall figures mirror the RTL counters (``hw/spec/regmap.py``).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitaccel.hw.accel.core import QUEUE_DEPTH
from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import ADDR_UNIT, Opcode, Queue

from .ddr import DdrModel
from .dma import chunk_counts, consume, dram_rows, read_transfer, write_transfer
from .gemm import gemm_cycles
from .units import compute_cycles

__all__ = ["PerfResult", "PerfModelError", "simulate_program", "scan_end", "FIFO_LATENCY"]

#: Cycles from a FIFO write (dispatch) to the instruction at the head (``SyncFIFOBuffered``).
FIFO_LATENCY = 2
#: Load unit: DECIDE and CHECK before REQUEST; REQUEST to MOVE after the grant.
_LOAD_FRONT = 3
#: Store unit: DECIDE and CHECK before the first READ.
_STORE_FRONT = 3
_TOKENS = (("l2c", Queue.LOAD, "push_next", Queue.COMPUTE, "pop_prev"),
           ("c2l", Queue.COMPUTE, "push_prev", Queue.LOAD, "pop_next"),
           ("c2s", Queue.COMPUTE, "push_next", Queue.STORE, "pop_prev"),
           ("s2c", Queue.STORE, "push_prev", Queue.COMPUTE, "pop_next"))
_NEVER = float("inf")


class PerfModelError(Exception):
    """The program would stop the accelerator: ``code`` (an ``ErrorCode`` name) at ``pc``."""

    def __init__(self, message: str, *, code: str, pc: int | None) -> None:
        super().__init__(message)
        self.code, self.pc = code, pc


@dataclass
class PerfResult:
    """Estimated counters of one run (names as the RTL's registers, lower case)."""

    total_cycles: int
    busy: dict[str, int]
    stall: dict[str, int]
    engine_busy_cycles: int
    dma_read_bytes: int
    dma_write_bytes: int
    instructions: int
    by_opcode: dict[str, int] = field(default_factory=dict)
    #: The compute queue's instructions in order: ``(pc, issue cycle, completion cycle,
    #: engine k-steps)``; between an instruction's completion and the next issue the compute
    #: unit waits (for the fetcher, or for a load/store token).
    compute_timeline: list[tuple[int, int, int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"cycles": self.total_cycles, "total_cycles": self.total_cycles,
               "engine_busy_cycles": self.engine_busy_cycles, "dma_read_bytes": self.dma_read_bytes,
               "dma_write_bytes": self.dma_write_bytes, "instructions_retired": self.instructions,
               "compute_cycles_by_opcode": dict(self.by_opcode)}
        for name in ("load", "compute", "store"):
            out[f"busy_cycles_{name}"] = self.busy[name]
            out[f"stall_cycles_{name}"] = self.stall[name]
        return out


def scan_end(program_addr: int, length: int, *, bus_bytes: int, ddr: DdrModel) -> int:
    """The cycle the scan pass takes the program's last word: one read transfer of ``length``
    rows of 16 bytes from cycle 0 (the fetcher consumes a word per cycle). The fetcher asks for
    the first instruction the cycle after."""
    scan = read_transfer(0, program_addr, length, ADDR_UNIT, ADDR_UNIT, bus_bytes=bus_bytes, ddr=ddr)
    return int(scan.word_ready[-1])


class _ReadEngine:
    """The DMA read engine: who owns it and from which cycle it is free."""

    def __init__(self) -> None:
        self.free_from = 0


def simulate_program(config: AccelConfig, words: list[int], ddr: DdrModel, *, program_addr: int,
                     ddr_base: int) -> PerfResult:
    """Estimate the run of ``words`` (placed at DDR ``program_addr``; LOAD/STORE addresses
    relative to ``ddr_base``) on the accelerator for ``config`` with DDR ``ddr``."""
    bus = config.dma_data_width // 8
    instrs = []
    for pc, word in enumerate(words):
        try:
            instrs.append(isa.decode(word))
        except isa.IllegalInstruction as err:
            raise PerfModelError(f"instruction {pc} is illegal: {err}", code="ILLEGAL_INSTRUCTION", pc=pc) from None
    for pc, instr in enumerate(instrs):
        # A malformed nm GEMM (no nm_sparsity, or a transposed B) stops it with INVALID_OPERAND, as golden.
        if instr.opcode is Opcode.GEMM and instr.fields["nm"] and (
                config.nm_sparsity is None or instr.fields["b_transposed"]):
            raise PerfModelError(f"instruction {pc} (GEMM nm) is not run by this accelerator (INVALID_OPERAND)",
                                 code="INVALID_OPERAND", pc=pc)
    queue_of = [instr.fields["queue"] if instr.opcode is Opcode.SYNC else isa.QUEUE[instr.opcode]
                for instr in instrs]
    length = len(instrs)
    engine = _ReadEngine()
    read_bytes = 16 * length * 2   # scan + fetch
    write_bytes = 0

    # ---- token counters: value now and scheduled changes (cycle effective, name, delta) ----------
    tokens = {name: 0 for name, *_ in _TOKENS}
    changes: list[tuple[int, int, str, int]] = []
    serial = 0

    def schedule(at: int, name: str, delta: int) -> None:
        nonlocal serial
        serial += 1
        heapq.heappush(changes, (at, serial, name, delta))

    pops = {q: [(name, flag) for name, _, _, consumer, flag in _TOKENS if consumer is q] for q in Queue}
    pushes = {q: [(name, flag) for name, producer, flag, _, _ in _TOKENS if producer is q] for q in Queue}

    fifo: dict[Queue, deque] = {q: deque() for q in Queue}       # (pc, available cycle)
    idle_from = {q: 0 for q in Queue}
    busy = {q: 0 for q in Queue}
    stall = {q: 0 for q in Queue}
    waiting_since: dict[Queue, int | None] = {q: None for q in Queue}
    pending_load: dict[str, Any] | None = None   # a load waiting for the read engine
    by_opcode: dict[str, int] = {}
    engine_steps = 0
    timeline: list[tuple[int, int, int, int]] = []
    finished_at: int | None = None

    # ---- fetcher ---------------------------------------------------------------------------
    scanned = scan_end(program_addr, length, bus_bytes=bus, ddr=ddr)
    engine.free_from = scanned + 1
    fetch_pc = 0
    fetch_request = scanned + 1        # cycle the fetcher requests the read engine
    fetch_state = "request"            # request | hold | done
    held_since = 0

    def can_issue(q: Queue, instr) -> bool:
        f = instr.fields
        for name, flag in pops[q]:
            if f.get(flag) and tokens[name] == 0:
                return False
        for name, flag in pushes[q]:
            if f.get(flag) and tokens[name] >= isa.TOKEN_FIFO_DEPTH:
                return False
        return True

    def retire(q: Queue, instr, issue: int, complete: int) -> None:
        f = instr.fields
        for name, flag in pushes[q]:
            if f.get(flag):
                schedule(complete + 1, name, +1)
        idle_from[q] = complete + 1
        busy[q] += complete - issue

    def start_load(pc: int, grant: int, issue: int) -> None:
        nonlocal read_bytes
        f = instrs[pc].fields
        timing = read_transfer(grant, ddr_base + f["dram_addr"], *dram_rows(f["rows"], f["row_bytes"], f["dram_stride"]),
                               bus_bytes=bus, ddr=ddr)
        chunks = chunk_counts(f["sram_addr"] * ADDR_UNIT, f["rows"], f["row_bytes"], f["sram_stride"], bus)
        ready = np.maximum(timing.word_ready, grant + 2)
        last_chunk = consume(ready, chunks)
        accepted_last = last_chunk - int(chunks[-1])
        engine.free_from = max(accepted_last, timing.last_beat) + 1
        read_bytes += f["rows"] * f["row_bytes"]
        retire(Queue.LOAD, instrs[pc], issue, last_chunk + 1)

    def run_store(pc: int, issue: int) -> int:
        nonlocal write_bytes
        f = instrs[pc].fields
        chunks = chunk_counts(f["sram_addr"] * ADDR_UNIT, f["rows"], f["row_bytes"], f["sram_stride"], bus)
        produced = issue + _STORE_FRONT + np.cumsum(chunks)
        write_bytes += f["rows"] * f["row_bytes"]
        return write_transfer(issue + _STORE_FRONT, ddr_base + f["dram_addr"],
                              *dram_rows(f["rows"], f["row_bytes"], f["dram_stride"]), bus_bytes=bus,
                              produced=produced, ddr=ddr)

    now = 0
    while finished_at is None:
        while changes and changes[0][0] <= now:
            _, _, name, delta = heapq.heappop(changes)
            tokens[name] += delta
        # -- the load unit's pending request wins the read engine over the fetcher -------------
        if pending_load is not None and engine.free_from <= now:
            start_load(pending_load["pc"], now, pending_load["issue"])
            pending_load = None
        # -- queues issue ----------------------------------------------------------------------
        issued = []
        for q in Queue:
            if not fifo[q] or pending_load is not None and q is Queue.LOAD:
                continue
            pc, available = fifo[q][0]
            if available > now or idle_from[q] > now:
                continue
            instr = instrs[pc]
            if not can_issue(q, instr):
                if waiting_since[q] is None:
                    waiting_since[q] = now
                continue
            if waiting_since[q] is not None:
                stall[q] += now - waiting_since[q]
                waiting_since[q] = None
            issued.append((q, pc, instr))
        for q, pc, instr in issued:
            fifo[q].popleft()
            idle_from[q] = _NEVER
            for name, flag in pops[q]:
                if instr.fields.get(flag):
                    schedule(now + 1, name, -1)
            op = instr.opcode
            if q is Queue.COMPUTE:
                if op is Opcode.FINISH:   # completes in DECIDE; TOTAL_CYCLES counts that cycle
                    finished_at = now + 2
                    busy[q] += 1
                    timeline.append((pc, now, now + 1, 0))
                    break
                steps = 0
                if op is Opcode.GEMM:
                    timing = gemm_cycles(config, instr.fields)
                    cycles, steps = timing.busy, timing.engine
                    engine_steps += steps
                else:
                    cycles = compute_cycles(config, instr)
                by_opcode[op.name] = by_opcode.get(op.name, 0) + cycles
                timeline.append((pc, now, now + cycles, steps))
                retire(q, instr, now, now + cycles)
            elif op is Opcode.SYNC:
                retire(q, instr, now, now + 1)
            elif instr.fields["rows"] == 0 or instr.fields["row_bytes"] == 0:
                retire(q, instr, now, now + 2)
            elif q is Queue.LOAD:
                request = now + _LOAD_FRONT
                if engine.free_from <= request:
                    start_load(pc, request, now)
                else:
                    pending_load = {"pc": pc, "issue": now}
            else:
                retire(q, instr, now, run_store(pc, now))
        if finished_at is not None:
            break
        # -- the fetcher -----------------------------------------------------------------------
        if fetch_state == "request" and fetch_request <= now and engine.free_from <= now and pending_load is None:
            timing = read_transfer(now, program_addr + ADDR_UNIT * fetch_pc, 1, ADDR_UNIT, ADDR_UNIT,
                                   bus_bytes=bus, ddr=ddr)
            last_word = int(timing.word_ready[-1])
            engine.free_from = last_word + 1
            fetch_state, held_since = "hold", last_word + 1
        if fetch_state == "hold" and held_since <= now:
            q = queue_of[fetch_pc]
            if len(fifo[q]) < QUEUE_DEPTH:
                dispatch = max(held_since, now)
                fifo[q].append((fetch_pc, dispatch + FIFO_LATENCY))
                fetch_pc += 1
                if fetch_pc == length:
                    fetch_state = "done"
                else:
                    fetch_state, fetch_request = "request", dispatch + 1
        # -- next cycle worth looking at ------------------------------------------------------
        candidates = [changes[0][0]] if changes else []
        for q in Queue:
            if fifo[q]:
                candidates.append(max(fifo[q][0][1], idle_from[q]))
        if pending_load is not None:
            candidates.append(engine.free_from)
        if fetch_state == "request":
            candidates.append(max(fetch_request, engine.free_from))
        elif fetch_state == "hold":
            candidates.append(held_since)
        # Anything due now or earlier waits for a token change, an issue or the read engine:
        # those are candidates of their own.
        later = [c for c in candidates if c > now]
        if not later:
            waiting = [fifo[q][0][0] for q in Queue if fifo[q]]
            raise PerfModelError(f"the program deadlocks at cycle {now} (fetched {fetch_pc} of {length}; a queue "
                                 f"runs more than {QUEUE_DEPTH} instructions ahead or a token never comes)",
                                 code="DEPENDENCY_DEADLOCK", pc=min(waiting) if waiting else None)
        now = int(min(later))
    for q in Queue:
        if waiting_since[q] is not None:
            stall[q] += finished_at - waiting_since[q]
    names = {Queue.LOAD: "load", Queue.COMPUTE: "compute", Queue.STORE: "store"}
    return PerfResult(total_cycles=finished_at, busy={names[q]: int(v) for q, v in busy.items()},
                      stall={names[q]: int(v) for q, v in stall.items()}, engine_busy_cycles=engine_steps,
                      dma_read_bytes=read_bytes, dma_write_bytes=write_bytes, instructions=length,
                      by_opcode=by_opcode, compute_timeline=timeline)
