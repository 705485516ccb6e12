"""On-chip activations: a region of the VECTOR buffer where tensors stay between operations.

The lowering keeps an activation in the *arena* (the part of VECTOR the double-buffered tile
slots leave free) when every operation that reads it can read it there -- a vector unit's
source, or a GEMM's A operand (``a_vector``) -- and it fits; such a tensor is never loaded or
stored. Its producer writes it in place, its readers read it in place, and the compute queue
runs both in program order, so no dependency tokens or barriers guard it.

A :class:`Resident` tensor is a stack of 2-D blocks (its leading axes flattened), each a dense
row-major ``rows x cols`` matrix starting at an :data:`~vitaccel.hw.spec.isa.ADDR_UNIT`-aligned
byte (a GEMM's ``a_addr`` and a vector op's addresses count 16-byte units).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitaccel.hw.spec.isa import ADDR_UNIT
from vitaccel.sw.backend.memory import TensorView, align

__all__ = ["Resident", "Arena"]


@dataclass(frozen=True)
class Resident:
    """A tensor of ``shape`` and ``dtype`` in VECTOR: block ``i`` (of the leading axes, row-major)
    is ``shape[-2] x shape[-1]`` dense at byte ``base + i * block_stride``."""

    base: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def rows(self) -> int:
        return self.shape[-2] if len(self.shape) >= 2 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def block_stride(self) -> int:
        return align(self.rows * self.cols * self.itemsize)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in the arena (every block aligned)."""
        return int(np.prod(self.shape[:-2], dtype=np.int64)) * self.block_stride

    def view(self) -> TensorView:
        """The tensor as a view whose ``base`` is a VECTOR byte address (blocks ``block_stride`` apart)."""
        item = self.itemsize
        strides = [self.cols * item, item]
        step = self.block_stride
        for dim in reversed(self.shape[:-2]):
            strides.insert(0, step)
            step *= dim
        return TensorView(self.base, self.shape, tuple(strides), self.dtype)

    def block(self, index: tuple[int, ...]) -> int:
        """Byte address of the block at ``index`` of the leading axes."""
        flat = int(np.ravel_multi_index(index, self.shape[:-2])) if index else 0
        return self.base + flat * self.block_stride

    def row_unit(self, index: tuple[int, ...], row: int) -> int:
        """Unit address of row ``row`` of block ``index`` (ValueError if it is not 16-byte aligned)."""
        byte = self.block(index) + row * self.cols * self.itemsize
        if byte % ADDR_UNIT:
            raise ValueError(f"row {row} of an on-chip block is not {ADDR_UNIT}-byte aligned")
        return byte // ADDR_UNIT

    def row_aligned(self, row: int) -> bool:
        """Whether row ``row`` of every block starts on a 16-byte boundary."""
        return (row * self.cols * self.itemsize) % ADDR_UNIT == 0


class Arena:
    """First-fit allocator over VECTOR bytes ``[start, end)``; blocks are ADDR_UNIT-aligned.

    ``allocate`` returns None when the tensor does not fit (the caller keeps it in DDR).
    ``peak`` is the most bytes ever in use.
    """

    def __init__(self, start: int, end: int) -> None:
        if start % ADDR_UNIT or end < start:
            raise ValueError(f"arena [{start}, {end}) must be aligned and not empty")
        self.start, self.end = start, end
        self.blocks: dict[int, int] = {}   # start -> bytes
        self.peak = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    def allocate(self, nbytes: int, *, from_top: bool = False) -> int | None:
        """First fit from the bottom, or with ``from_top`` from the top (the lowering puts
        long-lived tensors there, so that short-lived ones do not fragment the middle)."""
        need = align(max(int(nbytes), 1))
        gaps, cursor = [], self.start
        for begin in sorted(self.blocks):
            gaps.append((cursor, begin))
            cursor = max(cursor, begin + self.blocks[begin])
        gaps.append((cursor, self.end))
        fits = [(lo, hi) for lo, hi in gaps if hi - lo >= need]
        if not fits:
            return None
        cursor = fits[-1][1] - need if from_top else fits[0][0]
        self.blocks[cursor] = need
        self.peak = max(self.peak, sum(self.blocks.values()))
        return cursor

    def free(self, start: int) -> None:
        del self.blocks[start]
