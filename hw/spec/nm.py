"""The N:M compressed weight format: what the pruner emits, the golden kernel reads and the
matrix engine's sparse mode loads (streams: ``hw/spec/matrix.py``, ``b_stream``/``b_meta_stream``).

A weight matrix ``W[K, N]`` (``K`` input rows, ``N`` output columns, the ``B`` operand of
``C = A @ W``) is **N:M sparse along K** when every *group* of ``M`` consecutive K-rows holds at
most ``N`` non-zeros in each output column. Group ``g`` of column ``c`` is
``W[g*M : (g+1)*M, c]``.

Compressed form (:class:`NMWeights`), for ``G = ceil(K / M)`` groups:

* ``values[g*N + s, c]`` (int8) is the ``s``-th kept weight ("slot") of group ``g`` in column
  ``c``, and ``indices[g*N + s, c]`` (uint8, ``0 .. M-1``) its position inside the group, so it
  multiplies activation ``A[:, g*M + indices[g*N + s, c]]``.
* Canonical slot order: the kept positions of a group are the positions of its non-zeros; a
  group with fewer than ``N`` non-zeros is filled up with its lowest-positioned zeros (value 0);
  slots are in ascending position order. Positions within a group are therefore distinct.
* **Padding**: if ``K`` is not a multiple of ``M``, ``W`` is extended with zero rows up to
  ``G * M`` before compression (a zero weight contributes nothing, so the padded rows may be
  paired with anything, in particular zero-padded activations). ``k`` keeps the original ``K``;
  :func:`decompress` returns exactly ``K`` rows.

Metadata packing (for the hardware): each kept value carries :func:`index_bits` ``(M) =
ceil(log2 M)`` bits of position. A metadata word covers ``rows_per_word`` consecutive compressed
rows of ``columns`` output columns, laid out like the matrix engine's B word
(``hw/spec/matrix.py``: element ``[kk][col]`` of ``b`` k's x ``tc`` columns): the index of
compressed row ``r`` (within the word) and column ``c`` occupies bits
``[(r*columns + c) * index_bits, (r*columns + c + 1) * index_bits)``, LSB first
(:func:`pack_index_rows`, :func:`metadata_word_bits`). With ``rows_per_word = b`` and
``columns = tc``, one metadata word travels with each compressed B word.

Pruning rule (:func:`magnitude_keep_mask`, shared by the float pruner and the tests): in each
group keep the ``N`` entries of largest magnitude, ties broken by the lowest position.

This module imports no gateware.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "NMWeights", "check_nm", "index_bits", "compress", "decompress", "magnitude_keep_mask",
    "padded_k", "metadata_word_bits", "pack_index_rows", "unpack_index_rows", "VALUE_BITS",
]

#: Signed width of a compressed weight value.
VALUE_BITS = 8
_VALUE_MIN, _VALUE_MAX = -(1 << (VALUE_BITS - 1)), (1 << (VALUE_BITS - 1)) - 1


def check_nm(n: int, m: int) -> None:
    """Raise ValueError unless ``1 <= n < m <= 16`` with ``m`` a power of two (the rule
    :class:`~vitaccel.hw.spec.config.AccelConfig` applies to ``nm_sparsity``)."""
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"N:M sparsity: {name} must be an integer, got {value!r}")
    if not (1 <= n < m <= 16 and m & (m - 1) == 0):
        raise ValueError(f"N:M sparsity: need 1 <= N < M <= 16 with M a power of two, got {n}:{m}")


def index_bits(m: int) -> int:
    """Bits of one position inside a group of ``m``: ``ceil(log2 m)``."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 2:
        raise ValueError(f"index_bits: group size must be an integer >= 2, got {m!r}")
    return (int(m) - 1).bit_length()


