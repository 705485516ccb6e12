"""Cycles of a SOFTMAX or LAYERNORM row stream: the vector controller's sender and receiver
around the row unit, simulated cycle by cycle at the level of their control registers.

The controller (``VectorController._row_stream_states``) reads a row's chunks while the
unit (``Softmax`` / ``LayerNorm`` in ``hw/nonlinear/units.py``) holds up to ``ROW_SLOTS``
rows in its stages and an earlier row's output beats are written, so the cycles of a row
depend on which of them waits for which: no closed formula follows them exactly. This model
steps the same handshakes as the RTL (the row counts and their registered ``any`` / ``room``
flags, the fixed pipeline delays, the statistics / reciprocal sequencers, the OUT pipeline
with its skid register, the sender's chunks and the receiver's writes) and nothing of the
data: a reciprocal or inverse square root always runs (a softmax row's sum is never zero,
its largest element's exp being the table's largest value).

Source and destination start on a 16-byte word (instruction addresses count words), so the
cycles depend on the shape alone; results are cached by it: a model repeats a handful.
"""

from __future__ import annotations

import functools
from collections import deque

from vitaccel.hw.nonlinear.arith import ExpStage, InvSqrt, Reciprocal
from vitaccel.hw.nonlinear.units import ROW_SLOTS, LayerNorm, Softmax
from vitaccel.hw.spec.isa import ADDR_UNIT

__all__ = ["row_stream_cycles"]


def _levels(lanes: int) -> int:
    """Levels of the units' pipelined adder / compare trees over ``lanes`` values."""
    return (lanes - 1).bit_length()


class _RowCount:
    """``_RowCount``: a count with registered ``any`` / ``room`` flags (updated the cycle
    after an ``add`` or ``remove`` strobe; both at once change nothing)."""

    def __init__(self) -> None:
        self.count, self.any, self.room = 0, False, True

    def update(self, add: bool, remove: bool) -> None:
        if add and not remove:
            self.count, self.any, self.room = self.count + 1, True, self.count < ROW_SLOTS - 1
        elif remove and not add:
            self.count, self.any, self.room = self.count - 1, self.count > 1, True


class _Delay:
    """A value ``cycles`` registers late."""

    def __init__(self, cycles: int) -> None:
        self.line = deque([False] * cycles)

    def out(self) -> bool:
        return self.line[0] if self.line else False

    def shift(self, value: bool) -> None:
        if self.line:
            self.line.popleft()
            self.line.append(value)


class _Out:
    """``_OutPipeline``: reads the ready rows' beats into ``stages`` stages that advance
    together, a skid register in front of the output stream."""

    def __init__(self, stages: int, last_beat: int) -> None:
        self.tags: list[tuple[bool, bool] | None] = [None] * stages   # (valid, last) per stage
        self.pointer, self.last_beat = 0, last_beat
        self.skid_valid = self.skid_last = False

    def valid(self) -> bool:
        return self.skid_valid or bool(self.tags[-1] and self.tags[-1][0])

    def step(self, rows: _RowCount, ready: bool) -> tuple[bool, bool]:
        """One cycle with output ``ready``: returns (``rows.remove``, ``release``)."""
        advance, tail = not self.skid_valid, self.tags[-1]
        tail_valid, tail_last = (tail[0], tail[1]) if tail else (False, False)
        valid = self.skid_valid or tail_valid
        last = self.pointer == self.last_beat
        step = advance and rows.any
        remove = step and last
        release = valid and ready and (self.skid_last if self.skid_valid else tail_last)
        if not self.skid_valid and tail_valid and not ready:
            self.skid_valid, self.skid_last = True, tail_last
        elif self.skid_valid and ready:
            self.skid_valid = False
        if advance:
            self.tags = [(rows.any, last)] + self.tags[:-1]
        if step:
            self.pointer = 0 if last else self.pointer + 1
        return remove, release


