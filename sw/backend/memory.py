"""DDR allocation and strided tensor views.

Every tensor of a compiled program lives in DDR as a :class:`TensorView`: a base byte
address, a shape and byte strides. Layout operations (split/merge heads, slices, transposes)
mostly produce new views of the same bytes instead of copies; the DMA's row strides read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitaccel.hw.spec.isa import ADDR_UNIT

__all__ = ["TensorView", "DdrAllocator", "align"]


def align(value: int, unit: int = ADDR_UNIT) -> int:
    """``value`` rounded up to a multiple of ``unit``."""
    return -(-value // unit) * unit


@dataclass(frozen=True)
class TensorView:
    """``shape`` elements of ``dtype`` at ``base + sum(index * strides)`` bytes in DDR."""

    base: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.itemsize

    @classmethod
    def contiguous(cls, base: int, shape: tuple[int, ...], dtype: str) -> "TensorView":
        itemsize = np.dtype(dtype).itemsize
        strides, step = [], itemsize
        for dim in reversed(shape):
            strides.append(step)
            step *= dim
        return cls(base, tuple(shape), tuple(reversed(strides)), dtype)

    def is_contiguous(self) -> bool:
        return self == TensorView.contiguous(self.base, self.shape, self.dtype)

    def rows_contiguous(self) -> bool:
        """The last axis is dense (so one DMA row reads a whole matrix row)."""
        return self.shape[-1] == 1 or self.strides[-1] == self.itemsize

    def index(self, axis: int, i: int) -> "TensorView":
        """The view with ``axis`` fixed at ``i`` (that axis removed)."""
        return TensorView(self.base + i * self.strides[axis], self.shape[:axis] + self.shape[axis + 1:],
                          self.strides[:axis] + self.strides[axis + 1:], self.dtype)

    def slice(self, axis: int, start: int, stop: int) -> "TensorView":
        shape = list(self.shape)
        shape[axis] = stop - start
        return TensorView(self.base + start * self.strides[axis], tuple(shape), self.strides, self.dtype)

    def transpose(self, perm: tuple[int, ...]) -> "TensorView":
        return TensorView(self.base, tuple(self.shape[p] for p in perm),
                          tuple(self.strides[p] for p in perm), self.dtype)

    def reshape(self, shape: tuple[int, ...]) -> "TensorView | None":
        """A view with ``shape`` if the bytes allow it without copying, else None."""
        if self.is_contiguous():
            return TensorView.contiguous(self.base, tuple(shape), self.dtype)
        # Splitting or merging axes is possible when the merged axes are dense against each other.
        merged = _merge_axes(self)
        target = TensorView.contiguous(0, tuple(shape), self.dtype)
        return _reshape_from_merged(self.base, merged, target, self.dtype)

    def numpy(self, ddr: np.ndarray) -> np.ndarray:
        """The tensor's values read from a DDR image (a copy)."""
        view = np.lib.stride_tricks.as_strided(ddr[self.base:].view(np.uint8), shape=self.shape + (self.itemsize,),
                                               strides=self.strides + (1,))
        return np.ascontiguousarray(view).view(self.dtype).reshape(self.shape)


def _merge_axes(view: TensorView) -> list[tuple[int, int]]:
    """(extent, stride) runs of a view with mergeable neighbouring axes merged."""
    runs: list[tuple[int, int]] = []
    for dim, stride in zip(view.shape, view.strides):
        if dim == 1:
            continue
        if runs and runs[-1][1] == dim * stride:
            runs[-1] = (runs[-1][0] * dim, stride)
        else:
            runs.append((dim, stride))
    return runs


def _reshape_from_merged(base: int, runs: list[tuple[int, int]], target: TensorView,
                         dtype: str) -> TensorView | None:
    """Split merged runs into the target shape's axes, if axis boundaries line up."""
    shape = target.shape
    strides: list[int] = []
    run_index, remaining, stride = 0, 1, 0
    if runs:
        remaining, stride = runs[0]
    for dim in shape:
        if dim == 1:
            strides.append(0)
            continue
        if remaining % dim or run_index >= len(runs):
            return None
        remaining //= dim
        strides.append(stride * remaining)
        if remaining == 1:
            run_index += 1
            if run_index < len(runs):
                remaining, stride = runs[run_index]
    return TensorView(base, tuple(shape), tuple(strides), dtype)


class DdrAllocator:
    """First-fit allocator over the DDR image; every block is ``ADDR_UNIT``-aligned.

    Blocks are ``permanent`` (constants, program inputs) or activations that the lowering
    frees once no later operation reads them; freed space is reused by later activations.
    ``size`` is the high-water mark: the DDR bytes the program needs.
    """

    def __init__(self) -> None:
        self.size = 0
        self.blocks: dict[int, tuple[str, int, bool]] = {}  # start -> (name, bytes, permanent)
        self.free_list: list[tuple[int, int]] = []           # (start, bytes), sorted, coalesced
        self.regions: list[tuple[str, int, int]] = []        # every allocation ever made

    def allocate(self, name: str, nbytes: int, *, permanent: bool = False) -> int:
        need = align(max(int(nbytes), 1))
        # Permanent blocks never reuse freed space: constants are in the initial image, and an
        # earlier activation in the same place would overwrite them at run time.
        for index, (start, size) in enumerate([] if permanent else self.free_list):
            if size >= need:
                if size == need:
                    del self.free_list[index]
                else:
                    self.free_list[index] = (start + need, size - need)
                break
        else:
            start = align(self.size)
            self.size = start + need
        self.blocks[start] = (name, need, permanent)
        self.regions.append((name, start, int(nbytes)))
        return start

    def owner(self, addr: int) -> int | None:
        """Start of the live block containing byte ``addr`` (None if none does)."""
        for start, (_, size, _) in self.blocks.items():
            if start <= addr < start + size:
                return start
        return None

    def free(self, start: int) -> None:
        name, size, permanent = self.blocks.pop(start)
        if permanent:
            raise AssertionError(f"freeing permanent block {name}")
        merged = sorted(self.free_list + [(start, size)])
        self.free_list = []
        for block_start, block_size in merged:
            if self.free_list and self.free_list[-1][0] + self.free_list[-1][1] == block_start:
                last = self.free_list.pop()
                self.free_list.append((last[0], last[1] + block_size))
            else:
                self.free_list.append((block_start, block_size))

    def activations(self) -> list[int]:
        """Starts of live, non-permanent blocks."""
        return [start for start, (_, _, permanent) in self.blocks.items() if not permanent]
