"""Attention-head importance and head removal for zoo (timm-style) ViTs.

The zoo ``Attention`` derives its head width from the token width (``dim // num_heads``), so a
block with fewer heads cannot be expressed by it. :class:`HeadPrunedAttention` is a subclass
with an explicit ``head_dim``: the same parameter names (``qkv``, ``proj``), the same
computation and the same op sequence, so the pruned model still loads state dicts by timm
names, traces through the compiler's frontend, and is accepted wherever the zoo
``Attention`` is. Removing a head shrinks ``qkv`` by its ``3 * head_dim`` output rows and
``proj`` by its ``head_dim`` input columns; nothing is zeroed.

Heads are numbered within a block; the qkv output is laid out ``[q | k | v]``, each
``num_heads x head_dim`` head-major, and ``proj``'s input is head-major too.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitaccel.sw.models.vit import Attention
from vitaccel.sw.torch_util import torch_threads

__all__ = ["HeadPrunedAttention", "attention_with_probs", "head_dim_of", "head_scores_l2",
           "head_scores_loss", "prune_heads", "attention_layers"]


def head_dim_of(attn: nn.Module) -> int:
    """Width of one head of a zoo ``Attention`` (or :class:`HeadPrunedAttention`)."""
    return attn.qkv.out_features // (3 * attn.num_heads)


def attention_with_probs(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of ``attn`` on ``x`` and its attention probabilities ``[B, heads, T, T]``.

    The same computation as the zoo ``Attention.forward`` with the head width taken from the
    layer's weights, so it serves pruned and unpruned layers alike.
    """
    b, n, _ = x.shape
    heads, width = attn.num_heads, head_dim_of(attn)
    qkv = attn.qkv(x).reshape(b, n, 3, heads, width).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    probs = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    out = attn.proj((probs @ v).transpose(1, 2).reshape(b, n, heads * width))
    return out, probs


