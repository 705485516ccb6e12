"""``vitaccel run``: execute a compiled program on its test images and compare with float."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from vitaccel.hw.spec.numerics import dequantize, quantize
from vitaccel.sw.commands import UserError

__all__ = ["run_program_dir", "DEFAULT_GENERATED_IMAGES", "DEFAULT_RTL_IMAGES", "TIMING_THREADS",
           "TIMING_REPEATS", "float_model"]

#: Images used for models without a data set when ``--images`` is not given.
DEFAULT_GENERATED_IMAGES = 8
#: Images the ``rtl`` backend runs when ``--images`` is not given (each costs minutes of simulation).
DEFAULT_RTL_IMAGES = 2
#: Threads both sides of the speed comparison run on (torch intra-op and BLAS): on a shared
#: 2-core machine more threads made both slower and noisier (DeiT-S 10x under OpenBLAS).
TIMING_THREADS = 1
#: Timed runs per side (after one warm-up run each); the fastest counts. Fewer when a run is long.
TIMING_REPEATS = 3
#: Runs shorter than this are timed :data:`_SHORT_RUN_REPEATS` times instead: a sub-second run
#: on a shared machine is often slowed by other jobs in all of three tries (either side).
_SHORT_RUN_SECONDS = 1.0
_SHORT_RUN_REPEATS = 7
#: A device run longer than this is timed once (its warm-up run already cost as much).
_LONG_RUN_SECONDS = 2.0


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


@contextlib.contextmanager
def _pinned_threads(count: int) -> Iterator[None]:
    """torch and every BLAS (NumPy's OpenBLAS, through threadpoolctl when installed, else the
    environment of BLAS libraries not loaded yet) on ``count`` threads inside the block."""
    import os

    from vitaccel.sw.torch_util import torch_threads

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_threads(count))
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(name, str(count))
        else:
            stack.enter_context(threadpool_limits(limits=count, user_api="blas"))
        yield


def float_model(program: Any, images: np.ndarray) -> tuple[Any, str]:
    """The float model a program was compiled from, rebuilt from its manifest (zoo name or
    ``file.py:function``, weights file, N:M pruning, token pruning), and how: ``(net, note)``;
    ``(None, why not)`` when it cannot be rebuilt or its outputs on ``images`` (the first
    evaluation images) differ from the program's stored ``reference.npy``."""
    import torch

    from vitaccel.sw.commands import UserError
    from vitaccel.sw.models.zoo import get_model
    from vitaccel.sw.torch_util import model_logits

    meta = program.manifest["model"]
    spec = meta.get("spec")
    if not spec:
        return None, "the manifest names no model"
    try:
        net, _ = get_model(spec, meta.get("weights"))
        if meta.get("nm_pruning"):
            from vitaccel.sw.prune.nm import prune_nm

            prune_nm(net, meta["nm_pruning"]["n"], meta["nm_pruning"]["m"])
        if meta.get("token_pruning"):
            from vitaccel.sw.prune.tokens import TokenPruningViT

            pruning = meta["token_pruning"]
            net = TokenPruningViT(net, keep=pruning["keep"], points=pruning["points"],
                                  package=pruning["package"]).eval()
        with torch.no_grad():
            logits = model_logits(net(torch.from_numpy(images))).reshape(len(images), -1).numpy()
    except (UserError, ValueError, KeyError, TypeError, RuntimeError) as err:
        return None, f"cannot rebuild the float model {spec!r}: {err}"
    if not np.allclose(logits, program.reference[:len(images)], rtol=1e-3, atol=1e-3):
        return None, f"the rebuilt float model {spec!r} does not reproduce reference.npy"
    return net, f"float model {spec!r} rebuilt from the manifest (its outputs match reference.npy)"


def _torch_timer(program: Any, batches: list[np.ndarray]) -> tuple[Callable[[], float] | None, dict[str, Any]]:
    """A function timing the float model over ``batches`` (warmed up once already), or None,
    and what ``timing`` reports about it."""
    import torch

    net, note = float_model(program, batches[0][:8])
    timing: dict[str, Any] = {"threads": TIMING_THREADS, "torch": note}
    if net is None:
        return None, timing

    def run() -> float:
        with torch.no_grad():
            return _time_batches(lambda images: net(torch.from_numpy(images)), batches)

    run()
    return run, timing


