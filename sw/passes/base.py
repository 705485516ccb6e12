"""The pass interface and the argument helpers passes share."""

from __future__ import annotations

from typing import Any

from vitaccel.sw.ir import Graph, Node, Ref

__all__ = ["Pass", "argument", "input_of"]


class Pass:
    """A graph rewrite. ``run(graph)`` edits the graph in place and returns whether it changed."""

    name = "pass"

    def run(self, graph: Graph) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__


def argument(node: Node, position: int, keyword: str | None = None, default: Any = None) -> Any:
    """An ``aten`` node's argument by position or keyword (a :class:`Ref` or a literal)."""
    args = node.attrs["args"]
    if position < len(args):
        return args[position]
    return node.attrs.get("kwargs", {}).get(keyword, default) if keyword else default


def input_of(node: Node, ref: Any) -> str | None:
    """The input node name a :class:`Ref` stands for, or None for a literal."""
    return node.inputs[ref.index] if isinstance(ref, Ref) else None