class HeadPrunedAttention(Attention):
    """Zoo ``Attention`` with ``num_heads`` heads of ``head_dim`` each, fewer than ``dim`` wide.

    Parameters
    ----------
    dim : int
        Token width (input of ``qkv``, output of ``proj``).
    num_heads, head_dim : int
        Remaining heads and the width of each.
    scale : float
        Score scale, kept from the unpruned layer (``original_head_dim ** -0.5``).
    kept_heads : sequence of int
        The original indices of the remaining heads (bookkeeping for reports).
    """

    def __init__(self, *, dim: int, num_heads: int, head_dim: int, scale: float,
                 kept_heads: Sequence[int]) -> None:
        nn.Module.__init__(self)  # Attention.__init__ would size qkv from dim // num_heads
        if num_heads < 1 or head_dim < 1:
            raise ValueError(f"HeadPrunedAttention: need at least one head of width >= 1, got "
                             f"{num_heads} x {head_dim}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.kept_heads = tuple(int(h) for h in kept_heads)
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attention_with_probs(self, x)[0]


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The attention layer of each block of a zoo ViT (``model.blocks[i].attn``)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(isinstance(getattr(b, "attn", None), Attention) for b in blocks):
        raise ValueError(f"{type(model).__name__} is not a zoo ViT: it needs blocks[i].attn of type Attention")
    return [block.attn for block in blocks]


def _qkv_rows(attn: nn.Module, head: int) -> torch.Tensor:
    """Row indices of ``head``'s q, k and v outputs in ``qkv``."""
    width, inner = head_dim_of(attn), attn.num_heads * head_dim_of(attn)
    return torch.cat([torch.arange(part * inner + head * width, part * inner + (head + 1) * width)
                      for part in range(3)])


def _proj_cols(attn: nn.Module, head: int) -> torch.Tensor:
    width = head_dim_of(attn)
    return torch.arange(head * width, (head + 1) * width)


def head_scores_l2(model: nn.Module) -> list[torch.Tensor]:
    """Per block, the L2 norm of each head's q/k/v weight rows and proj weight columns."""
    scores = []
    with torch.no_grad():
        for attn in attention_layers(model):
            per_head = [torch.sqrt(attn.qkv.weight[_qkv_rows(attn, h)].square().sum()
                                   + attn.proj.weight[:, _proj_cols(attn, h)].square().sum())
                        for h in range(attn.num_heads)]
            scores.append(torch.stack(per_head))
    return scores


def _mean_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    total = 0.0
    for start in range(0, len(images), batch):
        logits = model(images[start:start + batch])
        total += float(F.cross_entropy(logits, labels[start:start + batch], reduction="sum"))
    return total / len(images)


def head_scores_loss(model: nn.Module, images, labels, *, batch: int = 256) -> list[torch.Tensor]:
    """Per block, the increase of the mean cross-entropy over ``images`` when each head is masked.

    A head is masked by zeroing its slice of ``proj``'s input (its context vectors), one head
    at a time; a larger increase means a more important head.
    """
    images = torch.as_tensor(images, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"head_scores_loss: need matching non-empty images and labels, got "
                         f"{len(images)} and {len(labels)}")
    was_training = model.training
    model.eval()
    scores = []
    with torch.no_grad(), torch_threads(1):
        base = _mean_loss(model, images, labels, batch)
        for attn in attention_layers(model):
            per_head = []
            for head in range(attn.num_heads):
                cols = _proj_cols(attn, head)

                def mask_head(_module, args, cols=cols):
                    context = args[0].clone()
                    context[..., cols] = 0
                    return (context,)

                handle = attn.proj.register_forward_pre_hook(mask_head)
                try:
                    per_head.append(_mean_loss(model, images, labels, batch) - base)
                finally:
                    handle.remove()
            scores.append(torch.tensor(per_head))
    model.train(was_training)
    return scores


def _keep_counts(heads: list[int], keep_per_layer, prune_ratio) -> list[int]:
    if (keep_per_layer is None) == (prune_ratio is None):
        raise ValueError("prune_heads: give exactly one of keep_per_layer and prune_ratio")
    if prune_ratio is not None:
        if not 0.0 <= float(prune_ratio) < 1.0:
            raise ValueError(f"prune_heads: prune_ratio must be in [0, 1), got {prune_ratio}")
        return [max(1, h - round(prune_ratio * h)) for h in heads]
    counts = [keep_per_layer] * len(heads) if isinstance(keep_per_layer, int) else list(keep_per_layer)
    if len(counts) != len(heads):
        raise ValueError(f"prune_heads: keep_per_layer has {len(counts)} entries for {len(heads)} blocks")
    for layer, (keep, available) in enumerate(zip(counts, heads)):
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= available:
            raise ValueError(f"prune_heads: block {layer} has {available} heads; keep must be in 1..{available}, got {keep!r}")
    return counts


def prune_heads(model: nn.Module, *, keep_per_layer: int | Sequence[int] | None = None,
                prune_ratio: float | None = None, scores: list[torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` with the least important heads of each block removed.

    Parameters
    ----------
    model : zoo ViT
        Left unchanged.
    keep_per_layer : int or sequence of int
        Heads each block keeps (one count for all blocks, or one per block).
    prune_ratio : float
        Alternatively, the fraction of each block's heads to remove (rounded; at least one head stays).
    scores : list of tensors, optional
        Importance per block and head, higher = more important (:func:`head_scores_l2`, the
        default, or :func:`head_scores_loss`). Ties keep the lower-numbered head.

    Returns
    -------
    nn.Module
        The pruned copy; each pruned block's ``attn`` is a :class:`HeadPrunedAttention` whose
        ``kept_heads`` lists the original head numbers, in their original order.
    """
    layers = attention_layers(model)
    heads = [attn.num_heads for attn in layers]
    counts = _keep_counts(heads, keep_per_layer, prune_ratio)
    scores = head_scores_l2(model) if scores is None else scores
    if len(scores) != len(layers) or any(len(s) != h for s, h in zip(scores, heads)):
        raise ValueError(f"prune_heads: scores must have one entry per head of each block {heads}")
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for block, attn, layer_scores, keep in zip(pruned.blocks, attention_layers(pruned), scores, counts):
            order = sorted(range(attn.num_heads), key=lambda h: (-float(layer_scores[h]), h))
            kept = sorted(order[:keep])
            previous = getattr(attn, "kept_heads", tuple(range(attn.num_heads)))
            new = HeadPrunedAttention(dim=attn.qkv.in_features, num_heads=keep, head_dim=head_dim_of(attn),
                                      scale=attn.scale, kept_heads=[previous[h] for h in kept])
            rows = torch.cat([_qkv_rows(attn, h).view(3, -1) for h in kept], dim=1).reshape(-1)
            cols = torch.cat([_proj_cols(attn, h) for h in kept])
            new.qkv.weight.copy_(attn.qkv.weight[rows])
            new.qkv.bias.copy_(attn.qkv.bias[rows])
            new.proj.weight.copy_(attn.proj.weight[:, cols])
            new.proj.bias.copy_(attn.proj.bias)
            block.attn = new.to(attn.qkv.weight.device)
    return pruned.train(model.training)
