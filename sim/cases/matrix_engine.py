"""Host-side case runner of the matrix engine: random GEMM in, RTL simulation, verdict out.

:func:`make_case` draws the operands of one case from a seed (the cocotb testbench calls it
with the same arguments, so host and testbench agree without shipping arrays);
:func:`run_case` builds the engine for a config, runs ``sim/cocotb/tb_matrix_engine.py``
under Verilator or Icarus and returns pass/fail, measured cycles and the first mismatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.matrix import GemmPlan, plan_gemm
from vitaccel.hw.spec.numerics import int_range, quantize_multiplier
from vitaccel.sim.golden.gemm import linear

__all__ = ["GemmCase", "make_case", "first_mismatch", "engine_verilog", "run_case", "run_cases", "TOPLEVEL", "TB_MODULE"]

TOPLEVEL = "matrix_engine"
TB_MODULE = "vitaccel.sim.cocotb.tb_matrix_engine"


@dataclass
class GemmCase:
    """Operands, parameters and expected output of one engine GEMM."""

    plan: GemmPlan
    a: np.ndarray
    b: np.ndarray
    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    residual: np.ndarray | None
    expected: np.ndarray


def _edgy(rng: np.random.Generator, shape, lo: int, hi: int, edge_fraction: float) -> np.ndarray:
    """Uniform integers with a fraction replaced by the range's extremes."""
    values = rng.integers(lo, hi + 1, size=shape, dtype=np.int64)
    edges = rng.random(shape) < edge_fraction
    values[edges] = rng.choice(np.array([lo, hi], dtype=np.int64), size=int(edges.sum()))
    return values


def make_case(config: AccelConfig, *, seed: int, M: int, K: int, N: int, unsigned_a: bool = False,
              residual: bool = True, extremes: bool = False) -> GemmCase:
    """A random GEMM for ``config`` drawn from ``seed``, with its golden result.

    Operands are uniform with 5 % range extremes (``extremes=True``: only extremes). The
    per-channel scales spread the outputs over the int range with some saturation; a few
    channels get tiny and huge scales and extreme biases so requantization saturates.
    """
    plan = plan_gemm(config, M, K, N, unsigned_a=unsigned_a, residual=residual)
    rng = np.random.default_rng(seed)
    w = config.operand_width
    a_lo, a_hi = int_range(w, signed=not unsigned_a)
    b_lo, b_hi = int_range(w)
    edge = 1.0 if extremes else 0.05
    a = _edgy(rng, (M, K), a_lo, a_hi, edge)
    b = _edgy(rng, (K, N), b_lo, b_hi, edge)
    out_hi = int_range(w)[1]
    typical = math.sqrt(K) * max(abs(a_lo), a_hi) * b_hi / 2
    scales = out_hi / typical * np.exp2(rng.uniform(-2.0, 1.5, size=N))
    scales[rng.random(N) < 0.1] *= 64.0  # saturating channels
    quant = [quantize_multiplier(float(s)) for s in scales]
    multiplier = np.array([q.multiplier for q in quant], dtype=np.int64)
    shift = np.array([q.shift for q in quant], dtype=np.int64)
    bias = rng.integers(-int(typical), int(typical) + 1, size=N, dtype=np.int64)
    bias[rng.random(N) < 0.05] = int_range(32)[1]
    bias[rng.random(N) < 0.05] = int_range(32)[0]
    res = _edgy(rng, (M, N), *int_range(w), 0.05) if residual else None
    expected = linear(a, b, bias, multiplier, shift, residual=res, out_bits=w)
    return GemmCase(plan, a, b, bias, multiplier, shift, res, expected)


def first_mismatch(expected: np.ndarray, got: np.ndarray) -> dict[str, Any] | None:
    """``None`` if equal, else the first differing position (row-major) and both values."""
    if expected.shape != got.shape:
        return {"position": list(expected.shape), "expected": -1, "got": -1,
                "detail": f"shape {got.shape} instead of {expected.shape}"}
    diff = np.argwhere(expected != got)
    if not len(diff):
        return None
    pos = tuple(int(v) for v in diff[0])
    return {"position": list(pos), "expected": int(expected[pos]), "got": int(got[pos])}