def padded_k(k: int, m: int) -> int:
    """``k`` rounded up to a whole number of groups of ``m``."""
    return -(-k // m) * m


@dataclass(frozen=True, eq=False)
class NMWeights:
    """An N:M compressed weight matrix (see the module docstring for the layout).

    Attributes
    ----------
    values : int8 array, shape ``(ceil(k/m)*n, N)``
    indices : uint8 array, same shape, each in ``0 .. m-1``
    n, m : int
        At most ``n`` non-zeros per group of ``m`` K-rows.
    k : int
        Rows of the dense matrix (before padding to a multiple of ``m``).
    """

    values: np.ndarray
    indices: np.ndarray
    n: int
    m: int
    k: int

    def __post_init__(self) -> None:
        check_nm(self.n, self.m)
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"NMWeights: k must be a positive integer, got {self.k!r}")
        groups = padded_k(self.k, self.m) // self.m
        for name in ("values", "indices"):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[0] != groups * self.n:
                shape = getattr(arr, "shape", None)
                raise ValueError(f"NMWeights: {name} must be a 2-D array with {groups * self.n} rows "
                                 f"(ceil(k/m)*n for k={self.k}, {self.n}:{self.m}), got shape {shape}")
        if self.values.shape != self.indices.shape:
            raise ValueError(f"NMWeights: values {self.values.shape} and indices {self.indices.shape} differ in shape")
        if self.values.dtype != np.int8:
            raise ValueError(f"NMWeights: values must be int8, got {self.values.dtype}")
        if self.indices.dtype != np.uint8:
            raise ValueError(f"NMWeights: indices must be uint8, got {self.indices.dtype}")
        if self.indices.size and int(self.indices.max()) >= self.m:
            row, col = np.argwhere(self.indices >= self.m)[0]
            raise ValueError(f"NMWeights: index {int(self.indices[row, col])} at compressed row {row}, "
                             f"column {col} is outside the group of {self.m}")
        grouped = self.grouped_indices()
        ordered = np.sort(grouped, axis=1)
        duplicate = np.any(ordered[:, 1:] == ordered[:, :-1], axis=1)  # (groups, N)
        if np.any(duplicate):
            group, col = np.argwhere(duplicate)[0]
            raise ValueError(f"NMWeights: group {group} (rows {group * self.m}..{group * self.m + self.m - 1}) "
                             f"of column {col} uses a position twice")

    @property
    def columns(self) -> int:
        """``N``: output columns."""
        return self.values.shape[1]

    @property
    def groups(self) -> int:
        """``ceil(k / m)``: groups of ``m`` K-rows."""
        return self.values.shape[0] // self.n

    def grouped_indices(self) -> np.ndarray:
        """Indices as ``(groups, n, N)``."""
        return self.indices.reshape(-1, self.n, self.indices.shape[1])

    def grouped_values(self) -> np.ndarray:
        """Values as ``(groups, n, N)``."""
        return self.values.reshape(-1, self.n, self.values.shape[1])


def _int_matrix(name: str, w) -> np.ndarray:
    arr = np.asarray(w)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix [K, N], got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.shape[0] < 1:
        raise ValueError(f"{name} must have at least one row")
    return arr.astype(np.int64)


def _grouped(w: np.ndarray, m: int) -> np.ndarray:
    """``w[K, N]`` zero-padded to whole groups, as ``(groups, m, N)``."""
    k, cols = w.shape
    padded = np.zeros((padded_k(k, m), cols), dtype=w.dtype)
    padded[:k] = w
    return padded.reshape(-1, m, cols)


def magnitude_keep_mask(w, n: int, m: int) -> np.ndarray:
    """Boolean ``[K, N]`` mask keeping, in every group of ``m`` K-rows of every column, the ``n``
    entries of largest ``|w|`` (ties: lowest position first). ``w`` may be float."""
    check_nm(n, m)
    arr = np.abs(np.asarray(w, dtype=np.float64))
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"magnitude_keep_mask: w must be a 2-D matrix [K, N], got shape {arr.shape}")
    k = arr.shape[0]
    # Padding rows get -1 so they are never preferred over a real entry.
    groups = np.full((padded_k(k, m), arr.shape[1]), -1.0)
    groups[:k] = arr
    groups = groups.reshape(-1, m, arr.shape[1])
    order = np.argsort(-groups, axis=1, kind="stable")  # stable: ties by lowest position
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    return keep.reshape(-1, arr.shape[1])[:k]


