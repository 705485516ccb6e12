"""``vitaccel run``: execute a compiled program on its test images and compare with float."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec.numerics import dequantize, quantize
from vitaccel.sw.commands import UserError

__all__ = ["run_program_dir", "DEFAULT_GENERATED_IMAGES"]

#: Images used for models without a data set when ``--images`` is not given.
DEFAULT_GENERATED_IMAGES = 8
#: Images the float model is timed on (batch 1) for the side-by-side speed figure.
TORCH_TIMED_IMAGES = 8


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def run_program_dir(directory: str | Path, *, backend: str = "golden", images: int | None = None,
                    progress: Callable[[str, float], Any] | None = None) -> dict[str, Any]:
    """Run the program in ``directory`` on its model's test images; accuracy and agreement.

    Returns a JSON-able dict with ``images``, ``float_top1`` and ``int8_top1`` (None without
    labels), ``agreement``, ``logit_cosine``, ``seconds`` (device time), ``torch_seconds_per_image``
    (the float model at batch 1, timed on the first images), ``device_vs_torch`` (the ratio) and the program's instruction statistics.
    """
    import torch

    from vitaccel.sw.data import images_for
    from vitaccel.sw.device import open_device
    from vitaccel.sw.models.zoo import get_model
    from vitaccel.sw.program import load_program

    if images is not None and images < 1:
        raise UserError(f"--images must be at least 1, got {images}")
    try:
        program = load_program(directory)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    device = open_device(backend, program)
    model_meta = program.manifest["model"]
    net, shape = get_model(model_meta["spec"], model_meta.get("weights"))
    dataset = images_for(shape, images if images is not None else
                         (None if tuple(shape) == (1, 8, 8) else DEFAULT_GENERATED_IMAGES))
    count = len(dataset)
    in_spec, out_spec = program.manifest["inputs"][0], program.manifest["outputs"][0]
    codes = quantize(dataset.images, in_spec["scale"]).astype(np.int8)

    int8_logits = []
    device_seconds = 0.0
    stats: dict[str, Any] = {}
    for index in range(count):
        start = time.perf_counter()
        out = device.infer(codes[index])[0]
        device_seconds += time.perf_counter() - start
        int8_logits.append(dequantize(out, out_spec["scale"]).reshape(-1))
        stats = device.last_stats
        if progress:
            progress(f"image {index + 1}/{count}", (index + 1) / count)
    with torch.no_grad():
        # Side-by-side speed: the float model at batch 1 on the first images, as the device ran.
        timed = min(count, TORCH_TIMED_IMAGES)
        net(torch.from_numpy(dataset.images[:1]))  # warm-up: first-call allocation is not inference
        start = time.perf_counter()
        for index in range(timed):
            net(torch.from_numpy(dataset.images[index:index + 1]))
        torch_per_image = (time.perf_counter() - start) / timed
        float_logits = [net(torch.from_numpy(dataset.images[i:i + 64])).numpy().reshape(-1, out_spec["shape"][-1])
                        for i in range(0, count, 64)]
    f, q = np.concatenate(float_logits), np.stack(int8_logits)
    labels = dataset.labels
    result = {
        "images": count,
        "backend": backend,
        "float_top1": float(np.mean(f.argmax(1) == labels)) if labels is not None else None,
        "int8_top1": float(np.mean(q.argmax(1) == labels)) if labels is not None else None,
        "agreement": float(np.mean(f.argmax(1) == q.argmax(1))),
        "logit_cosine": float(np.mean([_cosine(a, b) for a, b in zip(f, q)])),
        "seconds": round(device_seconds, 4),
        "seconds_per_image": round(device_seconds / count, 5),
        "torch_seconds_per_image": round(torch_per_image, 5),
        "device_vs_torch": round(device_seconds / count / torch_per_image, 2),
        "instructions": program.manifest["instructions"],
        "macs_per_image": stats.get("macs"),
        "dma_bytes_per_image": (stats.get("dma_read_bytes", 0) + stats.get("dma_write_bytes", 0)) or None,
    }
    return result
