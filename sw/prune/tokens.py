"""EViT-style token pruning of a float zoo ViT, SPViT's package token, and executed-MAC counting.

After each pruning point (block ``p``, counted from 1: "after block ``p``"), the tokens other
than CLS are ranked by the attention CLS paid them in block ``p`` (softmax probabilities,
mean over heads); CLS and the top ``kept_tokens(n, keep)`` are kept **in ascending token
order**, ties going to the lowest index. The selection is made by
:func:`vitaccel.sim.golden.topk.topk`, the top-k engine's contract, on an exact order-preserving
integer image of the float scores (the IEEE-754 bit pattern of a non-negative float32 orders
like its value), so the float and integer pipelines select by the same rule.

With ``package=True`` the pruned tokens are fused into one package token appended after the
kept ones (SPViT eq. 8): ``P = sum_i(x_i * m_i) / sum_i(m_i)`` over the pruned tokens, ``m_i``
their CLS attention (zero if every weight is zero, as :func:`vitaccel.sim.golden.topk.package_token`).
At the next pruning point the package token is a candidate like any other token.

A pruning step is one PyTorch operator, ``vitaccel::prune_tokens`` (:func:`prune_tokens`), so
``torch.export`` captures a :class:`TokenPruningViT` whole and the compiler
(``vitaccel compile --prune-tokens``) maps each step onto the top-k engine.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from vitaccel.sim.golden.topk import topk
from vitaccel.sw.prune.heads import attention_layers, attention_with_probs, head_dim_of

__all__ = ["TokenPruningViT", "count_macs", "default_pruning_points", "kept_tokens", "select_tokens",
           "prune_tokens", "parse_token_pruning"]

#: SPViT's selector positions for 12-block DeiTs, as fractions of the depth (3, 6, 9 of 12).
_POINT_FRACTIONS = (0.25, 0.5, 0.75)


def default_pruning_points(depth: int) -> tuple[int, ...]:
    """Pruning points for a ``depth``-block model: SPViT's 3, 6, 9 scaled to the depth
    (``round(depth * {1/4, 1/2, 3/4})``), within ``1 .. depth - 1``: ``(1, 2, 3)`` for 4 blocks."""
    if depth < 1:
        raise ValueError(f"default_pruning_points: depth must be positive, got {depth}")
    return tuple(sorted({p for p in (round(depth * f) for f in _POINT_FRACTIONS) if 1 <= p < depth}))


def kept_tokens(candidates: int, keep: float) -> int:
    """Tokens kept of ``candidates`` (CLS excluded) at keep ratio ``keep``: ``ceil(keep * n)``, >= 1."""
    # The epsilon stops float noise (0.7 * 10 = 7.000000000000001) from keeping one token more.
    return max(1, min(candidates, math.ceil(keep * candidates - 1e-9)))


def parse_token_pruning(text: str) -> tuple[float, tuple[int, ...] | None]:
    """Parse ``KEEP[@P1,P2,...]`` (``vitaccel compile --prune-tokens``): the keep ratio and the
    pruning points (None: :func:`default_pruning_points`). Raises ValueError saying what is wrong."""
    keep_text, _, points_text = str(text).strip().partition("@")
    try:
        keep = float(keep_text)
    except ValueError:
        raise ValueError(f"token pruning {text!r}: the keep ratio {keep_text!r} is not a number "
                         "(expected KEEP[@P1,P2,...], e.g. 0.7@1,2,3)") from None
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"token pruning {text!r}: the keep ratio must be in (0, 1], got {keep}")
    if not points_text:
        if "@" in str(text):
            raise ValueError(f"token pruning {text!r}: no pruning points after '@'")
        return keep, None
    try:
        points = tuple(int(p) for p in points_text.split(","))
    except ValueError:
        raise ValueError(f"token pruning {text!r}: pruning points must be block numbers separated by "
                         f"commas, got {points_text!r}") from None
    return keep, points


def _order_preserving_ints(scores: torch.Tensor) -> np.ndarray:
    """Integers that order exactly like non-negative finite float scores (their float32 bits)."""
    values = scores.detach().to(torch.float32).cpu().numpy()
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("token scores must be finite and non-negative")
    return np.ascontiguousarray(values + 0.0).view(np.int32)  # + 0.0 turns -0.0 into +0.0


def select_tokens(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of ``scores [B, n]``, the ``k`` kept positions in ascending order (top-k engine rule)."""
    codes = _order_preserving_ints(scores)
    return torch.from_numpy(np.stack([topk(row, k)[0] for row in codes])).to(scores.device)


