"""Cycles of each compute-queue instruction but GEMM, read off its controller's state machine.

Every formula counts the cycles the compute unit is busy (``BUSY_CYCLES_COMPUTE``): from the
DECIDE state after issue to the state that raises ``complete``, both included. The compute
unit has the buffers' ports first, so these instructions never wait for the load or store
paths. ``E`` is ``rows * cols`` elements; ``beats`` a row's beats of ``vector_lanes``.

Sources (``hw/accel/vector.py``'s ``VectorController`` for the vector opcodes; ``hw/accel/core.py``
for SYNC and FINISH; other files named):

* SYNC, FINISH: DECIDE only.
* LUT_LOAD: DECIDE, LUT_CHECK, then LUT_READ + LUT_WRITE per entry.
* GELU (``_gelu_states``): DECIDE, GELU_CHECK (reads the first source word), then GELU_STREAM:
  one beat of ``min(vector_lanes, 16)`` elements per cycle, and one more cycle for the last
  beat's output (``Gelu`` in ``hw/nonlinear/units.py`` answers the cycle after its input: one
  table read). Nothing but the check for no elements.
* ADD (``_add_states``): DECIDE, ADD_CHECK, ADD_PARAMS, ADD_PARAMS_TAKE, ADD_PARAMS_CHECK
  (reads the first ``src`` word), then per 16-byte word ADD_READ_B and one ADD_BEATS cycle per
  beat (the next ``src`` word is read in the last beat).
* LAYERNORM (``_layernorm_states``): DECIDE, CHECK, HEADER, HEADER_TAKE, HEADER_CHECK;
  PARAM_READ + PARAM_TAKE for each of gamma / beta low / beta high per channel and a
  PARAM_WRITE per beat of channels; then the rows (``_row_stream_states``).
* SOFTMAX (``_softmax_states``): DECIDE, CHECK, PARAMS, PARAMS_TAKE, PARAMS_CHECK; then
  the rows.
* Row stream: the controller's sender and receiver around the unit, which holds several rows
  at once; no closed formula follows their waits, so :mod:`.rowstream` steps their control
  registers cycle by cycle (exact against RTL; cached per shape).
* REQUANT (``hw/accel/requant.py``, ``RequantController.cycles``): DECIDE, the check
  registers (SETTLE, CHECK), two reads per column (multiplier, shift) and two per element
  (accumulator, bias) back to back, the scans' drain, DST; then four reads per element back
  to back, the compute pipeline's latency and FINISH.
* TOPK, GATHER, PACKAGE (``hw/accel/tokens.py``, top-k engine ``hw/topk.py``): see
  :func:`topk_cycles`, :func:`gather_cycles`, :func:`package_cycles`.
* SPARSE_ATTN (``hw/accel/sparse_attn.py`` and the unit ``hw/sparse_attention.py``): see
  :func:`sparse_attention_cycles`; exact given the packed mask's wave count
  (:func:`sparse_attention_waves`), which depends on the data; without it an estimate.
"""

from __future__ import annotations

from vitaccel.hw.accel.requant import RequantController
from vitaccel.hw.accel.tokens import TokenController
from vitaccel.hw.nonlinear.arith import ExpStage, Reciprocal
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import ADDR_UNIT, Instruction, Opcode
from vitaccel.hw.topk import topk_engine_cycles

from .rowstream import row_stream_cycles

__all__ = ["compute_cycles", "word_beats", "sparse_attention_cycles", "sparse_attention_waves",
           "SPARSE_ESTIMATE_DENSITY"]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def word_beats(config: AccelConfig) -> int:
    """Elements per beat of the word-streaming opcodes (GELU, ADD): ``vector_lanes``, at most a
    16-byte buffer word (``VectorController._beats``)."""
    return min(config.vector_lanes, ADDR_UNIT)


def _row_stream(unit: str, f: dict, element_bytes: int, lanes: int, *, serial: bool = False) -> int:
    """Cycles of a row stream (:func:`~.rowstream.row_stream_cycles`); none without elements."""
    rows, cols = f["rows"], f["cols"]
    if not rows * cols:
        return 0
    return row_stream_cycles(unit, lanes, rows, cols, element_bytes, serial)


