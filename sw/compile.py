"""``vitaccel compile``: PyTorch model -> quantized QGraph -> program directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from vitaccel.hw.spec.config import AccelConfig, load_config
from vitaccel.sw.commands import UserError
from vitaccel.sw.program import CompiledProgram, write_program

__all__ = ["compile_model", "default_calibration", "DEFAULT_CALIB", "DEFAULT_CALIB_LARGE"]

#: Calibration images used when ``--calib`` is not given, for small inputs (digits-vit) ...
DEFAULT_CALIB = 32
#: ... and for 224x224 models, whose calibration forward passes dominate compile time.
DEFAULT_CALIB_LARGE = 4


def default_calibration(input_shape: tuple[int, ...]) -> int:
    """Default number of calibration images for a model input shape ``(C, H, W)``."""
    return DEFAULT_CALIB if input_shape[-1] * input_shape[-2] <= 64 * 64 else DEFAULT_CALIB_LARGE

Progress = Callable[[str, float], Any]


def _stage(progress: Progress | None, lo: float, hi: float) -> Progress | None:
    """A progress callback mapping a stage's 0..1 onto ``lo..hi`` of the whole job."""
    if progress is None:
        return None
    return lambda text, fraction: progress(text, lo + (hi - lo) * max(0.0, min(1.0, fraction)))


def compile_model(model: str, config: str | AccelConfig, output: str | Path, *, weights: str | None = None,
                  calib: int | None = None, method: str = "minmax",
                  progress: Progress | None = None) -> CompiledProgram:
    """Compile ``model`` (zoo name or ``file.py:function``) for ``config`` into ``output``.

    Raises
    ------
    UserError
        For an unknown model/config, an unsupported operator (named, with its source) or a
        layer the back end cannot map.
    """
    from vitaccel.sw.backend import BackendError, compile_qgraph
    from vitaccel.sw.data import images_for
    from vitaccel.sw.models.zoo import get_model
    from vitaccel.sw.quantize import quantize_model
    from vitaccel.sw.qgraph import QGraphError

    if calib is not None and calib < 1:
        raise UserError(f"--calib must be at least 1, got {calib}")
    cfg = config if isinstance(config, AccelConfig) else load_config(config)
    started = time.perf_counter()
    if progress:
        progress("loading model", 0.0)
    net, shape = get_model(model, weights)
    calib = default_calibration(shape) if calib is None else calib
    calib_images = images_for(shape, calib, split="train").images[:calib]
    try:
        qgraph = quantize_model(net, shape, calib_images, method, config=cfg, name=Path(model).name,
                                progress=_stage(progress, 0.05, 0.7))
        meta = {"spec": model, "weights": str(Path(weights).resolve()) if weights else None,
                "input_shape": list(shape), "calib_images": int(calib)}
        program = compile_qgraph(qgraph, cfg, progress=_stage(progress, 0.7, 0.95), meta=meta)
    except (BackendError, QGraphError) as err:
        raise UserError(str(err)) from None
    if progress:
        progress("writing program", 0.95)
    program.manifest["compile_seconds"] = round(time.perf_counter() - started, 3)
    write_program(output, program)
    if progress:
        progress("done", 1.0)
    return program
