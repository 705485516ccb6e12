"""The layer-by-layer integer reference: a :class:`QGraph` executed op by op with the golden
kernels, vectorised over a batch of images. The golden machine must agree with it bit for bit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from vitaccel.hw.spec.numerics import requantize
from vitaccel.sim.golden import attention, gemm, nonlinear, topk
from vitaccel.sw.qgraph import QGraph, QGraphError, QOp

__all__ = ["run_reference", "quantize_images", "OP_SEMANTICS"]


def _im2col(x: np.ndarray, op: QOp) -> np.ndarray:
    batch, c, h, w = x.shape
    p = op.attrs["patch"]
    patches = x.reshape(batch, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (h // p) * (w // p), c * p * p)


def _linear(op: QOp, x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
            residual: np.ndarray | None = None) -> np.ndarray:
    return gemm.linear(x, weight, bias, op.attrs["multiplier"], op.attrs["shift"], residual=residual)


def _matmul(op: QOp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if op.attrs.get("transpose_b"):
        b = np.swapaxes(b, -1, -2)
    acc = gemm.matmul(a, b)
    if not op.attrs.get("requant"):
        return acc
    return requantize(acc, op.attrs["multiplier"], op.attrs["shift"])


def _split_heads(op: QOp, x: np.ndarray) -> np.ndarray:
    batch, t, width = x.shape
    h, chunks = op.attrs["num_heads"], op.attrs.get("chunks", 1)
    return x.reshape(batch, t, chunks, h, width // (chunks * h))[:, :, op.attrs.get("index", 0)].transpose(0, 2, 1, 3)


def _merge_heads(op: QOp, x: np.ndarray) -> np.ndarray:
    batch, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, t, h * d)


def _concat(op: QOp, *parts: np.ndarray) -> np.ndarray:
    batch = max(p.shape[0] for p in parts)
    return np.concatenate([np.broadcast_to(p, (batch, *p.shape[1:])) for p in parts], axis=op.attrs["axis"] + 1)


def _slice(op: QOp, x: np.ndarray) -> np.ndarray:
    index = [slice(None)] * x.ndim
    index[op.attrs["axis"] + 1] = slice(op.attrs["start"], op.attrs["stop"])
    return x[tuple(index)]


def _gather_tokens(op: QOp, x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    indices = np.broadcast_to(indices, (x.shape[0], indices.shape[-1])).astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= x.shape[1]):
        raise QGraphError(f"{op!r}: an index is outside the {x.shape[1]} tokens "
                          f"(range {int(indices.min())}..{int(indices.max())})")
    return np.take_along_axis(x, indices[:, :, None], axis=1)


def _token_scores(op: QOp, probs: np.ndarray) -> np.ndarray:
    # CLS row of every head, tokens 1..T-1, summed over heads (rank-equivalent to EViT's mean).
    return probs[:, :, 0, 1:].astype(np.int64).sum(axis=1)


def _package_token(op: QOp, x: np.ndarray, scores: np.ndarray, kept: np.ndarray) -> np.ndarray:
    batch, n = x.shape[0], x.shape[1]
    kept = np.broadcast_to(kept, (batch, kept.shape[-1]))
    return np.stack([topk.package_token(x[b], scores[b], np.setdiff1d(np.arange(n), kept[b]))[None]
                     for b in range(batch)])


def _sparse_attention(op: QOp, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    from vitaccel.hw.spec.sparse import MaskPredictParams

    predict = MaskPredictParams(op.attrs["margin"])
    batch = max(q.shape[0], k.shape[0], v.shape[0])
    q, k, v = (np.broadcast_to(x, (batch, *x.shape[1:])) for x in (q, k, v))
    out = np.empty(q.shape, np.int8)
    for b, h in np.ndindex(q.shape[:2]):
        mask = attention.predict_mask(q[b, h], k[b, h], predict)
        out[b, h] = attention.masked_attention(q[b, h], k[b, h], v[b, h], mask, op.attrs["params"],
                                               op.attrs["multiplier"], op.attrs["shift"])
    return out


def _topk(op: QOp, scores: np.ndarray) -> np.ndarray:
    k = op.attrs["k"]
    return np.stack([topk.topk(row, k)[0] for row in scores]).reshape(len(scores), k)


#: kind -> function(op, *inputs) on batched arrays (leading batch axis); see sw/qgraph.py.
OP_SEMANTICS: dict[str, Callable[..., np.ndarray]] = {
    "im2col": lambda op, x: _im2col(x, op),
    "linear": _linear,
    "matmul": _matmul,
    "softmax": lambda op, x: nonlinear.softmax(x, op.attrs["params"]),
    "gelu": lambda op, x: nonlinear.gelu(x, op.attrs["table"]),
    "layernorm": lambda op, x: nonlinear.layernorm(x, op.attrs["params"]),
    "add": lambda op, a, b: nonlinear.add(a, b, op.attrs["params"]),
    "reshape": lambda op, x: x.reshape(x.shape[0], *op.attrs["shape"]),
    "split_heads": _split_heads,
    "merge_heads": _merge_heads,
    "transpose": lambda op, x: x.transpose(0, *(p + 1 for p in op.attrs["perm"])),
    "concat": _concat,
    "slice": _slice,
    "select_token": lambda op, x: x[:, op.attrs["index"]:op.attrs["index"] + 1],
    "gather_tokens": _gather_tokens,
    "token_scores": _token_scores,
    "topk": _topk,
    "package_token": _package_token,
    "sparse_attention": _sparse_attention,
}


def quantize_images(qgraph: QGraph, images: np.ndarray) -> np.ndarray:
    """Float images (normalised like the model's input) -> int8 graph input codes."""
    from vitaccel.hw.spec.numerics import quantize

    scale = qgraph.tensors[qgraph.inputs[0]].scale
    return quantize(images, scale).astype(np.int8)


def run_reference(qgraph: QGraph, images_int8: np.ndarray, *, keep_all: bool = True) -> dict[str, np.ndarray]:
    """Execute ``qgraph`` on a batch of int8 images ``[B, C, H, W]``.

    Returns every tensor (``keep_all``) or just the outputs, each with a leading batch axis
    (constants are returned without one), in the tensor's dtype.
    """
    images_int8 = np.asarray(images_int8)
    input_tensor = qgraph.tensors[qgraph.inputs[0]]
    if images_int8.ndim != len(input_tensor.shape) + 1 or images_int8.shape[1:] != input_tensor.shape:
        raise QGraphError(f"images must have shape [B, {', '.join(map(str, input_tensor.shape))}], "
                          f"got {list(images_int8.shape)}")
    if images_int8.dtype != np.int8:
        raise QGraphError(f"images must be int8 codes (see quantize_images), got {images_int8.dtype}")
    with threadpool_limits(1):  # BLAS threads only spin on a shared machine at these sizes
        return _execute(qgraph, images_int8, keep_all)


def _execute(qgraph: QGraph, images_int8: np.ndarray, keep_all: bool) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {qgraph.inputs[0]: images_int8}
    constants = {name: value[None] for name, value in qgraph.constants.items()}  # batch axis of 1
    for op in qgraph.ops:
        args = [values[name] if name in values else constants[name] for name in op.inputs]
        if op.kind in ("linear",):  # weights and biases are not batched
            args = [args[0], qgraph.constants[op.inputs[1]], qgraph.constants[op.inputs[2]], *args[3:]]
        result = OP_SEMANTICS[op.kind](op, *args)
        values[op.output] = np.asarray(result).astype(qgraph.tensors[op.output].numpy_dtype)
    if keep_all:
        return values
    return {name: values[name] for name in qgraph.outputs}
