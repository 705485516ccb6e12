"""Generate ``docs/numerics.md``: the numeric rules, table formats, and the error of every
approximation against float64, measured on the golden kernels with fixed seeds.

``python -m vitaccel.sim.numerics_report --write`` rewrites the document and the plots
``docs/img/numerics_*.png``; :func:`render` returns the markdown (deterministic), which
``tests/sim/test_numerics_doc.py`` compares with the checked-in file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.luts import (EXP_FRAC_BITS, RECIP_FRAC_BITS, RECIP_MANTISSA_FRAC_BITS,
                                   RSQRT_FRAC_BITS, RSQRT_MANTISSA_FRAC_BITS)
from vitaccel.hw.spec.nonlinear import (LAYERNORM_GAMMA_BITS, LAYERNORM_NORM_FRAC_BITS,
                                        SOFTMAX_DIFF_BITS, SOFTMAX_MULT_BITS, gelu_int16_params,
                                        gelu_reference)
from vitaccel.hw.spec.numerics import quantize_multiplier, requantize
from vitaccel.sim.bench.nonlinear import (SOFTMAX_INPUT_SCALE, gelu_accuracy, layernorm_accuracy,
                                          softmax_accuracy)
from vitaccel.sim.golden import nonlinear as golden

__all__ = ["render", "measure", "write", "DOC_PATH"]

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "numerics.md"
_CONFIG = AccelConfig()


def _requantize_error() -> dict[str, float]:
    rng = np.random.default_rng(1)
    acc = rng.integers(-(1 << 20), 1 << 20, 200_000)
    scale = 3.7e-5
    q = quantize_multiplier(scale)
    got = requantize(acc, q.multiplier, q.shift)
    error = np.abs(got - np.clip(acc * scale, -128, 127))
    return {"max": float(error.max()), "mean": float(error.mean())}


def _exp_error() -> dict[str, float]:
    bits = _CONFIG.exp_lut_bits
    t = np.arange(0, 20 << bits)
    got = golden.exp2_neg(t, bits) / (1 << EXP_FRAC_BITS)
    error = np.abs(got - np.exp2(-t / (1 << bits)))
    return {"max": float(error.max()), "mean": float(error.mean()), "t": t, "got": got}


def _recip_error() -> dict[str, float]:
    s = np.unique(np.geomspace(1 << 15, 1 << 27, 20_000).astype(np.int64))
    y, k = golden.reciprocal(s, _CONFIG.recip_lut_bits)
    rel = np.abs(y / 2.0 ** (RECIP_FRAC_BITS + k) * s - 1)
    return {"max": float(rel.max()), "mean": float(rel.mean()), "x": s, "rel": rel}


def _rsqrt_error() -> dict[str, float]:
    v = np.unique(np.geomspace(1, 1 << 34, 20_000).astype(np.int64))
    y, k = golden.inv_sqrt(v, _CONFIG.rsqrt_lut_bits)
    rel = np.abs(y / 2.0 ** (RSQRT_FRAC_BITS + k) * np.sqrt(v) - 1)
    return {"max": float(rel.max()), "mean": float(rel.mean()), "x": v, "rel": rel}


def _gelu16_error() -> dict[str, float]:
    scale = 8 / 32768
    x = np.arange(-32768, 32768)
    got = golden.gelu_int16(x, gelu_int16_params(scale, scale))
    error = np.abs(got - np.clip(gelu_reference(x * scale) / scale, -32768, 32767))
    return {"max": float(error.max()), "mean": float(error.mean()), "x": x * scale, "got": got * scale}


def measure() -> dict[str, dict]:
    """Every approximation's error against float64 (fixed seeds, deterministic)."""
    return {
        "requantize": _requantize_error(),
        "exp": _exp_error(),
        "reciprocal": _recip_error(),
        "rsqrt": _rsqrt_error(),
        "softmax": softmax_accuracy(1000, 197, seed=3, config=_CONFIG),
        "gelu": gelu_accuracy(100_000, seed=4),
        "gelu16": _gelu16_error(),
        "layernorm": layernorm_accuracy(500, 384, seed=5, config=_CONFIG),
    }


def _f(value: float) -> str:
    return f"{value:.3g}" if value < 1e-3 and value != 0 else f"{value:.4f}"


