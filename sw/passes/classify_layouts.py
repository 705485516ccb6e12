"""Name every layout node's pattern (``split_heads``, ``merge_heads``, ``select_token``, ...)."""

from __future__ import annotations

from vitaccel.sw.ir import Graph

from .base import Pass
from .layouts import classify, strip_batch

__all__ = ["ClassifyLayouts"]


class ClassifyLayouts(Pass):
    """Set ``attrs["pattern"] = (name, params)`` on layouts that match a DMA pattern.

    Layouts that match none keep no pattern; :func:`vitaccel.sw.passes.check_supported`
    reports them.
    """

    name = "classify-layouts"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph:
            if node.kind != "layout" or "pattern" in node.attrs:
                continue
            per_image = strip_batch(node.attrs["index"], graph.node(node.inputs[0]).shape)
            pattern = classify(*per_image) if per_image is not None else None
            if pattern is not None:
                node.attrs = dict(node.attrs, pattern=pattern)
                changed = True
        return changed
