"""The model zoo: DeiT shapes, the shipped digits-vit, and user models from ``file.py:function``."""

from __future__ import annotations

import importlib.util
import numbers
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vitaccel.sw.commands import UserError
from vitaccel.sw.models.vit import VisionTransformer
from vitaccel.sw.torch_util import torch_threads

__all__ = ["ZOO", "get_model", "zoo_names", "build_digits_vit", "build_digits_vit_197", "DIGITS_CHECKPOINT",
           "DIGITS_197_CHECKPOINT", "CHECKPOINTS"]

#: Seed of random initialisation when no weights are given (reproducible random DeiTs).
INIT_SEED = 0
#: The trained digits-vit shipped in the package (``vitaccel train digits-vit`` rewrites it).
DIGITS_CHECKPOINT = Path(__file__).with_name("digits_vit.pt")
#: The trained digits-vit-197 (fp16 state dict; ``vitaccel train digits-vit-197`` rewrites it).
DIGITS_197_CHECKPOINT = Path(__file__).with_name("digits_vit_197.pt")


def build_digits_vit() -> VisionTransformer:
    """Small ViT for 8x8 digits: 2x2 patches -> 16 tokens + CLS, dim 64, 4 blocks, 4 heads."""
    return VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64,
                             depth=4, num_heads=4, mlp_ratio=2.0)


def build_digits_vit_197() -> VisionTransformer:
    """DeiT-T-wide ViT with DeiT's token count on digits upsampled to 28x28: 2x2 patches ->
    196 tokens + CLS = 197, dim 192, 3 heads, MLP ratio 4, 4 blocks.

    The position embedding starts as 2-D sine-cosine (MAE's), not timm's small noise: a 2x2
    patch of an upsampled digit says little by itself, and with near-zero positions training
    sat at chance for epochs (measured: 12 % test top-1 after 4 epochs).
    """
    model = VisionTransformer(img_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dim=192,
                              depth=4, num_heads=3, mlp_ratio=4.0)
    with torch.no_grad():
        model.pos_embed[0, 1:] = _sincos_2d(model.pos_embed.shape[-1], 28 // 2)
    return model


def _sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """``[grid*grid, dim]`` sine-cosine embedding of a row-major ``grid x grid`` of positions:
    half the channels encode the row, half the column, each half as sines then cosines of
    geometrically spaced frequencies (MAE, Transformer)."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for coordinate in (rows.flatten(), cols.flatten()):
        angles = coordinate[:, None] * frequencies[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def _deit(dim: int, heads: int) -> Callable[[], VisionTransformer]:
    return lambda: VisionTransformer(img_size=224, patch_size=16, in_chans=3, num_classes=1000,
                                     embed_dim=dim, depth=12, num_heads=heads, mlp_ratio=4.0)


#: Name -> constructor of the untrained module (REFERENCE.md section 2 shapes).
ZOO: dict[str, Callable[[], nn.Module]] = {
    "deit-tiny": _deit(192, 3),
    "deit-small": _deit(384, 6),
    "deit-base": _deit(768, 12),
    "digits-vit": build_digits_vit,
    "digits-vit-197": build_digits_vit_197,
}

#: Zoo models that load a checkpoint shipped in the package when no weights are given.
CHECKPOINTS: dict[str, Path] = {"digits-vit": DIGITS_CHECKPOINT, "digits-vit-197": DIGITS_197_CHECKPOINT}


def zoo_names() -> list[str]:
    return sorted(ZOO)


def _load_weights(model: nn.Module, weights: str | Path) -> None:
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt file
        raise UserError(f"cannot read weights {str(path)!r}: {err}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # timm/DeiT release checkpoints wrap the state dict
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"weights {str(path)!r} do not fit the model: {str(err).splitlines()[0]}") from None


def _from_file(spec: str) -> tuple[nn.Module, tuple[int, int, int]]:
    file_name, _, function_name = spec.rpartition(":")
    path = Path(file_name)
    if not path.is_file():
        raise UserError(f"model file {file_name!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"vitaccel_user_model_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        raise UserError(f"cannot import {file_name!r}: {type(err).__name__}: {err}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"{file_name!r} has no function {function_name!r}")
    try:
        result = function()
    except Exception as err:  # the user's code may raise anything
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"model function {function_name}() in {file_name!r} raised "
                        f"{type(err).__name__}" + (f": {message}" if message else "")) from None
    shape = (3, 224, 224)
    if isinstance(result, tuple):
        if len(result) != 2:
            raise UserError(f"{spec} must return a module or (module, input_shape)")
        result, shape = result
    if not isinstance(result, nn.Module):
        raise UserError(f"{spec} returned {type(result).__name__}, not a torch.nn.Module")
    return result, _input_shape(spec, shape)


def _input_shape(spec: str, shape: object) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)`` (a leading batch of 1 dropped), every size a positive integer."""
    usage = f"{spec}: the input shape must be a tuple (channels, height, width) of positive integers"
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise UserError(f"{usage}, got {shape!r}")
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape):
        raise UserError(f"{usage}, got {tuple(shape)!r}")
    shape = tuple(int(d) for d in shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"{usage}, got {shape}")
    return shape


def get_model(name_or_path: str, weights: str | Path | None = None) -> tuple[nn.Module, tuple[int, int, int]]:
    """The model called ``name_or_path`` in eval mode, and its input shape ``(C, H, W)``.

    Parameters
    ----------
    name_or_path : str
        A zoo name (:func:`zoo_names`) or ``path/to/file.py:function``; the function returns
        the module, or ``(module, input_shape)`` if the input is not ``3x224x224``.
    weights : path, optional
        A state dict (timm/DeiT names for the zoo ViTs). Without it, zoo models get a seeded
        random initialisation, except ``digits-vit`` and ``digits-vit-197`` which load their
        shipped checkpoint (:data:`CHECKPOINTS`).
    """
    if ":" in name_or_path and name_or_path.rpartition(":")[0].endswith(".py"):
        model, shape = _from_file(name_or_path)
    elif name_or_path in ZOO:
        torch.manual_seed(INIT_SEED)
        with torch_threads(1):
            model = ZOO[name_or_path]()
        shape = model.input_shape
        if weights is None and name_or_path in CHECKPOINTS:
            if not CHECKPOINTS[name_or_path].is_file():
                raise UserError(f"{name_or_path} has no checkpoint: run `vitaccel train {name_or_path}` first")
            weights = CHECKPOINTS[name_or_path]
    else:
        raise UserError(f"unknown model {name_or_path!r}: expected one of {', '.join(zoo_names())} "
                        "or path/to/file.py:function")
    if weights is not None:
        _load_weights(model, weights)
    return model.eval(), shape
