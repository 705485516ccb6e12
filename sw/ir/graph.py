"""vitaccel's float IR: a topologically ordered graph of tensor ops with static shapes.

The frontend fills it with ``aten`` nodes (one per exported aten call); passes in
:mod:`vitaccel.sw.passes` rewrite it into the canonical kinds below, which the quantizer
maps one to one onto :mod:`vitaccel.sw.qgraph` ops. Activation shapes carry a leading batch
dimension of 1 (the exported batch); :meth:`Graph.evaluate` runs any batch size.

Node kinds and float semantics (``x``, ``w`` ... are the inputs in order)
--------------------------------------------------------------------------
``input``        the image ``[1, C, H, W]``.
``const``        ``attrs["value"]`` (a ``torch.Tensor``); no batch dimension.
``aten``         an exported aten call not yet lowered: ``attrs["target"]`` applied to
                 ``attrs["args"]``/``attrs["kwargs"]`` in which :class:`Ref` marks inputs.
``getitem``      ``x[attrs["index"]]`` of a tuple-valued ``aten`` node.
``identity``     ``x`` (dropout in eval, clone, contiguous, alias).
``layout``       pure data movement: ``x.reshape(-1)[attrs["index"]]`` where ``index``
                 (int64, of the output shape) holds flat positions in the input (batch 1);
                 for a batch of B it runs per image (valid once both shapes lead with the
                 batch axis, as they do after ``ComposeLayouts``); ``attrs["pattern"]`` names it once a pass has recognised it
                 (``split_heads``, ``merge_heads``, ``select_token``, ``reshape``, ...).
``linear``       ``x @ w.T + b`` with ``w`` ``[N, K]`` (torch layout), ``b`` optional.
``patch_linear`` ``conv2d(x, w, b, stride=patch).flatten(2).transpose(1, 2)``: patch embedding.
``conv_patch``   ``conv2d(x, w, b, stride=patch)`` (kernel == stride, no padding).
``matmul``       ``attrs["alpha"] * (x @ (y.transpose(-1, -2) if transpose_b else y))``.
``scale``        ``x * attrs["alpha"]`` (a scalar multiply or divide).
``add``          ``attrs.get("alpha", 1) * (x + y)`` (``alpha > 0``: a folded ``scale``).
``layernorm``    ``layer_norm(x, [D], w, b, eps)`` over the last axis.
``gelu``         ``gelu(x, approximate=attrs["approximate"])``.
``softmax``      softmax over the last axis.
``concat``       ``cat(inputs, dim=attrs["dim"])``.
``sdpa``         ``scaled_dot_product_attention(q, k, v, scale=attrs["scale"])`` (no mask).
``prune_tokens`` EViT token pruning ``(x [B, T, D], probs [B, H, T, T]) -> [B, k + 1 (+ 1), D]``:
                 ``vitaccel.sw.prune.tokens.prune_tokens(x, probs, attrs["k"], attrs["package"])``.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F

__all__ = ["Node", "Graph", "Ref", "IRError", "KINDS", "call_aten", "evaluate_node"]

KINDS = frozenset({
    "input", "const", "aten", "getitem", "identity", "layout", "linear", "patch_linear",
    "conv_patch", "matmul", "scale", "add", "layernorm", "gelu", "softmax", "concat", "sdpa",
    "prune_tokens",
})
#: Number of inputs per kind (min, max).
_ARITY = {
    "input": (0, 0), "const": (0, 0), "getitem": (1, 1), "identity": (1, 1), "layout": (1, 1),
    "linear": (2, 3), "patch_linear": (2, 3), "conv_patch": (2, 3), "matmul": (2, 2),
    "scale": (1, 1), "add": (2, 2), "layernorm": (3, 3), "gelu": (1, 1), "softmax": (1, 1),
    "concat": (1, 64), "sdpa": (3, 3), "aten": (0, 64), "prune_tokens": (2, 2),
}


class IRError(ValueError):
    """The IR is malformed; the message names the node."""


@dataclass(frozen=True)
class Ref:
    """Position of a node's input ``index`` inside an ``aten`` node's argument template."""

    index: int


@dataclass
class Node:
    """One value of the graph: ``name = kind(*inputs, **attrs)`` of static ``shape``.

    ``shape`` is a tuple of ints, or for tuple-valued ``aten`` nodes a tuple of shapes.
    ``source`` is the module path and source line the op came from.
    """

    name: str
    kind: str
    inputs: list[str]
    shape: tuple
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __repr__(self) -> str:
        extra = f" {self.attrs['target']}" if self.kind == "aten" else ""
        return f"%{self.name} = {self.kind}{extra}({', '.join('%' + i for i in self.inputs)}) : {list(self.shape)}"

    @property
    def is_const(self) -> bool:
        return self.kind == "const"


def _substitute(template: Any, values: list[Any]) -> Any:
    if isinstance(template, Ref):
        return values[template.index]
    if isinstance(template, (list, tuple)):
        return type(template)(_substitute(t, values) for t in template)
    if isinstance(template, dict):
        return {k: _substitute(v, values) for k, v in template.items()}
    return template


def call_aten(node: Node, values: list[Any]) -> Any:
    """Run an ``aten`` node's target on concrete input ``values``."""
    args = _substitute(node.attrs["args"], values)
    kwargs = _substitute(node.attrs.get("kwargs", {}), values)
    return node.attrs["target"](*args, **kwargs)


