"""Float attention under the accelerator's predicted masks, for fine-tuning through Sanger
sparse attention (as Sanger trains its models with the sparsity on).

:func:`predicted_masks` patches the attention modules of a zoo ViT (or of the ViT inside a
:class:`~vitaccel.sw.prune.tokens.TokenPruningViT`) so that each softmax sees only the
entries the hardware would keep: Q and K quantized at their int8 scales from the compiled
graph, cut to 4 bits as the predictor does, and compared with ``row max - margin``
(:mod:`vitaccel.hw.spec.sparse`). The mask takes no gradient; the kept scores do.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Iterator

import torch
from torch import nn

from vitaccel.hw.spec.sparse import PREDICT_BITS, PREDICT_SHIFT
from vitaccel.sw.qgraph import QGraph

__all__ = ["predicted_masks", "attention_modules"]


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules of a zoo ViT or of the ViT a token-pruning wrapper holds, in block order."""
    vit = getattr(model, "model", model)
    blocks = getattr(vit, "blocks", None)
    if blocks is None or not all(hasattr(block, "attn") and hasattr(block.attn, "qkv") for block in blocks):
        raise ValueError("predicted_masks: needs a zoo ViT (blocks with attn.qkv)")
    return [block.attn for block in blocks]


def _cut(x: torch.Tensor, scale: float) -> torch.Tensor:
    """float -> int8 at ``scale`` (``quantize``'s round half up) -> predictor bits (``round_shift``, saturate)."""
    q8 = torch.clamp(torch.floor(x / scale + 0.5), -128, 127)
    q4 = torch.div(q8 + (1 << (PREDICT_SHIFT - 1)), 1 << PREDICT_SHIFT, rounding_mode="floor")
    return torch.clamp(q4, -(1 << (PREDICT_BITS - 1)), (1 << (PREDICT_BITS - 1)) - 1)


def _masked_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    with torch.no_grad():
        pred = _cut(q, self.predict_scales[0]) @ _cut(k, self.predict_scales[1]).transpose(-2, -1)
        keep = pred >= pred.amax(dim=-1, keepdim=True) - self.predict_margin
    attn = ((q @ k.transpose(-2, -1)) * self.scale).masked_fill(~keep, float("-inf")).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


@contextlib.contextmanager
def predicted_masks(model: nn.Module, qgraph: QGraph, record: dict[str, Any]) -> Iterator[nn.Module]:
    """Within the block, ``model``'s attentions that ``record`` (the manifest record of
    :func:`~vitaccel.sw.prune.sparse_attention.sparsify_attention` on ``qgraph``) made sparse
    run under their predicted masks; the others stay dense. ``qgraph`` (the sparsified graph)
    gives each layer's Q and K scales."""
    modules = attention_modules(model)
    layers = record["layers"]
    if len(layers) != len(modules):
        raise ValueError(f"predicted_masks: {len(layers)} attention records for {len(modules)} attention modules")
    ops = {op.output: op for op in qgraph.ops if op.kind == "sparse_attention"}
    patched = []
    try:
        for module, layer in zip(modules, layers):
            if "margin" not in layer:
                continue
            op = ops[layer["name"]]
            module.predict_scales = tuple(qgraph.tensors[name].scale for name in op.inputs[:2])
            module.predict_margin = layer["margin"]
            module.forward = types.MethodType(_masked_forward, module)
            patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward, module.predict_scales, module.predict_margin