class _Unit:
    """What the two units share: LOAD takes a beat when there is room for a row (``held``)."""

    def __init__(self, lanes: int, beats: int, load_stages: int, out_stages: int) -> None:
        self.last_beat = beats - 1
        self.held = _RowCount()                  # Softmax ``scores_held`` / LayerNorm ``rows_in``
        self.load_beat = 0
        self.loaded = _Delay(load_stages + _levels(lanes))   # (valid & last) of LOAD's tail
        self.ready_rows = _RowCount()            # Softmax ``exps_ready`` / LayerNorm ``rows_ready``
        self.out = _Out(out_stages, self.last_beat)
        self.release_late = False

    def ready(self) -> bool:
        return self.held.room

    def load(self, accepted: bool) -> bool:
        """LOAD's cycle: returns ``held.add``."""
        last = accepted and self.load_beat == self.last_beat
        if accepted:
            self.load_beat = 0 if last else self.load_beat + 1
        return last


class _SoftmaxUnit(_Unit):
    def __init__(self, lanes: int, beats: int) -> None:
        super().__init__(lanes, beats, Softmax.LOAD_STAGES, Softmax.OUT_STAGES)
        self.maxed, self.exps_held = _RowCount(), _RowCount()
        self.issuing, self.issue_beat = False, 0
        self.tags: list[tuple[bool, bool] | None] = [None] * (Softmax.EXP_INPUT_STAGES + ExpStage.LATENCY
                                                               + _levels(lanes) + 1)
        self.draining = False
        self.long_row = self.last_beat > Reciprocal.LATENCY
        self.recip_pending, self.recip_wait = False, None   # cycles until ``done`` while WAIT

    def cycle(self, offered: bool, out_ready: bool) -> bool:
        """One cycle: returns whether an offered beat was taken."""
        accepted = offered and self.held.room
        add = self.load(accepted)
        maxed_add = self.loaded.out()
        self.loaded.shift(add)
        # EXP
        start = (not self.issuing and self.maxed.any and self.exps_held.room
                 and (self.long_row or (not self.recip_pending and not self.draining)))
        tail = self.tags[-1]
        tail_last = bool(tail and tail[0] and tail[1])
        issue_last = self.issuing and self.issue_beat == self.last_beat
        draining = self.issuing or any(tag and tag[0] for tag in self.tags)
        self.tags = [(self.issuing, issue_last)] + self.tags[:-1]
        if self.issuing:
            self.issue_beat = 0 if issue_last else self.issue_beat + 1
        if issue_last:
            self.issuing = False
        if start:
            self.issuing = True
        self.draining = draining
        # RECIPROCAL
        # (the RTL's sequencer clears ``recip_pending`` after the row sum sets it: it wins)
        ready_add, pending = False, self.recip_pending or tail_last
        if self.recip_wait is None:
            if self.recip_pending:
                self.recip_wait = Reciprocal.LATENCY
        else:
            self.recip_wait -= 1
            if self.recip_wait == 0:
                ready_add, self.recip_wait, pending = True, None, False
        self.recip_pending = pending
        # OUT
        remove, release = self.out.step(self.ready_rows, out_ready)
        self.held.update(add, tail_last)
        self.maxed.update(maxed_add, start)
        self.exps_held.update(start, self.release_late)
        self.ready_rows.update(ready_add, remove)
        self.release_late = release
        return accepted


class _LayerNormUnit(_Unit):
    def __init__(self, lanes: int, beats: int) -> None:
        super().__init__(lanes, beats, LayerNorm.LOAD_STAGES, LayerNorm.OUT_STAGES)
        self.loaded_rows = 0                     # rows whose sums are in, statistics not started
        self.stats = None                        # cycles left in the statistics sequencer

    def cycle(self, offered: bool, out_ready: bool) -> bool:
        accepted = offered and self.held.room
        add = self.load(accepted)
        loaded = self.loaded.out()
        self.loaded.shift(add)
        # STATS: IDLE, MULTIPLY, SUBTRACT, EPS, CLAMP, START, then WAIT until ``done``
        ready_add = False
        if self.stats is None:
            if self.loaded_rows:
                self.stats = LayerNorm.STATS_STATES + InvSqrt.LATENCY
        else:
            self.stats -= 1
            if self.stats == 0:
                ready_add, self.stats = True, None
                self.loaded_rows -= 1
        if loaded:
            self.loaded_rows += 1
        remove, release = self.out.step(self.ready_rows, out_ready)
        self.held.update(add, self.release_late)
        self.ready_rows.update(ready_add, remove)
        self.release_late = release
        return accepted