class Graph:
    """Nodes in topological order, the graph inputs and outputs by name."""

    def __init__(self, nodes: Iterable[Node] = (), outputs: Iterable[str] = (), *,
                 meta: dict[str, Any] | None = None) -> None:
        self.nodes: list[Node] = list(nodes)
        self.outputs: list[str] = list(outputs)
        self.meta: dict[str, Any] = dict(meta or {})

    # -- queries --------------------------------------------------------------------------

    def __iter__(self):
        return iter(list(self.nodes))

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def by_name(self) -> dict[str, Node]:
        return {node.name: node for node in self.nodes}

    def users(self, name: str) -> list[Node]:
        return [node for node in self.nodes if name in node.inputs]

    def use_count(self, name: str) -> int:
        return sum(node.inputs.count(name) for node in self.nodes) + self.outputs.count(name)

    @property
    def inputs(self) -> list[str]:
        return [node.name for node in self.nodes if node.kind == "input"]

    def count(self, kind: str) -> int:
        return sum(node.kind == kind for node in self.nodes)

    def fresh_name(self, base: str) -> str:
        names = {node.name for node in self.nodes}
        if base not in names:
            return base
        i = 1
        while f"{base}_{i}" in names:
            i += 1
        return f"{base}_{i}"

    # -- edits ----------------------------------------------------------------------------

    def replace_uses(self, old: str, new: str) -> None:
        """Make every reader of ``old`` (and the outputs) read ``new`` instead."""
        for node in self.nodes:
            node.inputs = [new if i == old else i for i in node.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]

    def insert_before(self, anchor: str, node: Node) -> Node:
        index = next(i for i, n in enumerate(self.nodes) if n.name == anchor)
        self.nodes.insert(index, node)
        return node

    def remove(self, name: str) -> None:
        self.nodes = [n for n in self.nodes if n.name != name]

    def remove_dead(self) -> bool:
        """Drop nodes nobody reads (except inputs). Returns True if any were removed."""
        readers = Counter(name for node in self.nodes for name in node.inputs)
        readers.update(self.outputs)
        kept: list[Node] = []
        for node in reversed(self.nodes):  # readers come after what they read
            if node.kind == "input" or readers[node.name] > 0:
                kept.append(node)
            else:
                readers.subtract(node.inputs)
        changed = len(kept) != len(self.nodes)
        self.nodes = kept[::-1]
        return changed

    # -- checking -------------------------------------------------------------------------

    def verify(self) -> None:
        """Raise :class:`IRError` unless names are unique, kinds known, arities right,
        every input defined before use, layout index maps consistent with the shapes and
        every output defined."""
        defined: dict[str, Node] = {}
        for node in self.nodes:
            if node.kind not in KINDS:
                raise IRError(f"{node!r}: unknown kind {node.kind!r}")
            if node.name in defined:
                raise IRError(f"{node!r}: name %{node.name} is defined twice")
            lo, hi = _ARITY[node.kind]
            if not lo <= len(node.inputs) <= hi:
                raise IRError(f"{node!r}: {node.kind} takes {lo}..{hi} inputs, got {len(node.inputs)}")
            for name in node.inputs:
                if name not in defined:
                    raise IRError(f"{node!r}: input %{name} is used before it is defined")
            if node.kind == "const" and tuple(node.attrs["value"].shape) != tuple(node.shape):
                raise IRError(f"{node!r}: value has shape {list(node.attrs['value'].shape)}")
            if node.kind == "layout":
                index = node.attrs["index"]
                source = defined[node.inputs[0]]
                if tuple(index.shape) != tuple(node.shape):
                    raise IRError(f"{node!r}: index map shape {list(index.shape)} != output shape")
                numel = _numel(source.shape)
                if index.numel() and (int(index.min()) < 0 or int(index.max()) >= numel):
                    raise IRError(f"{node!r}: index map reads outside its {numel}-element input")
            if node.kind in ("add",) and defined[node.inputs[0]].shape != defined[node.inputs[1]].shape \
                    and not any(defined[i].is_const for i in node.inputs):
                raise IRError(f"{node!r}: operand shapes differ")
            defined[node.name] = node
        for name in self.outputs:
            if name not in defined:
                raise IRError(f"graph output %{name} is not defined")

    def __str__(self) -> str:
        lines = [repr(n) for n in self.nodes if n.kind != "const"]
        lines.append(f"return {', '.join('%' + o for o in self.outputs)}")
        return "\n".join(lines)

    # -- execution ------------------------------------------------------------------------

    def evaluate(self, images: torch.Tensor, *, keep: bool = False,
                 observer=None) -> dict[str, torch.Tensor] | torch.Tensor:
        """Run the graph in float on ``images [B, C, H, W]``.

        Returns the first output, or every value (``keep=True``). ``observer(node, value)``
        is called for every activation (used for calibration).
        """
        values: dict[str, Any] = {}
        batch = images.shape[0]
        last_use = self._last_use
        for node in self.nodes:
            ins = [values[i] for i in node.inputs]
            value = evaluate_node(node, ins, images, batch)
            values[node.name] = value
            if observer is not None and node.kind not in ("const", "aten", "getitem") \
                    and isinstance(value, torch.Tensor):
                observer(node, value)
            if not keep:
                for name in set(node.inputs):
                    if last_use.get(name) == node.name and name not in self.outputs:
                        del values[name]
        if keep:
            return values
        return values[self.outputs[0]]

    @property
    def _last_use(self) -> dict[str, str]:
        last: dict[str, str] = {}
        for node in self.nodes:
            for name in node.inputs:
                last[name] = node.name
        return last


