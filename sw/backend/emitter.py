"""Instruction emission: a program builder and the double-buffered token pipeline.

:class:`ProgramBuilder` collects instructions in program order. :class:`Pipeline` emits a
stream of *tiles*, each a group of loads, computes and stores, and sets the VTA dependency
tokens so that tile ``i + 1``'s loads overlap tile ``i``'s compute and tile ``i - 1``'s stores
while no buffer slot is overwritten before it is consumed (two slots per buffer):

* loads of tile ``i >= 2`` pop C2L (compute finished with slot ``i % 2``), the last pushes L2C;
* compute pops L2C, and for ``i >= 2`` S2C (store of tile ``i - 2`` emptied its output slot);
  the last compute pushes C2L and C2S;
* stores pop C2S, the last pushes S2C.

:meth:`Pipeline.barrier` drains the pipeline (every store done before any later load), which
the lowering uses between operations whose data flows through DDR, and leaves every token
FIFO empty.
"""

from __future__ import annotations

from typing import Iterable

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.isa import Instruction, Opcode, Queue

__all__ = ["ProgramBuilder", "Pipeline", "SLOTS"]

#: Buffer slots per buffer (double buffering).
SLOTS = 2


class ProgramBuilder:
    """Instructions in program order, with the tag of the layer that emitted each."""

    def __init__(self) -> None:
        self.instructions: list[Instruction] = []
        self.tags: list[str] = []
        self.tag = ""

    def emit(self, instr: Instruction) -> None:
        self.instructions.append(instr)
        self.tags.append(self.tag)

    def words(self) -> list[int]:
        return [isa.encode(instr) for instr in self.instructions]


def _with_flags(instrs: list[Instruction], first: dict[str, int], last: dict[str, int]) -> list[Instruction]:
    out = list(instrs)
    if first:
        out[0] = out[0].replace(**first)
    if last:
        out[-1] = out[-1].replace(**last)
    return out


def _sync(queue: Queue, **flags: int) -> Instruction:
    return Instruction(Opcode.SYNC, queue=queue, **flags)


class Pipeline:
    """Emits tiles with double-buffering tokens into a :class:`ProgramBuilder`."""

    def __init__(self, builder: ProgramBuilder) -> None:
        self.builder = builder
        self.tiles = 0  # tiles since the last barrier

    @property
    def slot(self) -> int:
        """Buffer slot the next tile must use."""
        return self.tiles % SLOTS

    def tile(self, loads: Iterable[Instruction], computes: Iterable[Instruction],
             stores: Iterable[Instruction]) -> None:
        """Emit one tile; empty stages become SYNCs so that the token chain stays intact."""
        loads = list(loads) or [_sync(Queue.LOAD)]
        computes = list(computes) or [_sync(Queue.COMPUTE)]
        stores = list(stores) or [_sync(Queue.STORE)]
        reuse = self.tiles >= SLOTS
        loads = _with_flags(loads, {"pop_next": 1} if reuse else {}, {"push_next": 1})
        computes = _with_flags(computes, {"pop_prev": 1, **({"pop_next": 1} if reuse else {})},
                               {"push_prev": 1, "push_next": 1})
        stores = _with_flags(stores, {"pop_prev": 1}, {"push_prev": 1})
        for instr in (*loads, *computes, *stores):
            self.builder.emit(instr)
        self.tiles += 1

    def barrier(self) -> None:
        """Wait for every store so far before any later load; empties all token FIFOs."""
        outstanding = min(self.tiles, SLOTS)
        if outstanding == 0:
            return
        for _ in range(outstanding):  # S2C tokens of the last stores: all stores are done
            self.builder.emit(_sync(Queue.COMPUTE, pop_next=1))
        self.builder.emit(_sync(Queue.COMPUTE, push_prev=1))
        for _ in range(outstanding + 1):  # leftover C2L tokens plus the barrier token
            self.builder.emit(_sync(Queue.LOAD, pop_next=1))
        self.tiles = 0

    def finish(self) -> None:
        """Drain and end the program: FINISH runs after the last load and the last store
        (C2L tokens the load queue never needs again are left in their FIFO)."""
        for _ in range(min(self.tiles, SLOTS)):  # S2C tokens of the last stores
            self.builder.emit(_sync(Queue.COMPUTE, pop_next=1))
        self.builder.emit(_sync(Queue.LOAD, push_next=1))  # after every load
        self.builder.emit(Instruction(Opcode.FINISH, pop_prev=1))
        self.tiles = 0
