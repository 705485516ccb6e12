"""Small helpers around torch's global state."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["torch_threads", "model_logits", "MultipleOutputs"]


class MultipleOutputs(ValueError):
    """A model returns several tensors and none of them is marked as its logits."""


def model_logits(output: Any) -> Any:
    """The logits among what a model's forward returned: the one output ``vitaccel`` compiles
    and compares.

    A tensor is the logits; so is the ``logits`` entry of a HuggingFace output
    (``ImageClassifierOutput``, DeiT's ``...WithTeacherOutput`` whose ``logits`` is the mean
    of the class and distillation heads) or of a dict, and the only element of a one-element
    tuple or list. Leaves may be any type (``torch.fx.Node`` in a captured graph).

    Raises
    ------
    MultipleOutputs
        For several outputs without a ``logits`` entry, or none (the message counts them).
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None) if not isinstance(output, dict) else output.get("logits")
    if logits is not None:
        return logits
    if isinstance(output, (tuple, list)) and len(output) == 1:
        return model_logits(output[0])
    count = len(output) if isinstance(output, (tuple, list, dict)) else 0
    raise MultipleOutputs(f"the model returns {count or 'no'} outputs ({type(output).__name__}) and none is "
                          "named logits; vitaccel compiles models with one output: return one tensor")


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