def _cls_attention(probs: torch.Tensor) -> torch.Tensor:
    """EViT's token scores: the attention CLS pays tokens ``1..T-1``, mean over heads ``[B, T-1]``."""
    return probs[:, :, 0, 1:].mean(dim=1)


def _keep_rows(x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """CLS and the non-CLS tokens at positions ``kept [B, k]`` (counted from token 1)."""
    index = kept[:, :, None].expand(-1, -1, x.shape[2])
    return torch.cat([x[:, :1], torch.gather(x[:, 1:], 1, index)], dim=1)


def _pruned(x: torch.Tensor, cls_attention: torch.Tensor, k: int, package: bool) -> torch.Tensor:
    """CLS, the ``k`` tokens with the highest ``cls_attention [B, T-1]`` and, with ``package``,
    the package token of the others (SPViT eq. 8, weights ``cls_attention``)."""
    kept = select_tokens(cls_attention, k)  # [B, k], ascending
    parts = [_keep_rows(x, kept)]
    if package:
        rest = x[:, 1:]
        pruned = torch.ones_like(cls_attention, dtype=torch.bool).scatter(1, kept, False)
        weights = cls_attention * pruned  # m_i of the pruned tokens, 0 elsewhere
        total = weights.sum(1, keepdim=True)
        fused = (rest * weights[:, :, None]).sum(1, keepdim=True)
        parts.append(torch.where(total[:, :, None] > 0, fused / total.clamp_min(1e-30)[:, :, None],
                                 torch.zeros_like(fused)))
    return torch.cat(parts, dim=1)


@torch.library.custom_op("vitaccel::prune_tokens", mutates_args=())
def prune_tokens(x: torch.Tensor, probs: torch.Tensor, k: int, package: bool = False) -> torch.Tensor:
    """One EViT pruning step as a single operator ``torch.export`` keeps whole.

    ``x [B, T, D]`` tokens (CLS first), ``probs [B, H, T, T]`` the block's attention
    probabilities; returns ``[B, k + 1 (+ 1), D]``: CLS, the ``k`` tokens with the highest
    mean-over-heads CLS attention in ascending token order (:func:`select_tokens`) and, with
    ``package``, the package token. The compiler lowers it (``vitaccel.sw.passes.LowerTokenPruning``)
    to the QGraph's ``token_scores`` -> ``topk`` -> ``gather_tokens`` (-> ``package_token``).
    Without ``package`` gradients flow to ``x`` only: the selection itself is not
    differentiable (as in EViT). With ``package`` the operator has no gradient
    (:class:`TokenPruningViT` trains through its plain PyTorch form).
    """
    return _pruned(x, _cls_attention(probs), k, package)


@prune_tokens.register_fake
def _prune_tokens_fake(x: torch.Tensor, probs: torch.Tensor, k: int, package: bool = False) -> torch.Tensor:
    return x.new_empty((x.shape[0], k + 1 + int(package), x.shape[2]))


def _prune_tokens_setup(ctx, inputs, output) -> None:
    x, probs, k, package = inputs
    ctx.x_shape, ctx.k, ctx.package = x.shape, k, package
    ctx.save_for_backward(probs)  # the selection is recomputed: setup also runs on traced tensors


def _prune_tokens_backward(ctx, grad: torch.Tensor):
    if ctx.package:
        raise RuntimeError("vitaccel::prune_tokens with package=True has no gradient; train TokenPruningViT")
    (probs,) = ctx.saved_tensors
    kept = select_tokens(_cls_attention(probs), ctx.k)
    grad_x = grad.new_zeros(ctx.x_shape)
    grad_x[:, :1] = grad[:, :1]
    grad_x[:, 1:].scatter_(1, kept[:, :, None].expand(-1, -1, grad.shape[2]), grad[:, 1:])  # kept are distinct
    return grad_x, None, None, None


prune_tokens.register_autograd(_prune_tokens_backward, setup_context=_prune_tokens_setup)


class TokenPruningViT(nn.Module):
    """A zoo ViT that prunes tokens after the given blocks (EViT; optionally SPViT's package token).

    Parameters
    ----------
    model : zoo VisionTransformer (head-pruned or N:M-pruned ones too)
        Shared, not copied: fine-tuning the wrapper trains ``model``.
    keep : float or sequence of float
        Keep ratio of the non-CLS tokens at each pruning point (one for all, or one per point).
    points : sequence of int, optional
        Blocks (1-based) after which to prune, each in ``1 .. depth - 1``; default
        :func:`default_pruning_points` of the model's depth.
    package : bool
        Fuse the pruned tokens into one package token.
    """

    def __init__(self, model: nn.Module, keep: float | Sequence[float] = 0.7,
                 points: Sequence[int] | None = None, package: bool = False) -> None:
        super().__init__()
        attention_layers(model)  # validates that model is a zoo ViT
        depth = len(model.blocks)
        self.model = model
        self.points = tuple(default_pruning_points(depth) if points is None else (int(p) for p in points))
        if list(self.points) != sorted(set(self.points)) or any(not 1 <= p < depth for p in self.points):
            raise ValueError(f"TokenPruningViT: points must be distinct ascending blocks in 1..{depth - 1}, "
                             f"got {self.points}")
        ratios = [keep] * len(self.points) if isinstance(keep, (int, float)) else list(keep)
        if len(ratios) != len(self.points) or not all(0.0 < float(r) <= 1.0 for r in ratios):
            raise ValueError(f"TokenPruningViT: keep must be one ratio in (0, 1] or one per point "
                             f"{self.points}, got {keep!r}")
        self.keep = dict(zip(self.points, (float(r) for r in ratios)))
        self.package = bool(package)
        self.input_shape = getattr(model, "input_shape", None)

    def token_counts(self, patches: int) -> list[int]:
        """Tokens (CLS included) entering each block, for ``patches`` patch tokens."""
        counts, tokens = [], patches + 1
        for index in range(1, len(self.model.blocks) + 1):
            counts.append(tokens)
            if index in self.keep:
                tokens = 1 + kept_tokens(tokens - 1, self.keep[index]) + int(self.package)
        return counts

    def _prune(self, x: torch.Tensor, cls_attention: torch.Tensor, keep: float) -> torch.Tensor:
        """CLS, the kept tokens by ``cls_attention [B, T-1]`` and, with ``package``, the package token."""
        return _pruned(x, cls_attention, kept_tokens(x.shape[1] - 1, keep), self.package)

    def _prune_block(self, x: torch.Tensor, probs: torch.Tensor, keep: float) -> torch.Tensor:
        # One operator when exporting (so that the compiler captures it) and without the package
        # token (its gradient is defined); the package token trains through plain PyTorch ops.
        if not self.package or torch.compiler.is_exporting():
            return prune_tokens(x, probs, kept_tokens(x.shape[1] - 1, keep), self.package)
        return self._prune(x, _cls_attention(probs), keep)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        x = model.patch_embed(images)
        x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed
        for index, block in enumerate(model.blocks, start=1):
            if index not in self.keep:
                x = block(x)
                continue
            attended, probs = attention_with_probs(block.attn, block.norm1(x))
            x = x + attended
            x = x + block.mlp(block.norm2(x))
            x = self._prune_block(x, probs, self.keep[index])
        return model.head(model.norm(x)[:, 0])


def _kept_weights(module: nn.Module) -> int:
    """Weights of a layer that do work: all, or those kept by its ``nm_pattern`` (per output row,
    ``n`` of each whole group of ``m`` inputs and ``min(n, rest)`` of a partial group)."""
    rows = module.weight.shape[0]
    k = module.weight[0].numel()
    pattern = getattr(module, "nm_pattern", None)
    if pattern is None:
        return rows * k
    n, m = pattern
    return rows * ((k // m) * n + min(n, k % m))


def count_macs(model_or_wrapper: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates executed for one image, from the layer shapes.

    Counts the patch embedding, the four linear layers of each block at that block's token
    count, ``QK^T`` and ``PV`` (``2 * heads * T^2 * head_dim``), the package-token weighted sum
    (one MAC per pruned element), and the head on the CLS token. N:M-pruned layers count only
    their kept weights; head-pruned blocks their remaining heads; a :class:`TokenPruningViT`
    its reduced token counts.
    """
    wrapper = model_or_wrapper if isinstance(model_or_wrapper, TokenPruningViT) else None
    model = wrapper.model if wrapper is not None else model_or_wrapper
    attention_layers(model)  # validates that model is a zoo ViT
    conv = model.patch_embed.proj
    _, height, width = input_shape
    patches = (height // conv.stride[0]) * (width // conv.stride[1])
    counts = wrapper.token_counts(patches) if wrapper is not None else [patches + 1] * len(model.blocks)
    macs = patches * _kept_weights(conv)
    for index, (block, tokens) in enumerate(zip(model.blocks, counts), start=1):
        linears = (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2)
        macs += tokens * sum(_kept_weights(layer) for layer in linears)
        macs += 2 * block.attn.num_heads * tokens * tokens * head_dim_of(block.attn)
        if wrapper is not None and wrapper.package and index in wrapper.keep:
            pruned = tokens - 1 - kept_tokens(tokens - 1, wrapper.keep[index])
            macs += pruned * block.attn.qkv.in_features
    return macs + _kept_weights(model.head)
