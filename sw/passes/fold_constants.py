"""Evaluate nodes whose inputs are all constants (parameter expands, HF's mask arithmetic)."""

from __future__ import annotations

import torch

from vitaccel.sw.ir import Graph, Node, call_aten
from vitaccel.sw.ir.graph import evaluate_node

from .base import Pass

__all__ = ["FoldConstants"]

aten = torch.ops.aten
#: Input-less aten ops that are deterministic (HuggingFace builds its attention mask from them).
_SOURCE_OPS = {aten.arange.default, aten.arange.start, aten.arange.start_step, aten.full.default,
               aten.zeros.default, aten.ones.default, aten.scalar_tensor.default}
#: Kinds that compute; ``input`` and ``const`` are leaves.
_FOLDABLE = {"aten", "getitem", "identity", "layout", "add", "scale", "linear", "matmul", "concat"}


class FoldConstants(Pass):
    """Replace a node whose inputs are all ``const`` by a ``const`` holding its value."""

    name = "fold-constants"

    def run(self, graph: Graph) -> bool:
        changed = False
        nodes = graph.by_name()
        for node in graph:
            if node.kind not in _FOLDABLE or not all(nodes[i].is_const or _const_tuple(nodes[i], nodes)
                                                     for i in node.inputs):
                continue
            if node.kind == "aten" and not node.inputs and node.attrs["target"] not in _SOURCE_OPS:
                continue  # an input-less op we do not know might be random or stateful
            values = [_value(nodes[i], nodes) for i in node.inputs]
            with torch.no_grad():
                value = call_aten(node, values) if node.kind == "aten" else evaluate_node(node, values, None, 1)
            if not isinstance(value, torch.Tensor):
                continue  # tuple-valued: folded when its getitem is
            node.kind, node.inputs = "const", []
            node.attrs = {"value": value.detach().clone()}
            node.shape = tuple(value.shape)
            nodes[node.name] = node
            changed = True
        if changed:
            graph.remove_dead()
        return changed


def _const_tuple(node: Node, nodes: dict[str, Node]) -> bool:
    """A tuple-valued aten node all of whose inputs are constant."""
    return node.kind == "aten" and bool(node.shape) and isinstance(node.shape[0], tuple) \
        and all(nodes[i].is_const for i in node.inputs)


def _value(node: Node, nodes: dict[str, Node]):
    if node.is_const:
        return node.attrs["value"]
    return call_aten(node, [nodes[i].attrs["value"] for i in node.inputs])