#: DECIDE, the token controller's check registers (SETTLE) and CHECK.
_TOKEN_HEAD = 1 + TokenController.CHECK_STAGES


def topk_cycles(config: AccelConfig, f: dict) -> int:
    """TOPK: per selection TOPK_ROW, READ + WAIT + ADD per summed element, SEND per beat,
    TOPK_START, the engine (:func:`~vitaccel.hw.topk.topk_engine_cycles`: its passes and the
    compaction's latency; the first result beat is taken the cycle it is valid), then per
    result beat one write per kept index byte (two per index) or one cycle for an empty
    beat, TOPK_NEXT; a final TOPK_ROW."""
    lanes = config.topk_lanes
    n, k, rows = f["n"], f["k"], f["rows"]
    sum_rows = f["sum_rows"]
    selections, summed = (1, rows) if sum_rows else (rows, 1)
    groups = _ceil(n, lanes)
    per_selection = 1
    if n:
        # TOPK_ROW, the reads, the SEND beats, TOPK_START, the engine up to its first beat.
        per_selection += 3 * summed * n + groups + 1 + topk_engine_cycles(lanes, n) - groups + 1
        # Result beats (the compaction pass): 2 bytes per kept index; a beat keeping none
        # still takes a cycle (which beats keep none depends on the scores: assume the fewest).
        per_selection += 2 * k + max(0, groups - k) + 1
    return _TOKEN_HEAD + selections * per_selection + 1


def gather_cycles(f: dict) -> int:
    """GATHER: index pass (INDEX_READ + INDEX_WAIT + INDEX_TAKE per index, one more
    INDEX_READ), INDEX_DONE; per row GATHER_ROW, GATHER_INDEX_WAIT, GATHER_INDEX,
    GATHER_ADDRESS and cols + 1 GATHER_COPY; a final GATHER_ROW."""
    rows, cols = f["rows"], f["cols"]
    return _TOKEN_HEAD + 3 * rows + 1 + 1 + rows * (cols + 5) + 1


def package_cycles(f: dict) -> int:
    """PACKAGE: PACKAGE_CLEAR per token + 1, the index pass, the weight sums (heads reads of
    three cycles and a write per token), PACKAGE_DST, per column the pruned tokens' products
    (five cycles per pruned token, two per kept, two to close), the division's two setup
    states, its 9 steps and the write."""
    n, cols, k, heads = f["n"], f["cols"], f["k"], f["heads"]
    pruned = n - k
    per_column = 1 + (5 * pruned + 2 * k + 2) + 2 + 9 + 1
    return _TOKEN_HEAD + (n + 1) + (3 * k + 1) + 1 + (n * (3 * heads + 1) + 1) + 1 + cols * per_column + 1


#: Mask density :func:`sparse_attention_cycles` assumes when it is not given the wave count.
SPARSE_ESTIMATE_DENSITY = 0.5


def sparse_attention_waves(config: AccelConfig, mask=None, *, tokens: int | None = None,
                           density: float = SPARSE_ESTIMATE_DENSITY) -> int:
    """Waves of the packed mask: exact for a bool ``mask`` (the golden packing and schedule, as
    the controller packs), else an estimate for ``tokens`` at ``density`` (every sub-row holding
    ``density`` of its keys, every PE row as many queries as the busiest)."""
    if mask is not None:
        from vitaccel.sim.golden.attention import pack_mask_for, schedule_waves

        return int(schedule_waves(pack_mask_for(config, mask), config.sparse_pe_rows).shape[0])
    from vitaccel.hw.spec.sparse import mask_block_cols

    width, cols = mask_block_cols(config.sparse_pe_cols), config.sparse_pe_cols
    per_query = sum(_ceil(max(1, round(density * min(width, tokens - start))), cols)
                    for start in range(0, tokens, width))
    return _ceil(tokens, config.sparse_pe_rows) * per_query