def _time_batches(run: Callable[[np.ndarray], Any], batches: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    return time.perf_counter() - start


def run_program_dir(directory: str | Path, *, backend: str = "golden", images: int | None = None,
                    batch: int | None = None, progress: Callable[[str, float], Any] | None = None,
                    device_options: dict[str, Any] | None = None,
                    notice: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run the program in ``directory`` on its model's test images; accuracy and agreement.

    The float side is the reference outputs the program stores (``reference.npy``, computed
    at compile time from the model it was compiled from), so the result does not depend on
    rebuilding the model or on the working directory. ``images`` is bounded by the images
    stored (all of a data set's test split, or a fixed number of generated ones); a larger
    request runs them all and says so through ``notice`` (one line) and ``images_requested``.

    The images go to the device in batches of ``batch`` (default: all in one batch;
    :meth:`~vitaccel.sw.device.Device.infer_batch`: the golden machine runs each instruction
    once per batch, the ``rtl`` backend launches one simulator per batch). ``device_options``
    go to the device (``rtl``: ``simulator``, ``waves``, ``seed``, ``backpressure``, ``max_latency``).

    Speed: the float model is rebuilt (:func:`float_model`) and timed on the same images in
    the same batches as the device, both on :data:`TIMING_THREADS` thread(s). For the
    ``golden`` and ``perf`` backends each side runs once untimed (warm-up) and then up to
    :data:`TIMING_REPEATS` times (7 for runs under 1 s), interleaved, the fastest counting; ``rtl`` and ``board`` are
    timed on their one run. Where the model cannot be rebuilt, the compile-time figure (batch
    1) is used and ``timing`` says so.

    Returns a JSON-able dict with ``images``, ``batch``, ``float_top1`` and ``int8_top1`` (None
    without labels), ``agreement``, ``logit_cosine``, ``seconds`` (device time for all images),
    ``torch_seconds`` (the float model, the same images and batches), ``device_vs_torch`` (the
    ratio), ``timing`` (how both were timed), per-image figures and the program's instruction statistics.
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
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
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
    batch = min(batch or count, count)
    device = open_device(backend, program, **(device_options or {}))
    dataset = images_for(shape, stored)
    in_spec, out_spec = program.manifest["inputs"][0], program.manifest["outputs"][0]
    codes = quantize(dataset.images[:count], in_spec["scale"]).astype(np.int8)
    code_batches = [codes[i:i + batch] for i in range(0, count, batch)]
    float_batches = [np.ascontiguousarray(dataset.images[i:i + batch]) for i in range(0, count, batch)]

    with _pinned_threads(TIMING_THREADS):
        results: list[np.ndarray] = []
        runs: list[dict[str, Any]] = []

        def infer(chunk: np.ndarray) -> None:
            results.append(device.infer_batch(chunk, progress=progress))
            runs.extend(device.batch_stats)

        device_seconds = _time_batches(infer, code_batches)
        outputs = np.concatenate(results)
        stats: dict[str, Any] = device.last_stats
        repeats = 0
        if backend in ("golden", "perf"):   # the first run was the warm-up
            if device_seconds >= _LONG_RUN_SECONDS:   # maybe one-time costs (compiling kernels): again
                device_seconds = _time_batches(device.infer_batch, code_batches)
            repeats = (_SHORT_RUN_REPEATS if device_seconds < _SHORT_RUN_SECONDS
                       else TIMING_REPEATS if device_seconds < _LONG_RUN_SECONDS else 1)
            device_seconds = float("inf")
        torch_timer, timing = _torch_timer(program, float_batches)
        torch_seconds = None if torch_timer is None else (float("inf") if repeats else torch_timer())
        for _ in range(repeats):   # interleaved: load on the machine hits both sides alike
            device_seconds = min(device_seconds, _time_batches(device.infer_batch, code_batches))
            if torch_timer is not None:
                torch_seconds = min(torch_seconds, torch_timer())
    if torch_seconds is None:
        torch_seconds = reference_meta["torch_seconds_per_image"] * count
        timing["torch"] = "compile-time figure at batch 1 (" + timing["torch"] + ")"
    timing["device"] = (f"fastest of {repeats} timed runs after a warm-up run" if repeats
                        else "its one run")
    int8_logits = [dequantize(out, out_spec["scale"]).reshape(-1) for out in outputs]
    f, q = program.reference[:count], np.stack(int8_logits)
    labels = dataset.labels[:count] if dataset.labels is not None else None
    result = {
        "images": count,
        "batch": batch,
        "backend": backend,
        "float_top1": float(np.mean(f.argmax(1) == labels)) if labels is not None else None,
        "int8_top1": float(np.mean(q.argmax(1) == labels)) if labels is not None else None,
        "agreement": float(np.mean(f.argmax(1) == q.argmax(1))),
        "logit_cosine": float(np.mean([_cosine(a, b) for a, b in zip(f, q)])),
        "seconds": round(device_seconds, 4),
        "seconds_per_image": round(device_seconds / count, 5),
        "torch_seconds": round(torch_seconds, 4),
        "torch_seconds_per_image": round(torch_seconds / count, 5),
        "device_vs_torch": round(device_seconds / torch_seconds, 2) if torch_seconds else None,
        "timing": timing,
        "instructions": program.manifest["instructions"],
        "instruction_counts": program.manifest.get("instruction_counts"),
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
