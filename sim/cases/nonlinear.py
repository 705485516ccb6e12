"""Test cases for the non-linear units: inputs, settings, expected outputs, and the RTL runner.

A case is everything one simulation needs: the unit's run-time settings (port name -> value),
the table/parameter writes to do first, the packed input beats and the golden model's
expected output. :func:`make_case` builds one (edge-case rows mixed with realistic ones);
:func:`run_case` runs it on the emitted Verilog under cocotb and compares bit for bit. The
Amaranth-simulator tests and the benchmark use the same cases.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.nonlinear import (LAYERNORM_BETA_BITS, LAYERNORM_GAMMA_BITS,
                                        LAYERNORM_MAX_CHANNELS, gelu_int16_params, gelu_table,
                                        layernorm_params,
                                        softmax_params)
from vitaccel.sim.golden import nonlinear as golden

__all__ = ["UNITS", "ALL_UNITS", "Case", "make_case", "build_unit", "run_case", "run_vectors_case", "pack_lanes",
           "unpack_lanes",
           "softmax_scores", "gelu_inputs", "layernorm_inputs"]

#: The units benchmarked (issue 4), and every unit the case runner can build.
UNITS = ("softmax", "gelu", "layernorm")
ALL_UNITS = (*UNITS, "gelu_int16")
_ELEMENTWISE = ("gelu", "gelu_int16")
TB_MODULE = "vitaccel.sim.cocotb.tb_nonlinear"


def pack_lanes(values: np.ndarray, bits: int) -> int:
    """Pack integers (two's complement, ``bits`` each) into one word, lane 0 in the low bits."""
    word = 0
    for lane, value in enumerate(np.asarray(values).tolist()):
        word |= (int(value) & ((1 << bits) - 1)) << (lane * bits)
    return word


def unpack_lanes(word: int, bits: int, lanes: int, signed: bool) -> list[int]:
    """Inverse of :func:`pack_lanes`."""
    out = []
    for lane in range(lanes):
        value = (word >> (lane * bits)) & ((1 << bits) - 1)
        if signed and value >> (bits - 1):
            value -= 1 << bits
        out.append(value)
    return out


@dataclass
class Case:
    """One simulation's stimulus and expectation (JSON-serialisable through :meth:`to_json`)."""

    unit: str
    lanes: int
    rows: int
    width: int
    settings: dict[str, int]
    writes: list[dict[str, int]]
    in_beats: list[int]
    expected: np.ndarray
    out_bits: int
    out_signed: bool
    stall: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def beats_per_row(self) -> int:
        return -(-self.width // self.lanes) if self.unit not in _ELEMENTWISE else 0

    @property
    def out_beats(self) -> int:
        return len(self.in_beats)

    def to_json(self) -> str:
        return json.dumps({"unit": self.unit, "settings": self.settings, "writes": self.writes,
                           "in_beats": self.in_beats, "out_beats": self.out_beats,
                           "stall": self.stall})

    def decode(self, out_beats: list[int]) -> np.ndarray:
        """Output beats back into a ``rows x width`` array."""
        values = [v for word in out_beats for v in unpack_lanes(word, self.out_bits, self.lanes, self.out_signed)]
        if self.unit in _ELEMENTWISE:
            return np.asarray(values[:self.rows * self.width]).reshape(self.rows, self.width)
        per_row = self.beats_per_row * self.lanes
        return np.asarray(values).reshape(self.rows, per_row)[:, :self.width]


# -- realistic and edge-case inputs ----------------------------------------------------------

def softmax_scores(rng: np.random.Generator, rows: int, width: int, input_scale: float,
                   *, edges: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Attention-like int32 scores (a few large values per row) and masks; every ``edges`` kind
    (all-equal, one dominant, large positive, int32 extremes, empty/full/random masks) recurs."""
    real = rng.normal(0.0, 1.5, size=(rows, width))
    hot = rng.random((rows, width)) < 0.03
    real += hot * rng.normal(5.0, 2.0, size=(rows, width))
    scores = np.clip(np.floor(real / input_scale + 0.5), -(1 << 31), (1 << 31) - 1).astype(np.int64)
    mask = np.ones((rows, width), dtype=bool)
    if edges:
        for row in range(rows):
            kind = row % 8
            if kind == 1:
                scores[row] = rng.integers(-(1 << 31), 1 << 31)  # all equal
            elif kind == 2:
                scores[row] = rng.integers(-1000, 1000, width)
                scores[row, rng.integers(width)] = 1 << 30  # one dominant
            elif kind == 3:
                scores[row] = (1 << 31) - 1 - rng.integers(0, 4000, width)  # large positive
            elif kind == 4:
                scores[row] = rng.choice([-(1 << 31), (1 << 31) - 1], width)  # int32 extremes
            elif kind == 5:
                mask[row] = rng.random(width) < 0.5
            elif kind == 6:
                mask[row] = False  # empty mask
            elif kind == 7:
                mask[row] = False
                mask[row, rng.integers(width)] = True
    return scores, mask


def gelu_inputs(rng: np.random.Generator, count: int, in_scale: float) -> np.ndarray:
    """int8 codes of N(0, 1.5) activations with outliers, plus every code -128..127."""
    real = rng.normal(0.0, 1.5, size=count)
    real[rng.random(count) < 0.02] *= 6.0
    codes = np.clip(np.floor(real / in_scale + 0.5), -128, 127).astype(np.int64)
    codes[:min(count, 256)] = np.arange(-128, 128)[:min(count, 256)]
    return codes


def layernorm_inputs(rng: np.random.Generator, rows: int, width: int,
                     *, edges: bool = True) -> np.ndarray:
    """int8 rows with a few outlier channels; edge rows: constant, all -128, all 127, alternating."""
    real = rng.normal(0.0, 1.0, size=(rows, width))
    outliers = rng.choice(width, size=max(1, width // 64), replace=False)
    real[:, outliers] *= 15.0
    x = np.clip(np.floor(real / (np.abs(real).max() / 127) + 0.5), -128, 127).astype(np.int64)
    if edges:
        for row in range(rows):
            kind = row % 6
            if kind == 1:
                x[row] = rng.integers(-128, 128)  # zero variance
            elif kind == 2:
                x[row] = -128
            elif kind == 3:
                x[row] = 127
            elif kind == 4:
                x[row] = np.where(np.arange(width) % 2, 127, -128)
    return x


# -- cases -----------------------------------------------------------------------------------

def make_case(unit: str, config: AccelConfig, *, seed: int, rows: int = 4, width: int | None = None,
              stall: float = 0.0, edges: bool = True, x: np.ndarray | None = None) -> Case:
    """A random case for ``unit`` with golden expectations; ``width`` defaults per unit.
    ``x`` (LayerNorm only): the int8 rows to use instead of random ones (sets rows, width)."""
    rng = np.random.default_rng(seed)
    lanes = config.vector_lanes
    if unit == "softmax":
        width = width or min(config.max_tokens, 197)
        if not 1 <= width <= config.max_tokens:
            raise ValueError(f"width: softmax rows must have 1..{config.max_tokens} elements, got {width}")
        input_scale = float(rng.choice([2e-3, 5e-3, 2e-2]))
        params = softmax_params(input_scale, exp_lut_bits=config.exp_lut_bits,
                                recip_lut_bits=config.recip_lut_bits)
        scores, mask = softmax_scores(rng, rows, width, input_scale, edges=edges)
        expected = golden.softmax(scores, params, mask)
        pad = -(-width // lanes) * lanes - width
        scores_p = np.pad(scores, ((0, 0), (0, pad)))
        mask_p = np.pad(mask, ((0, 0), (0, pad)))
        beats = []
        for row in range(rows):
            for start in range(0, width + pad, lanes):
                word = pack_lanes(scores_p[row, start:start + lanes], 32)
                word |= pack_lanes(mask_p[row, start:start + lanes].astype(int), 1) << (32 * lanes)
                beats.append(word)
        settings = {"length": width, "multiplier": params.multiplier, "shift": params.shift}
        return Case(unit, lanes, rows, width, settings, [], beats, expected, 8, False, stall,
                    {"scores": scores, "mask": mask, "params": params, "input_scale": input_scale})
    if unit == "gelu":
        width = width or 64
        in_scale, out_scale = float(rng.uniform(0.01, 0.08)), float(rng.uniform(0.01, 0.06))
        table = gelu_table(in_scale, out_scale)
        x = gelu_inputs(rng, rows * width, in_scale).reshape(rows, width)
        expected = golden.gelu(x, table)
        flat = np.pad(x.reshape(-1), (0, -(-x.size // lanes) * lanes - x.size))
        beats = [pack_lanes(flat[i:i + lanes], 8) for i in range(0, flat.size, lanes)]
        writes = [{"lut_write__addr": code, "lut_write__data": int(table[code]) & 0xFF,
                   "lut_write__en": 1} for code in range(256)]
        return Case(unit, lanes, rows, width, {}, writes, beats, expected, 8, True, stall,
                    {"x": x, "table": table, "in_scale": in_scale, "out_scale": out_scale})
    if unit == "gelu_int16":
        width = width or 64
        in_scale, out_scale = float(rng.uniform(1, 16)) / 32768, float(rng.uniform(1, 16)) / 32768
        params = gelu_int16_params(in_scale, out_scale)
        x = rng.integers(-32768, 32768, (rows, width))
        x.reshape(-1)[:6] = [-32768, 32767, 0, -1, 1, params.clip]
        expected = golden.gelu_int16(x, params)
        flat = np.pad(x.reshape(-1), (0, -(-x.size // lanes) * lanes - x.size))
        beats = [pack_lanes(flat[i:i + lanes], 16) for i in range(0, flat.size, lanes)]
        settings = {name: getattr(params, name) for name in ("clip", "q_b", "q_c", "q_one", "multiplier", "shift")}
        return Case(unit, lanes, rows, width, settings, [], beats, expected, 16, True, stall,
                    {"x": x, "params": params})
    if unit == "layernorm":
        if x is not None:
            rows, width = np.shape(x)
        width = width or 192
        if not 1 <= width <= LAYERNORM_MAX_CHANNELS:
            raise ValueError(f"width: LayerNorm rows must have 1..{LAYERNORM_MAX_CHANNELS} channels, got {width}")
        x = layernorm_inputs(rng, rows, width, edges=edges) if x is None else np.asarray(x, np.int64)
        gamma = rng.normal(1.0, 0.3, width)
        beta = rng.normal(0.0, 0.3, width)
        in_scale, out_scale = float(rng.uniform(0.02, 0.1)), float(rng.uniform(0.02, 0.06))
        params = layernorm_params(in_scale, gamma, beta, out_scale, 1e-6,
                                  rsqrt_lut_bits=config.rsqrt_lut_bits)
        expected = golden.layernorm(x, params)
        pad = -(-width // lanes) * lanes - width
        x_p = np.pad(x, ((0, 0), (0, pad)))
        g_p = np.pad(np.asarray(params.gamma), (0, pad))
        b_p = np.pad(np.asarray(params.beta), (0, pad))
        beats = [pack_lanes(x_p[row, s:s + lanes], 8) for row in range(rows) for s in range(0, width + pad, lanes)]
        writes = [{"param_write__addr": s // lanes,
                   "param_write__gamma": pack_lanes(g_p[s:s + lanes], LAYERNORM_GAMMA_BITS),
                   "param_write__beta": pack_lanes(b_p[s:s + lanes], LAYERNORM_BETA_BITS),
                   "param_write__en": 1} for s in range(0, width + pad, lanes)]
        settings = {"length": width, "eps_term": params.eps_term, "out_shift": params.out_shift}
        return Case(unit, lanes, rows, width, settings, writes, beats, expected, 8, True, stall,
                    {"x": x, "gamma": gamma, "beta": beta, "params": params,
                     "in_scale": in_scale, "out_scale": out_scale, "eps": 1e-6})
    raise ValueError(f"unit: must be one of {', '.join(ALL_UNITS)}, got {unit!r}")


def build_unit(unit: str, config: AccelConfig):
    """The Amaranth component for ``unit``."""
    from vitaccel.hw.nonlinear import Gelu, GeluInt16, LayerNorm, Softmax

    classes = {"softmax": Softmax, "gelu": Gelu, "gelu_int16": GeluInt16, "layernorm": LayerNorm}
    if unit not in classes:
        raise ValueError(f"unit: must be one of {', '.join(ALL_UNITS)}, got {unit!r}")
    return classes[unit](config=config)


def compare(case: Case, out_beats: list[int]) -> dict[str, Any] | None:
    """``None`` if the outputs equal the golden ones, else the first mismatch."""
    if len(out_beats) != case.out_beats:
        return {"position": None, "expected": f"{case.out_beats} beats", "got": f"{len(out_beats)} beats"}
    got = case.decode(out_beats)
    wrong = np.argwhere(got != case.expected)
    if wrong.size == 0:
        return None
    row, col = (int(v) for v in wrong[0])
    return {"position": [row, col], "expected": int(case.expected[row, col]), "got": int(got[row, col])}


def run_case(unit: str, config: AccelConfig, *, seed: int, simulator: str = "verilator",
             rows: int = 4, width: int | None = None, quick: bool = False, waves: bool = False,
             stall: float = 0.3, case: Case | None = None) -> dict[str, Any]:
    """Run one case of ``unit`` on the emitted Verilog under cocotb, bit-exact against golden.

    Returns
    -------
    dict
        ``passed``, ``cycles`` (first input beat to last output beat), ``cycles_per_row``
        (``cycles / rows``), ``steady_cycles_per_row`` (once the row pipeline is full),
        ``mismatch`` (``None`` or ``{"position", "expected", "got"}``), ``simulator``.
    """
    from vitaccel.sim.runner import emit_verilog, run_testbench

    if quick:
        rows = min(rows, 2)
    case = case or make_case(unit, config, seed=seed, rows=rows, width=width, stall=stall)
    toplevel = f"nl_{unit}"
    verilog = emit_verilog(build_unit(unit, config), toplevel)
    with tempfile.TemporaryDirectory(prefix="vitaccel-nl-") as tmp:
        case_file = Path(tmp) / "case.json"
        case_file.write_text(case.to_json())
        result = run_testbench(verilog=verilog, toplevel=toplevel, test_module=TB_MODULE,
                               simulator=simulator, params={"case_file": str(case_file), "seed": seed},
                               seed=seed, waves=waves)
    out_beats = [int(v) for v in result.output.get("out_beats", [])]
    mismatch = compare(case, out_beats)
    cycles = int(result.output.get("cycles", 0))
    return {"passed": mismatch is None, "cycles": cycles, "cycles_per_row": cycles / case.rows,
            "steady_cycles_per_row": _steady_cycles_per_row(case, result.output.get("out_cycles", [])),
            "mismatch": mismatch, "simulator": simulator, "rows": case.rows, "width": case.width}


def run_vectors_case(unit: str, config: AccelConfig, *, seed: int, simulator: str = "verilator",
                     quick: bool = False, vectors: int, width: int = 8, stall: float = 0.3,
                     break_reference: bool = False) -> dict[str, Any]:
    """``vectors`` random rows of ``width`` (one vector each; :func:`make_case`'s edge rows recur
    among them) through ``unit`` in one simulator launch, bit-exact against golden.

    ``break_reference`` flips one expected value (a row drawn from the seed) so that tests can
    prove a wrong result fails. Returns :func:`run_case`'s dict plus ``vectors``.
    """
    case = make_case(unit, config, seed=seed, rows=vectors, width=width, stall=stall)
    if break_reference:
        row = int(np.random.default_rng(seed).integers(vectors))
        case.expected = case.expected.copy()
        case.expected[row, 0] ^= 1
    outcome = run_case(unit, config, seed=seed, simulator=simulator, case=case)
    outcome["vectors"] = vectors
    return outcome


def _steady_cycles_per_row(case: Case, out_cycles: list[int]) -> float | None:
    """Cycles between the last output beats of the first and the last row, per row: the
    rate once the pipeline is full (``None`` for a single row or missing beats)."""
    if case.rows < 2 or len(out_cycles) != case.out_beats:
        return None
    if case.unit in _ELEMENTWISE:
        last_beats = [-(-(row + 1) * case.width // case.lanes) - 1 for row in range(case.rows)]
    else:
        last_beats = [(row + 1) * case.beats_per_row - 1 for row in range(case.rows)]
    return (out_cycles[last_beats[-1]] - out_cycles[last_beats[0]]) / (case.rows - 1)
