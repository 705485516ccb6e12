"""Remove nodes whose value nobody reads."""

from __future__ import annotations

from vitaccel.sw.ir import Graph

from .base import Pass

__all__ = ["DeadCodeElimination"]


class DeadCodeElimination(Pass):
    name = "dead-code"

    def run(self, graph: Graph) -> bool:
        return graph.remove_dead()