@lru_cache(maxsize=8)
def engine_verilog(config: AccelConfig) -> str:
    """Verilog of the matrix engine for ``config`` (top module :data:`TOPLEVEL`)."""
    from vitaccel.hw.matrix import MatrixEngine
    from vitaccel.sim.runner import emit_verilog

    return emit_verilog(MatrixEngine(config), TOPLEVEL)


def _case_spec(config: AccelConfig, *, seed: int, M: int, K: int, N: int, stall_prob: float = 0.0,
               quick: bool = False, unsigned_a: bool = False, residual: bool = True,
               extremes: bool = False, break_reference: bool = False) -> dict[str, Any]:
    if not 0.0 <= stall_prob < 1.0:
        raise ValueError(f"stall_prob must be in [0, 1), got {stall_prob}")
    if quick:
        M, K, N = (min(M, 2 * config.tile_rows), min(K, 2 * config.block_size), min(N, 2 * config.tile_cols))
    plan_gemm(config, M, K, N)  # validates the shape before building anything
    return {"seed": seed, "M": M, "K": K, "N": N, "stall_prob": stall_prob, "unsigned_a": unsigned_a,
            "residual": residual, "extremes": extremes, "break_reference": break_reference}


def run_cases(config: AccelConfig, cases: list[dict[str, Any]], *, simulator: str = "verilator",
              waves: bool = False) -> list[dict[str, Any]]:
    """Run several GEMMs back to back in one simulation (one simulator start-up).

    Each entry of ``cases`` holds the keyword arguments of :func:`run_case` (``seed``, ``M``,
    ``K``, ``N`` and optionally ``stall_prob``, ``quick``, ``unsigned_a``, ``residual``,
    ``extremes``, and ``break_reference``, which flips one expected value so that tests can
    prove the scoreboard catches a difference); the result list matches it, each entry as
    :func:`run_case` returns.
    """
    from vitaccel.sim.runner import SimulationFailed, run_testbench

    specs = [_case_spec(config, **case) for case in cases]
    params = {"config": config.to_dict(), "cases": specs}
    result = run_testbench(verilog=engine_verilog(config), toplevel=TOPLEVEL, test_module=TB_MODULE,
                           simulator=simulator, params=params, seed=specs[0]["seed"] if specs else 0,
                           waves=waves, check=False)
    outputs = result.output.get("results", [])
    if len(outputs) != len(specs):
        messages = "; ".join(c.message for c in result.cases if not c.passed)
        raise SimulationFailed(f"{simulator}: matrix engine testbench finished {len(outputs)} of "
                               f"{len(specs)} GEMMs: {messages}")
    return [{"passed": bool(out["passed"]), "cycles": int(out["cycles"]),
             "ideal_cycles": math.ceil(spec["M"] * spec["K"] * spec["N"] / config.macs_per_cycle),
             "mismatch": out["mismatch"], "simulator": simulator} for spec, out in zip(specs, outputs)]


def run_case(config: AccelConfig, *, seed: int, simulator: str = "verilator", M: int, K: int, N: int,
             stall_prob: float = 0.0, quick: bool = False, waves: bool = False, unsigned_a: bool = False,
             residual: bool = True, extremes: bool = False) -> dict[str, Any]:
    """Run one random GEMM on the engine's RTL and compare it with the golden ``linear``.

    Parameters
    ----------
    config : AccelConfig
    seed : int
        Draws the operands (see :func:`make_case`) and the stall pattern.
    simulator : str
        ``"verilator"`` or ``"icarus"``.
    M, K, N : int
        GEMM shape; any positive sizes, K up to ``config.max_k``.
    stall_prob : float
        Probability that a driver withholds ``valid`` / the monitor withholds ``ready`` in
        a cycle, on every stream.
    quick : bool
        Cap M, N at two tiles and K at two k-words: a smoke run of the same shape class.
    waves : bool
        Dump waveforms.
    unsigned_a, residual, extremes : bool
        Unsigned-A mode; residual add enabled; operands only at the range extremes.

    Returns
    -------
    dict
        ``passed``, ``cycles`` (first operand write to last output read), ``ideal_cycles``
        (MACs / ``config.macs_per_cycle``, rounded up), ``mismatch`` (None or
        position/expected/got), ``simulator``.
    """
    return run_cases(config, [dict(seed=seed, M=M, K=K, N=N, stall_prob=stall_prob, quick=quick,
                                   unsigned_a=unsigned_a, residual=residual, extremes=extremes)],
                     simulator=simulator, waves=waves)[0]
