"""Capture a PyTorch model with ``torch.export`` and lower the exported graph to the IR.

Every exported ``call_function`` becomes an ``aten`` node of the IR that remembers its target,
its argument template and where it came from (module path and source line), so that a later
error about it can point at the user's code. Parameters, buffers and lifted constants become
``const`` nodes named by their module path (``blocks.0.attn.qkv.weight``).
"""

from __future__ import annotations

import operator
import re
from typing import Any

import torch
from torch import nn

from vitaccel.sw.commands import UserError
from vitaccel.sw.ir import Graph, Node, Ref

__all__ = ["capture", "UnsupportedOperator", "describe_source"]


class UnsupportedOperator(UserError):
    """The model uses an operator the compiler cannot map; the message says which and where."""

    def __init__(self, operator_name: str, source: str, detail: str = "") -> None:
        self.operator_name = operator_name
        self.source = source
        where = f" at {source}" if source else ""
        super().__init__(f"unsupported operator {operator_name}{where}" + (f": {detail}" if detail else ""))


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def describe_source(fx_node: torch.fx.Node) -> str:
    """``module.path (file.py:LINE: code)`` for an exported node, as far as it is known."""
    parts = []
    stack = fx_node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        # torch.export writes nested paths as "L['self'].blocks[0]..." in some versions.
        path = re.sub(r"\[(\d+)\]", r".\1", path.replace("L['self'].", "").replace("L['self']", ""))
        if path:
            parts.append(path)
    trace = (fx_node.meta.get("stack_trace") or "").strip().splitlines()
    frames = [i for i, line in enumerate(trace) if _FRAME.search(line)]
    if frames:
        # Prefer the innermost frame in the user's code over torch's own modules.
        user = [i for i in frames if "/torch/" not in trace[i]]
        last = (user or frames)[-1]
        file_name, line, _ = _FRAME.search(trace[last]).groups()
        code = trace[last + 1].strip() if last + 1 < len(trace) else ""
        parts.append(f"({file_name.rsplit('/', 1)[-1]}:{line}: {code})" if code
                     else f"({file_name.rsplit('/', 1)[-1]}:{line})")
    return " ".join(parts)


def _shape_of(value: Any) -> tuple:
    if isinstance(value, torch.Tensor):
        return tuple(int(d) for d in value.shape)
    if isinstance(value, (list, tuple)):
        return tuple(_shape_of(v) for v in value)
    return ()


def _template(arg: Any, inputs: list[str]) -> Any:
    """Replace exported nodes in an argument by :class:`Ref` markers, collecting their names."""
    if isinstance(arg, torch.fx.Node):
        if arg.name not in inputs:
            inputs.append(arg.name)
        return Ref(inputs.index(arg.name))
    if isinstance(arg, (list, tuple)):
        return type(arg)(_template(a, inputs) for a in arg)
    if isinstance(arg, dict):
        return {k: _template(v, inputs) for k, v in arg.items()}
    return arg


def _logits_index(model: nn.Module, example: torch.Tensor) -> int:
    """Where the logits (:func:`~vitaccel.sw.torch_util.model_logits`) are among the model's
    flattened outputs; ``torch.export`` flattens them in the same (pytree) order.

    Raises
    ------
    UserError
        For a model with several outputs and no ``logits``, or one that fails to run.
    """
    from torch.utils import _pytree

    from vitaccel.sw.torch_util import MultipleOutputs, model_logits

    try:
        with torch.no_grad():
            output = model(example)
    except Exception as err:  # the user's forward may raise anything
        raise UserError(f"the model's forward fails on a {list(example.shape)} input: {type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from None
    try:
        logits = model_logits(output)
    except MultipleOutputs as err:
        raise UserError(str(err)) from None
    leaves = _pytree.tree_leaves(output)
    for index, leaf in enumerate(leaves):
        if leaf is logits:
            return index
    raise UserError("cannot find the model's logits among its outputs")


def capture(model: nn.Module, input_shape: tuple[int, int, int], *, name: str = "model") -> Graph:
    """Export ``model`` on a ``[1, *input_shape]`` input and return the raw IR (``aten`` nodes).

    Raises
    ------
    UserError
        If ``torch.export`` cannot trace the model (data-dependent control flow, ...).
    """
    model = model.eval()
    example = torch.zeros(1, *input_shape)
    try:
        with torch.no_grad():
            exported = torch.export.export(model, (example,))
    except Exception as err:  # export raises many error types; the user needs the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"torch.export cannot capture {name}: {first}") from None
    logits_index = _logits_index(model, example)
    signature = exported.graph_signature
    state = dict(exported.state_dict)
    state.update(getattr(exported, "constants", {}) or {})
    constant_inputs: dict[str, str] = {}
    for spec in signature.input_specs:
        target = getattr(spec, "target", None)
        if target is not None:
            constant_inputs[spec.arg.name] = target

    nodes: list[Node] = []
    output_name = None
    for fx_node in exported.graph.nodes:
        source = describe_source(fx_node)
        if fx_node.op == "placeholder":
            if fx_node.name in constant_inputs:
                target = constant_inputs[fx_node.name]
                value = state[target].detach().clone()
                nodes.append(Node(fx_node.name, "const", [], tuple(value.shape),
                                  {"value": value, "qualified_name": target}, target))
            else:
                nodes.append(Node(fx_node.name, "input", [], (1, *input_shape), {}, "input"))
        elif fx_node.op == "call_function":
            shape = _shape_of(fx_node.meta.get("val"))
            if fx_node.target is operator.getitem:
                nodes.append(Node(fx_node.name, "getitem", [fx_node.args[0].name], shape,
                                  {"index": fx_node.args[1]}, source))
                continue
            inputs: list[str] = []
            args = _template(tuple(fx_node.args), inputs)
            kwargs = _template(dict(fx_node.kwargs), inputs)
            nodes.append(Node(fx_node.name, "aten", inputs, shape,
                              {"target": fx_node.target, "args": args, "kwargs": kwargs}, source))
        elif fx_node.op == "output":
            outputs = list(fx_node.args[0]) if isinstance(fx_node.args[0], (list, tuple)) else [fx_node.args[0]]
            if logits_index >= len(outputs) or not isinstance(outputs[logits_index], torch.fx.Node):
                raise UserError(f"{name}: the exported graph does not return the logits as a tensor")
            output_name = outputs[logits_index].name
        else:
            raise UnsupportedOperator(f"{fx_node.op} {fx_node.target}", source)
    graph = Graph(nodes, [output_name], meta={"name": name, "input_shape": tuple(input_shape)})
    graph.remove_dead()
    graph.verify()
    return graph
