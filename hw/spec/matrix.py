"""The matrix engine's host interface: GEMM tiling plan, command fields and word formats.

Everything the gateware (``hw/matrix``), the testbenches and the compiler must agree on
about how a GEMM ``C[M x N] = A[M x K] B[K x N]`` is cut into words and streamed lives
here, and nowhere else. This module imports no gateware.

Geometry (``tr = tile_rows``, ``tc = tile_cols``, ``b = block_size``):

* An **A word** is one k-step of one output tile row band: ``tr`` rows x ``b`` consecutive
  k's, element ``[row][kk]`` at bit ``(row * b + kk) * w``. The engine consumes one per cycle.
* A **B word** is ``b`` k's x ``tc`` columns, element ``[kk][col]`` at ``(kk * tc + col) * w``.
* An **A panel** is the ``k_words = ceil(K / b)`` A words of one band of ``tr`` rows.
* A **B block** is ``block_tiles`` tile columns of ``k_words`` B words each, as many as fit
  in one half of the weight scratchpad.
* Output tiles are produced in the order ``for block: for band: for tile column in block``,
  each as ``tr`` **output rows** of ``tc`` values (out width = operand width). Every output
  tile consumes one **parameter word** (``tc`` x bias/multiplier/shift), and one residual
  row per output row when the residual is enabled.

The host zero-pads A and B to whole tiles (M to ``tr``, N to ``tc``, K to ``b``); padded
outputs are dropped by :func:`unpack_output`.

**Sparse mode** (``config.nm_sparsity = (N, M)``, command field ``nm``; format of the
compressed weights in :mod:`vitaccel.hw.spec.nm`). Each B word holds ``b`` compressed k-slots
(rows of ``NMWeights.values``) x ``tc`` columns, laid out like a dense B word, and a
**metadata word** travels with it on its own stream (``b`` x ``tc`` in-group indices,
:func:`vitaccel.hw.spec.nm.pack_index_rows` with ``rows_per_word = b``). ``b`` slots are
``b / N`` whole groups, so they meet the ``S = b * M / N`` consecutive original k's of one
**sparse A step**; the host sends each sparse A step as ``R = M / N`` ordinary A words (its
k's in chunks of ``b``), i.e. the A panel is packed exactly as in dense mode with K padded
to ``k_words * S``. A GEMM takes ``k_words = ceil(ceil(K / M) * N / b)`` k-steps per tile
instead of ``ceil(K / b)``. Sparse mode needs ``N`` a power of two dividing ``b``
(:func:`check_engine_config`).

Post-processing of an accumulator ``acc`` (the order the golden ``linear`` follows):
``sat32(acc + bias)`` -> ``requantize`` (round half up, saturate to out width) ->
``+ residual`` -> saturate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import AccelConfig, ConfigError
from .nm import NMWeights, compress, pack_index_rows
from .numerics import MAX_SHIFT, MULTIPLIER_BITS, int_range

__all__ = [
    "BIAS_BITS", "SHIFT_BITS", "PARAM_FIELDS", "COMMAND_FIELDS", "GemmPlan", "plan_gemm",
    "a_half_words", "b_half_words", "check_engine_config", "pack_elements", "pack_fields",
    "a_panel_words", "a_stream", "b_stream", "param_stream", "residual_stream",
    "output_tile_order", "unpack_output", "nm_words_per_step", "b_meta_stream",
]

#: Width of the requantizer input: the biased accumulator is saturated to this many bits.
BIAS_BITS = 32
#: Width of a per-channel right shift (0..MAX_SHIFT).
SHIFT_BITS = MAX_SHIFT.bit_length()
#: One output channel's post-processing parameters, LSB first: (name, bits, signed).
PARAM_FIELDS = (("bias", BIAS_BITS, True), ("multiplier", MULTIPLIER_BITS, False),
                ("shift", SHIFT_BITS, False))
#: Command word fields, LSB first: (name, bits).
COMMAND_FIELDS = (("k_words", 16), ("m_tiles", 16), ("n_blocks", 16), ("block_tiles", 16),
                  ("last_block_tiles", 16), ("unsigned_a", 1), ("residual", 1),
                  ("nm", 1))


def _word_bits(config: AccelConfig, elements: int) -> int:
    return elements * config.operand_width


def a_half_words(config: AccelConfig) -> int:
    """A words in one half of the double-buffered input scratchpad."""
    return config.input_spad_kib * 8192 // _word_bits(config, config.tile_rows * config.block_size)


def b_half_words(config: AccelConfig) -> int:
    """B words in one half of the double-buffered weight scratchpad."""
    return config.weight_spad_kib * 8192 // _word_bits(config, config.block_size * config.tile_cols)


def nm_words_per_step(config: AccelConfig) -> int:
    """``R = M / N``: A words per sparse k-step (1 without ``nm_sparsity``)."""
    if config.nm_sparsity is None:
        return 1
    n, m = config.nm_sparsity
    return m // n


def _sparse_k_words(config: AccelConfig, K: int) -> int:
    n, m = config.nm_sparsity
    return math.ceil(math.ceil(K / m) * n / config.block_size)


def check_engine_config(config: AccelConfig) -> None:
    """Raise :class:`ConfigError` if the matrix engine cannot be built for ``config``.

    The unsigned-A mode widens A by one bit, so the accumulator needs one bit more than
    :attr:`AccelConfig.min_acc_width`; both scratchpad halves must hold a ``max_k`` panel.
    Sparse mode (``nm_sparsity``) needs ``N`` a power of two dividing ``block_size`` (a B word
    then holds whole groups and a sparse step is a whole number of A words), the A half a
    whole number of sparse steps, and a ``max_k`` sparse panel in one A half.
    """
    if config.acc_width < config.min_acc_width + 1:
        raise ConfigError(
            f"acc_width: the matrix engine's unsigned-A mode needs {config.min_acc_width + 1} bits "
            f"for max_k={config.max_k}, got {config.acc_width}")
    k_words = math.ceil(config.max_k / config.block_size)
    for name, words in (("input_spad_kib", a_half_words(config)), ("weight_spad_kib", b_half_words(config))):
        if words < k_words:
            raise ConfigError(f"{name}: one half holds {words} words, a max_k={config.max_k} panel needs {k_words}")
    if config.nm_sparsity is not None:
        n, m = config.nm_sparsity
        if n & (n - 1) or config.block_size % n:
            raise ConfigError(f"nm_sparsity: the matrix engine's sparse mode needs N a power of two dividing "
                              f"block_size={config.block_size}, got {n}:{m}")
        steps = nm_words_per_step(config)
        panel = _sparse_k_words(config, config.max_k) * steps
        if a_half_words(config) % steps or a_half_words(config) < panel:
            raise ConfigError(f"input_spad_kib: one half holds {a_half_words(config)} A words, a max_k="
                              f"{config.max_k} {n}:{m} panel needs {panel} (and a multiple of {steps})")


@dataclass(frozen=True)
class GemmPlan:
    """How one GEMM is tiled onto the engine; built by :func:`plan_gemm`."""

    M: int
    K: int
    N: int
    tile_rows: int
    tile_cols: int
    block_size: int
    operand_width: int
    k_words: int
    m_tiles: int
    n_tiles: int
    block_tiles: int
    unsigned_a: bool
    residual: bool
    #: ``(N, M)`` for a sparse-mode GEMM (``k_words`` then counts compressed k-steps), else None.
    nm: tuple[int, int] | None = None

    @property
    def a_words_per_step(self) -> int:
        """A words per k-step: ``M / N`` in sparse mode, else 1."""
        return 1 if self.nm is None else self.nm[1] // self.nm[0]

    @property
    def a_panel_len(self) -> int:
        """A words of one band's panel."""
        return self.k_words * self.a_words_per_step

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_tiles / self.block_tiles)

    @property
    def last_block_tiles(self) -> int:
        return self.n_tiles - (self.n_blocks - 1) * self.block_tiles

    @property
    def out_bits(self) -> int:
        return self.operand_width

    def block_tile_columns(self, block: int) -> range:
        """Tile-column indices of B block ``block``."""
        start = block * self.block_tiles
        return range(start, min(start + self.block_tiles, self.n_tiles))

    def command(self) -> dict[str, int]:
        return {"k_words": self.k_words, "m_tiles": self.m_tiles, "n_blocks": self.n_blocks,
                "block_tiles": self.block_tiles, "last_block_tiles": self.last_block_tiles,
                "unsigned_a": int(self.unsigned_a), "residual": int(self.residual), "nm": int(self.nm is not None)}

    def command_word(self) -> int:
        return pack_fields(self.command(), COMMAND_FIELDS)

    @property
    def compute_cycles(self) -> int:
        """Issue cycles of the block grid with no stall (padded tiles included)."""
        return self.m_tiles * self.n_tiles * self.k_words