def render(results: dict[str, dict] | None = None) -> str:
    """The markdown of ``docs/numerics.md``."""
    r = results or measure()
    sm, ge, ln = r["softmax"], r["gelu"], r["layernorm"]
    rows = [
        ("requantize int32 -> int8", "int8 steps", r["requantize"]["max"], r["requantize"]["mean"],
         "acc uniform in +-2^20, scale 3.7e-5"),
        (f"exp (2^-f table, {_CONFIG.exp_lut_bits}-bit index)", "absolute", r["exp"]["max"], r["exp"]["mean"],
         "every fixed-point exponent in [0, 20)"),
        (f"reciprocal (table {_CONFIG.recip_lut_bits} bits + 1 Newton)", "relative", r["reciprocal"]["max"],
         r["reciprocal"]["mean"], "row sums 2^15 .. 2^27"),
        (f"inverse sqrt (table {_CONFIG.rsqrt_lut_bits} bits + 1 Newton)", "relative", r["rsqrt"]["max"],
         r["rsqrt"]["mean"], "variances 1 .. 2^34"),
        ("softmax -> uint8 (scale 1/256)", "1/256 steps", sm["max_abs_err"], sm["mean_abs_err"],
         f"{sm['rows']} attention-like rows of {sm['width']}; argmax changed in "
         f"{100 * sm['argmax_change_rate']:.2f}% of rows, agreement {sm['argmax_agreement']:.4f} where "
         f"the top two differ by > 1 step"),
        ("GELU int8 (256-entry table)", "int8 steps", ge["max_abs_err"], ge["mean_abs_err"],
         f"N(0, 1.5) with outliers; exact-best: {str(ge['exact_best']).lower()}"),
        ("GELU int16 (I-BERT polynomial)", "int16 steps", r["gelu16"]["max"], r["gelu16"]["mean"],
         "every int16 input, scale 8/32768 (I-BERT's erf error)"),
        ("LayerNorm -> int8", "int8 steps", ln["max_abs_err"], ln["mean_abs_err"],
         f"{ln['rows']} rows of {ln['width']} with outlier channels"),
    ]
    table = "\n".join(f"| {name} | {unit} | {_f(mx)} | {_f(mean)} | {note} |"
                      for name, unit, mx, mean, note in rows)
    return f"""# Numerics

Generated by `python -m vitaccel.sim.numerics_report --write` from the golden kernels
(`sim/golden/nonlinear.py`) against float64; `tests/sim/test_numerics_doc.py` fails when this
file is out of date. Definitions live in `hw/spec/numerics.py`, `hw/spec/luts.py` and
`hw/spec/nonlinear.py`; the hardware (`hw/nonlinear/`) is bit-exact to the golden kernels.

## Rules

- **Rounding**: round half up, `floor(x + 1/2)`. A right shift by `s` bits rounds as
  `(x + 2^(s-1)) >> s` (arithmetic shift; no rounding when `s = 0`). It is one adder in
  hardware; round-half-even would need a sticky bit. Table entries use the same rule on
  real values.
- **Saturation**: clamp to the target range (`[-2^(w-1), 2^(w-1)-1]` signed, `[0, 2^w-1]`
  unsigned); never wrap.
- **Requantization** int32 -> int8: `sat8((acc * multiplier + 2^(shift-1)) >> shift)` with a
  31-bit multiplier normalised into `[2^30, 2^31)` (gemmlowp style), computed in 63 bits.
  Softmax, residual-add and int16-GELU scales use the same form with 16-bit multipliers.

## Table and datapath formats

`Qi.f` is a fixed-point value with `f` fractional bits. Index widths are `AccelConfig` fields
(`exp_lut_bits`, `recip_lut_bits`, `rsqrt_lut_bits`; this document uses the defaults
{_CONFIG.exp_lut_bits}, {_CONFIG.recip_lut_bits}, {_CONFIG.rsqrt_lut_bits}).

| table | entries | entry format | entry `i` |
|---|---|---|---|
| exp | 2^exp_lut_bits | unsigned Q1.{EXP_FRAC_BITS} (`2^{EXP_FRAC_BITS}` = 1.0) | `round(2^-(i / 2^exp_lut_bits) * 2^{EXP_FRAC_BITS})` |
| reciprocal | 2^recip_lut_bits | unsigned Q1.{RECIP_FRAC_BITS} | `round(2^{RECIP_FRAC_BITS} / (1 + (i + 1/2) / 2^recip_lut_bits))`: seed for `m` in [1, 2) |
| inverse sqrt | 2^rsqrt_lut_bits | unsigned Q1.{RSQRT_FRAC_BITS} | `round(2^{RSQRT_FRAC_BITS} / sqrt((i + 1/2) * 4 / 2^rsqrt_lut_bits))`: seed for `m` in [1, 4) (first quarter unused) |
| GELU (per layer) | 256 | int8 | `sat8(round(gelu(x * in_scale) / out_scale))`, `x` = signed value of the code `i` |

**Softmax** (int32 scores `s`, real value `s * input_scale`): `d = min(max - s, 2^{SOFTMAX_DIFF_BITS} - 1)`;
`t = round(d * multiplier / 2^shift)` is `d * input_scale * log2(e)` in fixed point with
`exp_lut_bits` fractional bits (`multiplier` < 2^{SOFTMAX_MULT_BITS}); `e = round(exp[t mod 2^exp_lut_bits] / 2^(t >> exp_lut_bits))`
(0 once the shift reaches 17); `S = sum(e)`; one reciprocal per row: `k = floor(log2 S)`,
`m = round(S * 2^({RECIP_MANTISSA_FRAC_BITS} - k))` (Q1.{RECIP_MANTISSA_FRAC_BITS}), seed `y0` from the top bits of `m`,
Newton `y = round(y0 * (2^{RECIP_FRAC_BITS + 1} - round(m * y0 / 2^{RECIP_MANTISSA_FRAC_BITS})) / 2^{RECIP_FRAC_BITS})`;
output `p = satu8(round(e * y / 2^({RECIP_FRAC_BITS} + k - 8)))` (scale 1/256; a probability of 1 saturates to 255).
Masked-out entries take no part and output 0; a fully masked row outputs zeros.

**LayerNorm** (int8 `x`, `n` channels): `Sx = sum(x)`, `Sxx = sum(x^2)`,
`V = max(n Sxx - Sx^2 + eps_term, 1)` with `eps_term = round(n^2 eps / in_scale^2)`;
`k = floor(log2 V) // 2`, `m = round(V * 2^({RSQRT_MANTISSA_FRAC_BITS} - 2k))` (Q2.{RSQRT_MANTISSA_FRAC_BITS}), seed `y0`,
Newton `y = round(y0 (3 * 2^{RSQRT_FRAC_BITS} - round(m round(y0^2 / 2^{RSQRT_FRAC_BITS}) / 2^{RSQRT_MANTISSA_FRAC_BITS})) / 2^{RSQRT_FRAC_BITS + 1})`;
`z = round((n x - Sx) y / 2^({RSQRT_FRAC_BITS} + k - {LAYERNORM_NORM_FRAC_BITS}))` (the normalised value in Q.{LAYERNORM_NORM_FRAC_BITS});
`out = sat8(round((z gamma_q + beta_q) / 2^out_shift))` with `gamma_q` = `gamma / out_scale` as a
{LAYERNORM_GAMMA_BITS}-bit signed fixed-point value sharing one shift per layer, `beta_q = round(beta / out_scale * 2^out_shift)`.

**GELU int16**: I-BERT, `erf(x) ~ sgn(x) [a (min(|x|, -b) + b)^2 + 1]`, `a = -0.2888`,
`b = -1.769`, evaluated on integers with constants `round(b / S)`, `round(1 / (a S^2))`,
`S = in_scale / sqrt 2`, then one 16-bit-multiplier requantization to the output scale.

**Residual add**: `sat8(round((a * ma + b * mb) / 2^shift))`, `ma`, `mb` < 2^16 sharing one shift.

## Error against float64

| approximation | unit | max abs err | mean abs err | inputs |
|---|---|---|---|---|
{table}

Softmax input scale in this table: {SOFTMAX_INPUT_SCALE:.3g} (int8 Q and K at 0.05, divided by
sqrt(64)). Goals (issue 4): softmax <= 1 output step and argmax agreement 1.0, LayerNorm
<= 1 int8 step, GELU int8 exact-best. The plots show each approximation against float.

![exp](img/numerics_exp.png) ![reciprocal](img/numerics_reciprocal.png)
![inverse sqrt](img/numerics_rsqrt.png) ![GELU](img/numerics_gelu.png)
![softmax](img/numerics_softmax.png) ![LayerNorm](img/numerics_layernorm.png)
"""


