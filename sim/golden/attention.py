"""Golden sparse attention (Sanger): mask prediction, load-balanced mask packing, masked attention.

The contract lives in :mod:`vitaccel.hw.spec.sparse`; the softmax is
:func:`vitaccel.sim.golden.nonlinear.softmax`, the requantization
:func:`vitaccel.hw.spec.numerics.requantize`. The hardware unit
(:mod:`vitaccel.hw.sparse_attention`) computes :func:`masked_attention` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.nonlinear import SoftmaxParams
from vitaccel.hw.spec.numerics import requantize, round_shift, saturate
from vitaccel.hw.spec.sparse import (PREDICT_BITS, PREDICT_SHIFT, MaskPredictParams,
                                     mask_block_cols, packed_row_fields, pe_row_of_query)
from vitaccel.sim.golden.nonlinear import softmax

__all__ = ["PackedMask", "predict_mask", "predicted_scores", "pack_mask", "pack_mask_for", "schedule_waves", "encode_waves",
           "masked_attention", "check_attention_operands"]


def _int8_matrix(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "iu":
        raise ValueError(f"{name}: must be a 2-D integer array, got {x.dtype} with shape {x.shape}")
    x = x.astype(np.int64)
    if x.size and (x.min() < -128 or x.max() > 127):
        raise ValueError(f"{name}: values must be int8 (-128..127)")
    return x


def check_attention_operands(q: np.ndarray, k: np.ndarray, v: np.ndarray | None = None
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Q, K (and V) as int64 ``(tokens, head_dim)`` matrices of int8 values, shapes checked."""
    q, k = _int8_matrix("q", q), _int8_matrix("k", k)
    if q.shape != k.shape:
        raise ValueError(f"q and k: must have the same shape, got {q.shape} and {k.shape}")
    if v is not None:
        v = _int8_matrix("v", v)
        if v.shape[0] != k.shape[0]:
            raise ValueError(f"v: must have {k.shape[0]} rows (one per key), got {v.shape[0]}")
    return q, k, v


def predict_mask(q: np.ndarray, k: np.ndarray, params: MaskPredictParams) -> np.ndarray:
    """Sanger's predicted mask: low-precision scores against a threshold relative to the row max.

    ``q4 = sat4(round_shift(q, PREDICT_SHIFT))`` (same for ``k``), ``pred = q4 k4^T``,
    ``mask[i, j] = pred[i, j] >= max_j pred[i, j] - params.margin``.
    """
    if not isinstance(params, MaskPredictParams):
        raise ValueError(f"params: must be a MaskPredictParams, got {type(params).__name__}")
    q, k, _ = check_attention_operands(q, k)
    pred = predicted_scores(q, k)
    return pred >= pred.max(axis=1, keepdims=True) - params.margin


