"""Recognise EViT token pruning: the ``vitaccel::prune_tokens`` operator of a captured
:class:`~vitaccel.sw.prune.tokens.TokenPruningViT`."""

from __future__ import annotations

from vitaccel.sw.ir import Graph

from .base import Pass, argument, input_of

__all__ = ["LowerTokenPruning"]

_TARGET = "vitaccel.prune_tokens.default"


class LowerTokenPruning(Pass):
    """``aten vitaccel.prune_tokens(x, probs, k, package)`` -> ``prune_tokens(x, probs)`` with
    ``attrs["k"]`` and ``attrs["package"]``.

    ``probs`` must be a ``softmax`` (the block's attention probabilities): the quantizer maps
    the node onto the top-k engine, which ranks the uint8 probabilities the softmax unit writes.
    """

    name = "token-pruning"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph:
            if node.kind != "aten" or str(node.attrs["target"]) != _TARGET:
                continue
            x, probs = input_of(node, argument(node, 0)), input_of(node, argument(node, 1))
            k, package = argument(node, 2, "k"), argument(node, 3, "package", False)
            if x is None or probs is None or not isinstance(k, int) or not isinstance(package, bool):
                continue
            node.kind, node.inputs, node.attrs = "prune_tokens", [x, probs], {"k": k, "package": package}
            changed = True
        return changed
