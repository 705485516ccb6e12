"""Cycles of each compute-queue instruction but GEMM, read off its controller's state machine.

Every formula counts the cycles the compute unit is busy (``BUSY_CYCLES_COMPUTE``): from the
DECIDE state after issue to the state that raises ``complete``, both included. The compute
unit has the buffers' ports first, so these instructions never wait for the load or store
paths. ``E`` is ``rows * cols`` elements; ``beats`` a row's beats of ``vector_lanes``.

Sources (``hw/accel/core.py`` unless named):

* SYNC, FINISH: DECIDE only.
* LUT_LOAD: DECIDE, LUT_CHECK, then LUT_READ + LUT_WRITE per entry.
* GELU: DECIDE, GELU_CHECK, then per element GELU_READ, GELU_FEED, GELU_SEND, GELU_WRITE
  (``Gelu`` in ``hw/nonlinear/units.py`` answers the cycle after its input: one table read).
* ADD (``_add_states``): DECIDE, ADD_CHECK, ADD_PARAMS, ADD_PARAMS_TAKE, ADD_PARAMS_CHECK,
  then ADD_READ_A, ADD_READ_B, ADD_WRITE per element.
* LAYERNORM (``_layernorm_states``): DECIDE, CHECK, HEADER, HEADER_TAKE, HEADER_CHECK;
  PARAM_READ + PARAM_TAKE for each of gamma / beta low / beta high per channel and a
  PARAM_WRITE per beat of channels; then the rows (``_row_stream_states``).
* SOFTMAX (``_softmax_states``): DECIDE, CHECK, PARAMS, PARAMS_TAKE, PARAMS_CHECK; then
  the rows.
* Row stream, per row: READ + TAKE per element, SEND per beat; RECEIVE waits for the unit's
  first output beat; then per output beat RECEIVE + one WRITE per element:
  ``3 cols + 2 beats + wait``. The wait is the unit's hand-over of one row through its
  stages (the controller sends one row and waits for it): LayerNorm's statistics stage
  (``LAYERNORM_ROW_WAIT``), Softmax's EXP pass over the row's beats plus the reciprocal
  (``beats + SOFTMAX_ROW_WAIT``).
* REQUANT (``hw/accel/requant.py``): DECIDE, CHECK, per column PARAM_MULTIPLIER,
  PARAM_SHIFT, PARAM_TEST, one more PARAM_MULTIPLIER, per element VALUE_ACC, VALUE_BIAS,
  VALUE_TEST, DST, per element READ_ACC, READ_BIAS, READ_MULTIPLIER, READ_SHIFT, MULTIPLY,
  WRITE, and FINISH.
* TOPK, GATHER, PACKAGE (``hw/accel/tokens.py``, top-k engine ``hw/topk.py``): see
  :func:`topk_cycles`, :func:`gather_cycles`, :func:`package_cycles`.
"""

from __future__ import annotations

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import Instruction, Opcode
from vitaccel.hw.spec.sparse import topk_passes

__all__ = ["compute_cycles", "LAYERNORM_ROW_WAIT", "SOFTMAX_ROW_WAIT", "TOPK_ENGINE_EXTRA"]

#: LayerNorm: cycles RECEIVE waits after a row's last beat went in: the load stage
#: closing the row's sums, the statistics FSM (IDLE, START, WAIT on the inverse square
#: root) and the output stream's read-ahead (``LayerNorm`` in ``hw/nonlinear/units.py``).
LAYERNORM_ROW_WAIT = 8
#: Softmax: cycles RECEIVE waits beyond one per beat of the row (the EXP pass): the LOAD
#: stage hand-over, the exp table pipeline (``ExpStage.LATENCY``), the reciprocal
#: (table + Newton) and the OUT stage's read-ahead.
SOFTMAX_ROW_WAIT = 11
#: Top-k engine: cycles beyond ``passes * groups`` from start to its first result beat (the
#: compaction pass emits a group's beat as it reads it; ``hw/topk.py``).
TOPK_ENGINE_EXTRA = 0


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _row_stream(rows: int, cols: int, lanes: int, wait: int) -> int:
    beats = _ceil(cols, lanes)
    return rows * (3 * cols + 2 * beats + wait)


def topk_cycles(config: AccelConfig, f: dict) -> int:
    """TOPK: per selection TOPK_ROW, READ + ADD per summed element, SEND per beat,
    TOPK_START, the engine's passes, then per result beat one write per kept index byte
    (two per index) or one cycle for an empty beat; a final TOPK_ROW."""
    lanes = config.topk_lanes
    n, k, rows = f["n"], f["k"], f["rows"]
    sum_rows = f["sum_rows"]
    selections, summed = (1, rows) if sum_rows else (rows, 1)
    groups = _ceil(n, lanes)
    per_selection = 1
    if n:
        per_selection += 2 * summed * n + groups + 1 + topk_passes() * groups + TOPK_ENGINE_EXTRA
        # Result beats (the compaction pass): 2 bytes per kept index; a beat keeping none
        # still takes a cycle (which beats keep none depends on the scores: assume the fewest).
        per_selection += 2 * k + max(0, groups - k)
    return 2 + selections * per_selection + 1


def gather_cycles(f: dict) -> int:
    """GATHER: index pass (INDEX_READ + INDEX_TAKE per index, one more INDEX_READ),
    INDEX_DONE; per row GATHER_ROW, GATHER_INDEX and cols + 1 GATHER_COPY; a final GATHER_ROW."""
    rows, cols = f["rows"], f["cols"]
    return 2 + 2 * rows + 1 + 1 + rows * (cols + 3) + 1


def package_cycles(f: dict) -> int:
    """PACKAGE: PACKAGE_CLEAR per token + 1, the index pass, the weight sums (heads reads of
    two cycles and a write per token), PACKAGE_DST, per column the pruned tokens' products
    (two cycles per pruned token, one per kept), the 9-step division and the write."""
    n, cols, k, heads = f["n"], f["cols"], f["k"], f["heads"]
    pruned = n - k
    per_column = 1 + (2 * pruned + k + 1) + 1 + 9 + 1
    return 2 + (n + 1) + (2 * k + 1) + 1 + (n * (2 * heads + 1) + 1) + 1 + cols * per_column + 1


def compute_cycles(config: AccelConfig, instr: Instruction) -> int:
    """Busy cycles of a compute-queue instruction other than GEMM (see the module docstring)."""
    op, f = instr.opcode, instr.fields
    lanes = config.vector_lanes
    if op in (Opcode.SYNC, Opcode.FINISH):
        return 1
    if op is Opcode.LUT_LOAD:
        return 2 + 2 * f["count"]
    elements = f.get("rows", 0) * f.get("cols", 0)
    if op is Opcode.GELU:
        return 2 + 4 * elements
    if op is Opcode.ADD:
        return 5 + 3 * elements
    if op is Opcode.LAYERNORM:
        cols = f["cols"]
        params = 6 * cols + _ceil(cols, lanes)
        return 5 + params + _row_stream(f["rows"], cols, lanes, LAYERNORM_ROW_WAIT)
    if op is Opcode.SOFTMAX:
        cols = f["cols"]
        return 5 + _row_stream(f["rows"], cols, lanes, _ceil(cols, lanes) + SOFTMAX_ROW_WAIT)
    if op is Opcode.REQUANT:
        return 5 + 3 * f["cols"] + 9 * elements
    if op is Opcode.TOPK:
        return topk_cycles(config, f)
    if op is Opcode.GATHER:
        return gather_cycles(f)
    if op is Opcode.PACKAGE:
        return package_cycles(f)
    raise ValueError(f"no cycle formula for {op.name}")
