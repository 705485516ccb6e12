"""Fold a scalar multiply into the matmul or add that produces its operand.

Attention's ``1/sqrt(d)`` folds into the score matmul; DeiT's distilled head
``(cls_logits + distillation_logits) / 2`` into the add (whose requantization absorbs a
positive factor for free).
"""

from __future__ import annotations

from vitaccel.sw.ir import Graph

from .base import Pass

__all__ = ["FoldScaleIntoMatmul"]

#: Producers whose ``alpha`` attribute multiplies their result.
_ALPHA_KINDS = ("matmul", "add")


class FoldScaleIntoMatmul(Pass):
    """``scale(matmul(a, b, alpha), c)`` -> ``matmul(a, b, alpha * c)`` when the matmul has
    no other reader; the quantizer then folds ``alpha`` into the score scale for free. The
    same for ``add`` with ``c > 0``: its int8 output requantizes each input by ``alpha``
    (a negative factor would flip the sign the add's unsigned multipliers cannot)."""

    name = "fold-scale"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph:
            if node.kind != "scale":
                continue
            source = graph.node(node.inputs[0])
            alpha = node.attrs["alpha"]
            if (source.kind in _ALPHA_KINDS and graph.use_count(source.name) == 1
                    and (source.kind == "matmul" or alpha > 0)):
                source.attrs = dict(source.attrs, alpha=source.attrs.get("alpha", 1.0) * alpha)
                graph.replace_uses(node.name, source.name)
                graph.remove(node.name)
                changed = True
        return changed
