"""Sanger sparse attention for compiled models: ``vitaccel compile --sparse-attention SPEC``.

Each attention of a quantized graph (``matmul(q, k, transpose_b)`` -> ``softmax`` ->
``matmul(probs, v)``) becomes one ``sparse_attention`` op (see :mod:`vitaccel.sw.qgraph`),
which the back end lowers to one SPARSE_ATTN per head with ``predict=1``: the accelerator
predicts each image's mask from its own Q and K at run time (4-bit scores against
``row max - margin``, :mod:`vitaccel.hw.spec.sparse`) and packs it on chip.

SPEC (:meth:`SparseAttentionSpec.parse`):

* ``D`` or ``density=D`` (``0 < D <= 1``): a target mean mask density. Calibration picks, layer
  by layer, the largest margin whose mean density over the calibration images is at most
  ``D`` (earlier layers already sparse, as they will run). Margin 0 keeps every row's
  maximum, so a layer whose ties exceed ``D`` at margin 0 gets margin 0 and a higher density.
* ``margin=N`` (an integer, ``0 <= N < PREDICT_MARGIN_LIMIT``): the same margin in every layer.

An attention whose probabilities something else reads (the CLS row that token pruning ranks
tokens by) stays dense: the sparse unit never writes the probabilities out. The analysis
(:func:`find_attentions`) says which and why.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec.sparse import PREDICT_MARGIN_LIMIT
from vitaccel.sw.qgraph import QGraph, QOp

__all__ = ["SparseAttentionSpec", "AttentionSite", "find_attentions", "predicted_gaps", "margin_for_density",
           "sparsify_attention", "image_masks", "measured_density", "SPEC_HELP"]

#: The SPEC syntax, as ``--help`` shows it.
SPEC_HELP = ("D or density=D: target mean attention density 0 < D <= 1, a margin per layer calibrated to it; "
             f"margin=N: the same margin 0 <= N < {PREDICT_MARGIN_LIMIT} in every layer")


@dataclass(frozen=True)
class SparseAttentionSpec:
    """What ``--sparse-attention`` asks for: a target ``density`` or a fixed ``margin`` (one of them)."""

    density: float | None = None
    margin: int | None = None

    def __post_init__(self) -> None:
        if (self.density is None) == (self.margin is None):
            raise ValueError("give a target density or a margin, not both and not neither")
        if self.density is not None and not (isinstance(self.density, (int, float)) and not isinstance(
                self.density, bool) and 0 < self.density <= 1):
            raise ValueError(f"density must be in (0, 1], got {self.density!r}")
        if self.margin is not None and (isinstance(self.margin, bool) or not isinstance(self.margin, int)
                                        or not 0 <= self.margin < PREDICT_MARGIN_LIMIT):
            raise ValueError(f"margin must be an integer in 0..{PREDICT_MARGIN_LIMIT - 1}, got {self.margin!r}")

    @classmethod
    def parse(cls, text: str | float) -> "SparseAttentionSpec":
        """``"0.5"``, ``"density=0.5"`` or ``"margin=40"`` (a float means a density).

        Raises
        ------
        ValueError
            With one line saying what is wrong and what is accepted.
        """
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return cls(density=float(text))
        match = re.fullmatch(r"\s*(?:(density|margin)\s*=\s*)?([^\s=]+)\s*", str(text))
        if match is None:
            raise ValueError(f"{text!r} is not a SPEC ({SPEC_HELP})")
        key, value = match.group(1) or "density", match.group(2)
        try:
            if key == "margin":
                return cls(margin=int(value))
            return cls(density=float(value))
        except ValueError as err:
            if "must be" in str(err):
                raise
            raise ValueError(f"{text!r}: {value!r} is not a number ({SPEC_HELP})") from None

    def __str__(self) -> str:
        return f"margin={self.margin}" if self.margin is not None else f"density={self.density:g}"


@dataclass(frozen=True)
class AttentionSite:
    """One attention of a QGraph: its three ops, and why it must stay dense (``dense_reason``)."""

    scores: QOp
    softmax: QOp
    context: QOp
    dense_reason: str | None = None

    @property
    def q(self) -> str:
        return self.scores.inputs[0]

    @property
    def k(self) -> str:
        return self.scores.inputs[1]

    @property
    def v(self) -> str:
        return self.context.inputs[1]

    @property
    def name(self) -> str:
        """The attention's output tensor (which the ``sparse_attention`` op keeps)."""
        return self.context.output


