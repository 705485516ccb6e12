"""Training of zoo models on their data set: digits-vit on scikit-learn's 8x8 digits and
digits-vit-197 on the same digits upsampled to 28x28 (the same train/test split).

torch is imported inside the functions: the command line imports this module for its
defaults, and every ``vitaccel`` command would otherwise wait seconds for torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from vitaccel.sw import data

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["train_model", "train_digits_vit", "fit", "evaluate_float", "Recipe", "RECIPES", "TRAIN_SEED",
           "DEFAULT_EPOCHS"]

TRAIN_SEED = 0
#: Epochs of `vitaccel train digits-vit` (about a minute on an idle CPU core).
DEFAULT_EPOCHS = 100
#: Standard deviation of the training noise, in normalised pixel units.
NOISE_STD = 0.2
#: Normalised value of a blank digits pixel: what a shifted image is filled with.
BACKGROUND = -1.0

Augment = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]


@dataclass(frozen=True)
class Recipe:
    """How a zoo model is trained: its images (``size`` x ``size`` digits), AdamW with a
    one-cycle schedule peaking at ``lr``, ``batch`` images per step, and the augmentation:
    Gaussian pixel noise of ``noise`` and random shifts of up to ``shift`` pixels.
    ``bf16`` runs forward and backward under CPU bfloat16 autocast (master weights stay float32)."""

    size: int
    epochs: int
    batch: int
    lr: float
    weight_decay: float
    noise: float
    shift: int
    bf16: bool = False
    #: Store the weights as float16 (halves the shipped file; accuracy is measured after rounding).
    half: bool = False


#: Training recipes of the zoo models that have a data set.
RECIPES: dict[str, Recipe] = {
    # Noise only: one-pixel shifts move 8x8 content across patch boundaries and cost 10 points
    # of accuracy; no augmentation overfits to 95 %.
    "digits-vit": Recipe(size=8, epochs=DEFAULT_EPOCHS, batch=64, lr=1e-3, weight_decay=0.05,
                         noise=NOISE_STD, shift=0),
    # 197 tokens at DeiT-T width cost about 80x digits-vit's compute per image: bfloat16
    # autocast (measured 4x less CPU time per step than float32 on one AVX512-BF16 core) and
    # few epochs. Shifts of up to 2 of 28 pixels (about half an original pixel) keep content
    # in place at the scale of the 8x8 originals.
    "digits-vit-197": Recipe(size=data.DIGITS_UPSAMPLED_SIZE, epochs=20, batch=32, lr=1e-3,
                             weight_decay=0.05, noise=NOISE_STD, shift=2, bf16=True, half=True),
}


def evaluate_float(model: nn.Module, dataset: data.Dataset, batch: int = 256) -> float:
    """Top-1 accuracy of a float model on a labelled data set."""
    import torch

    from vitaccel.sw.torch_util import torch_threads

    model.eval()
    correct = 0
    with torch.no_grad(), torch_threads(1):
        for start in range(0, len(dataset), batch):
            logits = model(torch.from_numpy(dataset.images[start:start + batch]))
            correct += int((logits.argmax(-1).numpy() == dataset.labels[start:start + batch]).sum())
    return correct / len(dataset)


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian pixel noise: the regulariser that works for 2x2-patch ViTs on 8x8 digits."""
    import torch

    return images + NOISE_STD * torch.randn(images.shape, generator=generator)


def augmentation(recipe: Recipe) -> Augment:
    """The augmentation of ``recipe``: a random shift of each image by up to ``shift`` pixels
    in each direction (blank pixels filled in), then Gaussian pixel noise."""
    import torch
    import torch.nn.functional as F

    def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if recipe.shift:
            s = recipe.shift
            h, w = images.shape[-2:]
            padded = F.pad(images, (s, s, s, s), value=BACKGROUND)
            offsets = torch.randint(0, 2 * s + 1, (len(images), 2), generator=generator).tolist()
            images = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
        return images + recipe.noise * torch.randn(images.shape, generator=generator)

    return augment


def train_model(name: str, epochs: int | None = None, *, output: str | Path | None = None,
                progress: Callable[[int, int, float], None] | None = None,
                max_steps: int | None = None, evaluate: bool = True) -> tuple[nn.Module, float | None]:
    """Train zoo model ``name`` (a key of :data:`RECIPES`) from its seeded initialisation on
    its digits training split; return the model and its float top-1 on the 449 test images
    (None with ``evaluate=False``).

    Deterministic for given arguments: seeded initialisation, batch order and augmentation,
    one torch thread. ``epochs`` defaults to the recipe's; ``max_steps`` stops after that many
    optimiser steps (quick tests; the schedule stays the one of ``epochs``).
    ``progress(epoch, epochs, train_loss)`` is called after each epoch. If ``output`` is given
    the state dict is saved there (float16 for recipes with ``half``; the returned model and
    accuracy then use the rounded weights).
    """
    import torch

    from vitaccel.sw.models.zoo import INIT_SEED, ZOO
    from vitaccel.sw.torch_util import torch_threads

    recipe = RECIPES[name]
    epochs = recipe.epochs if epochs is None else epochs
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    torch.manual_seed(INIT_SEED)
    with torch_threads(1):
        model = ZOO[name]()
    train = data.digits("train", size=recipe.size)
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    steps = epochs * -(-len(images) // recipe.batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe.lr, total_steps=steps,
                                                   pct_start=0.1)
    with torch_threads(1):
        fit(model, images, labels, generator, optimiser, schedule, epochs, recipe.batch, progress,
            augment=augmentation(recipe), max_steps=max_steps, bf16=recipe.bf16)
    model.eval()
    state = model.state_dict()
    if recipe.half:
        state = {key: value.half() for key, value in state.items()}
        model.load_state_dict(state)  # evaluate what is shipped
    accuracy = evaluate_float(model, data.digits("test", size=recipe.size)) if evaluate else None
    if output is not None:
        _save_atomically(state, Path(output))
    return model, accuracy


def train_digits_vit(epochs: int = DEFAULT_EPOCHS, *, output: str | Path | None = None,
                     progress: Callable[[int, int, float], None] | None = None) -> tuple[nn.Module, float]:
    """:func:`train_model` for digits-vit (AdamW, one-cycle, label smoothing, pixel noise)."""
    return train_model("digits-vit", epochs, output=output, progress=progress)


def _save_atomically(state: dict, path: Path) -> None:
    import os

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        torch.save(state, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
        optimiser: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, epochs: int,
        batch: int, progress: Callable[[int, int, float], None] | None = None, *,
        augment: Augment = _augment, max_steps: int | None = None, bf16: bool = False) -> None:
    """The training loop shared by :func:`train_model` and the pruning fine-tuner.

    Per epoch: shuffled batches of ``batch`` images (order drawn from ``generator``),
    ``augment(images, generator)`` (default: Gaussian pixel noise), label-smoothed cross
    entropy, one optimiser and one schedule step per batch; ``progress(epoch, epochs,
    mean_loss)`` after each epoch. Stops after ``max_steps`` steps if given. ``bf16``: forward
    and loss under CPU bfloat16 autocast.
    """
    import torch
    import torch.nn.functional as F

    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        losses = []
        for start in range(0, len(images), batch):
            index = order[start:start + batch]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(augment(images[index], generator))
            loss = F.cross_entropy(logits.float(), labels[index], label_smoothing=0.1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        if progress is not None:
            progress(epoch + 1, epochs, float(np.mean(losses)))
        if max_steps is not None and step >= max_steps:
            return
