"""Lower exported ``aten`` calls to the IR's own kinds.

Each supported aten op has one small lowering function; an op without one stays an ``aten``
node and is reported by :func:`vitaccel.sw.passes.check_supported` with its source location.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from vitaccel.sw.ir import Graph, Node

from .base import Pass, argument, input_of
from .layouts import index_map_of

__all__ = ["LowerAten", "LAYOUT_OPS", "TUPLE_LAYOUT_OPS"]

aten = torch.ops.aten

#: Pure data movement: lowered to ``layout`` nodes by running them on index tensors.
LAYOUT_OPS = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.flatten.using_ints, aten.select.int,
    aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
    aten.expand.default, aten.slice.Tensor, aten.unflatten.int,
}
#: Tuple-valued data movement: lowered when their ``getitem`` is.
TUPLE_LAYOUT_OPS = {aten.unbind.int, aten.split.Tensor, aten.chunk.default, aten.split_with_sizes.default}
_IDENTITY_OPS = {aten.dropout.default, aten.clone.default, aten.contiguous.default,
                 aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default}


def _literal_args(node: Node) -> tuple[tuple, dict]:
    """Arguments after the tensor operand (all literals for a layout op)."""
    return tuple(node.attrs["args"][1:]), dict(node.attrs.get("kwargs", {}))


def _scalar(graph: Graph, node: Node, ref) -> float | None:
    """A Python number, or the value of a one-element constant, else None."""
    if isinstance(ref, (int, float)) and not isinstance(ref, bool):
        return float(ref)
    name = input_of(node, ref)
    if name is not None:
        source = graph.node(name)
        if source.is_const and source.attrs["value"].numel() == 1:
            return float(source.attrs["value"].reshape(()))
    return None


def _become(node: Node, kind: str, inputs: list[str], **attrs) -> bool:
    node.kind, node.inputs, node.attrs = kind, inputs, attrs
    return True


def _lower_layout(graph: Graph, node: Node) -> bool:
    args, kwargs = _literal_args(node)
    if any(input_of(node, a) for a in args):
        return False  # a data-dependent layout (index tensor) is not a DMA pattern
    source = input_of(node, node.attrs["args"][0])
    index = index_map_of(node.attrs["target"], graph.node(source).shape, args, kwargs)
    return _become(node, "layout", [source], index=index)


def _lower_getitem(graph: Graph, node: Node) -> bool:
    parent = graph.node(node.inputs[0])
    if parent.kind != "aten" or parent.attrs["target"] not in TUPLE_LAYOUT_OPS:
        return False
    args, kwargs = _literal_args(parent)
    source = input_of(parent, parent.attrs["args"][0])
    index = index_map_of(parent.attrs["target"], graph.node(source).shape, args, kwargs,
                         select=node.attrs["index"])
    return _become(node, "layout", [source], index=index)


def _lower_linear(graph: Graph, node: Node) -> bool:
    refs = [argument(node, 0), argument(node, 1), argument(node, 2, "bias")]
    inputs = [input_of(node, r) for r in refs if input_of(node, r) is not None]
    return _become(node, "linear", inputs)


def _lower_conv(graph: Graph, node: Node) -> bool:
    weight = graph.node(input_of(node, argument(node, 1)))
    kernel = tuple(weight.shape[2:])
    stride = tuple(argument(node, 3, "stride", [1, 1]))
    padding = tuple(argument(node, 4, "padding", [0, 0]))
    dilation = tuple(argument(node, 5, "dilation", [1, 1]))
    groups = argument(node, 6, "groups", 1)
    if kernel != stride or kernel[0] != kernel[1] or any(padding) or dilation != (1, 1) or groups != 1:
        return False  # only non-overlapping square patches map onto im2col + GEMM
    inputs = [input_of(node, argument(node, i)) for i in range(3) if input_of(node, argument(node, i))]
    return _become(node, "conv_patch", inputs, patch=kernel[0])


def _lower_layer_norm(graph: Graph, node: Node) -> bool:
    shape = list(argument(node, 1))
    x, w, b = (input_of(node, argument(node, i)) for i in (0, 2, 3))
    if len(shape) != 1 or w is None or b is None:
        return False
    return _become(node, "layernorm", [x, w, b], eps=float(argument(node, 4, "eps", 1e-5)))


def _lower_gelu(graph: Graph, node: Node) -> bool:
    return _become(node, "gelu", [node.inputs[0]],
                   approximate=node.attrs.get("kwargs", {}).get("approximate", argument(node, 1) or "none"))


def _lower_softmax(graph: Graph, node: Node) -> bool:
    dim = argument(node, 1, "dim")
    rank = len(node.shape)
    if dim not in (-1, rank - 1):
        return False
    return _become(node, "softmax", [input_of(node, argument(node, 0))])


def _lower_matmul(graph: Graph, node: Node) -> bool:
    a, b = input_of(node, argument(node, 0)), input_of(node, argument(node, 1))
    if a is None or b is None:
        return False
    return _become(node, "matmul", [a, b], alpha=1.0, transpose_b=False)


def _lower_add(graph: Graph, node: Node) -> bool:
    a, b = input_of(node, argument(node, 0)), input_of(node, argument(node, 1))
    if a is None or b is None or argument(node, 2, "alpha", 1) != 1:
        return False
    return _become(node, "add", [a, b])


def _lower_scale(divide: bool) -> Callable[[Graph, Node], bool]:
    def lower(graph: Graph, node: Node) -> bool:
        x_ref, c_ref = argument(node, 0), argument(node, 1)
        value = _scalar(graph, node, c_ref)
        x = input_of(node, x_ref)
        if value is None and not divide:  # scalar * x
            x_ref, c_ref = c_ref, x_ref
            value, x = _scalar(graph, node, c_ref), input_of(node, x_ref)
        if value is None or x is None or (divide and value == 0):
            return False
        return _become(node, "scale", [x], alpha=1.0 / value if divide else value)
    return lower


def _lower_cat(graph: Graph, node: Node) -> bool:
    parts = argument(node, 0)
    dim = argument(node, 1, "dim", 0)
    names = [input_of(node, p) for p in parts]
    rank = len(node.shape)
    return _become(node, "concat", names, dim=dim % rank)


def _lower_sdpa(graph: Graph, node: Node) -> bool:
    q, k, v = (input_of(node, argument(node, i)) for i in range(3))
    mask = input_of(node, argument(node, 3, "attn_mask"))
    if argument(node, 4, "dropout_p", 0.0) or argument(node, 5, "is_causal", False):
        return False
    if mask is not None:
        mask_node = graph.node(mask)
        if not (mask_node.is_const and mask_node.attrs["value"].dtype == torch.bool
                and bool(mask_node.attrs["value"].all())):
            return False  # only an all-true (no-op) mask
    scale = node.attrs.get("kwargs", {}).get("scale")
    if scale is None:
        scale = 1.0 / math.sqrt(graph.node(q).shape[-1])
    return _become(node, "sdpa", [q, k, v], scale=float(scale))


def _lower_identity(graph: Graph, node: Node) -> bool:
    return _become(node, "identity", [input_of(node, argument(node, 0))])


_LOWERINGS: dict[object, Callable[[Graph, Node], bool]] = {
    aten.linear.default: _lower_linear,
    aten.conv2d.default: _lower_conv,
    aten.layer_norm.default: _lower_layer_norm,
    aten.gelu.default: _lower_gelu,
    aten.softmax.int: _lower_softmax,
    aten._softmax.default: _lower_softmax,
    aten.matmul.default: _lower_matmul,
    aten.bmm.default: _lower_matmul,
    aten.add.Tensor: _lower_add,
    aten.mul.Tensor: _lower_scale(divide=False),
    aten.div.Tensor: _lower_scale(divide=True),
    aten.cat.default: _lower_cat,
    aten.scaled_dot_product_attention.default: _lower_sdpa,
    **{op: _lower_layout for op in LAYOUT_OPS},
    **{op: _lower_identity for op in _IDENTITY_OPS},
}


class LowerAten(Pass):
    """Turn each supported ``aten`` node (and ``getitem`` of unbind/split) into an IR kind."""

    name = "lower-aten"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph:
            if node.kind == "getitem":
                changed |= _lower_getitem(graph, node)
            elif node.kind == "aten":
                lowering = _LOWERINGS.get(node.attrs["target"])
                if lowering is not None:
                    changed |= bool(lowering(graph, node))
        if changed:
            graph.remove_dead()
        return changed
