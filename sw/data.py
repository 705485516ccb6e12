"""Evaluation data: scikit-learn's digits with a fixed split (8x8, or upsampled to 28x28 for
digits-vit-197), and fixed images for DeiT.

Everything here is deterministic (fixed seeds) so that accuracy figures are reproducible and
the compiler, the golden machine and the tests see the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "digits", "generated_images", "DIGITS_MEAN", "DIGITS_STD", "images_for"]

#: Seed of the digits train/test split (never change: published accuracies depend on it).
DIGITS_SPLIT_SEED = 0
#: Fraction of the 1797 digits images held out for testing.
DIGITS_TEST_FRACTION = 0.25
#: Pixel normalisation of digits (raw pixels are 0..16): ``(x / 16 - mean) / std``.
DIGITS_MEAN = 0.5
DIGITS_STD = 0.5


#: Input shape of the models evaluated on :func:`digits`; other shapes get generated images.
DIGITS_SHAPE = (1, 8, 8)
#: Side of the upsampled digits (digits-vit-197: 2x2 patches -> 14x14 = 196 tokens + CLS).
DIGITS_UPSAMPLED_SIZE = 28
#: Every input shape evaluated on :func:`digits` (the original and the upsampled images).
DIGITS_SHAPES = (DIGITS_SHAPE, (1, DIGITS_UPSAMPLED_SIZE, DIGITS_UPSAMPLED_SIZE))


@dataclass(frozen=True)
class Dataset:
    """Float images ``[N, C, H, W]`` (normalised), integer labels (or None), and where the
    images come from (for manifests and reports)."""

    images: np.ndarray
    labels: np.ndarray | None
    description: str = ""

    def __len__(self) -> int:
        return len(self.images)


def digits(split: str = "test", *, size: int = 8) -> Dataset:
    """scikit-learn's 8x8 digits as ``[N, 1, size, size]`` float32, normalised to [-1, 1].

    The split is fixed: a seeded permutation, the first 25 % is ``"test"``, the rest ``"train"``.
    ``size`` other than 8 upsamples bilinearly (``align_corners=False``, which stays inside the
    pixel range); the split and the order of the images do not depend on it.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = ((raw.images / 16.0 - DIGITS_MEAN) / DIGITS_STD).astype(np.float32)[:, None]
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    n_test = int(round(len(images) * DIGITS_TEST_FRACTION))
    chosen = order[:n_test] if split == "test" else order[n_test:]
    images = images[chosen]
    description = f"scikit-learn digits, {split} split (seed {DIGITS_SPLIT_SEED})"
    if size != 8:
        images = _upsample(images, size)
        description += f", upsampled to {size}x{size}"
    return Dataset(images=images, labels=raw.target[chosen].astype(np.int64), description=description)


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of ``[N, C, H, W]`` images to ``size x size`` (deterministic: one
    thread, no randomness)."""
    import torch
    import torch.nn.functional as F

    from vitaccel.sw.torch_util import torch_threads

    with torch_threads(1):
        out = F.interpolate(torch.from_numpy(images), size=(size, size), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def generated_images(count: int, shape: tuple[int, int, int] = (3, 224, 224), *,
                     seed: int = 0) -> Dataset:
    """``count`` deterministic smooth random images (no labels) for models without a data set.

    Low-frequency noise (bilinearly upsampled 7x7 Gaussian) plus a little pixel noise, roughly
    unit variance like normalised natural images, so activations have realistic ranges.
    """
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    c, h, w = shape
    coarse = torch.randn(count, c, 7, 7, generator=generator)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    noise = 0.1 * torch.randn(count, c, h, w, generator=generator)
    return Dataset(images=(smooth + noise).numpy().astype(np.float32), labels=None,
                   description=f"generated smooth noise (seed {seed})")


def has_dataset(input_shape: tuple[int, ...]) -> bool:
    """Whether models of ``input_shape`` are evaluated on a data set (else generated images)."""
    return tuple(input_shape) in DIGITS_SHAPES


def images_for(input_shape: tuple[int, int, int], count: int | None = None, *,
               split: str = "test") -> Dataset:
    """The evaluation images for a model: digits for ``1x8x8`` and ``1x28x28`` inputs (upsampled),
    generated otherwise (``count`` of them, default 8; which images depends on ``count``)."""
    if has_dataset(input_shape):
        data = digits(split, size=input_shape[-1])
        if count is not None:
            data = Dataset(data.images[:count], data.labels[:count], data.description)
        return data
    return generated_images(count or 8, tuple(input_shape), seed=0 if split == "test" else 1)
