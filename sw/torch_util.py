"""Small helpers around torch's global state."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run torch CPU kernels on ``count`` threads inside the block, then restore.

    The compiler's tensors are small (one image, a few hundred tokens): on a shared machine,
    intra-op threads cost far more in start-up and spinning than they save (measured: a
    digits-vit calibration takes 3 s on one thread, 36 s on two under load).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
