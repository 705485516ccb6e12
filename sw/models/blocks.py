"""DeiT-shaped models for tests and benchmarks: DeiT-T/S blocks with random weights.

Each builder returns ``(model, input_shape)`` as a ``vitaccel compile FILE.py:FUNCTION`` spec
expects; :func:`spec` names one for the compiler. A whole DeiT-T in RTL takes minutes, so the
system tests and benchmarks use one or two blocks of the real shapes: :func:`deit_tiny_block`
on few tokens, :func:`deit_tiny_block_196` on DeiT-T's 197 tokens, and the first two blocks of
DeiT-T/S on 224x224 for token pruning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["deit_tiny_block", "deit_tiny_block_16", "deit_tiny_block_196", "deit_tiny_two_blocks",
           "deit_small_two_blocks", "spec", "DEIT_BLOCK_SPEC"]


def spec(function: str) -> str:
    """The ``file.py:function`` model spec of the builder ``function`` of this module."""
    if function not in __all__ or not callable(globals().get(function)):
        raise ValueError(f"no model builder {function!r} in {__name__}")
    return f"{Path(__file__).resolve()}:{function}"


def deit_tiny_block(tokens: int = 4) -> tuple[Any, tuple[int, int, int]]:
    """One DeiT-T encoder block (dim 192, 3 heads, MLP 768) with a patch embedding, CLS
    token, final LayerNorm and a 10-way head, on ``tokens`` patches (+ CLS) of a 3-channel
    image: the full model's shapes per token, with far fewer tokens.

    ``tokens`` must be a square (4: an 8x8 image of 4x4 patches).
    """
    import torch

    from vitaccel.sw.models.vit import VisionTransformer

    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise ValueError(f"tokens must be a square, got {tokens}")
    torch.manual_seed(7)
    model = VisionTransformer(img_size=4 * side, patch_size=4, in_chans=3, num_classes=10, embed_dim=192,
                              depth=1, num_heads=3, mlp_ratio=4.0)
    return model, (3, 4 * side, 4 * side)


def deit_tiny_block_16() -> tuple[Any, tuple[int, int, int]]:
    """:func:`deit_tiny_block` on 16 patches (+ CLS): 17 tokens."""
    return deit_tiny_block(16)


def _deit_blocks(dim: int, heads: int, depth: int, img: int = 224, patch: int = 16) -> tuple[Any, tuple[int, int, int]]:
    import torch

    from vitaccel.sw.models.vit import VisionTransformer

    torch.manual_seed(7)
    model = VisionTransformer(img_size=img, patch_size=patch, in_chans=3, num_classes=1000, embed_dim=dim,
                              depth=depth, num_heads=heads, mlp_ratio=4.0)
    return model, (3, img, img)


def deit_tiny_two_blocks() -> tuple[Any, tuple[int, int, int]]:
    """DeiT-T's first two blocks on 224x224 (196 patches + CLS): the second block runs at the
    kept token count when compiled with ``--prune-tokens KEEP@1``."""
    return _deit_blocks(192, 3, 2)


def deit_small_two_blocks() -> tuple[Any, tuple[int, int, int]]:
    """DeiT-S's first two blocks (as :func:`deit_tiny_two_blocks`)."""
    return _deit_blocks(384, 6, 2)


def deit_tiny_block_196() -> tuple[Any, tuple[int, int, int]]:
    """One DeiT-T encoder block on 196 patches + CLS (:func:`deit_tiny_block` with 14 x 14
    patches of 4 x 4 pixels: the block's shapes are DeiT-T's exactly)."""
    return deit_tiny_block(196)


#: Model spec of :func:`deit_tiny_block` (one DeiT-T block on 4 patches + CLS).
DEIT_BLOCK_SPEC = spec("deit_tiny_block")
