"""``vitaccel run``: execute a compiled program on its test images and compare with float."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec.numerics import dequantize, quantize
from vitaccel.sw.commands import UserError

__all__ = ["run_program_dir", "DEFAULT_GENERATED_IMAGES", "DEFAULT_RTL_IMAGES"]

#: Images used for models without a data set when ``--images`` is not given.
DEFAULT_GENERATED_IMAGES = 8
#: Images the ``rtl`` backend runs when ``--images`` is not given (each costs minutes of simulation).
DEFAULT_RTL_IMAGES = 2


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def run_program_dir(directory: str | Path, *, backend: str = "golden", images: int | None = None,
                    progress: Callable[[str, float], Any] | None = None,
                    device_options: dict[str, Any] | None = None,
                    notice: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run the program in ``directory`` on its model's test images; accuracy and agreement.

    The float side is the reference outputs the program stores (``reference.npy``, computed
    at compile time from the model it was compiled from), so the result does not depend on
    rebuilding the model or on the working directory. ``images`` is bounded by the images
    stored (all of a data set's test split, or a fixed number of generated ones); a larger
    request runs them all and says so through ``notice`` (one line) and ``images_requested``.

    All images go to the device as one batch (:meth:`~vitaccel.sw.device.Device.infer_batch`:
    one simulator launch for the ``rtl`` backend). ``device_options`` go to the device
    (``rtl``: ``simulator``, ``waves``, ``seed``, ``backpressure``, ``max_latency``).

    Returns a JSON-able dict with ``images``, ``float_top1`` and ``int8_top1`` (None without
    labels), ``agreement``, ``logit_cosine``, ``seconds`` (device time), ``torch_seconds_per_image``
    (the float model at batch 1, timed at compile time), ``device_vs_torch`` (the ratio) and the program's instruction statistics.
    The ``perf``, ``rtl`` and ``board`` backends add ``cycles`` (TOTAL_CYCLES summed over the images),
    ``cycles_per_image`` (mean) and ``cycles_by_image``; ``rtl`` adds ``bit_exact_vs_golden``
    (every run's outputs and whole DDR window equal the golden machine's), ``problems`` (where
    not), ``simulator`` and ``waves`` (the waveform file, with ``waves=True``); ``perf`` adds
    ``perf``, the performance model's estimate of the RTL counters per image.
    """
    from vitaccel.sw.data import images_for
    from vitaccel.sw.device import open_device
    from vitaccel.sw.program import load_program

    if images is not None and images < 1:
        raise UserError(f"--images must be at least 1, got {images}")
    try:
        program = load_program(directory)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    if program.reference is None:
        raise UserError(f"{directory}: the program stores no float reference outputs; compile it again")
    reference_meta = program.manifest["reference"]
    stored = reference_meta["images"]
    shape = tuple(program.manifest["model"]["input_shape"])
    requested = images
    if images is None:
        images = DEFAULT_RTL_IMAGES if backend == "rtl" else (stored if reference_meta.get("labelled")
                                                              else DEFAULT_GENERATED_IMAGES)
    count = min(images, stored)
    if requested is not None and requested > stored and notice is not None:
        notice(f"--images {requested}: the program stores reference outputs for {stored} images "
               f"({reference_meta['data']}); running {stored}")
    device = open_device(backend, program, **(device_options or {}))
    dataset = images_for(shape, stored)
    in_spec, out_spec = program.manifest["inputs"][0], program.manifest["outputs"][0]
    codes = quantize(dataset.images[:count], in_spec["scale"]).astype(np.int8)

    start = time.perf_counter()
    outputs = device.infer_batch(codes, progress=progress)
    device_seconds = time.perf_counter() - start
    int8_logits = [dequantize(out, out_spec["scale"]).reshape(-1) for out in outputs]
    runs = device.batch_stats
    stats: dict[str, Any] = device.last_stats
    torch_per_image = reference_meta["torch_seconds_per_image"]
    f, q = program.reference[:count], np.stack(int8_logits)
    labels = dataset.labels[:count] if dataset.labels is not None else None
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
        "device_vs_torch": round(device_seconds / count / torch_per_image, 2) if torch_per_image else None,
        "instructions": program.manifest["instructions"],
        "macs_per_image": stats.get("macs"),
        "dma_bytes_per_image": (stats.get("dma_read_bytes", 0) + stats.get("dma_write_bytes", 0)) or None,
    }
    if requested is not None and requested > count:
        result["images_requested"] = requested
    if runs and "cycles" in runs[0]:
        cycles = [int(run["cycles"]) for run in runs]
        result.update(cycles=sum(cycles), cycles_per_image=round(sum(cycles) / count), cycles_by_image=cycles)
    if runs and "perf" in runs[0]:   # the performance model's counters (the same for every image)
        result["perf"] = runs[0]["perf"]
    if backend == "rtl":
        problems = [f"image {i}: {p}" for i, run in enumerate(runs) for p in run["problems"]]
        result.update(bit_exact_vs_golden=bool(runs) and all(run["bit_exact"] for run in runs) and not problems,
                      problems=problems, simulator=device.simulation["simulator"],
                      simulation_seconds=device.simulation["seconds"], waves=device.simulation["waves"])
    return result
