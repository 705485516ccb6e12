"""Magnitude N:M pruning of a float model's linear layers along their input dimension.

A ``nn.Linear`` computes ``x @ weight.T``: the hardware's weight operand is ``W = weight.T``
(``[K = in_features, N = out_features]``), so "N:M along K" means: in every output row of
``weight``, each run of ``M`` consecutive input columns keeps at most ``N`` non-zeros. The
rule (largest magnitudes, ties by lowest position) is :func:`vitaccel.hw.spec.nm.magnitude_keep_mask`,
the one the format defines. A pruned layer gets the attribute ``nm_pattern = (n, m)``, which
:func:`vitaccel.sw.prune.tokens.count_macs` reads to count only the kept weights' MACs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vitaccel.hw.spec.nm import NMWeights, check_nm, compress, magnitude_keep_mask

__all__ = ["prune_nm", "NMMasks", "prunable_layers", "compress_qgraph_weights", "parse_nm"]


def parse_nm(text: str) -> tuple[int, int]:
    """Parse ``"N:M"`` (``vitaccel compile --nm``), e.g. ``"2:4"``, into ``(N, M)``.

    Raises
    ------
    ValueError
        Naming the expected form, for a malformed string or a pattern the format does not
        support (:func:`~vitaccel.hw.spec.nm.check_nm`).
    """
    parts = str(text).strip().split(":")
    try:
        n, m = (int(part) for part in parts)
    except ValueError:
        raise ValueError(f"N:M sparsity {text!r}: expected two integers N:M, e.g. 2:4 or 1:4") from None
    check_nm(n, m)
    return n, m


def _weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out, K]`` (a patch-embedding convolution flattens to im2col order)."""
    return module.weight.reshape(module.weight.shape[0], -1)


def prunable_layers(model: nn.Module, *, include_head: bool = False,
                    include_patch_embed: bool = False) -> dict[str, nn.Module]:
    """Name -> layer of the layers :func:`prune_nm` prunes.

    For a model with ``blocks`` (zoo/timm ViT): every ``nn.Linear`` inside the blocks (qkv,
    proj, fc1, fc2), plus ``head`` and the ``patch_embed.proj`` convolution if asked. For any
    other model: every ``nn.Linear``, except one named ``head`` unless ``include_head``.
    """
    layers: dict[str, nn.Module] = {}
    has_blocks = hasattr(model, "blocks")
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if name == "head" or name.endswith(".head"):
                if include_head:
                    layers[name] = module
            elif not has_blocks or name.startswith("blocks."):
                layers[name] = module
        elif include_patch_embed and isinstance(module, nn.Conv2d) and name.startswith("patch_embed"):
            layers[name] = module
    return layers


@dataclass
class NMMasks:
    """The keep masks of an N:M-pruned model (shaped like each layer's weight).

    Re-apply them after every optimiser step (:meth:`attach`) so fine-tuning keeps the pattern.
    """

    n: int
    m: int
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def apply(self, model: nn.Module) -> None:
        """Zero every pruned weight of ``model`` (in place)."""
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, mask in self.masks.items():
                if name not in modules:
                    raise ValueError(f"NMMasks: model has no layer {name!r}")
                modules[name].weight.mul_(mask.to(modules[name].weight.dtype))

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """Re-apply the masks after each ``optimizer.step()``; returns the hook handle."""
        return optimizer.register_step_post_hook(lambda *_: self.apply(model))

    def density(self) -> float:
        """Fraction of the pruned layers' weights that are kept."""
        kept = sum(int(mask.sum()) for mask in self.masks.values())
        total = sum(mask.numel() for mask in self.masks.values())
        return kept / total if total else 1.0


def prune_nm(model: nn.Module, n: int = 2, m: int = 4, *, include_head: bool = False,
             include_patch_embed: bool = False) -> NMMasks:
    """Prune ``model`` in place to N:M along each layer's input dimension, by magnitude.

    Parameters
    ----------
    model : nn.Module
        A zoo ViT or any ``nn.Linear``-based model (see :func:`prunable_layers`).
    n, m : int
        Keep at most ``n`` of every ``m`` consecutive weights along the input dimension
        (2:4 and 1:4 are the patterns the hardware targets; any ``1 <= n < m <= 16``, ``m`` a
        power of two). If ``in_features`` is not a multiple of ``m``, the last group is partial.

    Returns
    -------
    NMMasks
        The masks, to keep fixed during fine-tuning.
    """
    check_nm(n, m)
    layers = prunable_layers(model, include_head=include_head, include_patch_embed=include_patch_embed)
    if not layers:
        raise ValueError(f"prune_nm: {type(model).__name__} has no prunable layer")
    result = NMMasks(n=int(n), m=int(m))
    for name, module in layers.items():
        weight = _weight_matrix(module).detach().cpu().numpy()
        keep = magnitude_keep_mask(weight.T, n, m).T  # the hardware operand is weight.T
        result.masks[name] = torch.from_numpy(keep.copy()).reshape(module.weight.shape)
        module.nm_pattern = (int(n), int(m))
    result.apply(model)
    return result


def compress_qgraph_weights(qgraph, masks: NMMasks) -> dict[str, NMWeights]:
    """The N:M compressed int8 weights of the pruned layers of a quantized graph.

    The compiler stores a linear layer's int8 weight as the constant ``"<layer>.weight"``,
    ``[K, N]`` (the hardware operand). Symmetric quantization maps zero to zero, so the
    pattern survives; :func:`vitaccel.hw.spec.nm.compress` raises if it did not.

    Returns
    -------
    dict
        Constant name -> :class:`~vitaccel.hw.spec.nm.NMWeights`, one per pruned layer.
    """
    compressed = {}
    for layer in masks.masks:
        name = f"{layer}.weight"
        if name not in qgraph.constants:
            raise ValueError(f"compress_qgraph_weights: the graph has no weight constant {name!r}")
        compressed[name] = compress(qgraph.constants[name], masks.n, masks.m)
    return compressed
