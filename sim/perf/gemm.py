"""GEMM cycles: the GEMM controller (``hw/accel/gemm.py``) around the matrix engine
(``hw/matrix/engine.py``), simulated tile by tile.

**Setup** (``GemmController`` FSM ``gemm``): DECIDE of the compute unit, CALC, CHECK; a
requantizing GEMM scans its parameter block (SCAN_PARAMS: one ACC word of four int32 per
cycle over the multipliers and shifts, two more cycles to test the last word and leave);
PLAN_TILES counts ``block_tiles`` (+1 cycle), PLAN_BLOCKS counts ``n_blocks``; COMMAND.

**Plan**: ``block_tiles = min(n_tiles, b_half_words // k_words, MAX_BLOCK_TILES)``; the engine
walks ``for block: for band: for tile in block: for k_word`` issuing one k-step per cycle when
the A panel of the band and the B block are both in their scratchpad halves.

**Feeders** (``_SegmentReader``): one 16-byte buffer word per cycle per feeder (A from INPUT,
or VECTOR with ``a_vector``, whose port the residual then leaves alone: the same cycles; B
from WEIGHT, own ports). An A word is ``tile_rows`` runs of ``block_size`` bytes, a
transposed B word ``tile_cols`` such runs; each run keeps the words it read and prefetches
while the port is idle, so a panel (tile) costs ``max(k_words + rows, words spanned by its
rows)`` cycles plus its PANEL (TILE) state and the capture cycle. A non-transposed B word is
``block_size`` runs of ``tile_cols`` bytes ``n`` bytes apart (no prefetch): its reads plus
a capture cycle. The engine takes a panel into the free half of its double buffer; a half
is free again once the band (block) that used it issued its last k-step.

**Engine**: a tile's k-steps issue back to back; its last step waits until the previous tile
has left the accumulator buffer (``tile_in_flight``, cleared when its last row is emitted);
the result is captured ``block_rows + block_cols`` cycles after the last step (the grid's
skew: ``hw/matrix/grid.py``) plus the block unit's pipeline (``block_unit_latency``).
A captured tile's rows enter the post-processor's pipeline back to back (it holds
``PostProcessor.DEPTH`` rows) and each leaves ``LATENCY`` cycles after entering at the
earliest; the tile's buffer is free once its last row has entered.

**Drain** (FSM ``gemm_drain``): per tile PARAMS and WAIT_PARAMS (the tile's bias /
multiplier / shift runs of ``tile_cols`` int32 from ACC: their words plus a capture cycle);
per row a take (one cycle; with a residual, or ACC partials, a ROW state and the row's reads
first), after which the row passes two register stages (taken, summed: each frees as its row
moves on) into the row writer, which writes one 16-byte word per cycle, a word per buffer
word the row spans (a row out of M: one), and takes the next row in its last write's cycle.
The engine emits a row when the drain takes it, once it has left the post-processor. The
GEMM is done when the drain is idle and the last write has left the writer's register.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from vitaccel.hw.accel.gemm import MAX_BLOCK_TILES
from vitaccel.hw.matrix.block_unit import block_unit_latency
from vitaccel.hw.matrix.postprocess import PostProcessor
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import ADDR_UNIT, nm_weight_layout
from vitaccel.hw.spec.matrix import b_half_words, nm_words_per_step

__all__ = ["GemmTiming", "gemm_cycles", "MAX_BLOCK_TILES", "GRID_EXTRA", "POST_LATENCY", "POST_DEPTH"]

#: Cycles from the last k-step's issue to the first row the engine may emit, beyond the
#: grid's skew (``block_rows + block_cols - 2``) and the block unit's pipeline before its
#: accumulate register: the control register aligned with the scratchpad read, and
#: ``tile_ready`` registered from ``captured``.
GRID_EXTRA = 2
#: Cycles from a row's entry into the post-processor to the earliest cycle the engine can
#: emit it, and the rows it holds (a row's credit returns two cycles after it is emitted).
POST_LATENCY, POST_DEPTH = PostProcessor.LATENCY, PostProcessor.DEPTH
#: Cycles from COMMAND to the feeders' and drain's first state.
_PARAM_BYTES = 4


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _span(addr: int, length: int) -> int:
    """16-byte buffer words a run of ``length`` bytes at byte ``addr`` touches."""
    if length <= 0:
        return 0
    return (addr + length - 1) // ADDR_UNIT - addr // ADDR_UNIT + 1


def _window_reads(windows: dict, segment, addr: int, length: int) -> int:
    """Words a walking ``_SegmentReader`` segment reads for its run of ``length`` bytes at
    ``addr``: its window (``windows[segment]``: newest word, words held) keeps the last
    ``ceil(length / 16) + 1`` words it read, and only words not in it are read."""
    first, last = addr // ADDR_UNIT, (addr + length - 1) // ADDR_UNIT
    held = _ceil(length, ADDR_UNIT) + 1
    tag, count = windows.get(segment, (-1, 0))
    if not (count and tag - count < first <= tag):
        tag, count = first - 1, 0   # the window starts over at the run's first word
    reads = max(0, last - tag)
    windows[segment] = (max(tag, last), min(held, count + reads))
    return reads


@dataclass(frozen=True)
class GemmTiming:
    """Cycles of one GEMM instruction: ``busy`` (DECIDE to done, what BUSY_CYCLES_COMPUTE
    counts) and ``engine`` (k-steps the engine issued)."""

    busy: int
    engine: int


def gemm_cycles(config: AccelConfig, f: dict) -> GemmTiming:
    """Cycles of the GEMM with instruction fields ``f``."""
    # Buffer addresses count 16-byte words: every base is word-aligned, so the shape and the
    # flags decide the cycles (the cache makes a model's repeated layers free).
    key = (f["m"], f["k"], f["n"], f["bias"], f["requant"], f["residual"], f["accumulate"], f["b_transposed"],
           f["nm"])
    return _gemm_cycles(config, key)


@lru_cache(maxsize=4096)
def _gemm_cycles(config: AccelConfig, key: tuple) -> GemmTiming:
    mm, kk, nn, bias, requant, residual, accumulate, transposed, nm = key
    tr, tc, b = config.tile_rows, config.tile_cols, config.block_size
    a_base = b_base = out_base = param_base = acc_base = 0   # word-aligned bases
    # nm: B rows are the compressed rows (values, then their indices at idx_offset), k_words
    # counts sparse k-steps, an A panel holds M / N A words per step.
    b_rows, idx_offset, steps = kk, 0, 1
    if nm:
        layout = nm_weight_layout(kk, nn, config.nm_sparsity)
        b_rows, idx_offset, steps = layout.rows, layout.indices_offset, nm_words_per_step(config)
    k_words, m_tiles, n_tiles = _ceil(b_rows, b), _ceil(mm, tr), _ceil(nn, tc)
    a_words = k_words * steps
    block_tiles = max(1, min(n_tiles, b_half_words(config) // k_words, MAX_BLOCK_TILES))
    n_blocks = _ceil(n_tiles, block_tiles)

    # ---- setup: DECIDE, CALC, CHECK, SCAN_PARAMS, PLAN_TILES, PLAN_BLOCKS, COMMAND -------------
    t = 3
    if requant:
        t += _ceil(3 * nn, 4) - nn // 4 + 2
    t += block_tiles + 1 + n_blocks + 1
    start = t + 1   # first cycle of the feeders' / drain's FSMs

    # ---- per-band and per-tile costs --------------------------------------------------------
    def a_panel(band: int) -> int:
        rows = min(tr, mm - band * tr)
        reads = sum(_span(a_base + (band * tr + r) * kk, kk) for r in range(rows))
        return 1 + max(a_words + rows, reads) + 1

    def b_tile(col_base: int) -> int:
        cols = min(tc, nn - col_base)
        if transposed:
            reads = sum(_span(b_base + (col_base + c) * kk, kk) for c in range(cols))
            return 1 + max(k_words + cols, reads) + 1
        cycles = 1
        windows = {}
        for step in range(k_words):
            rows = min(b, b_rows - step * b)
            # reads (values, then indices), the capture of the last, ``ready`` the cycle after:
            # then the handshake
            cycles += sum(_window_reads(windows, (base, r), base + (step * b + r) * nn + col_base, cols)
                          for r in range(rows) for base in ((b_base, b_base + idx_offset) if nm else (b_base,))) + 2
        return cycles

    def params_cycles(col_base: int) -> int:
        """WAIT_PARAMS cycles: the tile's parameter words, their capture, ``ready``."""
        cols = min(tc, nn - col_base)
        reads = 0
        for field in ((0,) if bias else ()) + ((1, 2) if requant else ()):
            reads += _span(param_base + (field * nn + col_base) * _PARAM_BYTES, cols * _PARAM_BYTES)
        return reads + 2 if reads else 1

    def row_cycles(row_abs: int, col_base: int) -> tuple[int, int]:
        """(write cycles, read cycles before the row) of one output row."""
        cols = min(tc, nn - col_base)
        if row_abs >= mm:
            return 1, (2 if (residual or accumulate) else 0)
        index = row_abs * nn + col_base
        if requant:
            writes = _span(out_base + index, cols)
        else:
            writes = _span(acc_base + index * 4, cols * 4)
        reads = 0
        if residual:
            reads = 1 + _span(out_base + index, cols) + 1
        elif accumulate:
            reads = 1 + _span(acc_base + index * 4, cols * 4) + 1
        return writes, reads

    capture_delay = (config.block_rows + config.block_cols - 2 + GRID_EXTRA
                     + block_unit_latency(b, config.dsp_packing) - 1)
    b_feed_t = start
    a_feed_t = start
    b_half_free = [start, start]
    a_half_free = [start, start]
    step_t = start
    in_flight_clear = start
    drain_t = start
    # The drain's row pipeline (hw/accel/gemm.py): the first cycle the previous row held
    # its summed stage and its row writer, and the writes that row took.
    prev_summed = prev_writer = start - 1
    prev_writes = 0
    panel = 0
    engine_steps = 0
    for block in range(n_blocks):
        tiles = block_tiles if block < n_blocks - 1 else n_tiles - block_tiles * (n_blocks - 1)
        first_col = block * block_tiles * tc
        load = sum(b_tile(first_col + j * tc) for j in range(tiles))
        b_begin = max(b_feed_t, b_half_free[block % 2])
        b_ready = b_begin + load
        b_feed_t = b_ready
        for band in range(m_tiles):
            a_begin = max(a_feed_t, a_half_free[panel % 2])
            a_ready = a_begin + a_panel(band)
            a_feed_t = a_ready
            for j in range(tiles):
                col_base = first_col + j * tc
                first_step = max(step_t, a_ready, b_ready)
                last_step = max(first_step + k_words - 1, in_flight_clear)
                step_t = last_step + 1
                engine_steps += k_words
                capture = last_step + capture_delay
                # drain of this tile: PARAMS, WAIT_PARAMS, then the rows
                params_ready = drain_t + 1 + params_cycles(col_base)
                # rows enter the post-processor back to back while it has room (it holds
                # POST_DEPTH rows; one more enters two cycles after a row is emitted)
                entry = max(capture, params_ready + 1)
                entries, emits = [], []
                emit = entry
                for r in range(tr):
                    writes, reads = row_cycles(band * tr + r, col_base)
                    entries.append(entry + r if r < POST_DEPTH else max(entry + r, emits[r - POST_DEPTH] + 2))
                    if r:
                        emit += reads
                    elif reads:
                        emit = max(emit, params_ready + 1 + reads)
                    emit = max(emit, entries[r] + POST_LATENCY,
                               prev_summed - 1)   # the taken row's stage frees as its row moves on
                    emits.append(emit)
                    # taken at emit; summed from emit + 2 once the last row reached the writer;
                    # in the writer once the last row's writes are done
                    prev_summed = max(emit + 2, prev_writer)
                    prev_writer = max(prev_summed + 1, prev_writer + prev_writes)
                    prev_writes = writes
                    if r == tr - 1:
                        in_flight_clear = entries[r] + 1
                    emit += 1
                drain_t = emit   # PARAMS of the next tile, the cycle after the last row's take
            a_half_free[panel % 2] = step_t
            panel += 1
        b_half_free[block % 2] = step_t
    # done once the drain is idle and its last write is out of the writer's register
    return GemmTiming(busy=max(drain_t, prev_writer + prev_writes + 1) + 1, engine=engine_steps)