def find_attentions(qgraph: QGraph) -> list[AttentionSite]:
    """Every ``matmul(q, k, transpose_b)`` -> ``softmax`` -> ``matmul(probs, v, requant)`` chain,
    in program order. ``dense_reason`` is set where another op reads the scores or the
    probabilities (then the chain must stay dense)."""
    sites = []
    for op in qgraph.ops:
        if op.kind != "softmax":
            continue
        scores = qgraph.producer(op.inputs[0])
        if scores is None or scores.kind != "matmul" or not scores.attrs.get("transpose_b") \
                or scores.attrs.get("requant"):
            continue
        readers = qgraph.consumers(op.output)
        contexts = [r for r in readers if r.kind == "matmul" and r.inputs[0] == op.output
                    and r.attrs.get("requant") and not r.attrs.get("transpose_b")]
        if len(contexts) != 1:
            continue
        shapes = {tuple(qgraph.tensors[name].shape) for name in (*scores.inputs, contexts[0].inputs[1])}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            continue   # not [heads, tokens, head_dim] for Q, K and V alike
        reason = None
        others = [r for r in readers if r is not contexts[0]]
        if others:
            reason = f"its probabilities are read by {others[0].kind} {others[0].output!r}"
        elif len(qgraph.consumers(scores.output)) != 1 or scores.output in qgraph.outputs \
                or op.output in qgraph.outputs:
            reason = "its scores or probabilities are read elsewhere"
        sites.append(AttentionSite(scores, op, contexts[0], reason))
    return sites


