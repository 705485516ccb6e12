"""Combinational CRC-32 over a whole instruction word: the scan pass's program checksum.

The checksum is :func:`vitaccel.hw.spec.regmap.program_crc32` (zlib's reflected CRC-32).
Feeding one bit into a reflected CRC register is linear over GF(2) in (register, bit), so
feeding a whole ``width``-bit word is too: every bit of the next register is the XOR of
some bits of the current register and some bits of the word. :func:`crc_xor_terms` finds
those sets once at elaboration time by running the bit-serial definition on sets of
variables; :func:`crc32_next` turns them into one XOR per register bit (a few dozen inputs
each), so the scan pass folds a 128-bit instruction into the CRC in one cycle.
"""

from __future__ import annotations

from functools import lru_cache

from amaranth import Cat, Const, Value

from vitaccel.hw.spec.regmap import PROGRAM_CRC_POLY

__all__ = ["CRC_BITS", "CRC_INIT", "CRC_FINAL_XOR", "crc_xor_terms", "crc32_next", "crc32_reference"]

CRC_BITS = 32
#: Register value before the first byte, and XOR applied after the last (zlib's CRC-32).
CRC_INIT = CRC_FINAL_XOR = 0xFFFF_FFFF


@lru_cache(maxsize=None)
def crc_xor_terms(width: int) -> tuple[tuple[frozenset[int], frozenset[int]], ...]:
    """Per bit ``j`` of the next CRC register: (register bits, word bits) whose XOR it is,
    after the ``width`` bits of a word enter LSB first (little-endian bytes, each LSB first)."""
    state = [(frozenset([j]), frozenset()) for j in range(CRC_BITS)]
    for i in range(width):
        feedback = (state[0][0], state[0][1] ^ frozenset([i]))
        shifted = state[1:] + [(frozenset(), frozenset())]
        state = [(regs ^ feedback[0], bits ^ feedback[1]) if PROGRAM_CRC_POLY >> j & 1 else (regs, bits)
                 for j, (regs, bits) in enumerate(shifted)]
    return tuple(state)


def crc32_reference(state: int, word: int, width: int) -> int:
    """The bit-serial definition :func:`crc_xor_terms` is derived from (for tests)."""
    for i in range(width):
        feedback = (state ^ (word >> i)) & 1
        state = (state >> 1) ^ (PROGRAM_CRC_POLY if feedback else 0)
    return state


def crc32_next(state: Value, word: Value) -> Value:
    """The CRC register after ``word`` (all of its bits, LSB first) entered ``state``."""
    bits = []
    for regs, data_bits in crc_xor_terms(len(word)):
        terms = [state[j] for j in sorted(regs)] + [word[i] for i in sorted(data_bits)]
        value = Const(0, 1)
        for term in terms:
            value = value ^ term
        bits.append(value)
    return Cat(*bits)
