"""Expand fused ``scaled_dot_product_attention`` into the matmul/softmax/matmul the units run."""

from __future__ import annotations

from vitaccel.sw.ir import Graph, Node

from .base import Pass

__all__ = ["ExpandAttention"]


class ExpandAttention(Pass):
    """``sdpa(q, k, v, scale)`` -> ``matmul(softmax(matmul(q, k, transpose_b, alpha=scale)), v)``.

    HuggingFace ViT exports SDPA; the zoo ViT writes the three ops out. After this pass both
    have the same form.
    """

    name = "expand-attention"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph:
            if node.kind != "sdpa":
                continue
            q, k, v = node.inputs
            q_shape, k_shape = graph.node(q).shape, graph.node(k).shape
            scores_shape = tuple(q_shape[:-1]) + (k_shape[-2],)
            scores = graph.insert_before(node.name, Node(
                graph.fresh_name(f"{node.name}_scores"), "matmul", [q, k], scores_shape,
                {"alpha": node.attrs["scale"], "transpose_b": True}, node.source))
            probs = graph.insert_before(node.name, Node(
                graph.fresh_name(f"{node.name}_probs"), "softmax", [scores.name], scores_shape,
                {}, node.source))
            node.kind, node.inputs, node.attrs = "matmul", [probs.name, v], {"alpha": 1.0, "transpose_b": False}
            changed = True
        return changed
