"""A few epochs of fine-tuning of a pruned float model on the digits train split.

The loop is :mod:`vitaccel.sw.train`'s (``fit``: shuffled batches, one-pixel shift
augmentation, label smoothing); this module only sets up a gentler optimiser for a trained
model and keeps N:M masks fixed by re-applying them after every optimiser step.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vitaccel.sw import data, train
from vitaccel.sw.prune.nm import NMMasks
from vitaccel.sw.torch_util import torch_threads

__all__ = ["finetune_digits", "FINETUNE_SEED"]

#: Seed of the fine-tuning batch order and augmentation.
FINETUNE_SEED = 0
_BATCH = 64


def finetune_digits(model: nn.Module, epochs: int = 5, *, masks: NMMasks | None = None,
                    lr: float = 5e-4, weight_decay: float = 0.05, max_images: int | None = None,
                    progress: Callable[[int, int, float], None] | None = None) -> float:
    """Fine-tune ``model`` (in place) on the digits train split; return its digits test top-1.

    Parameters
    ----------
    model : nn.Module
        A float model taking ``[B, 1, 8, 8]`` digits (zoo digits-vit, pruned or wrapped).
    epochs : int
        Passes over the train split (0 only evaluates).
    masks : NMMasks, optional
        N:M masks kept fixed: re-applied after every step (and once before training).
    lr, weight_decay : float
        AdamW with a one-cycle schedule peaking at ``lr``.
    max_images : int, optional
        Train on the first ``max_images`` train images only (quick tests).
    progress : callable, optional
        ``progress(epoch, epochs, train_loss)`` after each epoch.
    """
    if epochs < 0:
        raise ValueError(f"finetune_digits: epochs must be >= 0, got {epochs}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"finetune_digits: max_images must be positive, got {max_images}")
    if masks is not None:
        masks.apply(model)
    if epochs:
        split = data.digits("train")
        images = torch.from_numpy(split.images[:max_images])
        labels = torch.from_numpy(split.labels[:max_images])
        generator = torch.Generator().manual_seed(FINETUNE_SEED)
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps = epochs * -(-len(images) // _BATCH)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
        handle = masks.attach(model, optimiser) if masks is not None else None
        try:
            with torch_threads(1):
                train.fit(model, images, labels, generator, optimiser, schedule, epochs, _BATCH, progress)
        finally:
            if handle is not None:
                handle.remove()
    return train.evaluate_float(model, data.digits("test"))
