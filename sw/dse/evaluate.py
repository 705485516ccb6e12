"""The work of one design point, split where results can be shared between points.

Cycles of a point come from the performance model (:func:`vitaccel.sim.perf.estimate`) on the
model compiled for that point's config. Most swept fields change neither the compiled
program nor the cycles, so the work is done once per distinct *key*:

* :func:`quantize_task` once per :func:`quantize_key` (the LUT widths and the numerics: the
  calibration forward passes take ~20 s for DeiT-S),
* :func:`compile_task` once per :func:`compile_key` (the buffers and limits the tiler reads),
* :func:`cycles_task` once per :func:`cycles_key` (everything but the clock and the DSP
  packing, which change neither the program nor any cycle count).

The keys are conservative: they leave out only fields known not to matter
(:data:`HARDWARE_ONLY_FIELDS`, :data:`CYCLE_FREE_FIELDS`), so a new config field counts as
relevant until shown otherwise. ``tests/sw/test_dse.py`` checks that leaving them out changes
nothing (equal programs, equal cycles).

Performance-model results are also cached on disk (:func:`cache_dir`), keyed by the program,
the cycle key and the model's source, so evaluating a space again (another board, a changed
resource model) runs no performance model.

Every task returns a plain dict (picklable, for Dask workers); a failure is returned as
``{"error": one line}`` rather than raised, so that one bad key skips its points only.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from vitaccel.hw.spec.config import AccelConfig

__all__ = ["CACHE_ENV", "cache_dir", "HARDWARE_ONLY_FIELDS", "BUFFER_FIELDS", "CYCLE_FREE_FIELDS", "quantize_key", "compile_key",
           "cycles_key", "quantize_task", "compile_task", "cycles_task"]

#: Fields the compiler never reads: geometry, lanes and bus width are the hardware's business
#: (the tiler sizes tiles from buffer capacities only), as are the clock and the DSP packing.
HARDWARE_ONLY_FIELDS = ("name", "block_rows", "block_cols", "block_size", "dsp_packing", "vector_lanes",
                        "topk_lanes", "dma_data_width", "clock_mhz", "sparse_pe_rows", "sparse_pe_cols")
#: Fields the tiler reads but quantization does not.
BUFFER_FIELDS = ("input_spad_kib", "weight_spad_kib", "acc_kib", "vector_kib")
#: Fields no cycle count depends on: the performance model counts cycles, and the packed and
#: unpacked block units take a k-step per cycle alike (docs/dsp_packing.md).
CYCLE_FREE_FIELDS = ("name", "clock_mhz", "dsp_packing")


def _key(config: AccelConfig, leave_out: tuple[str, ...]) -> str:
    return json.dumps({k: v for k, v in config.to_dict().items() if k not in leave_out}, sort_keys=True)


def quantize_key(config: AccelConfig) -> str:
    """What the quantized graph of a model depends on in ``config`` (JSON text)."""
    return _key(config, HARDWARE_ONLY_FIELDS + BUFFER_FIELDS)


def compile_key(config: AccelConfig) -> str:
    """What the compiled program of a model depends on in ``config`` (JSON text)."""
    return _key(config, HARDWARE_ONLY_FIELDS)


def cycles_key(config: AccelConfig) -> str:
    """What a compiled program's cycles depend on in ``config`` (JSON text)."""
    return _key(config, CYCLE_FREE_FIELDS)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


#: Quantized graphs this process made, by (model, quantize key): a worker (or a test) asked
#: again for the same numerics reuses its graph. The compiler does not modify a QGraph.
_QUANTIZED: dict[tuple[str, str], dict[str, Any]] = {}
_QUANTIZED_KEPT = 4


