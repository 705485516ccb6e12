"""Training of zoo models on their data set (digits-vit on scikit-learn's digits).

torch is imported inside the functions: the command line imports this module for its
defaults, and every ``vitaccel`` command would otherwise wait seconds for torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from vitaccel.sw import data

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["train_digits_vit", "fit", "evaluate_float", "TRAIN_SEED", "DEFAULT_EPOCHS"]

TRAIN_SEED = 0
#: Epochs of `vitaccel train digits-vit` (about a minute on an idle CPU core).
DEFAULT_EPOCHS = 100
#: Standard deviation of the training noise, in normalised pixel units.
NOISE_STD = 0.2


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
    """Gaussian pixel noise: the regulariser that works for 2x2-patch ViTs on 8x8 digits.

    (One-pixel shifts, the usual choice, move content across patch boundaries and cost
    10 points of accuracy here; no augmentation overfits to 95 %.)
    """
    import torch

    return images + NOISE_STD * torch.randn(images.shape, generator=generator)


def train_digits_vit(epochs: int = DEFAULT_EPOCHS, *, output: str | Path | None = None,
                     progress: Callable[[int, int, float], None] | None = None,
                     lr: float = 1e-3, weight_decay: float = 0.05) -> tuple[nn.Module, float]:
    """Train digits-vit from its seeded initialisation; return the model and test top-1.

    AdamW with a one-cycle schedule, label smoothing and Gaussian pixel noise
    (:func:`_augment`); deterministic for a given ``epochs``.
    ``progress(epoch, epochs, train_loss)`` is called after each epoch. If ``output`` is
    given the state dict is saved there.
    """
    import torch

    from vitaccel.sw.torch_util import torch_threads

    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    from vitaccel.sw.models.zoo import INIT_SEED, build_digits_vit

    torch.manual_seed(INIT_SEED)
    model = build_digits_vit()
    train = data.digits("train")
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    batch = 64
    steps = epochs * ((len(images) + batch - 1) // batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps,
                                                   pct_start=0.1)
    with torch_threads(1):
        fit(model, images, labels, generator, optimiser, schedule, epochs, batch, progress)
    model.eval()
    accuracy = evaluate_float(model, data.digits("test"))
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), output)
    return model, accuracy


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
        optimiser: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, epochs: int,
        batch: int, progress: Callable[[int, int, float], None] | None = None) -> None:
    """The training loop shared by :func:`train_digits_vit` and the pruning fine-tuner.

    Per epoch: shuffled batches of ``batch`` images (order drawn from ``generator``), Gaussian
    pixel noise (:func:`_augment`), label-smoothed cross entropy, one optimiser and one
    schedule step per batch; ``progress(epoch, epochs, mean_loss)`` after each epoch.
    """
    import torch
    import torch.nn.functional as F

    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        losses = []
        for start in range(0, len(images), batch):
            index = order[start:start + batch]
            loss = F.cross_entropy(model(_augment(images[index], generator)), labels[index],
                                   label_smoothing=0.1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        if progress is not None:
            progress(epoch + 1, epochs, float(np.mean(losses)))
