"""Post-training quantization of the canonical IR into a :class:`~vitaccel.sw.qgraph.QGraph`.

* weights: int8, symmetric, per output channel (``scale = max|w| / 127``);
* activations: int8, symmetric, per tensor, range from calibration (min-max or percentile);
* biases: int32 at ``input_scale * weight_scale``;
* requantization: ``multiplier, shift = quantize_multiplier(s_in * s_w / s_out)``;
* softmax, GELU, LayerNorm and residual-add parameters from ``hw.spec.nonlinear``;
* attention scores stay int32 (scale ``s_q * s_k / sqrt(d)``) into the softmax; probabilities
  are uint8 at ``SOFTMAX_OUTPUT_SCALE``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.nonlinear import (SOFTMAX_OUTPUT_SCALE, add_params, gelu_table,
                                        layernorm_params, softmax_params)
from vitaccel.hw.spec.numerics import quantize, quantize_multiplier, saturate
from vitaccel.sw.frontend import UnsupportedOperator
from vitaccel.sw.ir import Graph, Node
from vitaccel.sw.torch_util import torch_threads
from vitaccel.sw.qgraph import DTYPES, QGraph, QOp, QTensor

from .observers import Observer, make_observer

__all__ = ["quantize_model", "quantize_graph", "calibrate"]

_INT8_MAX = 127
#: Smallest scale given to a tensor that was always zero during calibration.
_MIN_SCALE = 1e-8


def calibrate(graph: Graph, images: np.ndarray, observer: Observer, *, batch: int = 32,
              progress: Callable[[str, float], None] | None = None) -> Observer:
    """Run the float graph over ``images`` feeding every activation to ``observer``."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"calibration images must be a non-empty [N, C, H, W] array, got {images.shape}")
    with torch.no_grad(), torch_threads(1):
        for start in range(0, len(images), batch):
            graph.evaluate(torch.from_numpy(images[start:start + batch]), observer=observer)
            if progress is not None:
                progress("calibrating", min(1.0, (start + batch) / len(images)))
    return observer


def _qshape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """IR activation shape -> QGraph shape: drop the batch axis, keep at least two axes."""
    rest = tuple(shape[1:])
    return (1, *rest) if len(rest) == 1 else rest


