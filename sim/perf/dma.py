"""The DMA and the DDR behind it: when each word of a 2-D transfer arrives, when it ends.

Follows :mod:`vitaccel.hw.axi.dma` (``AxiDma``) and the board-like DDR of
:mod:`vitaccel.sim.perf.ddr` (what ``board_ram`` of the RTL testbench does):

* **Bursts** are :func:`~vitaccel.hw.axi.dma.split_bursts`'s: every row on its own (a LOAD or
  STORE whose DDR rows are contiguous is one row: :func:`dram_rows`), INCR, at
  most 256 beats, never across 4 KiB. The burst splitter issues one AR per cycle from the
  cycle after the descriptor is accepted; at most ``DMA_OUTSTANDING`` bursts are in flight
  (the DMA's ``rd_info`` FIFO, popped with a burst's last beat).
* **DDR** takes a burst off its AR queue (``AR_QUEUE`` entries, cocotbext-axi's occupancy
  limit) when it has queued the previous burst's beats; its first beat leaves
  ``read_latency`` cycles after the AR handshake at the earliest and not before the previous
  burst's last beat, then one beat per cycle.
* **Realignment**: the DMA packs the useful bytes of all rows into bus words; a word goes to
  the consumer (the load unit or the fetcher) through one output register, one cycle after
  the beat that completes it.

The verification DDR (random pauses) is followed in expectation (:func:`random_beat_cycles`):
the memory produces a read beat every ``max(d, 1)`` cycles (``d`` uniform in
``0..beat_delay``) and a paused channel passes one every ``1 / (1 - backpressure)``; the first
beat waits the mean delay and the mean pause besides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitaccel.hw.spec.isa import ADDR_UNIT

from .ddr import DdrModel

__all__ = ["ReadTiming", "dram_rows", "burst_beats", "read_transfer", "write_transfer", "chunk_counts", "DMA_OUTSTANDING",
           "AR_QUEUE", "MAX_BURST_BEATS", "BOUNDARY_BYTES", "AR_DELAY", "AR_READY_DELAY", "R_SOURCE_DELAY"]

#: Bursts in flight per direction (``AxiDma(max_outstanding=4)``, the core's default).
DMA_OUTSTANDING = 4
#: AR entries the DDR model queues besides the burst it serves (cocotbext-axi ``AxiRam``
#: ``ar_channel.queue_occupancy_limit``).
AR_QUEUE = 2
#: ``AXI_MAX_BURST_BEATS`` and the 4 KiB boundary of ``hw/axi/signatures.py``.
MAX_BURST_BEATS = 256
BOUNDARY_BYTES = 4096
#: Cycles from a descriptor's acceptance to its first AR handshake: the burst splitter
#: registers the descriptor and drives ``arvalid`` the next cycle.
AR_DELAY = 1
#: Cycles from the DDR taking a burst off a full AR queue to the next AR handshake: the sink
#: raises ``arready`` at the next edge and samples the handshake at the one after.
AR_READY_DELAY = 2
#: Cycles from a beat queued by the DDR model (at the due edge) to the DMA sampling it: its R
#: source drives it at the next edge, the DMA takes it at the one after.
R_SOURCE_DELAY = 2
#: Cycles from a beat on the R channel to the packed word in the DMA's output register.
OUTPUT_REGISTER = 1


def dram_rows(rows: int, row_bytes: int, stride: int) -> tuple[int, int, int]:
    """The DMA descriptor ``(rows, row_bytes, stride)`` of a LOAD/STORE: rows whose DDR bytes
    are contiguous (``stride == row_bytes``) go as one row (``AcceleratorCore._dram_transfer``),
    so bursts run across them."""
    return (1, rows * row_bytes, stride) if stride == row_bytes else (rows, row_bytes, stride)


def burst_beats(addr: int, rows: int, row_bytes: int, stride: int, bus_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Beats and useful bytes of each burst of a descriptor (``split_bursts`` vectorised
    over rows): two int arrays in issue order."""
    if rows < 1 or row_bytes < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = addr + stride * np.arange(rows, dtype=np.int64)
    beats_list, bytes_list = [], []
    cur = starts.copy()
    remaining = np.full(rows, row_bytes, np.int64)
    active = np.ones(rows, bool)
    # Each pass cuts one burst off every row still going (rows at most a few 4 KiB pages long).
    while active.any():
        c, r = cur[active], remaining[active]
        off = c % bus_bytes
        to_page = (BOUNDARY_BYTES - (c - off) % BOUNDARY_BYTES) // bus_bytes
        beats = np.minimum(np.minimum(MAX_BURST_BEATS, to_page), -(-(off + r) // bus_bytes))
        take = np.minimum(beats * bus_bytes - off, r)
        index = np.flatnonzero(active)
        beats_list.append((index, beats))
        bytes_list.append((index, take))
        cur[active] = c + take
        remaining[active] = r - take
        active = remaining > 0
    if len(beats_list) == 1:
        return beats_list[0][1], bytes_list[0][1]
    # Order: row by row, pass by pass within a row.
    rows_of = np.concatenate([i for i, _ in beats_list])
    passes = np.concatenate([np.full(len(i), p) for p, (i, _) in enumerate(beats_list)])
    order = np.lexsort((passes, rows_of))
    return (np.concatenate([b for _, b in beats_list])[order], np.concatenate([b for _, b in bytes_list])[order])


@dataclass
class ReadTiming:
    """A read transfer: ``word_ready[w]`` is the cycle packed word ``w`` is offered to the
    consumer; ``last_beat`` the cycle of the transfer's last R beat."""

    word_ready: np.ndarray
    last_beat: int


def read_transfer(grant: int, addr: int, rows: int, row_bytes: int, stride: int, *, bus_bytes: int,
                  ddr: DdrModel) -> ReadTiming:
    """Timing of a read descriptor accepted at cycle ``grant`` (the consumer keeps up)."""
    beats, useful = burst_beats(addr, rows, row_bytes, stride, bus_bytes)
    count = len(beats)
    rate = ddr.port_rate(bus_bytes)
    if ddr.deterministic:
        beat_cycles = 1.0 / rate
        latency = ddr.read_latency + R_SOURCE_DELAY
    else:
        beat_cycles, latency = random_beat_cycles(ddr)
    first, last, ar, taken = [0.0] * count, [0.0] * count, [0.0] * count, [0.0] * count
    beat_list = beats.tolist()
    for i in range(count):
        t = grant + AR_DELAY if i == 0 else ar[i - 1] + 1
        if i >= AR_QUEUE:   # the AR queue has room once the DDR took burst i - AR_QUEUE
            t = max(t, taken[i - AR_QUEUE] + AR_READY_DELAY)
        if i >= DMA_OUTSTANDING:
            t = max(t, last[i - DMA_OUTSTANDING] + 1)
        ar[i] = t
        if i:
            # The DDR takes the next burst once the previous one's last beat is queued: its R
            # queue holds two beats, so that is when the beat before it left the queue.
            queued = last[i - 1] - R_SOURCE_DELAY - (1 if beat_list[i - 1] > 1 else 0)
            taken[i] = max(t, queued)
            first[i] = max(t + latency, last[i - 1] + beat_cycles)
        else:
            taken[i] = t
            first[i] = t + latency
        last[i] = first[i] + (beat_list[i] - 1) * beat_cycles
    first = np.asarray(first)
    # Beat times and the useful bytes each carries (first beats from first_lo, last to last_hi).
    beat_time = np.repeat(first, beats) + (np.arange(beats.sum()) - np.repeat(np.cumsum(beats) - beats, beats)) * beat_cycles
    per_beat = np.full(len(beat_time), bus_bytes, np.int64)
    ends = np.cumsum(beats) - 1
    starts = ends - beats + 1
    # Useful bytes per burst are exact; spread them: full beats, remainder on the first/last.
    excess = beats * bus_bytes - useful
    # The first beat drops the address offset, the last the tail: attribute the excess to the first.
    per_beat[starts] -= np.minimum(excess, bus_bytes - 1)
    rest = excess - np.minimum(excess, bus_bytes - 1)
    per_beat[ends] -= rest
    cumulative = np.cumsum(per_beat)
    total = int(cumulative[-1]) if len(cumulative) else 0
    words = -(-total // bus_bytes)
    boundaries = np.minimum((np.arange(words) + 1) * bus_bytes, total)
    at = np.searchsorted(cumulative, boundaries)
    ready = np.ceil(beat_time[at]).astype(np.int64) + OUTPUT_REGISTER
    return ReadTiming(ready, int(np.ceil(last[-1])) if count else grant)


def random_beat_cycles(ddr: DdrModel) -> tuple[float, float]:
    """Expected (cycles per read beat, cycles from AR to the first beat) of the random
    verification DDR: ``stressed_ram`` waits ``d`` (uniform ``0..beat_delay``) cycles before
    each beat, ``shared_pauses`` pauses each channel with probability ``backpressure``."""
    pause = 1.0 / (1.0 - ddr.backpressure)
    produce = sum(max(d, 1) for d in range(ddr.beat_delay + 1)) / (ddr.beat_delay + 1)
    return max(produce, pause), AR_DELAY + R_SOURCE_DELAY + ddr.beat_delay / 2 + (pause - 1)


def consume(ready: np.ndarray, cycles: np.ndarray) -> int:
    """The cycle the consumer is done with the last word: word ``w`` (offered at ``ready[w]``)
    takes ``cycles[w]`` cycles, one word after the other (a max-plus scan)."""
    done = np.cumsum(cycles)
    before = done - cycles
    return int(done[-1] + np.max(ready - before)) if len(ready) else 0


def chunk_counts(sram_byte: int, rows: int, row_bytes: int, sram_stride: int, bus_bytes: int) -> np.ndarray:
    """Cycles the load (or store) unit spends per packed bus word of a transfer: each cycle it
    moves what is left of the bus word, of the row and of the 16-byte buffer word
    (``AcceleratorCore._chunk``). Returns one count per packed word."""
    total = rows * row_bytes
    words = -(-total // bus_bytes)
    row_starts = np.arange(rows, dtype=np.int64) * row_bytes
    sram_starts = sram_byte + np.arange(rows, dtype=np.int64) * sram_stride
    first_cut = (ADDR_UNIT - sram_starts % ADDR_UNIT) % ADDR_UNIT   # stream offset of the first buffer-word end
    per_row = max(0, -(-row_bytes // ADDR_UNIT)) + 1
    cols = first_cut[:, None] + ADDR_UNIT * np.arange(per_row)[None, :]
    cols = np.where(cols == 0, ADDR_UNIT * per_row + row_bytes, cols)   # a cut at the row start is the previous end
    cut = np.zeros(total + 1, bool)
    cut[(row_starts[:, None] + cols)[cols < row_bytes]] = True
    cut[row_starts + row_bytes] = True
    cut[np.minimum(np.arange(1, words + 1) * bus_bytes, total)] = True
    cut[0] = False
    positions = np.flatnonzero(cut)
    return np.bincount((positions - 1) // bus_bytes, minlength=words)[:words]


def write_transfer(start: int, addr: int, rows: int, row_bytes: int, stride: int, *, bus_bytes: int,
                   produced: np.ndarray, ddr: DdrModel) -> int:
    """The cycle of the last B response of a write descriptor whose packed words the
    producer hands over at ``produced[w]`` (AW from ``start + 1``; W beats one per cycle as
    bytes are available; B one cycle after a burst's last W)."""
    beats, useful = burst_beats(addr, rows, row_bytes, stride, bus_bytes)
    beat_cycles = 1.0 / ddr.port_rate(bus_bytes)
    if not ddr.deterministic:
        beat_cycles = 1.0 / (1.0 - ddr.backpressure)
    # A beat needs the packed word holding its last byte (the DMA's unpacker keeps two words).
    cumulative = np.cumsum(np.repeat(useful / np.maximum(beats, 1), beats))
    need = np.minimum((np.ceil(cumulative - 1e-9).astype(np.int64) - 1) // bus_bytes, len(produced) - 1)
    available = produced[need] + 1
    # Beat j leaves at t_j = max(t_{j-1} + beat_cycles, available_j): a max-plus scan.
    n = len(available)
    after = (n - 1 - np.arange(n)) * beat_cycles
    t = max(start + 2 + n * beat_cycles, float(np.max(available + after))) if n else start + 2
    return int(np.ceil(t)) + 2
