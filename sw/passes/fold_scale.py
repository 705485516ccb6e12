"""Fold a scalar multiply of a matmul result into the matmul (attention's ``1/sqrt(d)``)."""

from __future__ import annotations

from vitaccel.sw.ir import Graph

from .base import Pass

__all__ = ["FoldScaleIntoMatmul"]


class FoldScaleIntoMatmul(Pass):
    """``scale(matmul(a, b, alpha), c)`` -> ``matmul(a, b, alpha * c)`` when the matmul has
    no other reader; the quantizer then folds ``alpha`` into the score scale for free."""

    name = "fold-scale"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph:
            if node.kind != "scale":
                continue
            source = graph.node(node.inputs[0])
            if source.kind == "matmul" and graph.use_count(source.name) == 1:
                source.attrs = dict(source.attrs, alpha=source.attrs.get("alpha", 1.0) * node.attrs["alpha"])
                graph.replace_uses(node.name, source.name)
                graph.remove(node.name)
                changed = True
        return changed
