"""Golden kernels for N:M sparse weights (format: ``hw/spec/nm.py``).

:func:`nm_matmul` computes ``A @ W`` from the compressed weights the way the sparse matrix
engine does: for every kept weight it *gathers* the matching activation by its in-group
index (the non-zero selection stage) and multiplies only those, ``n/m`` of the dense MACs. It
is bit-exact with :func:`vitaccel.sim.golden.gemm.matmul` on :func:`decompress`-ed weights.

:func:`nm_linear` is the quantized linear layer with a compressed weight operand; its
post-processing (bias, requantization, residual) is :func:`vitaccel.sim.golden.gemm.linear`'s.
"""

from __future__ import annotations

import numpy as np

from vitaccel.hw.spec.nm import NMWeights
from vitaccel.sim.golden import gemm

__all__ = ["nm_matmul", "nm_linear"]

#: Largest gathered-activation block (elements) materialised at once: bounds memory on
#: DeiT-sized GEMMs while keeping the loop over output columns short.
_GATHER_ELEMENTS = 1 << 22
_INT64_LIMIT = 1 << 63


def _activations(a) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"nm_matmul: activations must hold integers, got dtype {arr.dtype}")
    if arr.ndim < 1:
        raise ValueError("nm_matmul: activations must have at least one axis (K)")
    return arr.astype(np.int64)


def nm_matmul(a, nmw: NMWeights) -> np.ndarray:
    """Exact ``a @ decompress(nmw)`` as int64, computed from the compressed weights.

    Parameters
    ----------
    a : integer array, shape ``(..., M, K)`` or ``(K,)``
    nmw : NMWeights with ``k == K``

    Raises
    ------
    ValueError
        If ``a`` is not an integer array, its last axis is not ``nmw.k``, or sums could overflow int64.
    """
    if not isinstance(nmw, NMWeights):
        raise ValueError(f"nm_matmul: weights must be NMWeights, got {type(nmw).__name__}")
    a = _activations(a)
    if a.shape[-1] != nmw.k:
        raise ValueError(f"nm_matmul: activations have K={a.shape[-1]}, weights were compressed with k={nmw.k}")
    vector = a.ndim == 1
    if vector:
        a = a[None]
    max_a = int(np.abs(a).max()) if a.size else 0
    max_w = int(np.abs(nmw.values.astype(np.int64)).max()) if nmw.values.size else 0
    if nmw.groups * nmw.n * max_a * max_w >= _INT64_LIMIT:
        raise ValueError("nm_matmul: sums may overflow int64")
    # Zero-pad K to whole groups (padded weights are zero, see hw/spec/nm.py), then view the
    # activations as (..., M, groups, m): a kept weight at (group g, index i) meets a[..., g, i].
    pad = nmw.groups * nmw.m - nmw.k
    if pad:
        a = np.concatenate([a, np.zeros((*a.shape[:-1], pad), dtype=np.int64)], axis=-1)
    grouped = a.reshape(*a.shape[:-1], nmw.groups, nmw.m)
    indices = nmw.grouped_indices().astype(np.intp)            # (groups, n, N)
    values = nmw.grouped_values().astype(np.int64)             # (groups, n, N)
    rows = int(np.prod(grouped.shape[:-2], dtype=np.int64))
    step = max(1, _GATHER_ELEMENTS // max(1, rows * nmw.groups * nmw.n))
    group_axis = np.arange(nmw.groups)[:, None, None]
    out = np.empty((*a.shape[:-1], nmw.columns), dtype=np.int64)
    for start in range(0, nmw.columns, step):
        cols = slice(start, start + step)
        # The non-zero selection stage: gather one activation per kept weight.
        selected = grouped[..., group_axis, indices[:, :, cols]]  # (..., M, groups, n, cols)
        out[..., cols] = np.einsum("...gsc,gsc->...c", selected, values[:, :, cols])
    return out[0] if vector else out


def nm_linear(a, nmw: NMWeights, bias, multiplier, shift, *, residual=None, out_bits: int = 8) -> np.ndarray:
    """Quantized linear layer with N:M weights: ``gemm.linear(a, decompress(nmw), ...)``, bit for bit.

    The sparse accumulator enters :func:`vitaccel.sim.golden.gemm.linear` as its bias over an
    empty (K = 0) product, the way the golden machine feeds K-split partial sums, so the
    post-processing order (bias, 32-bit saturation, requantization, residual) is defined there only.
    """
    acc = nm_matmul(a, nmw)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)
    empty_a = np.zeros((*acc.shape[:-1], 0), dtype=np.int64)
    empty_w = np.zeros((0, acc.shape[-1]), dtype=np.int64)
    return gemm.linear(empty_a, empty_w, acc, multiplier, shift, residual=residual, out_bits=out_bits)