def quantize_task(model: str, config_json: str) -> dict[str, Any]:
    """Quantize ``model`` (zoo name or ``file.py:function``) for the config: ``{"qgraph"}``
    or ``{"error"}``. Calibration as ``vitaccel compile``'s default (seeded random weights
    for zoo models without a checkpoint), on one torch thread."""
    from vitaccel.hw.spec.config import ConfigError
    from vitaccel.sw.commands import UserError
    from vitaccel.sw.compile import default_calibration
    from vitaccel.sw.data import images_for
    from vitaccel.sw.models.zoo import get_model
    from vitaccel.sw.qgraph import QGraphError
    from vitaccel.sw.quantize import quantize_model
    from vitaccel.sw.torch_util import torch_threads

    config = AccelConfig.from_json(config_json)
    key = (model, quantize_key(config))
    if key in _QUANTIZED:
        return _QUANTIZED[key]
    try:
        with torch_threads(1):
            net, shape = get_model(model)
            count = default_calibration(shape)
            images = images_for(shape, count, split="train").images[:count]
            qgraph = quantize_model(net, shape, images, "minmax", config=config, name=model.rpartition("/")[2])
    except (UserError, QGraphError, ConfigError, ValueError) as err:
        return {"error": f"quantize {model}: {_one_line(err)}"}
    if len(_QUANTIZED) >= _QUANTIZED_KEPT:
        _QUANTIZED.pop(next(iter(_QUANTIZED)))
    _QUANTIZED[key] = {"qgraph": qgraph}
    return _QUANTIZED[key]


def compile_task(quantized: dict[str, Any], config_json: str) -> dict[str, Any]:
    """Compile a :func:`quantize_task` result for the config: ``{"words", "ddr_size", "macs",
    "instructions"}`` or ``{"error"}``."""
    from vitaccel.hw.spec.config import ConfigError
    from vitaccel.sw.backend import BackendError, compile_qgraph
    from vitaccel.sw.qgraph import QGraphError

    if "error" in quantized:
        return {"error": quantized["error"]}
    config = AccelConfig.from_json(config_json)
    try:
        program = compile_qgraph(quantized["qgraph"], config)
    except (BackendError, QGraphError, ConfigError, ValueError) as err:
        return {"error": f"compile: {_one_line(err)}"}
    return {"words": [int(w) for w in program.words], "ddr_size": int(program.ddr_size),
            "macs": int(program.manifest["macs"]), "instructions": len(program.words)}


#: Environment variable naming the cycles cache directory ("", "0" or "off": no cache).
CACHE_ENV = "VITACCEL_DSE_CACHE"


def cache_dir() -> Path | None:
    """Where :func:`cycles_task` keeps its results: ``$VITACCEL_DSE_CACHE``, else
    ``~/.cache/vitaccel/dse``; None when disabled."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return Path.home() / ".cache" / "vitaccel" / "dse"
    return None if value.strip().lower() in ("", "0", "off") else Path(value)


@lru_cache(maxsize=1)
def _model_digest() -> str:
    """Digest of the performance model's and the spec's sources: a cached result is reused
    only by the same model."""
    import vitaccel.hw.spec
    import vitaccel.sim.perf

    digest = hashlib.sha256()
    for package in (vitaccel.sim.perf, vitaccel.hw.spec):
        for path in sorted(Path(package.__file__).parent.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cycles_task(compiled: dict[str, Any], config_json: str) -> dict[str, Any]:
    """Performance-model counters of a :func:`compile_task` result on the config (the
    board-like DDR model): ``{"cycles", "engine_busy_cycles", "ddr_bytes", "macs"}`` or
    ``{"error"}``. Results are cached (:func:`cache_dir`) by the program, the cycle-relevant
    fields and the model's source, so a space evaluated again (another board, another
    resource model) costs no performance-model runs."""
    from vitaccel.sim.perf import BOARD_DDR_MODEL, PerfModelError, estimate

    if "error" in compiled:
        return {"error": compiled["error"]}
    config = AccelConfig.from_json(config_json)
    directory = cache_dir()
    cached = None
    if directory is not None:
        key = hashlib.sha256(json.dumps([_model_digest(), BOARD_DDR_MODEL.name, cycles_key(config), compiled["words"],
                                         compiled["ddr_size"]]).encode()).hexdigest()
        cached = directory / f"{key}.json"
        if cached.is_file():
            try:
                return {**json.loads(cached.read_text()), "macs": compiled["macs"]}
            except ValueError:
                pass   # a torn file: compute again
    try:
        result = estimate(config, compiled["words"], compiled["ddr_size"], ddr=BOARD_DDR_MODEL)
    except PerfModelError as err:   # the hardware would stop with an error code
        out = {"error": f"performance model: {err.code} at pc {err.pc}: {_one_line(err)}"}
    else:
        counters = result.to_dict()
        out = {"cycles": int(counters["total_cycles"]), "engine_busy_cycles": int(counters["engine_busy_cycles"]),
               "ddr_bytes": int(counters["dma_read_bytes"]) + int(counters["dma_write_bytes"])}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(out))
        partial.replace(cached)
    return out if "error" in out else {**out, "macs": compiled["macs"]}