def predicted_gaps(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``rowmax - pred`` of the predicted scores of int8 ``q``, ``k`` ``[..., T, d]``: entry
    ``(i, j)`` is kept by a margin ``m`` iff its gap is at most ``m`` (the rule of
    :func:`vitaccel.sim.golden.attention.predict_mask`, vectorised over the leading axes)."""
    from vitaccel.sim.golden.attention import predicted_scores

    pred = predicted_scores(np.asarray(q, np.int64), np.asarray(k, np.int64))
    return pred.max(axis=-1, keepdims=True) - pred


def margin_for_density(gaps: np.ndarray, target: float) -> tuple[int, float]:
    """The largest margin whose kept fraction of ``gaps`` is at most ``target`` (0 if even margin
    0 keeps more), and the density it keeps. Exact: the kept fraction only steps at gap values."""
    flat = np.sort(np.asarray(gaps, np.int64).ravel())
    allowed = int(np.floor(target * flat.size + 1e-9))
    if allowed >= flat.size:
        margin = int(flat[-1])
    else:
        margin = max(0, int(flat[allowed]) - 1)
    margin = min(margin, PREDICT_MARGIN_LIMIT - 1)
    return margin, float(np.count_nonzero(flat <= margin) / flat.size)


def _sparse_op(site: AttentionSite, margin: int) -> QOp:
    return QOp("sparse_attention", [site.q, site.k, site.v], site.context.output,
               {"params": site.softmax.attrs["params"], "multiplier": int(site.context.attrs["multiplier"]),
                "shift": int(site.context.attrs["shift"]), "margin": int(margin)},
               site.context.source or site.scores.source)


def _replace(qgraph: QGraph, site: AttentionSite, margin: int) -> None:
    """Put the ``sparse_attention`` op in place of ``site``'s three ops (in place)."""
    drop = {id(site.scores), id(site.softmax)}
    qgraph.ops = [_sparse_op(site, margin) if op is site.context else op
                  for op in qgraph.ops if id(op) not in drop]
    for name in (site.scores.output, site.softmax.output):
        qgraph.tensors.pop(name, None)


def sparsify_attention(qgraph: QGraph, spec: SparseAttentionSpec, calib_int8: np.ndarray, *,
                       progress: Callable[[str, float], Any] | None = None) -> tuple[QGraph, dict[str, Any]]:
    """A copy of ``qgraph`` with every attention that can be made sparse replaced by a
    ``sparse_attention`` op, and the manifest's record of it.

    ``calib_int8`` are the int8 calibration images ``[B, C, H, W]``
    (:func:`~vitaccel.sw.reference.quantize_images`). Every layer's mean density over them is
    measured, in order, with the layers before it already sparse; with a target density, each
    margin is calibrated from that measurement (:func:`margin_for_density`).

    The record: ``spec``, ``layers`` (per attention: ``name``, ``heads``, ``tokens``,
    ``head_dim``, ``margin`` and calibration ``density``, or ``dense`` with the reason),
    ``mean_density`` (over the sparse layers, weighted by their score count) and
    ``calib_images``.
    """
    from vitaccel.sw.reference import run_reference

    graph = copy.copy(qgraph)
    graph.ops, graph.tensors = list(qgraph.ops), dict(qgraph.tensors)
    sites = find_attentions(graph)
    layers: list[dict[str, Any]] = []
    kept = total = 0
    for number, site in enumerate(sites):
        heads, tokens, head_dim = graph.tensors[site.q].shape
        layer: dict[str, Any] = {"name": site.name, "heads": heads, "tokens": tokens, "head_dim": head_dim}
        if site.dense_reason is not None:
            layers.append({**layer, "dense": site.dense_reason})
            continue
        if progress is not None:
            progress(f"sparse attention {number + 1}/{len(sites)}", number / max(1, len(sites)))
        values = run_reference(_prefix(graph, site), calib_int8)
        gaps = predicted_gaps(values[site.q], values[site.k])
        if spec.margin is not None:
            margin = spec.margin
            density = float(np.count_nonzero(gaps <= margin) / gaps.size)
        else:
            margin, density = margin_for_density(gaps, spec.density)
        _replace(graph, site, margin)
        layers.append({**layer, "margin": margin, "density": round(density, 6)})
        kept += density * gaps.size
        total += gaps.size
    graph.verify()
    record = {"spec": str(spec), "layers": layers, "mean_density": round(kept / total, 6) if total else None,
              "calib_images": int(len(calib_int8))}
    return graph, record


def _prefix(graph: QGraph, site: AttentionSite) -> QGraph:
    """``graph`` cut after the op producing the later of ``site``'s Q and K (the reference then
    computes just what the calibration of this layer reads)."""
    last = max(i for i, op in enumerate(graph.ops) if op.output in (site.q, site.k))
    prefix = copy.copy(graph)
    prefix.ops = graph.ops[:last + 1]
    prefix.outputs = [site.q, site.k]
    return prefix


def image_masks(qgraph: QGraph, images_int8: np.ndarray) -> dict[str, np.ndarray]:
    """Per ``sparse_attention`` op (by output name), the bool masks the accelerator predicts on
    ``images_int8`` ``[B, C, H, W]``: ``[B, heads, T, T]``."""
    from vitaccel.sw.reference import run_reference

    ops = [op for op in qgraph.ops if op.kind == "sparse_attention"]
    if not ops:
        return {}
    values = run_reference(qgraph, images_int8)
    return {op.output: predicted_gaps(values[op.inputs[0]], values[op.inputs[1]]) <= op.attrs["margin"]
            for op in ops}


def measured_density(masks: dict[str, np.ndarray]) -> tuple[float | None, dict[str, float]]:
    """The mean density over all of ``masks`` (:func:`image_masks`), and per op."""
    kept = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.size for mask in masks.values())
    return (kept / total if total else None), {name: float(mask.mean()) for name, mask in masks.items()}