def _chunks(start: int, cols: int, element_bytes: int, lanes: int) -> list[tuple[int, bool]]:
    """A row's chunks from byte offset ``start`` -- what is left of the 16-byte word, of the beat
    and of the row, as the sender reads and the receiver writes them: (count, ends a beat)."""
    per_word = ADDR_UNIT // element_bytes
    out, col, lane = [], 0, 0
    while col < cols:
        offset = (start + col * element_bytes) % ADDR_UNIT // element_bytes
        count = min(per_word - offset, lanes - lane, cols - col)
        col += count
        full = lane + count == lanes or col == cols
        lane = 0 if full else lane + count
        out.append((count, full))
    return out


@functools.lru_cache(maxsize=4096)
def row_stream_cycles(unit: str, lanes: int, rows: int, cols: int, element_bytes: int, serial: bool) -> int:
    """Cycles of the ``<prefix>_STREAM`` state, the cycle of the last write included, for
    ``rows`` rows of ``cols`` elements through ``unit`` (``"softmax"`` or ``"layernorm"``):
    dense rows of sources ``element_bytes`` wide and of destination bytes, each from the start
    of a 16-byte word, the sender waiting for each row's writes when ``serial``."""
    beats = -(-cols // lanes)
    device = (_SoftmaxUnit if unit == "softmax" else _LayerNormUnit)(lanes, beats)
    # sender: the chunks still to read, row by row
    send_rows = deque(_chunks(r * cols * element_bytes % ADDR_UNIT, cols, element_bytes, lanes)
                      for r in range(rows))
    chunks = deque(send_rows.popleft())
    offered = row_wait = False
    # receiver: per output beat, its chunks (a write each)
    writes: deque[deque[int]] = deque()
    for r in range(rows):
        beat: deque[int] = deque()
        for count, full in _chunks(r * cols % ADDR_UNIT, cols, 1, lanes):
            beat.append(count)
            if full:
                writes.append(beat)
                beat = deque()
    holding: deque[int] | None = None
    beat_rows_left = [beats] * rows   # receiver: beats of the current row still to write
    out_row = 0
    cycle = 0
    limit = 100 * rows * (cols + 64)   # far beyond any stream: a model fault, not a long wait
    while True:
        cycle += 1
        if cycle > limit:
            raise RuntimeError(f"row stream model of {unit} ({rows} x {cols}) did not finish in {limit} cycles")
        ready_in = device.ready()
        can_read = bool(chunks) and (not offered or ready_in) and not row_wait
        # receiver
        beat_done = holding is not None and len(holding) == 1
        out_ready = holding is None or beat_done
        take = device.out.valid() and out_ready
        row_done = done = False
        if holding is not None:
            holding.popleft()
            if beat_done:
                beat_rows_left[out_row] -= 1
                if beat_rows_left[out_row] == 0:
                    row_done = True
                    out_row += 1
                    done = out_row == rows
        device.cycle(offered, out_ready)
        if done:
            return cycle
        # sender's registers
        if offered and ready_in:
            offered = False
        if row_done:
            row_wait = False
        if can_read:
            full = chunks.popleft()[1]
            offered = full
            if not chunks:
                row_wait = serial
                if send_rows:
                    chunks = deque(send_rows.popleft())
        if beat_done:
            holding = None
        if take:
            holding = writes.popleft()