def compress(w, n: int, m: int) -> NMWeights:
    """Compress an integer ``w[K, N]`` (int8 range) that is N:M sparse along K.

    Raises
    ------
    ValueError
        If ``n:m`` is not a supported pattern, ``w`` is not an int8-range integer matrix, or a
        group holds more than ``n`` non-zeros (the message names the group and column).
    """
    check_nm(n, m)
    w = _int_matrix("compress: w", w)
    if w.size and (w.min() < _VALUE_MIN or w.max() > _VALUE_MAX):
        raise ValueError(f"compress: weights must be int{VALUE_BITS} values, got range {w.min()}..{w.max()}")
    groups = _grouped(w, m)
    nonzero = groups != 0
    counts = nonzero.sum(axis=1)
    if np.any(counts > n):
        group, col = np.argwhere(counts > n)[0]
        raise ValueError(f"compress: group {group} (rows {group * m}..{group * m + m - 1}) of column {col} "
                         f"has {counts[group, col]} non-zeros, more than {n} of {m}")
    # Non-zeros first, then zeros, each by position: the first n are the canonical slots.
    order = np.argsort(~nonzero, axis=1, kind="stable")[:, :n]
    slots = np.sort(order, axis=1)
    values = np.take_along_axis(groups, slots, axis=1)
    cols = w.shape[1]
    return NMWeights(values=values.reshape(-1, cols).astype(np.int8),
                     indices=slots.reshape(-1, cols).astype(np.uint8), n=int(n), m=int(m), k=w.shape[0])


def decompress(nmw: NMWeights) -> np.ndarray:
    """The dense ``[k, N]`` int8 matrix of ``nmw``."""
    if not isinstance(nmw, NMWeights):
        raise ValueError(f"decompress: expected NMWeights, got {type(nmw).__name__}")
    dense = np.zeros((nmw.groups, nmw.m, nmw.columns), dtype=np.int8)
    np.put_along_axis(dense, nmw.grouped_indices().astype(np.int64), nmw.grouped_values(), axis=1)
    return dense.reshape(-1, nmw.columns)[:nmw.k]


def metadata_word_bits(columns: int, m: int, rows_per_word: int = 1) -> int:
    """Width of a metadata word holding ``rows_per_word`` compressed rows of ``columns`` indices."""
    if columns < 1 or rows_per_word < 1:
        raise ValueError(f"metadata_word_bits: columns and rows_per_word must be positive, got {columns}, {rows_per_word}")
    return rows_per_word * columns * index_bits(m)


def pack_index_rows(indices, m: int, rows_per_word: int = 1) -> list[int]:
    """Pack compressed index rows ``[R, C]`` into metadata words (layout in the module docstring).

    ``R`` must be a multiple of ``rows_per_word``; word ``i`` holds rows
    ``i*rows_per_word .. (i+1)*rows_per_word - 1``.
    """
    arr = np.asarray(indices)
    bits = index_bits(m)
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise ValueError(f"pack_index_rows: indices must be a 2-D integer array, got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= m):
        raise ValueError(f"pack_index_rows: indices must be in 0..{m - 1}, got {arr.min()}..{arr.max()}")
    if rows_per_word < 1 or arr.shape[0] % rows_per_word:
        raise ValueError(f"pack_index_rows: {arr.shape[0]} rows are not a multiple of rows_per_word={rows_per_word}")
    flat = arr.astype(np.int64).reshape(-1, rows_per_word * arr.shape[1])
    words = []
    for row in flat:
        word = 0
        for position, value in enumerate(row.tolist()):
            word |= value << (position * bits)
        words.append(word)
    return words


def unpack_index_rows(words: list[int], columns: int, m: int, rows_per_word: int = 1) -> np.ndarray:
    """Inverse of :func:`pack_index_rows`: uint8 ``[len(words) * rows_per_word, columns]``."""
    bits = index_bits(m)
    per_word = rows_per_word * columns
    out = np.zeros((len(words), per_word), dtype=np.uint8)
    for i, word in enumerate(words):
        if word < 0 or word >> (per_word * bits):
            raise ValueError(f"unpack_index_rows: word {i} does not fit in {per_word * bits} bits")
        for position in range(per_word):
            out[i, position] = (word >> (position * bits)) & ((1 << bits) - 1)
    return out.reshape(-1, columns)