def predicted_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The predictor's low-precision scores ``q4 k4^T`` of int8 ``q``, ``k`` ``[..., T, d]``
    (any leading axes, unchecked): ``x4 = sat4(round_shift(x, PREDICT_SHIFT))``."""
    q4 = saturate(round_shift(q, PREDICT_SHIFT), PREDICT_BITS)
    k4 = saturate(round_shift(k, PREDICT_SHIFT), PREDICT_BITS)
    return q4 @ np.swapaxes(k4, -1, -2)


@dataclass(frozen=True)
class PackedMask:
    """Sanger's packed mask: one entry per packed row, in query-major, block-minor order.

    Attributes
    ----------
    query, block : int64 arrays, shape (rows,)
        The query (mask row) and the sub-matrix (column block) of each packed row.
    keys : int64 array, shape (rows, pe_row_capacity)
        Key (mask column) indices in ascending order, ``-1`` in unused slots.
    tokens, pe_cols, pe_row_capacity : int
        The mask's size and the packing's geometry.
    """

    query: np.ndarray
    block: np.ndarray
    keys: np.ndarray
    tokens: int
    pe_cols: int
    pe_row_capacity: int

    @property
    def rows(self) -> int:
        return int(self.query.size)

    def to_mask(self) -> np.ndarray:
        """The dense mask the packing encodes (inverse of :func:`pack_mask`)."""
        mask = np.zeros((self.tokens, self.tokens), dtype=bool)
        rows, slots = np.nonzero(self.keys >= 0)
        mask[self.query[rows], self.keys[rows, slots]] = True
        return mask


def pack_mask(mask: np.ndarray, pe_cols: int, pe_row_capacity: int) -> PackedMask:
    """Pack a square bool mask for load balance (Sanger).

    Parameters
    ----------
    mask : bool array, shape (n, n)
    pe_cols : int
        Width of a vertical sub-matrix: the K/V lanes broadcast to every PE row
        (:func:`~vitaccel.hw.spec.sparse.mask_block_cols` of the config).
    pe_row_capacity : int
        Scores one PE row holds (``sparse_pe_cols``); longer sub-rows are split.

    Sub-rows without a non-zero are dropped; the others become ``ceil(nnz / capacity)``
    packed rows holding consecutive non-zeros.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"mask: must be a square bool array, got {mask.dtype} with shape {mask.shape}")
    for name, value in (("pe_cols", pe_cols), ("pe_row_capacity", pe_row_capacity)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    n = mask.shape[0]
    n_blocks = -(-n // pe_cols)
    padded = np.zeros((n, n_blocks * pe_cols), dtype=bool)
    padded[:, :n] = mask
    sub = padded.reshape(n, n_blocks, pe_cols)            # (query, block, column in block)
    nnz = sub.sum(axis=2)
    chunks = -(-nnz // pe_row_capacity)                   # packed rows per sub-row (0 if empty)
    query = np.repeat(np.repeat(np.arange(n), n_blocks), chunks.ravel())
    block = np.repeat(np.tile(np.arange(n_blocks), n), chunks.ravel())
    # Rank of every non-zero inside its sub-row decides its packed row and slot.
    qi, bi, ci = np.nonzero(sub)
    rank = np.cumsum(sub, axis=2)[qi, bi, ci] - 1
    first_row = np.concatenate([[0], np.cumsum(chunks.ravel())[:-1]]).reshape(n, n_blocks)
    keys = np.full((query.size, pe_row_capacity), -1, dtype=np.int64)
    keys[first_row[qi, bi] + rank // pe_row_capacity, rank % pe_row_capacity] = bi * pe_cols + ci
    return PackedMask(query.astype(np.int64), block.astype(np.int64), keys, n, int(pe_cols),
                      int(pe_row_capacity))


def pack_mask_for(config: AccelConfig, mask: np.ndarray) -> PackedMask:
    """:func:`pack_mask` with the geometry of ``config``'s PE array."""
    return pack_mask(mask, mask_block_cols(config.sparse_pe_cols), config.sparse_pe_cols)


def schedule_waves(packed: PackedMask, pe_rows: int) -> np.ndarray:
    """Packed-row index per (wave, PE row), ``-1`` for a bubble.

    PE row ``r`` runs the packed rows of the queries with ``pe_row_of_query(i) == r`` in
    order; the number of waves is the longest such list.
    """
    lists = [np.nonzero(pe_row_of_query(packed.query, pe_rows) == r)[0] for r in range(pe_rows)]
    waves = max((lst.size for lst in lists), default=0)
    schedule = np.full((waves, pe_rows), -1, dtype=np.int64)
    for r, lst in enumerate(lists):
        schedule[:lst.size, r] = lst
    return schedule


def masked_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray,
                     softmax_params: SoftmaxParams, out_multiplier: int, out_shift: int) -> np.ndarray:
    """``requantize(softmax(Q K^T, mask) V)`` as int8, scores only where ``mask`` is set.

    Q K^T is exact in int32; the softmax gives uint8 probabilities at scale 1/256 (masked-out
    entries are 0, an empty row is all 0); P V accumulates uint8 x int8 products in int32.
    """
    q, k, v = check_attention_operands(q, k, v)
    mask = np.asarray(mask)
    n = q.shape[0]
    if mask.dtype != bool or mask.shape != (n, n):
        raise ValueError(f"mask: must be a bool array of shape {(n, n)}, got {mask.dtype} {mask.shape}")
    scores = np.where(mask, q @ k.T, 0)
    probs = softmax(scores, softmax_params, mask=mask).astype(np.int64)
    return requantize(probs @ v, out_multiplier, out_shift).astype(np.int8)


def encode_waves(config: AccelConfig, packed: PackedMask, schedule: np.ndarray) -> list[int]:
    """The wave words the hardware loads: per wave, ``sparse_pe_rows`` packed-row words
    (:func:`~vitaccel.hw.spec.sparse.packed_row_fields`, first field lowest), PE row 0 lowest."""
    fields = packed_row_fields(max_tokens=config.max_tokens, pe_cols=config.sparse_pe_cols)
    cols = config.sparse_pe_cols
    if packed.pe_row_capacity != cols or packed.pe_cols != mask_block_cols(cols):
        raise ValueError("encode_waves: the mask was packed for a different PE array")
    offset_bits = fields["offset"] // cols
    row_bits = sum(fields.values())
    words = []
    for wave in schedule:
        word = 0
        for r, index in enumerate(wave):
            if index < 0:
                continue  # bubble: all fields zero, no valid slot
            keys = packed.keys[index]
            valid = sum(1 << c for c in range(cols) if keys[c] >= 0)
            offsets = sum(int(keys[c] % packed.pe_cols) << (c * offset_bits)
                          for c in range(cols) if keys[c] >= 0)
            value = int(packed.query[index])
            shift = fields["query"]
            value |= int(packed.block[index]) << shift
            shift += fields["block"]
            value |= valid << shift
            shift += fields["valid"]
            value |= offsets << shift
            word |= value << (r * row_bits)
        words.append(word)
    return words
