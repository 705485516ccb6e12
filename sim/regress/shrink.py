"""Shrinking a failing fuzz program to a minimal reproducer.

Greedy and batched: each round builds every candidate one step smaller (first: the program
without one instruction; if none of those still fails: an all-zero DDR window, one
instruction with all its fields zeroed, one undecodable word cleared, one field zeroed),
asks the predicate about all
of them at once (one simulator launch for the RTL) and keeps the first that still fails,
until no candidate does. The checksum follows the program's kind: recomputed if it was
right, kept stale if it was stale, off if it was off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vitaccel.hw.spec import isa
from vitaccel.sim.regress.fuzz_gen import FuzzProgram, crc_of, field_slices, set_field

__all__ = ["ShrinkResult", "shrink", "MAX_ROUNDS"]

#: Most shrinking steps (each one predicate call over a batch of candidates).
MAX_ROUNDS = 80


@dataclass
class ShrinkResult:
    """The smallest failing program found; ``alone``: the original fails run alone (if not,
    it needs the buffer state earlier programs of its batch left, and is returned as is)."""

    program: FuzzProgram
    alone: bool
    steps: int
    evaluations: int


def _with_words(program: FuzzProgram, words: list[int], *, ddr: np.ndarray | None = None) -> FuzzProgram | None:
    if program.checksum is None:
        checksum = None
    elif crc_of(program.words) == program.checksum:
        checksum = crc_of(words)
    else:
        checksum = program.checksum
        if words and crc_of(words) == checksum:   # a stale checksum must stay stale
            return None
    return dataclasses.replace(program, words=tuple(words), checksum=checksum,
                               ddr=program.ddr if ddr is None else ddr, change=program.change + " (shrunk)"
                               if not program.change.endswith("(shrunk)") else program.change)


def _deletions(program: FuzzProgram) -> list[FuzzProgram]:
    words = list(program.words)
    out = [_with_words(program, words[:pc] + words[pc + 1:]) for pc in range(len(words))]
    return [c for c in out if c is not None]


def _zeroings(program: FuzzProgram) -> list[FuzzProgram]:
    """Candidates with less in them, the biggest steps first: an all-zero DDR window, all
    fields of one instruction zeroed (opcode kept), then single fields."""
    words = list(program.words)
    out = [_with_words(program, words, ddr=np.zeros_like(program.ddr))] if program.ddr.any() else []
    singles = []
    for pc, word in enumerate(words):
        try:
            opcode = isa.decode(word).opcode
        except isa.IllegalInstruction:
            if word:
                out.append(_with_words(program, words[:pc] + [0] + words[pc + 1:]))
            continue
        fields = [(offset, width) for name, (offset, width) in field_slices(opcode).items()
                  if name not in ("opcode", "reserved") and (word >> offset) & ((1 << width) - 1)]
        if len(fields) > 1:
            bare = word
            for offset, width in fields:
                bare = set_field(bare, offset, width, 0)
            out.append(_with_words(program, words[:pc] + [bare] + words[pc + 1:]))
        singles += [_with_words(program, words[:pc] + [set_field(word, offset, width, 0)] + words[pc + 1:])
                    for offset, width in fields]
    return [c for c in out + singles if c is not None]


def shrink(program: FuzzProgram, still_fails: Callable[[list[FuzzProgram]], list[bool]],
           *, max_rounds: int = MAX_ROUNDS) -> ShrinkResult:
    """The smallest program derived from ``program`` that ``still_fails`` (see the module docstring).

    ``still_fails(candidates)`` runs the candidates (in order, as one batch) and says for each
    whether it fails.
    """
    evaluations = 1
    if not still_fails([program])[0]:
        return ShrinkResult(program, alone=False, steps=0, evaluations=evaluations)
    current, steps = program, 0
    while steps < max_rounds:
        for make in (_deletions, _zeroings):
            candidates = make(current)
            if not candidates:
                continue
            verdicts = still_fails(candidates)
            evaluations += len(candidates)
            chosen = next((c for c, bad in zip(candidates, verdicts) if bad), None)
            if chosen is not None:
                current, steps = chosen, steps + 1
                break
        else:
            break
    return ShrinkResult(current, alone=True, steps=steps, evaluations=evaluations)
