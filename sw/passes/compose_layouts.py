"""Compose chains of layout nodes into one gather, and drop layouts that do nothing."""

from __future__ import annotations

import torch

from vitaccel.sw.ir import Graph

from .base import Pass

__all__ = ["ComposeLayouts"]


class ComposeLayouts(Pass):
    """``layout(layout(x, i1), i2)`` -> ``layout(x, i1.flat[i2])``; same-shape identity maps vanish."""

    name = "compose-layouts"

    def run(self, graph: Graph) -> bool:
        changed = False
        nodes = graph.by_name()
        for node in graph:
            if node.kind != "layout":
                continue
            source = nodes[node.inputs[0]]
            if source.kind == "layout":
                node.attrs = dict(node.attrs, index=source.attrs["index"].reshape(-1)[node.attrs["index"]])
                node.attrs.pop("pattern", None)
                node.inputs = [source.inputs[0]]
                source = nodes[source.inputs[0]]
                changed = True
            index = node.attrs["index"]
            if tuple(source.shape) == tuple(node.shape) and bool(
                    (index.reshape(-1) == torch.arange(index.numel())).all()):
                graph.replace_uses(node.name, source.name)
                graph.remove(node.name)
                changed = True
        if changed:
            graph.remove_dead()
        return changed
