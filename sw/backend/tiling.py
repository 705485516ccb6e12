"""Tiling: how much of an operation one tile holds, given the config's buffer slots.

Each on-chip buffer is split into :data:`~vitaccel.sw.backend.emitter.SLOTS` slots (double
buffering): INPUT and WEIGHT into their two ``*_spad_kib`` halves, ACC and VECTOR into equal
halves. A tile's operands, parameters and results must all fit one slot of each buffer.
Field widths of the ISA bound tile shapes too (``MAX_*``).
"""

from __future__ import annotations

import itertools
from typing import Iterator

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import ADDR_UNIT, LAYOUTS, Buffer, Opcode, nm_weight_layout
from vitaccel.sw.backend.emitter import SLOTS
from vitaccel.sw.backend.memory import align

__all__ = ["SlotPlan", "Tiler", "blocks", "MAX_M", "MAX_N", "MAX_ROWS", "MAX_COLS", "MAX_GATHER_BYTES",
           "MAX_PACKAGE_COLS"]


def _field_max(opcode: Opcode, name: str) -> int:
    return (1 << dict((n, f.width) for n, f in LAYOUTS[opcode])[name]) - 1


#: Largest GEMM tile rows / columns, and vector-op rows / columns, the fields can encode.
MAX_M = _field_max(Opcode.GEMM, "m")
MAX_N = _field_max(Opcode.GEMM, "n")
MAX_ROWS = min(_field_max(Opcode.SOFTMAX, "rows"), _field_max(Opcode.LOAD, "rows"))
MAX_COLS = _field_max(Opcode.SOFTMAX, "cols")
#: Largest row, in bytes, one GATHER moves, and the most columns of one PACKAGE.
MAX_GATHER_BYTES = _field_max(Opcode.GATHER, "cols")
MAX_PACKAGE_COLS = _field_max(Opcode.PACKAGE, "cols")


class SlotPlan:
    """Byte regions inside one slot of each buffer, allocated in order for one tile.

    ``vector_bytes``: the bytes at the start of VECTOR the slots share (default: all of it;
    the lowering keeps the rest for on-chip activations)."""

    def __init__(self, config: AccelConfig, slot: int, *, vector_bytes: int | None = None) -> None:
        vector = config.vector_kib * 1024 if vector_bytes is None else vector_bytes
        self.capacity = {
            Buffer.INPUT: config.input_spad_kib * 1024, Buffer.WEIGHT: config.weight_spad_kib * 1024,
            Buffer.ACC: config.acc_kib * 1024 // SLOTS, Buffer.VECTOR: vector // SLOTS // ADDR_UNIT * ADDR_UNIT,
        }
        self.slot = slot
        self.used = {buf: 0 for buf in Buffer}

    def take(self, buffer: Buffer, nbytes: int) -> int:
        """Unit address of ``nbytes`` in this slot of ``buffer`` (ValueError if they do not fit)."""
        start = self.used[buffer]
        end = start + align(nbytes)
        if end > self.capacity[buffer]:
            raise ValueError(f"{buffer.name} slot overflow: {end} > {self.capacity[buffer]} bytes")
        self.used[buffer] = end
        return (self.slot * self.capacity[buffer] + start) // ADDR_UNIT


def blocks(shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Indices of the leading axes: each selects one 2-D (rows, cols) block."""
    return itertools.product(*(range(d) for d in shape[:-2]))


class Tiler:
    """Tile shapes for one config."""

    def __init__(self, config: AccelConfig, *, vector_bytes: int | None = None) -> None:
        self.config = config
        self.capacity = SlotPlan(config, 0, vector_bytes=vector_bytes).capacity

    def weight_bytes(self, k: int, n: int, nm: tuple[int, int] | None = None) -> int:
        """WEIGHT bytes of a ``k x n`` B tile: dense, or N:M compressed (values and indices,
        :func:`~vitaccel.hw.spec.isa.nm_weight_layout`) for ``nm = (N, M)``."""
        return align(nm_weight_layout(k, n, nm).nbytes) if nm is not None else align(n * k)

    def gemm_tile(self, m: int, k: int, n: int, *, requant: bool, has_params: bool,
                  nm: tuple[int, int] | None = None, a_in_input: bool = True,
                  out_in_slot: bool = True) -> tuple[int, int]:
        """Largest ``(m_tile, n_tile)`` whose operands, parameters and outputs fit one slot;
        ``(0, 0)`` if not even one row fits. Wide tiles first: A rows are re-read per N tile.
        ``nm = (N, M)``: B is stored N:M compressed (``k`` stays the dense depth). Without
        ``a_in_input`` A is read in place (GEMM ``a_vector``), without ``out_in_slot`` the
        requantized output is written in place: neither takes slot room."""
        cap = self.capacity

        def fits(mt: int, nt: int) -> bool:
            acc = (align(12 * nt) if has_params else 0) + (0 if requant else align(mt * nt * 4))
            vec = align(mt * nt) if requant and out_in_slot else 0
            return ((not a_in_input or align(mt * k) <= cap[Buffer.INPUT])
                    and self.weight_bytes(k, nt, nm) <= cap[Buffer.WEIGHT]
                    and acc <= cap[Buffer.ACC] and vec <= cap[Buffer.VECTOR])

        # WEIGHT bytes per B column: k dense, or a value and an index per kept row.
        column_bytes = k if nm is None else 2 * nm_weight_layout(k, 1, nm).rows
        m_tile = min(m, MAX_M, cap[Buffer.INPUT] // max(k, 1) if a_in_input else m)
        while m_tile >= 1:
            n_tile = min(n, MAX_N, cap[Buffer.WEIGHT] // max(column_bytes, 1))
            while n_tile >= 1 and not fits(m_tile, n_tile):
                n_tile = n_tile * 7 // 8 if n_tile > 8 else n_tile - 1
            if n_tile >= 1:
                return m_tile, n_tile
            m_tile //= 2
        return 0, 0

    def column_tile(self, fixed: int, per_column: int, width: int, max_cols: int, regions: int) -> int:
        """Columns per tile of an op tiled by columns (GATHER, PACKAGE): ``fixed`` bytes plus
        ``per_column`` bytes per column, in ``regions`` separately aligned regions, must fit one
        vector slot (ValueError if not even one column does)."""
        room = self.capacity[Buffer.VECTOR] - fixed - regions * ADDR_UNIT
        cols = min(width, max_cols, room // max(per_column, 1))
        if cols <= 0:
            raise ValueError(f"one column ({per_column} bytes, plus {fixed}) does not fit the {self.config.name} "
                             "vector buffer")
        return cols

    def row_tiles(self, shape: tuple[int, ...], bytes_per_row: dict[Buffer, int],
                  fixed: dict[Buffer, int]) -> Iterator[tuple[tuple[int, ...], int, int]]:
        """``(block index, first row, rows)`` tiles of a row-wise op: ``bytes_per_row`` per
        buffer for each row plus ``fixed`` bytes (parameters) must fit one slot."""
        rows = shape[-2] if len(shape) >= 2 else 1
        tile = min(rows, MAX_ROWS)
        slack = 4 * ADDR_UNIT  # alignment of up to four regions per slot
        for buf, per_row in bytes_per_row.items():
            if per_row:
                tile = min(tile, (self.capacity[buf] - align(fixed.get(buf, 0)) - slack) // per_row)
        if tile <= 0:
            raise ValueError(f"one row of {shape[-1]} elements does not fit the {self.config.name} buffers")
        for index in blocks(shape):
            for r0 in range(0, rows, tile):
                yield index, r0, min(tile, rows - r0)
