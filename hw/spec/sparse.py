"""The contract of the top-k engine and the sparse score-stationary attention unit.

Everything the hardware (``hw/topk.py``, ``hw/sparse_attention.py``), the golden kernels
(``sim/golden/topk.py``, ``sim/golden/attention.py``) and the compiler must agree on:

* **Top-k scores** are unsigned :data:`TOPK_SCORE_BITS`-bit integers (attention
  probabilities accumulated over heads are never negative). Ties are broken by the lowest
  index. The engine searches the threshold MSB first, :data:`TOPK_RADIX_BITS` bits per pass
  over the scores (``2^TOPK_RADIX_BITS - 1`` comparators per lane), then compacts.
* **Mask prediction** (Sanger): Q and K are cut to :data:`PREDICT_BITS`-bit signed values by
  ``sat(round_shift(x, 8 - PREDICT_BITS))``; the predicted score is their integer dot product;
  entry ``(i, j)`` is kept iff ``pred[i, j] >= max_j pred[i, j] - margin``. The margin is a
  threshold relative to the row maximum, which is a threshold on the predicted softmax
  probability (``p_ij / p_max >= exp(-margin * scale)``); every row keeps at least its maximum.
* **Packed mask** (Sanger's load-balanced packing): the mask is split vertically into
  sub-matrices :func:`mask_block_cols` wide; empty sub-rows are dropped; a sub-row with more
  non-zeros than a PE row holds (``sparse_pe_cols``) is split into several packed rows. Each
  packed row is one hardware word (:func:`packed_row_fields`). Packed rows of query ``i``
  run on PE row ``i % sparse_pe_rows`` (:func:`pe_row_of_query`), so the PE rows of one wave
  always work on different queries and never contend for a query's softmax state or output.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = [
    "TOPK_SCORE_BITS", "TOPK_RADIX_BITS", "topk_passes", "index_bits", "count_bits",
    "PREDICT_BITS", "PREDICT_SHIFT", "MASK_BLOCK_RATIO", "mask_block_cols",
    "pe_row_of_query", "packed_row_fields", "score_bits", "MaskPredictParams",
    "PREDICT_MARGIN_LIMIT", "AttentionLoad",
]

#: Width of an unsigned top-k score.
TOPK_SCORE_BITS = 16
#: Threshold bits resolved per pass over the scores (radix of the MSB-first search).
TOPK_RADIX_BITS = 4

#: Width of the signed low-precision Q and K used to predict the mask.
PREDICT_BITS = 4
#: Right shift (with the one rounding rule) from int8 to the prediction width.
PREDICT_SHIFT = 8 - PREDICT_BITS

#: Width of a mask sub-matrix in units of PE columns. Sixteen makes the average random sub-row
#: at density 1/4 fill about one PE row, so packing loses little to partially filled rows.
MASK_BLOCK_RATIO = 16


def topk_passes() -> int:
    """Passes of the threshold search over the scores."""
    return math.ceil(TOPK_SCORE_BITS / TOPK_RADIX_BITS)


def index_bits(max_tokens: int) -> int:
    """Bits of a token index ``0 .. max_tokens - 1``."""
    return max(1, (max_tokens - 1).bit_length())


def count_bits(max_tokens: int) -> int:
    """Bits of a token count ``0 .. max_tokens``."""
    return max_tokens.bit_length()


def mask_block_cols(pe_cols: int) -> int:
    """Width of one vertical mask sub-matrix (= K/V lanes broadcast to a PE row)."""
    return MASK_BLOCK_RATIO * pe_cols


def pe_row_of_query(query: int, pe_rows: int) -> int:
    """The PE row that runs every packed row of ``query``."""
    return query % pe_rows


def score_bits(head_dim: int) -> int:
    """Signed width of an exact int8 x int8 dot product over ``head_dim`` elements."""
    return 15 + max(1, (head_dim - 1).bit_length()) + 1


def packed_row_fields(*, max_tokens: int, pe_cols: int) -> dict[str, int]:
    """Field widths of one packed-row word, least significant field first.

    ``query``: the query (row) index; ``block``: the sub-matrix (column block) index;
    ``valid``: one bit per PE column; ``offset``: per PE column, the key's position inside the
    block (``pe_cols`` fields of ``log2(block cols)`` bits). An all-zero ``valid`` is a bubble.
    """
    block = mask_block_cols(pe_cols)
    n_blocks = math.ceil(max_tokens / block)
    return {
        "query": index_bits(max_tokens),
        "block": max(1, (n_blocks - 1).bit_length()),
        "valid": pe_cols,
        "offset": pe_cols * max(1, (block - 1).bit_length()),
    }


@dataclass(frozen=True)
class MaskPredictParams:
    """Threshold of the mask prediction: keep ``(i, j)`` iff ``pred[i, j] >= rowmax_i - margin``.

    ``margin`` is a non-negative integer in units of the predicted score (products of
    :data:`PREDICT_BITS`-bit values), below :data:`PREDICT_MARGIN_LIMIT`.
    """

    margin: int

    def __post_init__(self) -> None:
        margin = self.margin
        if isinstance(margin, bool) or not isinstance(margin, int) or not 0 <= margin < PREDICT_MARGIN_LIMIT:
            raise ValueError(f"margin: must be an integer in 0..{PREDICT_MARGIN_LIMIT - 1}, got {margin!r}")


#: Margins are below this bound: the predicted score of a 1024-long head is under 2^16.
PREDICT_MARGIN_LIMIT = 1 << 16


class AttentionLoad(enum.IntEnum):
    """Memory selected by a write on the sparse attention unit's load port.

    ``Q``: word ``i`` = query row ``i`` (``head_dim`` int8, element 0 lowest). ``K`` and ``V``:
    block-transposed, word ``block * head_dim + t`` = element ``t`` of the
    :func:`mask_block_cols` rows of the block, row ``block * W`` lowest. ``WAVES``: word ``w`` =
    the ``sparse_pe_rows`` packed-row words of wave ``w``, PE row 0 lowest.
    """

    Q = 0
    K = 1
    V = 2
    WAVES = 3
