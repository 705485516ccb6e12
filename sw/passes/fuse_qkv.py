"""Fuse separate query/key/value projections (HuggingFace) into one QKV linear (timm form)."""

from __future__ import annotations

import torch

from vitaccel.sw.ir import Graph, Node

from .base import Pass
from .layouts import reference_map

__all__ = ["FuseQKV"]


def _split_user(graph: Graph, linear: Node) -> Node | None:
    """The single ``split_heads`` (one chunk) layout reading ``linear``, if that is its only use."""
    users = graph.users(linear.name)
    if len(users) != 1 or graph.use_count(linear.name) != 1:
        return None
    user = users[0]
    pattern = user.attrs.get("pattern")
    if user.kind == "layout" and pattern and pattern[0] == "split_heads" and pattern[1]["chunks"] == 1:
        return user
    return None


def _fused_name(graph: Graph, weights: list[Node], suffix: str) -> str:
    names = [w.attrs.get("qualified_name", w.name) for w in weights]
    prefix = names[0].rsplit(".", 2)[0] if names[0].count(".") >= 2 else names[0]
    return prefix + f".qkv.{suffix}" if all(n.startswith(prefix) for n in names) else graph.fresh_name(f"qkv_{suffix}")


class FuseQKV(Pass):
    """Three biased linears of one input, each read only by a one-chunk ``split_heads`` of the
    same head count, become one linear of triple width read by three-chunk ``split_heads``.

    The zoo ViT is already in this form; afterwards HF ViTs are too, and the backend runs one
    GEMM instead of three (one activation scale for Q, K and V, as in the zoo model).
    """

    name = "fuse-qkv"

    def run(self, graph: Graph) -> bool:
        changed = False
        for source in graph:
            linears = [n for n in graph.users(source.name)
                       if n.kind == "linear" and n.inputs[0] == source.name and len(n.inputs) == 3]
            splits = [_split_user(graph, n) for n in linears]
            if len(linears) != 3 or any(s is None for s in splits):
                continue
            heads = {s.attrs["pattern"][1]["num_heads"] for s in splits}
            shapes = {n.shape for n in linears}
            if len(heads) != 1 or len(shapes) != 1:
                continue
            weights = [graph.node(n.inputs[1]) for n in linears]
            biases = [graph.node(n.inputs[2]) for n in linears]
            if not all(w.is_const and b.is_const for w, b in zip(weights, biases)):
                continue
            self._fuse(graph, linears, splits, weights, biases, heads.pop())
            changed = True
        if changed:
            graph.remove_dead()
        return changed

    @staticmethod
    def _fuse(graph: Graph, linears: list[Node], splits: list[Node], weights: list[Node],
              biases: list[Node], heads: int) -> None:
        first = linears[0]
        weight = torch.cat([w.attrs["value"] for w in weights])
        bias = torch.cat([b.attrs["value"] for b in biases])
        weight_name, bias_name = _fused_name(graph, weights, "weight"), _fused_name(graph, weights, "bias")
        constants = [graph.insert_before(first.name, Node(
                         graph.fresh_name(name.replace(".", "_")), "const", [], tuple(value.shape),
                         {"value": value, "qualified_name": name}, name)).name
                     for name, value in ((weight_name, weight), (bias_name, bias))]
        batch, tokens, width = first.shape
        fused = graph.insert_before(first.name, Node(
            graph.fresh_name(f"{first.name}_qkv"), "linear", [first.inputs[0], *constants],
            (batch, tokens, 3 * width), {}, first.source))
        for chunk, split in enumerate(splits):
            params = {"num_heads": heads, "chunks": 3, "index": chunk}
            index = reference_map("split_heads", (tokens, 3 * width), **params)
            split.inputs = [fused.name]
            split.attrs = {"index": index.unsqueeze(0).contiguous(), "pattern": ("split_heads", params)}
