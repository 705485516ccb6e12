"""``vitaccel bench nonlinear``: accuracy of softmax, GELU and LayerNorm against float64 on
realistic inputs, bit-exactness of the RTL against the golden kernels, cycles per row in RTL.

Accuracy uses the golden kernels (which the RTL matches bit for bit, checked in the same
run) on many rows drawn like a trained ViT's: attention scores with a few large values per
row, GELU inputs ~ N(0, 1.5) with outliers, LayerNorm rows with outlier channels. Errors are
in output steps (one LSB of the unit's 8-bit output) against the float64 function of the
same integer input, clipped to the output range.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.nonlinear import (SOFTMAX_OUTPUT_SCALE, gelu_reference, gelu_table,
                                        layernorm_params, softmax_params)
from vitaccel.hw.spec.luts import round_half_up
from vitaccel.hw.spec.numerics import saturate
from vitaccel.sim.cases.nonlinear import (gelu_inputs, layernorm_inputs, make_case, run_case,
                                          softmax_scores)
from vitaccel.sim.golden import nonlinear as golden

__all__ = ["run", "softmax_accuracy", "gelu_accuracy", "layernorm_accuracy",
           "SOFTMAX_INPUT_SCALE", "RTL_WIDTHS"]

#: Scale of int32 attention scores: int8 Q and K at 0.05 each, divided by sqrt(64).
SOFTMAX_INPUT_SCALE = 0.05 * 0.05 / 8
#: Row length per unit in the RTL runs (DeiT: 197 tokens, 384 channels).
RTL_WIDTHS = {"softmax": 197, "gelu": 384, "layernorm": 384}


def float_softmax(real: np.ndarray) -> np.ndarray:
    e = np.exp(real - real.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_accuracy(rows: int, width: int, *, seed: int = 0, config: AccelConfig | None = None
                     ) -> dict[str, float]:
    """Golden softmax against float64 on attention-like rows (errors in 1/256 steps)."""
    config = config or AccelConfig()
    rng = np.random.default_rng(seed)
    scores, _ = softmax_scores(rng, rows, width, SOFTMAX_INPUT_SCALE, edges=False)
    params = softmax_params(SOFTMAX_INPUT_SCALE, exp_lut_bits=config.exp_lut_bits,
                            recip_lut_bits=config.recip_lut_bits)
    got = golden.softmax(scores, params).astype(np.float64)
    ref = float_softmax(scores * SOFTMAX_INPUT_SCALE) / SOFTMAX_OUTPUT_SCALE
    error = np.abs(got - np.minimum(ref, 255))
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 1.0  # top two differ by more than one output step
    agree = np.argmax(got, axis=-1) == np.argmax(ref, axis=-1)
    return {"max_abs_err": float(error.max()), "mean_abs_err": float(error.mean()),
            "argmax_agreement": float(agree[decided].mean()) if decided.any() else 1.0,
            "argmax_change_rate": round(float(1.0 - agree.mean()), 6), "rows": rows, "width": width}


def gelu_accuracy(count: int, *, seed: int = 0) -> dict[str, Any]:
    """Golden int8 GELU against float64 on N(0, 1.5) activations with outliers."""
    rng = np.random.default_rng(seed)
    in_scale, out_scale = 8.0 / 127, 8.0 / 127
    x = gelu_inputs(rng, count, in_scale)
    table = gelu_table(in_scale, out_scale)
    got = golden.gelu(x, table).astype(np.float64)
    ref = np.clip(gelu_reference(x * in_scale) / out_scale, -128, 127)
    exact = np.array_equal(table, saturate(round_half_up(
        gelu_reference(np.where(np.arange(256) < 128, np.arange(256), np.arange(256) - 256) * in_scale)
        / out_scale), 8))
    error = np.abs(got - ref)
    return {"max_abs_err": float(error.max()), "mean_abs_err": float(error.mean()),
            "exact_best": bool(exact and error.max() <= 0.5), "count": count}


def layernorm_accuracy(rows: int, width: int, *, seed: int = 0, config: AccelConfig | None = None
                       ) -> dict[str, float]:
    """Golden LayerNorm against float64 on rows with outlier channels (errors in int8 steps)."""
    config = config or AccelConfig()
    rng = np.random.default_rng(seed)
    x = layernorm_inputs(rng, rows, width, edges=False)
    gamma, beta = rng.normal(1.0, 0.3, width), rng.normal(0.0, 0.3, width)
    in_scale, out_scale, eps = 0.05, 4.0 / 127, 1e-6
    params = layernorm_params(in_scale, gamma, beta, out_scale, eps, rsqrt_lut_bits=config.rsqrt_lut_bits)
    got = golden.layernorm(x, params).astype(np.float64)
    xf = x * in_scale
    mean, var = xf.mean(axis=-1, keepdims=True), xf.var(axis=-1, keepdims=True)
    ref = np.clip(((xf - mean) / np.sqrt(var + eps) * gamma + beta) / out_scale, -128, 127)
    error = np.abs(got - ref)
    return {"max_abs_err": float(error.max()), "mean_abs_err": float(error.mean()),
            "rows": rows, "width": width}


def run(config: AccelConfig, *, simulator: str = "verilator", quick: bool = False,
        progress: Callable[[str, float], None] | None = None) -> list[dict[str, Any]]:
    """One record per unit: accuracy against float64, RTL bit-exactness and cycles per row."""
    report = progress or (lambda description, fraction: None)
    rows = 200 if quick else 2000
    rtl_rows = 4 if quick else 16
    accuracy = {
        "softmax": lambda: softmax_accuracy(rows, min(197, config.max_tokens), config=config),
        "gelu": lambda: gelu_accuracy(rows * 197),
        "layernorm": lambda: layernorm_accuracy(rows, 384, config=config),
    }
    records = []
    for step, unit in enumerate(("softmax", "gelu", "layernorm")):
        report(f"{unit}: accuracy against float64", step / 3)
        measured = accuracy[unit]()
        report(f"{unit}: RTL ({simulator})", (step + 0.5) / 3)
        width = RTL_WIDTHS[unit] if unit != "softmax" else min(RTL_WIDTHS[unit], config.max_tokens)
        case = make_case(unit, config, seed=100 + step, rows=rtl_rows, width=width, stall=0.0)
        rtl = run_case(unit, config, seed=100 + step, simulator=simulator, case=case)
        elements = case.rows * case.width
        records.append({
            "unit": unit, "config": config.name, "simulator": simulator, "lanes": config.vector_lanes,
            "err_unit": "output step (1 LSB of the 8-bit output)",
            "max_abs_err": round(measured["max_abs_err"], 4),
            "mean_abs_err": round(measured["mean_abs_err"], 4),
            **{key: measured[key] for key in ("argmax_agreement", "argmax_change_rate", "exact_best")
               if key in measured},
            "bit_exact": bool(rtl["passed"]), "mismatch": rtl["mismatch"],
            "rtl_rows": case.rows, "width": case.width, "cycles": rtl["cycles"],
            "cycles_per_row": round(rtl["cycles_per_row"], 2),
            "steady_cycles_per_row": rtl["steady_cycles_per_row"],
            "beats_per_row": -(-case.width // config.vector_lanes),
            "elements_per_cycle": round(elements / max(rtl["cycles"], 1), 3),
        })
    report("done", 1.0)
    return records
