"""Let ``matmul`` read a transposed right operand directly (``q @ k^T``)."""

from __future__ import annotations

from vitaccel.sw.ir import Graph, Node

from .base import Pass
from .layouts import classify, strip_batch

__all__ = ["MatmulTransposeB"]


class MatmulTransposeB(Pass):
    """``matmul(a, layout(x, I))`` where ``I`` swaps the last two axes of a recognisable
    layout -> ``matmul(a, layout(x, I^T), transpose_b=True)``: the matrix engine streams
    ``K^T`` by reading ``K`` row-wise, so no transpose is ever materialised."""

    name = "matmul-transpose-b"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph:
            if node.kind != "matmul" or node.attrs.get("transpose_b"):
                continue
            b = graph.node(node.inputs[1])
            if b.kind != "layout" or len(b.shape) < 3:
                continue
            source = graph.node(b.inputs[0])
            swapped = b.attrs["index"].transpose(-1, -2).contiguous()
            plain = strip_batch(b.attrs["index"], source.shape)
            flipped = strip_batch(swapped, source.shape)
            if plain is None or flipped is None or classify(*plain) is not None or classify(*flipped) is None:
                continue  # only when it turns an unknown layout into a known one
            shape = tuple(b.shape[:-2]) + (b.shape[-1], b.shape[-2])
            new = graph.insert_before(node.name, Node(graph.fresh_name(f"{b.name}_t"), "layout",
                                                      [source.name], shape, {"index": swapped}, b.source))
            node.inputs = [node.inputs[0], new.name]
            node.attrs = dict(node.attrs, transpose_b=True)
            changed = True
        if changed:
            graph.remove_dead()
        return changed
