"""Calibration observers: the float range of every activation over the calibration images."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Observer", "MinMaxObserver", "PercentileObserver", "make_observer", "METHODS"]

METHODS = ("minmax", "percentile")


class Observer:
    """Collects ``|x|`` statistics per IR node; :meth:`amax` is the range to map onto int8."""

    def __call__(self, node, value: torch.Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def amax(self, name: str) -> float:  # pragma: no cover - interface
        raise NotImplementedError


class MinMaxObserver(Observer):
    """The largest magnitude seen (no clipping)."""

    def __init__(self) -> None:
        self._amax: dict[str, float] = {}

    def __call__(self, node, value: torch.Tensor) -> None:
        array = value.detach().numpy()  # NumPy: no thread start-up cost on small tensors
        seen = float(np.abs(array).max()) if array.size else 0.0
        self._amax[node.name] = max(self._amax.get(node.name, 0.0), seen)

    def amax(self, name: str) -> float:
        return self._amax[name]


class PercentileObserver(Observer):
    """The ``percentile`` of ``|x|`` over a uniform subsample (clips rare outliers)."""

    #: Values kept per node and batch (a strided subsample: enough for a 99.99th percentile).
    SAMPLES_PER_BATCH = 200_000

    def __init__(self, percentile: float = 99.99) -> None:
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile
        self._samples: dict[str, list[np.ndarray]] = {}
        self._max: dict[str, float] = {}

    def __call__(self, node, value: torch.Tensor) -> None:
        flat = np.abs(value.detach().numpy().reshape(-1))
        stride = max(1, flat.size // self.SAMPLES_PER_BATCH)
        self._samples.setdefault(node.name, []).append(flat[::stride].astype(np.float64))
        self._max[node.name] = max(self._max.get(node.name, 0.0), float(flat.max()) if flat.size else 0.0)

    def amax(self, name: str) -> float:
        samples = np.concatenate(self._samples[name])
        return float(np.percentile(samples, self.percentile)) or self._max[name]


def make_observer(method: str, percentile: float = 99.99) -> Observer:
    if method == "minmax":
        return MinMaxObserver()
    if method == "percentile":
        return PercentileObserver(percentile)
    raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
