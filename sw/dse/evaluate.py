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

Every task returns a plain dict (picklable, for Dask workers); a failure is returned as
``{"error": one line}`` rather than raised, so that one bad key skips its points only.
"""

from __future__ import annotations

import json
from typing import Any

from vitaccel.hw.spec.config import AccelConfig

__all__ = ["HARDWARE_ONLY_FIELDS", "BUFFER_FIELDS", "CYCLE_FREE_FIELDS", "quantize_key", "compile_key",
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


def cycles_task(compiled: dict[str, Any], config_json: str) -> dict[str, Any]:
    """Performance-model counters of a :func:`compile_task` result on the config (the
    board-like DDR model): ``{"cycles", "engine_busy_cycles", "ddr_bytes"}`` or ``{"error"}``."""
    from vitaccel.sim.perf import BOARD_DDR_MODEL, PerfModelError, estimate

    if "error" in compiled:
        return {"error": compiled["error"]}
    config = AccelConfig.from_json(config_json)
    try:
        result = estimate(config, compiled["words"], compiled["ddr_size"], ddr=BOARD_DDR_MODEL)
    except PerfModelError as err:   # the hardware would stop with an error code
        return {"error": f"performance model: {err.code} at pc {err.pc}: {_one_line(err)}"}
    counters = result.to_dict()
    return {"cycles": int(counters["total_cycles"]), "engine_busy_cycles": int(counters["engine_busy_cycles"]),
            "ddr_bytes": int(counters["dma_read_bytes"]) + int(counters["dma_write_bytes"]),
            "macs": compiled["macs"]}
