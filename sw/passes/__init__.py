"""Graph passes: small classes, one per file, each ``run(graph) -> bool`` (changed?).

:func:`run_pipeline` applies :data:`PIPELINE` until nothing changes, verifying the graph
after every pass, then :func:`check_supported` turns whatever could not be lowered into an
:class:`~vitaccel.sw.frontend.UnsupportedOperator` naming the op and its source.
"""

from __future__ import annotations

from typing import Callable, Sequence

from vitaccel.sw.ir import Graph, IRError
from vitaccel.sw.torch_util import torch_threads

from .base import Pass
from .classify_layouts import ClassifyLayouts
from .compose_layouts import ComposeLayouts
from .dead_code import DeadCodeElimination
from .eliminate_identity import EliminateIdentity
from .expand_attention import ExpandAttention
from .fold_constants import FoldConstants
from .fold_scale import FoldScaleIntoMatmul
from .fuse_qkv import FuseQKV
from .lower_aten import LowerAten
from .patch_embed import PatchEmbedToLinear
from .token_pruning import LowerTokenPruning
from .transpose_b import MatmulTransposeB

__all__ = [
    "Pass", "PIPELINE", "run_pipeline", "check_supported", "lower_model", "FoldConstants",
    "LowerAten", "EliminateIdentity", "ComposeLayouts", "ExpandAttention",
    "FoldScaleIntoMatmul", "PatchEmbedToLinear", "MatmulTransposeB", "ClassifyLayouts",
    "FuseQKV", "DeadCodeElimination", "LowerTokenPruning", "CANONICAL_KINDS",
]

#: The passes in order; the sequence is repeated until a fixed point.
PIPELINE: tuple[Callable[[], Pass], ...] = (
    FoldConstants, LowerAten, LowerTokenPruning, EliminateIdentity, ComposeLayouts, ExpandAttention,
    FoldScaleIntoMatmul, PatchEmbedToLinear, MatmulTransposeB, ClassifyLayouts, FuseQKV,
    DeadCodeElimination,
)
#: Kinds the quantizer accepts (everything else is reported as unsupported).
CANONICAL_KINDS = frozenset({"input", "const", "layout", "linear", "patch_linear", "matmul",
                             "add", "layernorm", "gelu", "softmax", "concat", "prune_tokens"})
_MAX_ROUNDS = 8


def run_pipeline(graph: Graph, passes: Sequence[Callable[[], Pass]] = PIPELINE, *,
                 log: Callable[[str], None] | None = None) -> Graph:
    """Run ``passes`` to a fixed point, verifying after each; return the graph."""
    instances = [make() for make in passes]
    with torch_threads(1):
        _fixed_point(graph, instances, log)
    return graph


def _fixed_point(graph: Graph, instances: list[Pass], log: Callable[[str], None] | None) -> None:
    for _ in range(_MAX_ROUNDS):
        changed_any = False
        for instance in instances:
            changed = instance.run(graph)
            try:
                graph.verify()
            except IRError as err:
                raise IRError(f"after pass {instance.name}: {err}") from None
            if changed and log is not None:
                log(f"{instance.name}: {len(graph)} nodes")
            changed_any |= changed
        if not changed_any:
            break


def check_supported(graph: Graph) -> None:
    """Raise :class:`UnsupportedOperator` for the first node the quantizer cannot map."""
    from vitaccel.sw.frontend import UnsupportedOperator

    for node in graph:
        if node.kind in CANONICAL_KINDS and not (node.kind == "layout" and "pattern" not in node.attrs):
            continue
        if node.kind == "aten":
            raise UnsupportedOperator(str(node.attrs["target"]), node.source)
        if node.kind == "getitem":
            parent = graph.node(node.inputs[0])
            name = str(parent.attrs.get("target", parent.kind))
            raise UnsupportedOperator(name, parent.source or node.source)
        if node.kind == "layout":
            raise UnsupportedOperator(
                "layout", node.source,
                f"a data movement {list(graph.node(node.inputs[0]).shape)} -> {list(node.shape)} "
                "that is none of split_heads, merge_heads, select_token, transpose, reshape")
        raise UnsupportedOperator(node.kind, node.source, "not lowered to a supported form")


def lower_model(model, input_shape: tuple[int, int, int], *, name: str = "model") -> Graph:
    """Capture ``model`` and run the pipeline: the canonical IR the quantizer reads."""
    from vitaccel.sw.frontend import capture

    with torch_threads(1):
        graph = run_pipeline(capture(model, input_shape, name=name))
    check_supported(graph)
    return graph