def plan_gemm(config: AccelConfig, M: int, K: int, N: int, *, unsigned_a: bool = False,
              residual: bool = False, nm: bool = False) -> GemmPlan:
    """Tile ``C[M x N] = A[M x K] B[K x N]`` for the engine of ``config``.

    With ``nm=True`` the GEMM runs in sparse mode with ``config.nm_sparsity`` weights (``K``
    is the dense reduction length; see the module docstring).

    Raises
    ------
    ValueError
        If a dimension is not a positive integer, ``K`` exceeds ``config.max_k``, a
        count does not fit its command field, or ``nm`` is asked of a config without
        ``nm_sparsity``.
    """
    for name, value in (("M", M), ("K", K), ("N", N)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if K > config.max_k:
        raise ValueError(f"K={K} exceeds max_k={config.max_k} of config {config.name!r}")
    check_engine_config(config)
    if nm and config.nm_sparsity is None:
        raise ValueError(f"nm: config {config.name!r} has no nm_sparsity, its engine has no sparse mode")
    b = config.block_size
    k_words = _sparse_k_words(config, K) if nm else math.ceil(K / b)
    m_tiles = math.ceil(M / config.tile_rows)
    n_tiles = math.ceil(N / config.tile_cols)
    block_tiles = min(n_tiles, b_half_words(config) // k_words)
    plan = GemmPlan(M=int(M), K=int(K), N=int(N), tile_rows=config.tile_rows, tile_cols=config.tile_cols,
                    block_size=b, operand_width=config.operand_width, k_words=k_words, m_tiles=m_tiles,
                    n_tiles=n_tiles, block_tiles=block_tiles, unsigned_a=bool(unsigned_a),
                    residual=bool(residual), nm=config.nm_sparsity if nm else None)
    for name, bits in COMMAND_FIELDS:
        if plan.command()[name] >= 1 << bits:
            raise ValueError(f"{name}={plan.command()[name]} does not fit the {bits}-bit command field "
                             f"(M={M}, K={K}, N={N})")
    return plan


# -- packing (host side) ------------------------------------------------------------------

def pack_fields(values: dict[str, int], fields) -> int:
    """Pack named integers LSB-first into one word; ``fields`` is ``(name, bits[, signed])``."""
    word, offset = 0, 0
    for field in fields:
        name, bits = field[0], field[1]
        value = int(values[name])
        signed = len(field) > 2 and field[2]
        lo, hi = int_range(bits, signed)
        if not lo <= value <= hi:
            raise ValueError(f"{name}={value} does not fit in {bits} {'signed' if signed else 'unsigned'} bits")
        word |= (value & ((1 << bits) - 1)) << offset
        offset += bits
    return word


def pack_elements(elements: np.ndarray, width: int) -> list[int]:
    """Pack the last axis of ``elements`` into integers, element 0 at the LSB.

    ``width`` is 8 or 16; values are taken modulo ``2**width`` (two's complement).
    """
    if width not in (8, 16):
        raise ValueError(f"element width must be 8 or 16, got {width}")
    arr = np.asarray(elements, dtype=np.int64)
    flat = arr.reshape(-1, arr.shape[-1]) & ((1 << width) - 1)
    raw = flat.astype("<u1" if width == 8 else "<u2")
    step = raw.shape[1] * raw.itemsize
    data = raw.tobytes()
    return [int.from_bytes(data[i:i + step], "little") for i in range(0, len(data), step)]


def _check_range(name: str, array: np.ndarray, bits: int, signed: bool) -> None:
    lo, hi = int_range(bits, signed)
    if array.size and (array.min() < lo or array.max() > hi):
        raise ValueError(f"{name} has values outside [{lo}, {hi}] "
                         f"({'signed' if signed else 'unsigned'} {bits}-bit)")


def _padded(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), dtype=np.int64)
    out[:array.shape[0], :array.shape[1]] = array
    return out


def a_panel_words(plan: GemmPlan, a: np.ndarray) -> list[list[int]]:
    """A words of every band: ``result[band][k_word]``."""
    a = np.asarray(a, dtype=np.int64)
    if a.shape != (plan.M, plan.K):
        raise ValueError(f"A must have shape ({plan.M}, {plan.K}), got {a.shape}")
    _check_range("A", a, plan.operand_width, not plan.unsigned_a)
    tr, b, length = plan.tile_rows, plan.block_size, plan.a_panel_len
    padded = _padded(a, plan.m_tiles * tr, length * b)
    tiles = padded.reshape(plan.m_tiles, tr, length, b).transpose(0, 2, 1, 3)
    words = pack_elements(tiles.reshape(plan.m_tiles * length, tr * b), plan.operand_width)
    return [words[i * length:(i + 1) * length] for i in range(plan.m_tiles)]


def a_stream(plan: GemmPlan, a: np.ndarray) -> list[int]:
    """The A words in the order the engine loads them (every band, once per B block)."""
    panels = a_panel_words(plan, a)
    one_pass = [word for panel in panels for word in panel]
    return one_pass * plan.n_blocks


def _b_tiles(plan: GemmPlan, rows: np.ndarray) -> np.ndarray:
    """``rows[k_words * b (or fewer), N]`` as ``(n_tiles * k_words, b * tc)``, in load order."""
    tc, b = plan.tile_cols, plan.block_size
    padded = _padded(rows, plan.k_words * b, plan.n_tiles * tc)
    tiles = padded.reshape(plan.k_words, b, plan.n_tiles, tc).transpose(2, 0, 1, 3)
    return tiles.reshape(plan.n_tiles * plan.k_words, b * tc)


def _nm_weights(plan: GemmPlan, b_matrix):
    """The compressed weights of a sparse-mode plan, checked against it."""
    n, m = plan.nm
    nmw = b_matrix if isinstance(b_matrix, NMWeights) else compress(b_matrix, n, m)
    if (nmw.n, nmw.m, nmw.k, nmw.columns) != (n, m, plan.K, plan.N):
        raise ValueError(f"B: {nmw.n}:{nmw.m} weights of {nmw.k} x {nmw.columns} do not match the plan's "
                         f"{n}:{m} K={plan.K} N={plan.N}")
    return nmw


def b_stream(plan: GemmPlan, b_matrix) -> list[int]:
    """The B words in load order: tile column by tile column, k-step by k-step.

    In sparse mode ``b_matrix`` is an :class:`~vitaccel.hw.spec.nm.NMWeights` (or a dense
    N:M-sparse matrix, compressed here) and the words hold its compressed rows.
    """
    if plan.nm is not None:
        return pack_elements(_b_tiles(plan, _nm_weights(plan, b_matrix).values), plan.operand_width)
    bm = np.asarray(b_matrix, dtype=np.int64)
    if bm.shape != (plan.K, plan.N):
        raise ValueError(f"B must have shape ({plan.K}, {plan.N}), got {bm.shape}")
    _check_range("B", bm, plan.operand_width, True)
    return pack_elements(_b_tiles(plan, bm), plan.operand_width)


def b_meta_stream(plan: GemmPlan, b_matrix) -> list[int]:
    """Sparse mode: one metadata word per B word, same order (padded slots get index 0)."""
    if plan.nm is None:
        raise ValueError("b_meta_stream: the plan is not a sparse-mode (nm) GEMM")
    indices = _b_tiles(plan, _nm_weights(plan, b_matrix).indices).reshape(-1, plan.tile_cols)
    return pack_index_rows(indices, plan.nm[1], rows_per_word=plan.block_size)


def output_tile_order(plan: GemmPlan) -> list[tuple[int, int]]:
    """``(band, tile_column)`` of every output tile, in the order the engine emits them."""
    return [(band, col) for block in range(plan.n_blocks) for band in range(plan.m_tiles)
            for col in plan.block_tile_columns(block)]


def param_stream(plan: GemmPlan, bias, multiplier, shift) -> list[int]:
    """One parameter word per output tile, in output order (scalars broadcast to N)."""
    tc = plan.tile_cols
    columns = {}
    for name, values in (("bias", bias), ("multiplier", multiplier), ("shift", shift)):
        padded = np.zeros(plan.n_tiles * tc, dtype=np.int64)  # padded channels: all zero
        try:
            padded[:plan.N] = np.broadcast_to(np.asarray(values, dtype=np.int64), (plan.N,))
        except ValueError:
            raise ValueError(f"{name} must be a scalar or have N={plan.N} entries, "
                             f"got shape {np.shape(values)}") from None
        columns[name] = padded
    if columns["shift"].max() > MAX_SHIFT or columns["shift"].min() < 0:
        raise ValueError(f"shift must be in 0..{MAX_SHIFT}")
    entry_bits = sum(f[1] for f in PARAM_FIELDS)
    words = []
    for tile in range(plan.n_tiles):
        word = 0
        for lane in range(tc):
            index = tile * tc + lane
            word |= pack_fields({k: v[index] for k, v in columns.items()}, PARAM_FIELDS) << (lane * entry_bits)
        words.append(word)
    return [words[col] for _, col in output_tile_order(plan)]


def residual_stream(plan: GemmPlan, residual: np.ndarray) -> list[int]:
    """One residual row (``tc`` values) per output row, in output order."""
    res = np.asarray(residual, dtype=np.int64)
    if res.shape != (plan.M, plan.N):
        raise ValueError(f"residual must have shape ({plan.M}, {plan.N}), got {res.shape}")
    _check_range("residual", res, plan.out_bits, True)
    tr, tc = plan.tile_rows, plan.tile_cols
    padded = _padded(res, plan.m_tiles * tr, plan.n_tiles * tc).reshape(plan.m_tiles, tr, plan.n_tiles, tc)
    rows = [padded[band, :, col, :] for band, col in output_tile_order(plan)]
    return pack_elements(np.stack(rows).reshape(-1, tc), plan.out_bits)


def unpack_output(plan: GemmPlan, beats: list[int], *, bits: int | None = None) -> np.ndarray:
    """The ``M x N`` int64 result from the engine's output rows (padding dropped).

    ``bits`` is the width of one element of a row: the output width by default, the
    accumulator width for the raw ``output_acc`` rows.
    """
    tr, tc = plan.tile_rows, plan.tile_cols
    bits = plan.out_bits if bits is None else bits
    expected = len(output_tile_order(plan)) * tr
    if len(beats) != expected:
        raise ValueError(f"expected {expected} output rows, got {len(beats)}")
    if bits in (8, 16, 32, 64):
        raw = np.frombuffer(b"".join(int(v).to_bytes(tc * bits // 8, "little") for v in beats),
                            dtype=f"<i{bits // 8}").astype(np.int64).reshape(-1, tr, tc)
    else:
        mask = (1 << bits) - 1
        fields = np.array([[(int(v) >> (col * bits)) & mask for col in range(tc)] for v in beats], dtype=object)
        raw = np.where(fields >= 1 << (bits - 1), fields - (1 << bits), fields).astype(np.int64).reshape(-1, tr, tc)
    out = np.zeros((plan.m_tiles * tr, plan.n_tiles * tc), dtype=np.int64)
    for index, (band, col) in enumerate(output_tile_order(plan)):
        out[band * tr:(band + 1) * tr, col * tc:(col + 1) * tc] = raw[index]
    return out[:plan.M, :plan.N]
