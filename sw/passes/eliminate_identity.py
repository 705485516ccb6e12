"""Remove ``identity`` nodes (eval-mode dropout, clone, contiguous, alias)."""

from __future__ import annotations

from vitaccel.sw.ir import Graph

from .base import Pass

__all__ = ["EliminateIdentity"]


class EliminateIdentity(Pass):
    name = "eliminate-identity"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph:
            if node.kind == "identity":
                graph.replace_uses(node.name, node.inputs[0])
                graph.remove(node.name)
                changed = True
        return changed