def _numel(shape: Iterable[int]) -> int:
    total = 1
    for d in shape:
        total *= int(d)
    return total


def evaluate_node(node: Node, ins: list[Any], images: torch.Tensor | None, batch: int) -> Any:
    """The float value of one node from its input values (``batch`` images at once)."""
    a = node.attrs
    k = node.kind
    if k == "input":
        return images
    if k == "const":
        return a["value"]
    if k == "aten":
        return call_aten(node, ins)
    if k == "getitem":
        return operator.getitem(ins[0], a["index"])
    if k == "identity":
        return ins[0]
    if k == "layout":
        if batch == 1:
            return ins[0].reshape(-1)[a["index"]]
        if node.shape[0] != 1:
            raise IRError(f"{node!r}: layout does not keep the batch axis leading")
        flat = ins[0].reshape(batch, -1)
        return flat[:, a["index"].reshape(-1)].reshape(batch, *node.shape[1:])
    if k == "linear":
        return F.linear(ins[0], ins[1], ins[2] if len(ins) > 2 else None)
    if k in ("conv_patch", "patch_linear"):
        out = F.conv2d(ins[0], ins[1], ins[2] if len(ins) > 2 else None, stride=a["patch"])
        return out.flatten(2).transpose(1, 2) if k == "patch_linear" else out
    if k == "matmul":
        b = ins[1].transpose(-1, -2) if a.get("transpose_b") else ins[1]
        return torch.matmul(ins[0], b) * a.get("alpha", 1.0)
    if k == "scale":
        return ins[0] * a["alpha"]
    if k == "add":
        return (ins[0] + ins[1]) * a["alpha"] if "alpha" in a else ins[0] + ins[1]
    if k == "layernorm":
        return F.layer_norm(ins[0], [ins[0].shape[-1]], ins[1], ins[2], a["eps"])
    if k == "gelu":
        return F.gelu(ins[0], approximate=a.get("approximate", "none"))
    if k == "softmax":
        return torch.softmax(ins[0], dim=-1)
    if k == "concat":
        parts = [t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 else t for t in ins]
        return torch.cat(parts, dim=a["dim"])
    if k == "sdpa":
        return F.scaled_dot_product_attention(ins[0], ins[1], ins[2], scale=a["scale"])
    if k == "prune_tokens":
        from vitaccel.sw.prune.tokens import prune_tokens

        return prune_tokens(ins[0], ins[1], a["k"], a.get("package", False))
    raise IRError(f"{node!r}: cannot evaluate kind {k!r}")
