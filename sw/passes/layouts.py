"""Index maps of layout ops, and their recognition as named DMA patterns.

A layout node moves data without computing: its ``index`` tensor (output-shaped) holds, for
every output element, the flat position it reads in the input. Any chain of views, permutes,
selects and unbinds composes into one such map, and a map is recognised as a named pattern
(``split_heads``, ``merge_heads``, ...) by comparing it with the map the pattern would produce.
Shapes here are WITHOUT the batch axis.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

__all__ = ["index_map_of", "classify", "reference_map", "strip_batch"]


def index_map_of(op, in_shape: tuple[int, ...], args: tuple, kwargs: dict, select: int | None = None) -> torch.Tensor:
    """Run a layout aten ``op`` on the flat positions of an ``in_shape`` tensor."""
    positions = torch.arange(int(torch.Size(in_shape).numel()), dtype=torch.int64).reshape(in_shape)
    result = op(positions, *args, **kwargs)
    if select is not None:
        result = result[select]
    return result.contiguous()


def strip_batch(index: torch.Tensor, in_shape: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, ...]] | None:
    """The per-image map and input shape, if both shapes lead with a batch axis of 1."""
    if index.ndim == 0 or index.shape[0] != 1 or not in_shape or in_shape[0] != 1:
        return None
    return index[0], tuple(in_shape[1:])


def reference_map(pattern: str, in_shape: tuple[int, ...], **params: Any) -> torch.Tensor:
    """The index map a named pattern produces on an input of ``in_shape`` (no batch)."""
    positions = torch.arange(int(torch.Size(in_shape).numel()), dtype=torch.int64).reshape(in_shape)
    if pattern == "split_heads":
        t, width = in_shape
        h, chunks = params["num_heads"], params["chunks"]
        return positions.reshape(t, chunks, h, width // (chunks * h))[:, params["index"]].transpose(0, 1).contiguous()
    if pattern == "merge_heads":
        h, t, d = in_shape
        return positions.transpose(0, 1).reshape(t, h * d).contiguous()
    if pattern == "select_token":
        return positions[params["index"]].contiguous()
    if pattern == "transpose":
        return positions.permute(*params["perm"]).contiguous()
    if pattern == "reshape":
        return positions.reshape(params["shape"]).contiguous()
    raise ValueError(f"unknown layout pattern {pattern!r}")


def _same(index: torch.Tensor, reference: torch.Tensor) -> bool:
    return tuple(index.shape) == tuple(reference.shape) and bool(torch.equal(index, reference))


def classify(index: torch.Tensor, in_shape: tuple[int, ...]) -> tuple[str, dict[str, Any]] | None:
    """Name the pattern of a per-image index map, e.g. ``("split_heads", {...})``, or None."""
    out_shape = tuple(index.shape)
    numel_in = int(torch.Size(in_shape).numel())
    if index.numel() == numel_in and _same(index.reshape(-1), torch.arange(numel_in)):
        return "reshape", {"shape": out_shape}
    if len(in_shape) == 2 and index.ndim == 1 and index.numel() == in_shape[1]:
        token = int(index[0]) // in_shape[1]
        if token < in_shape[0] and _same(index, reference_map("select_token", in_shape, index=token)):
            return "select_token", {"index": token}
    if len(in_shape) == 2 and index.ndim == 3:
        t, width = in_shape
        h, t_out, d = out_shape
        if t_out == t and width % (h * d) == 0:
            chunks = width // (h * d)
            for chunk in range(chunks):
                params = {"num_heads": h, "chunks": chunks, "index": chunk}
                if _same(index, reference_map("split_heads", in_shape, **params)):
                    return "split_heads", params
    if len(in_shape) == 3 and index.ndim == 2 \
            and _same(index, reference_map("merge_heads", in_shape)):
        return "merge_heads", {}
    if index.numel() == numel_in and index.ndim == len(in_shape) <= 4:
        for perm in itertools.permutations(range(len(in_shape))):
            if tuple(in_shape[p] for p in perm) == out_shape \
                    and _same(index, reference_map("transpose", in_shape, perm=perm)):
                return "transpose", {"perm": perm}
    return None
