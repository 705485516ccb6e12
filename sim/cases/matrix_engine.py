"""Host-side case runner of the matrix engine: random GEMM in, RTL simulation, verdict out.

:func:`make_case` draws the operands of one case from a seed (the cocotb testbench calls it
with the same arguments, so host and testbench agree without shipping arrays);
:func:`run_case` builds the engine for a config, runs ``sim/cocotb/tb_matrix_engine.py``
under Verilator or Icarus and returns pass/fail, measured cycles and the first mismatch;
:func:`simulate` runs cases in Amaranth's simulator instead. :func:`case_streams` is the one
place that turns a case into the engine's input streams (both simulators use it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.matrix import (GemmPlan, a_stream, b_meta_stream, b_stream, param_stream, plan_gemm,
                                     residual_stream)
from vitaccel.hw.spec.nm import VALUE_BITS, NMWeights, compress
from vitaccel.hw.spec.numerics import int_range, quantize_multiplier
from vitaccel.sim.golden.gemm import linear, matmul
from vitaccel.sim.golden.nm import nm_linear

__all__ = ["GemmCase", "EDGE_PATTERNS", "make_case", "case_streams", "simulate", "first_mismatch", "engine_verilog", "run_case",
           "run_cases", "run_vectors_case", "TOPLEVEL", "TB_MODULE"]

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
    #: Sparse-mode cases: the compressed ``b`` (which is N:M sparse), else None.
    weights: NMWeights | None = None
    #: The raw accumulators ``a @ b`` (golden ``matmul``), which ``output_acc`` carries.
    expected_acc: np.ndarray | None = None


#: Operand patterns of :func:`make_case` (``min``/``max``: the ends of A's and B's ranges, so
#: ``min_min`` is -128 x -128 on every lane; in unsigned-A mode ``max_min`` is 255 x -128 and
#: ``max_max`` 255 x 127, the two ends of the product range): every A and B at one end, or
#: ``alternating`` ends by row + k (A) and k + column (B), so neighbouring rows' products (the
#: two lanes of a packed DSP) have opposite signs.
EDGE_PATTERNS = ("min_min", "min_max", "max_min", "max_max", "alternating")


def _pattern_operands(pattern: str, M: int, K: int, N: int, a_range, b_range) -> tuple[np.ndarray, np.ndarray]:
    if pattern not in EDGE_PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(EDGE_PATTERNS)}, got {pattern!r}")
    if pattern == "alternating":
        a = np.where(np.add.outer(np.arange(M), np.arange(K)) % 2 == 0, a_range[0], a_range[1])
        b = np.where(np.add.outer(np.arange(K), np.arange(N)) % 2 == 0, b_range[0], b_range[1])
        return a.astype(np.int64), b.astype(np.int64)
    a_end, b_end = (0 if part == "min" else 1 for part in pattern.split("_"))
    return (np.full((M, K), a_range[a_end], dtype=np.int64), np.full((K, N), b_range[b_end], dtype=np.int64))


def _edgy(rng: np.random.Generator, shape, lo: int, hi: int, edge_fraction: float) -> np.ndarray:
    """Uniform integers with a fraction replaced by the range's extremes."""
    values = rng.integers(lo, hi + 1, size=shape, dtype=np.int64)
    edges = rng.random(shape) < edge_fraction
    values[edges] = rng.choice(np.array([lo, hi], dtype=np.int64), size=int(edges.sum()))
    return values