class _Builder:
    """Walks the canonical IR once, emitting QTensors and QOps."""

    def __init__(self, graph: Graph, observer: Observer, config: AccelConfig) -> None:
        self.graph = graph
        self.nodes = graph.by_name()
        self.observer = observer
        self.config = config
        self.tensors: dict[str, QTensor] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.ops: list[QOp] = []
        self.mapped: dict[str, str] = {}  # IR node -> QTensor name
        self.forced_scale: dict[str, float] = {}
        for node in graph:
            if node.kind == "concat":  # the inputs of a concat share its scale
                for name in node.inputs:
                    self.forced_scale[name] = self.activation_scale(node)

    # -- helpers ----------------------------------------------------------------------------

    def activation_scale(self, node: Node) -> float:
        if node.name in self.forced_scale:
            return self.forced_scale[node.name]
        return max(self.observer.amax(node.name) / _INT8_MAX, _MIN_SCALE)

    def value(self, name: str) -> np.ndarray:
        return self.nodes[name].attrs["value"].detach().double().numpy()

    def add_tensor(self, name: str, shape, dtype: str, scale: float) -> str:
        self.tensors[name] = QTensor(name, tuple(shape), dtype, float(scale))
        return name

    def add_constant(self, name: str, value: np.ndarray, dtype: str, scale: float) -> str:
        self.add_tensor(name, value.shape, dtype, scale)
        self.constants[name] = value.astype(DTYPES[dtype])
        return name

    def emit(self, node: Node, kind: str, inputs: list[str], output: str, **attrs) -> str:
        self.ops.append(QOp(kind, inputs, output, attrs, node.source))
        return output

    def operand(self, name: str, scale: float | None = None) -> str:
        """The QTensor for IR node ``name``; constants are quantized to int8 on first use."""
        if name in self.mapped:
            return self.mapped[name]
        node = self.nodes[name]
        if not node.is_const:
            raise UnsupportedOperator(node.kind, node.source, "operand was not quantized")
        value = self.value(name)
        if value.ndim >= 2 and value.shape[0] == 1:
            value = value[0]  # parameters broadcast over the batch (cls token, pos embedding)
        if value.ndim == 1:
            value = value[None]
        if scale is None:
            scale = max(float(np.abs(value).max()) / _INT8_MAX, _MIN_SCALE)
        label = node.attrs.get("qualified_name") or node.name
        self.mapped[name] = self.add_constant(label, quantize(value, scale), "int8", scale)
        return self.mapped[name]

    def scale_of(self, name: str) -> float:
        return self.tensors[self.operand(name)].scale

    # -- weights ----------------------------------------------------------------------------

    def linear(self, node: Node, x: str, weight: np.ndarray, bias: np.ndarray | None) -> str:
        """int8 GEMM with per-channel weights; ``weight`` is ``[N, K]`` float."""
        n = weight.shape[0]
        s_x = self.tensors[x].scale
        s_out = self.activation_scale(node)
        w_amax = np.abs(weight).max(axis=1)
        s_w = np.where(w_amax > 0, w_amax / _INT8_MAX, 1.0 / _INT8_MAX)
        w_q = quantize(weight / s_w[:, None], 1.0).T  # [K, N]
        b = np.zeros(n) if bias is None else bias
        b_q = saturate(np.floor(b / (s_x * s_w) + 0.5), 32)
        scales = [quantize_multiplier(float(s)) for s in s_x * s_w / s_out]
        base = self.nodes[node.inputs[1]].attrs.get("qualified_name", node.name).removesuffix(".weight")
        # The tensor scale of per-channel constants is nominal; the exact per-channel
        # scales are in the op's attrs (weight_scale) and folded into multiplier/shift.
        w_name = self.add_constant(f"{base}.weight", np.ascontiguousarray(w_q), "int8", float(s_w.mean()))
        b_name = self.add_constant(f"{base}.bias", b_q, "int32", float((s_x * s_w).mean()))
        out = self.add_tensor(node.name, _qshape(node.shape), "int8", s_out)
        self.emit(node, "linear", [x, w_name, b_name], out,
                  multiplier=np.array([q.multiplier for q in scales], dtype=np.int64),
                  shift=np.array([q.shift for q in scales], dtype=np.int64),
                  weight_scale=s_w)
        return out

    # -- per kind ---------------------------------------------------------------------------

    def build(self) -> None:
        for node in self.graph:
            handler = getattr(self, f"do_{node.kind}", None)
            if handler is None:
                raise UnsupportedOperator(node.kind, node.source, "no quantized form")
            result = handler(node)
            if result is not None:
                self.mapped[node.name] = result

    def do_const(self, node: Node) -> None:
        return None  # quantized on first use, with the scale its consumer needs

    def do_input(self, node: Node) -> str:
        return self.add_tensor(node.name, _qshape(node.shape), "int8", self.activation_scale(node))

    def do_patch_linear(self, node: Node) -> str:
        x = self.mapped[node.inputs[0]]
        patch = node.attrs["patch"]
        c, h, w = self.tensors[x].shape
        cols = self.add_tensor(f"{node.name}.im2col", ((h // patch) * (w // patch), c * patch * patch),
                               "int8", self.tensors[x].scale)
        self.emit(node, "im2col", [x], cols, patch=patch)
        weight = self.value(node.inputs[1])
        bias = self.value(node.inputs[2]) if len(node.inputs) > 2 else None
        return self.linear(node, cols, weight.reshape(weight.shape[0], -1), bias)

    def do_linear(self, node: Node) -> str:
        bias = self.value(node.inputs[2]) if len(node.inputs) > 2 else None
        return self.linear(node, self.operand(node.inputs[0]), self.value(node.inputs[1]), bias)

    def do_layernorm(self, node: Node) -> str:
        x = self.operand(node.inputs[0])
        s_out = self.activation_scale(node)
        params = layernorm_params(self.tensors[x].scale, self.value(node.inputs[1]), self.value(node.inputs[2]),
                                  s_out, node.attrs["eps"], rsqrt_lut_bits=self.config.rsqrt_lut_bits)
        out = self.add_tensor(node.name, _qshape(node.shape), "int8", s_out)
        return self.emit(node, "layernorm", [x], out, params=params)

    def do_gelu(self, node: Node) -> str:
        x = self.operand(node.inputs[0])
        s_out = self.activation_scale(node)
        out = self.add_tensor(node.name, _qshape(node.shape), "int8", s_out)
        return self.emit(node, "gelu", [x], out, table=gelu_table(self.tensors[x].scale, s_out))

    def do_add(self, node: Node) -> str:
        a, b = (self.operand(name) for name in node.inputs)
        s_out = self.activation_scale(node)
        out = self.add_tensor(node.name, _qshape(node.shape), "int8", s_out)
        alpha = node.attrs.get("alpha", 1.0)   # a folded positive scale: alpha * (a + b)
        return self.emit(node, "add", [a, b], out, params=add_params(
            alpha * self.tensors[a].scale, alpha * self.tensors[b].scale, s_out))

    def do_concat(self, node: Node) -> str:
        scale = self.activation_scale(node)
        parts = [self.operand(name, scale=scale) for name in node.inputs]
        out = self.add_tensor(node.name, _qshape(node.shape), "int8", scale)
        return self.emit(node, "concat", parts, out, axis=node.attrs["dim"] - 1)

    def do_softmax(self, node: Node) -> str:
        x = self.operand(node.inputs[0])
        if self.tensors[x].dtype != "int32":
            raise UnsupportedOperator("softmax", node.source, "its input is not an attention score matmul")
        params = softmax_params(self.tensors[x].scale, exp_lut_bits=self.config.exp_lut_bits,
                                recip_lut_bits=self.config.recip_lut_bits)
        out = self.add_tensor(node.name, _qshape(node.shape), "uint8", SOFTMAX_OUTPUT_SCALE)
        return self.emit(node, "softmax", [x], out, params=params)

    def do_matmul(self, node: Node) -> str:
        a = self.operand(node.inputs[0])
        b = self.operand(node.inputs[1])
        transpose_b = bool(node.attrs.get("transpose_b"))
        real = self.tensors[a].scale * self.tensors[b].scale * node.attrs.get("alpha", 1.0)
        users = self.graph.users(node.name)
        if users and all(u.kind == "softmax" for u in users):
            out = self.add_tensor(node.name, _qshape(node.shape), "int32", real)
            return self.emit(node, "matmul", [a, b], out, transpose_b=transpose_b, requant=False)
        s_out = self.activation_scale(node)
        q = quantize_multiplier(real / s_out)
        out = self.add_tensor(node.name, _qshape(node.shape), "int8", s_out)
        return self.emit(node, "matmul", [a, b], out, transpose_b=transpose_b, requant=True,
                         multiplier=q.multiplier, shift=q.shift)

    def do_prune_tokens(self, node: Node) -> str:
        """EViT pruning on the top-k engine: ``token_scores`` (CLS rows summed over heads, which
        ranks like EViT's mean) -> ``topk`` -> ``gather_tokens`` of the non-CLS tokens, then the
        CLS token is put back in front and, with ``package``, the ``package_token`` of the pruned
        ones appended (weighted by the same scores). Values keep the input's scale."""
        x = self.operand(node.inputs[0])
        probs = self.operand(node.inputs[1])
        if self.tensors[probs].dtype != "uint8" or len(self.tensors[probs].shape) != 3:
            raise UnsupportedOperator("prune_tokens", node.source, "its scores are not attention probabilities")
        source = self.tensors[x]
        tokens, width = source.shape
        k = node.attrs["k"]
        scores = self.add_tensor(f"{node.name}.scores", (tokens - 1,), "uint16", self.tensors[probs].scale)
        self.emit(node, "token_scores", [probs], scores)
        kept = self.add_tensor(f"{node.name}.kept", (k,), "uint16", 1.0)
        self.emit(node, "topk", [scores], kept, k=k)
        cls, rest = (self.emit(node, "slice", [x], self.add_tensor(f"{node.name}.{label}", (stop - start, width),
                                                                    source.dtype, source.scale),
                               axis=0, start=start, stop=stop)
                     for label, start, stop in (("cls", 0, 1), ("rest", 1, tokens)))
        gathered = self.add_tensor(f"{node.name}.gathered", (k, width), source.dtype, source.scale)
        parts = [cls, self.emit(node, "gather_tokens", [rest, kept], gathered)]
        if node.attrs.get("package"):
            package = self.add_tensor(f"{node.name}.package", (1, width), source.dtype, source.scale)
            parts.append(self.emit(node, "package_token", [rest, scores, kept], package))
        out = self.add_tensor(node.name, (k + len(parts) - 1, width), source.dtype, source.scale)
        return self.emit(node, "concat", parts, out, axis=0)

    def do_layout(self, node: Node) -> str:
        x = self.operand(node.inputs[0])
        source = self.tensors[x]
        kind, params = node.attrs["pattern"]
        shape = _qshape(node.shape)

        def out(name: str = node.name, out_shape=shape) -> str:
            return self.add_tensor(name, out_shape, source.dtype, source.scale)

        if kind == "split_heads":
            return self.emit(node, "split_heads", [x], out(), **params)
        if kind == "select_token":
            return self.emit(node, "select_token", [x], out(), index=params["index"])
        if kind == "reshape":
            return self.emit(node, "reshape", [x], out(), shape=shape)
        if kind == "merge_heads":
            return self.emit(node, "merge_heads", [x], out())
        if kind == "transpose":
            if params["perm"][0] != 0:
                raise UnsupportedOperator("layout", node.source, "a transpose that moves the batch axis")
            return self.emit(node, "transpose", [x], out(), perm=tuple(p - 1 for p in params["perm"][1:]))
        raise UnsupportedOperator(f"layout {kind}", node.source)

    def finish(self, meta: dict) -> QGraph:
        outputs = [self.mapped[name] for name in self.graph.outputs]
        # Drop ops whose results nobody reads.
        needed = set(outputs)
        kept: list[QOp] = []
        for op in reversed(self.ops):
            if op.output in needed:
                kept.append(op)
                needed.update(op.inputs)
        ops = kept[::-1]
        live = needed | set(outputs)
        tensors = {k: v for k, v in self.tensors.items() if k in live}
        constants = {k: v for k, v in self.constants.items() if k in live}
        inputs = [self.mapped[name] for name in self.graph.inputs]
        graph = QGraph(tensors, ops, inputs, outputs, constants, meta)
        graph.verify()
        return graph


def quantize_graph(graph: Graph, calib_images: np.ndarray, *, method: str = "minmax",
                   percentile: float = 99.99, config: AccelConfig | None = None,
                   progress: Callable[[str, float], None] | None = None) -> QGraph:
    """Calibrate the canonical IR ``graph`` and quantize it (see the module docstring)."""
    observer = calibrate(graph, calib_images, make_observer(method, percentile), progress=progress)
    builder = _Builder(graph, observer, config or AccelConfig())
    builder.build()
    meta = {
        "model": graph.meta.get("name", "model"),
        "input_shape": list(graph.meta.get("input_shape", ())),
        "calibration": {"method": method, "images": int(len(calib_images)),
                        **({"percentile": percentile} if method == "percentile" else {})},
    }
    return builder.finish(meta)


def quantize_model(model: torch.nn.Module, input_shape: tuple[int, int, int], calib_images: np.ndarray,
                   method: str = "minmax", *, percentile: float = 99.99,
                   config: AccelConfig | None = None, name: str = "model",
                   progress: Callable[[str, float], None] | None = None) -> QGraph:
    """Capture, lower, calibrate and quantize ``model``: the QGraph the backend compiles.

    Parameters
    ----------
    model : torch.nn.Module
        A ViT (zoo, HuggingFace ``ViTForImageClassification``, or similar).
    input_shape : (C, H, W)
    calib_images : array ``[N, C, H, W]``
        Float images normalised as the model expects.
    method : {"minmax", "percentile"}
        Activation range observer.
    config : AccelConfig, optional
        Supplies the LUT index widths of the non-linear units (defaults otherwise).
    """
    from vitaccel.sw.passes import lower_model

    make_observer(method, percentile)  # validate before the expensive capture
    graph = lower_model(model, tuple(input_shape), name=name)
    return quantize_graph(graph, calib_images, method=method, percentile=percentile, config=config,
                          progress=progress)