def _plots(results: dict[str, dict], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name: str, fig) -> None:
        path = directory / f"numerics_{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90, metadata={"Software": None})
        plt.close(fig)
        written.append(path)

    exp = results["exp"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(exp["t"] / (1 << _CONFIG.exp_lut_bits), exp["got"], ".", ms=2, label="table + shift")
    ax.plot(exp["t"] / (1 << _CONFIG.exp_lut_bits), np.exp2(-exp["t"] / (1 << _CONFIG.exp_lut_bits)), lw=1, label="float")
    ax.set(xlabel="t = x log2 e", ylabel="2^-t", yscale="log", title="exp by range reduction")
    ax.legend()
    save("exp", fig)
    for name, title in (("reciprocal", "1/S: table + 1 Newton step"), ("rsqrt", "1/sqrt(V): table + 1 Newton step")):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.semilogx(results[name]["x"], results[name]["rel"], ".", ms=1)
        ax.set(xlabel="input", ylabel="relative error", title=title)
        save(name, fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    codes = np.arange(-128, 128)
    scale = 8.0 / 127
    from vitaccel.hw.spec.nonlinear import gelu_table
    ax.plot(codes * scale, golden.gelu(codes, gelu_table(scale, scale)) * scale, ".", ms=3, label="int8 table")
    g16 = results["gelu16"]
    ax.plot(g16["x"][::64], g16["got"][::64], lw=1, label="int16 I-BERT")
    ax.plot(codes * scale, gelu_reference(codes * scale), lw=1, ls="--", label="float")
    ax.set(xlabel="x", ylabel="GELU(x)", title="GELU")
    ax.legend()
    save("gelu", fig)
    rng = np.random.default_rng(7)
    from vitaccel.hw.spec.nonlinear import softmax_params
    from vitaccel.sim.cases.nonlinear import softmax_scores
    from vitaccel.sim.bench.nonlinear import float_softmax
    scores, _ = softmax_scores(rng, 200, 197, SOFTMAX_INPUT_SCALE, edges=False)
    got = golden.softmax(scores, softmax_params(SOFTMAX_INPUT_SCALE)) / 256
    ref = float_softmax(scores * SOFTMAX_INPUT_SCALE)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ref.ravel(), got.ravel() - ref.ravel(), ".", ms=1)
    ax.axhline(1 / 256, color="r", lw=0.5)
    ax.axhline(-1 / 256, color="r", lw=0.5)
    ax.set(xlabel="float probability", ylabel="uint8 / 256 - float", title="softmax error (red: one step)")
    save("softmax", fig)
    from vitaccel.sim.cases.nonlinear import layernorm_inputs
    from vitaccel.hw.spec.nonlinear import layernorm_params
    x = layernorm_inputs(rng, 50, 384, edges=False)
    gamma, beta = np.ones(384), np.zeros(384)
    out_scale = 4.0 / 127
    got = golden.layernorm(x, layernorm_params(0.05, gamma, beta, out_scale))
    xf = x * 0.05
    ref = np.clip((xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True) + 1e-6) / out_scale, -128, 127)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ref.ravel(), got.ravel() - ref.ravel(), ".", ms=1)
    ax.set(xlabel="float output (int8 steps)", ylabel="int8 - float", title="LayerNorm error")
    save("layernorm", fig)
    return written


def write(doc_path: Path = DOC_PATH) -> list[Path]:
    """Write ``docs/numerics.md`` and the plots beside it; returns the written paths."""
    results = measure()
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(render(results))
    return [doc_path, *_plots(results, doc_path.parent / "img")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite docs/numerics.md and the plots")
    args = parser.parse_args(argv)
    if args.write:
        for path in write():
            print(f"wrote {path}")
    else:
        print(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