def sparse_attention_cycles(config: AccelConfig, f: dict, waves: int) -> int:
    """SPARSE_ATTN that retires, with ``waves`` waves of packed rows (``SparseAttentionController``):

    DECIDE, SETTLE (``CHECK_STAGES``), CHECK, PARAMS_0, PARAMS_1, PARAMS_CHECK; LOAD a byte per
    cycle of Q, K, V (``3 n d``) and LOAD_LAST; per query ROW, then with ``predict`` the max
    pass (a cycle per group of ``sparse_pe_cols`` keys and one to fold the last) and the keep
    pass (a cycle per group and a gap per mask block), without it a cycle per mask byte and a
    gap per block; ROW_FLUSH. FILL a cycle per wave and one to start the unit; the unit
    (``SparseAttention``): CLEAR per query, SDDMM ``d`` per wave + 1, MAX and EXPSUM a cycle per
    wave (+ 1, + the ExpStage latency + 1), per group of ``sparse_pe_rows`` queries a
    reciprocal start and its latency, SPMM ``d + 2`` per wave + 1; the output rows a byte per
    cycle."""
    from vitaccel.hw.accel.sparse_attn import SparseAttentionController
    from vitaccel.hw.spec.sparse import mask_block_cols

    n, d = f["n"], f["d"]
    cols, rows = config.sparse_pe_cols, config.sparse_pe_rows
    groups, blocks = _ceil(n, cols), _ceil(n, mask_block_cols(cols))
    per_row = (2 * groups + 1 + blocks if f["predict"] else n + blocks) + 2   # + ROW, ROW_FLUSH
    head = 1 + SparseAttentionController.CHECK_STAGES + 1 + 3 + 3 * n * d + 1
    unit = (n + (waves * d + 1) + (waves + 1) + (waves + ExpStage.LATENCY + 1)
            + _ceil(n, rows) * (1 + Reciprocal.LATENCY) + waves * (d + 2) + 1)
    return head + n * per_row + waves + 1 + unit + n * d


def compute_cycles(config: AccelConfig, instr: Instruction, *, sparse_waves: int | None = None) -> int:
    """Busy cycles of a compute-queue instruction other than GEMM (see the module docstring).
    ``sparse_waves``: a SPARSE_ATTN's wave count (:func:`sparse_attention_waves`); without it the
    count is estimated at :data:`SPARSE_ESTIMATE_DENSITY`."""
    op, f = instr.opcode, instr.fields
    lanes = config.vector_lanes
    if op in (Opcode.SYNC, Opcode.FINISH):
        return 1
    if op is Opcode.LUT_LOAD:
        return 2 + 2 * f["count"]
    elements = f.get("rows", 0) * f.get("cols", 0)
    beat = word_beats(config)
    if op is Opcode.GELU:
        return 2 + (_ceil(elements, beat) + 1 if elements else 0)
    if op is Opcode.ADD:
        return 5 + _ceil(elements, ADDR_UNIT) + _ceil(elements, beat)
    if op is Opcode.LAYERNORM:
        cols = f["cols"]
        params = 6 * cols + _ceil(cols, lanes)
        # a destination inside the source after its start: row by row (``dst_ahead``)
        serial = f["src_addr"] < f["dst_addr"] < f["src_addr"] + _ceil(elements, ADDR_UNIT)
        return 5 + params + _row_stream("layernorm", f, 1, lanes, serial=serial)
    if op is Opcode.SOFTMAX:
        return 5 + _row_stream("softmax", f, 4, lanes)
    if op is Opcode.REQUANT:
        return RequantController.cycles(f["rows"], f["cols"])
    if op is Opcode.TOPK:
        return topk_cycles(config, f)
    if op is Opcode.GATHER:
        return gather_cycles(f)
    if op is Opcode.PACKAGE:
        return package_cycles(f)
    if op is Opcode.SPARSE_ATTN:
        if sparse_waves is None:
            sparse_waves = sparse_attention_waves(config, tokens=f["n"])
        return sparse_attention_cycles(config, f, sparse_waves)
    raise ValueError(f"no cycle formula for {op.name}")