def _nm_sparse(rng: np.random.Generator, b: np.ndarray, n: int, m: int, sparser: float) -> np.ndarray:
    """``b`` with, in every group of ``m`` K-rows of every column, ``n`` random positions kept;
    a fraction ``sparser`` of the kept entries is zeroed too (groups with fewer than ``n``)."""
    k, cols = b.shape
    groups = -(-k // m)
    order = np.argsort(rng.random((groups, m, cols)), axis=1)[:, :n]
    keep = np.zeros((groups, m, cols), dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    keep = keep.reshape(-1, cols)[:k] & (rng.random((k, cols)) >= sparser)
    return b * keep


def make_case(config: AccelConfig, *, seed: int, M: int, K: int, N: int, unsigned_a: bool = False,
              residual: bool = True, extremes: bool = False, nm: bool = False,
              nm_sparser: float = 0.1, pattern: str | None = None) -> GemmCase:
    """A random GEMM for ``config`` drawn from ``seed``, with its golden result.

    Operands are uniform with 5 % range extremes (``extremes=True``: only extremes). The
    per-channel scales spread the outputs over the int range with some saturation; a few
    channels get tiny and huge scales and extreme biases so requantization saturates.
    ``nm=True``: a sparse-mode GEMM; B is made ``config.nm_sparsity`` sparse (random kept
    positions, a fraction ``nm_sparser`` of them zero as well), the expected output is the
    golden :func:`~vitaccel.sim.golden.nm.nm_linear` on the compressed weights.
    ``pattern`` (one of :data:`EDGE_PATTERNS`) replaces the random A and B by edge values;
    the output scales then follow the actual accumulators, so few outputs saturate.
    """
    plan = plan_gemm(config, M, K, N, unsigned_a=unsigned_a, residual=residual, nm=nm)
    rng = np.random.default_rng(seed)
    w = config.operand_width
    a_lo, a_hi = int_range(w, signed=not unsigned_a)
    b_lo, b_hi = int_range(VALUE_BITS if nm else w)  # compressed weights are int8 (hw/spec/nm.py)
    edge = 1.0 if extremes else 0.05
    a = _edgy(rng, (M, K), a_lo, a_hi, edge)
    b = _edgy(rng, (K, N), b_lo, b_hi, edge)
    if pattern is not None:
        a, b = _pattern_operands(pattern, M, K, N, (a_lo, a_hi), (b_lo, b_hi))
    if nm:
        b = _nm_sparse(rng, b, *config.nm_sparsity, nm_sparser)
    out_hi = int_range(w)[1]
    acc = matmul(a, b)
    typical = math.sqrt(K) * max(abs(a_lo), a_hi) * b_hi / 2 if pattern is None else max(1, int(np.abs(acc).max()))
    scales = out_hi / typical * np.exp2(rng.uniform(-2.0, 1.5, size=N))
    scales[rng.random(N) < 0.1] *= 64.0  # saturating channels
    quant = [quantize_multiplier(float(s)) for s in scales]
    multiplier = np.array([q.multiplier for q in quant], dtype=np.int64)
    shift = np.array([q.shift for q in quant], dtype=np.int64)
    bias = rng.integers(-int(typical), int(typical) + 1, size=N, dtype=np.int64)
    bias[rng.random(N) < 0.05] = int_range(32)[1]
    bias[rng.random(N) < 0.05] = int_range(32)[0]
    res = _edgy(rng, (M, N), *int_range(w), 0.05) if residual else None
    if nm:
        weights = compress(b, *config.nm_sparsity)
        expected = nm_linear(a, weights, bias, multiplier, shift, residual=res, out_bits=w)
        return GemmCase(plan, a, b, bias, multiplier, shift, res, expected, weights, acc)
    expected = linear(a, b, bias, multiplier, shift, residual=res, out_bits=w)
    return GemmCase(plan, a, b, bias, multiplier, shift, res, expected, expected_acc=acc)


def case_streams(case: GemmCase) -> dict[str, list[int]]:
    """The words of every input stream of the engine for ``case``, by port name (``command``
    first; ``residual`` only if enabled, ``b_meta`` only in sparse mode)."""
    plan = case.plan
    b_operand = case.b if case.weights is None else case.weights
    streams = {"command": [plan.command_word()], "a_load": a_stream(plan, case.a),
               "b_load": b_stream(plan, b_operand),
               "params": param_stream(plan, case.bias, case.multiplier, case.shift)}
    if plan.residual:
        streams["residual"] = residual_stream(plan, case.residual)
    if plan.nm is not None:
        streams["b_meta"] = b_meta_stream(plan, b_operand)
    return streams


def simulate(config: AccelConfig, cases: list[GemmCase], *, stall_prob: float = 0.0, seed: int = 0,
             raw: bool = False, max_cycles: int = 2_000_000) -> list[tuple[np.ndarray, int]]:
    """Run ``cases`` back to back on the engine in Amaranth's simulator.

    Every stream stalls with probability ``stall_prob`` per word / output cycle. Returns, per
    case, the output matrix (``raw``: the ``output_acc`` accumulators) and its cycles, from
    the cycle the command is accepted to the last output row's handshake.

    Raises
    ------
    AssertionError
        If the engine emits too few or extra output rows, or stays busy.
    """
    import random

    from amaranth.sim import Simulator

    from vitaccel.hw.matrix import MatrixEngine
    from vitaccel.hw.spec.matrix import unpack_output

    dut = MatrixEngine(config)
    rng = random.Random(seed)
    all_streams = [case_streams(case) for case in cases]
    started: list[list[int]] = [[] for _ in cases]  # appended to once a case's command is taken
    results: list[tuple[np.ndarray, int]] = []

    async def put(ctx, port, words):
        for word in words:
            while stall_prob and rng.random() < stall_prob:
                await ctx.tick()
            ctx.set(port.valid, 1)
            ctx.set(port.payload.as_value(), word)
            await ctx.tick().until(port.ready)
            ctx.set(port.valid, 0)

    def driver(name):
        async def run(ctx):
            for index, streams in enumerate(all_streams):
                if name != "command":
                    while not started[index]:  # a case's operands follow its command
                        await ctx.tick()
                await put(ctx, getattr(dut, name), streams.get(name, []))
                if name == "command":
                    started[index].append(1)
                    while len(results) <= index:  # next command once this GEMM is out
                        await ctx.tick()
        return run

    async def monitor(ctx):
        for index, case in enumerate(cases):
            expected_rows = len(all_streams[index]["params"]) * case.plan.tile_rows
            beats: list[int] = []
            cycles = 0
            while not started[index]:
                await ctx.tick()
            while len(beats) < expected_rows:
                ctx.set(dut.output.ready, int(not stall_prob or rng.random() >= stall_prob))
                _, _, valid, ready, payload, acc = await ctx.tick().sample(
                    dut.output.valid, dut.output.ready, dut.output.payload.as_value(), dut.output_acc.as_value())
                cycles += 1
                assert cycles < max_cycles, "engine produced too few outputs"
                if valid and ready:
                    beats.append(acc if raw else payload)
            for _ in range(3):  # nothing more may come out
                ctx.set(dut.output.ready, 1)
                _, _, valid = await ctx.tick().sample(dut.output.valid)
                assert not valid, "engine produced extra output rows"
            assert not ctx.get(dut.busy), "engine still busy after the last output row"
            results.append((unpack_output(case.plan, beats, bits=config.acc_width if raw else None), cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    names = {name for streams in all_streams for name in streams}
    for name in sorted(names):
        sim.add_testbench(driver(name))
    sim.add_testbench(monitor)
    sim.run()
    return results



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
               extremes: bool = False, break_reference: bool = False, nm: bool = False,
               pattern: str | None = None) -> dict[str, Any]:
    if not 0.0 <= stall_prob < 1.0:
        raise ValueError(f"stall_prob must be in [0, 1), got {stall_prob}")
    if quick:
        M, K, N = (min(M, 2 * config.tile_rows), min(K, 2 * config.block_size), min(N, 2 * config.tile_cols))
    plan_gemm(config, M, K, N, nm=nm)  # validates the shape before building anything
    if pattern is not None and pattern not in EDGE_PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(EDGE_PATTERNS)}, got {pattern!r}")
    return {"seed": seed, "M": M, "K": K, "N": N, "stall_prob": stall_prob, "unsigned_a": unsigned_a,
            "residual": residual, "extremes": extremes, "break_reference": break_reference, "nm": nm,
            "pattern": pattern}


def run_cases(config: AccelConfig, cases: list[dict[str, Any]], *, simulator: str = "verilator",
              waves: bool = False) -> list[dict[str, Any]]:
    """Run several GEMMs back to back in one simulation (one simulator start-up).

    Each entry of ``cases`` holds the keyword arguments of :func:`run_case` (``seed``, ``M``,
    ``K``, ``N`` and optionally ``stall_prob``, ``quick``, ``unsigned_a``, ``residual``,
    ``extremes``, ``nm`` (a sparse-mode GEMM, see :func:`make_case`), ``pattern`` (edge
    operands, :data:`EDGE_PATTERNS`) and
    ``break_reference``, which flips one expected value so that tests can prove the
    scoreboard catches a difference); the result list matches it, each entry as
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
    # Ideal cycles count the MACs the engine does: N/M of the dense ones in sparse mode.
    density = [config.nm_sparsity[0] / config.nm_sparsity[1] if spec["nm"] else 1.0 for spec in specs]
    return [{"passed": bool(out["passed"]), "cycles": int(out["cycles"]),
             "ideal_cycles": math.ceil(spec["M"] * spec["K"] * spec["N"] * d / config.macs_per_cycle),
             "mismatch": out["mismatch"], "simulator": simulator}
            for spec, out, d in zip(specs, outputs, density)]


def run_case(config: AccelConfig, *, seed: int, simulator: str = "verilator", M: int, K: int, N: int,
             stall_prob: float = 0.0, quick: bool = False, waves: bool = False, unsigned_a: bool = False,
             residual: bool = True, extremes: bool = False, nm: bool = False) -> dict[str, Any]:
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
    unsigned_a, residual, extremes, nm : bool
        Unsigned-A mode; residual add enabled; operands only at the range extremes;
        sparse mode (``config.nm_sparsity`` weights).

    Returns
    -------
    dict
        ``passed``, ``cycles`` (first operand write to last output read), ``ideal_cycles``
        (MACs done, N/M of the dense ones in sparse mode, / ``config.macs_per_cycle``,
        rounded up), ``mismatch`` (None or
        position/expected/got), ``simulator``.
    """
    return run_cases(config, [dict(seed=seed, M=M, K=K, N=N, stall_prob=stall_prob, quick=quick,
                                   unsigned_a=unsigned_a, residual=residual, extremes=extremes, nm=nm)],
                     simulator=simulator, waves=waves)[0]


def run_vectors_case(config: AccelConfig, *, seed: int, simulator: str = "verilator", quick: bool = False,
                     vectors: int, K: int = 8, N: int = 4, rows_per_gemm: int = 256,
                     break_reference: bool = False) -> dict[str, Any]:
    """``vectors`` random rows of A (one vector each: a K-vector through the engine against N
    weight columns) as GEMMs of up to ``rows_per_gemm`` rows, all in one simulator launch.

    The GEMMs vary as :func:`run_cases` allows: stalls on every other one, unsigned A on every
    third, residual on every other, extreme operands on every eighth and the
    :data:`EDGE_PATTERNS` on others; each is drawn from its own seed
    (:func:`~vitaccel.sim.regress.vectors.sub_seeds`). ``break_reference`` flips one expected
    value of the last GEMM (tests prove a wrong result fails).
    """
    from vitaccel.sim.regress.vectors import combine, split, sub_seeds

    sizes = split(vectors, rows_per_gemm)
    cases = []
    for index, (rows, case_seed) in enumerate(zip(sizes, sub_seeds(seed, len(sizes)))):
        cases.append(dict(seed=case_seed, M=rows, K=K, N=N, stall_prob=0.2 if index % 2 else 0.0,
                          unsigned_a=index % 3 == 1, residual=index % 2 == 0, extremes=index % 8 == 7,
                          pattern=EDGE_PATTERNS[(index // 8) % len(EDGE_PATTERNS)] if index % 8 == 3 else None,
                          break_reference=break_reference and index == len(sizes) - 1))
    outcome = combine(run_cases(config, cases, simulator=simulator), vectors, sizes=sizes)
    outcome["simulator"] = simulator
    return outcome
