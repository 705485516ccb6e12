"""Recognise the patch embedding: strided conv followed by ``flatten(2).transpose(1, 2)``."""

from __future__ import annotations

import torch

from vitaccel.sw.ir import Graph

from .base import Pass

__all__ = ["PatchEmbedToLinear"]


class PatchEmbedToLinear(Pass):
    """``layout(conv_patch(x))`` with the token-major map -> ``patch_linear(x)`` ``[1, T, D]``.

    The quantizer maps ``patch_linear`` onto im2col (host side) + ``linear``.
    """

    name = "patch-embed"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph:
            if node.kind != "conv_patch" or graph.use_count(node.name) != 1:
                continue
            (user,) = graph.users(node.name)
            _, dim, rows, cols = node.shape
            token_major = torch.arange(dim * rows * cols).reshape(1, dim, rows * cols).transpose(1, 2)
            if user.kind == "layout" and torch.equal(user.attrs["index"], token_major.contiguous()):
                user.kind, user.inputs, user.attrs = "patch_linear", list(node.inputs), dict(node.attrs)
                graph.remove(node.name)
                changed = True
        return changed
