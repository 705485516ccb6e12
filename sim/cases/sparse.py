"""Host-side case runners of the top-k engine and the sparse attention unit.

Each runner builds the unit for a config, generates the case's inputs from a seed, runs the
cocotb testbench on the emitted Verilog and compares the outputs with the golden kernels.
Returned dicts are JSON-serialisable: ``{"passed", "cycles", "mismatch"}`` where ``mismatch``
is ``None`` or ``{"position", "expected", "got"}`` for the first differing output.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.sparse import TOPK_SCORE_BITS, AttentionLoad, index_bits

__all__ = ["TOPK_SCORE_KINDS", "MASK_KINDS", "topk_scores", "decode_topk_beats", "first_mismatch",
           "run_topk_case", "run_attention_vectors_case", "make_mask", "attention_case", "attention_program", "decode_rows",
           "run_attention_case", "run_attention_cases"]

TOPK_SCORE_KINDS = ("random", "ties", "constant", "edges")


def topk_scores(rng: np.random.Generator, n: int, kind: str = "random") -> np.ndarray:
    """``n`` unsigned top-k scores: uniform, few distinct values (ties), all equal, or extremes."""
    top = 1 << TOPK_SCORE_BITS
    if kind == "random":
        return rng.integers(0, top, n, dtype=np.int64)
    if kind == "ties":
        return rng.choice(rng.integers(0, top, 4, dtype=np.int64), n)
    if kind == "constant":
        return np.full(n, int(rng.integers(0, top)), dtype=np.int64)
    if kind == "edges":
        return rng.choice(np.array([0, 1, top - 2, top - 1], dtype=np.int64), n)
    raise ValueError(f"unknown score kind {kind!r}: use one of {', '.join(TOPK_SCORE_KINDS)}")


def decode_topk_beats(beats: list, n: int, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Kept indices and keep mask from the engine's result beats ``(mask, count, indices, last)``."""
    keep = np.zeros(-(-n // lanes) * lanes, dtype=bool)
    kept: list[int] = []
    for group, (mask, count, indices, _last) in enumerate(beats):
        for lane in range(lanes):
            keep[group * lanes + lane] = bool((mask >> lane) & 1)
        kept.extend(int(i) for i in indices[:count])
    return np.array(kept, dtype=np.int64), keep[:n]


def first_mismatch(expected: np.ndarray, got: np.ndarray) -> dict[str, Any] | None:
    """``None`` if equal, else the first differing position (or the shapes if they differ)."""
    expected, got = np.asarray(expected), np.asarray(got)
    if expected.shape != got.shape:
        return {"position": "shape", "expected": list(expected.shape), "got": list(got.shape)}
    diff = np.argwhere(expected != got)
    if diff.size == 0:
        return None
    pos = tuple(int(v) for v in diff[0])
    return {"position": list(pos), "expected": expected[pos].item(), "got": got[pos].item()}


def run_topk_case(config: AccelConfig, *, seed: int, simulator: str = "verilator", n: int, k: int,
                  kind: str = "ties", quick: bool = False, waves: bool = False) -> dict[str, Any]:
    """Run one top-k case in RTL simulation; see the module docstring for the result."""
    from vitaccel.hw.topk import TopKEngine
    from vitaccel.sim.golden.topk import topk
    from vitaccel.sim.runner import emit_verilog, run_testbench

    if not 1 <= n <= config.max_tokens:
        raise ValueError(f"run_topk_case: n must be in 1..{config.max_tokens}, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"run_topk_case: k must be in 0..{n}, got {k}")
    scores = topk_scores(np.random.default_rng(seed), n, kind)
    want_indices, want_keep = topk(scores, k)
    name = f"topk_{config.hash()}"
    result = run_testbench(
        verilog=emit_verilog(TopKEngine(config=config), name), toplevel=name,
        test_module="vitaccel.sim.cocotb.tb_topk", simulator=simulator, seed=seed, waves=waves,
        check=False, params={
            "lanes": config.topk_lanes, "score_bits": TOPK_SCORE_BITS,
            "index_bits": index_bits(config.max_tokens + config.topk_lanes),
            "count_bits": config.topk_lanes.bit_length(), "k": k,
            "scores": [int(v) for v in scores], "expected": [int(v) for v in want_indices]})
    beats = result.output.get("beats")
    if beats is None:
        return {"passed": False, "cycles": None,
                "mismatch": {"position": "run", "expected": "result beats",
                             "got": "; ".join(c.message for c in result.cases)}}
    indices, keep = decode_topk_beats(beats, n, config.topk_lanes)
    mismatch = first_mismatch(want_indices, indices) or first_mismatch(want_keep, keep)
    return {"passed": result.passed and mismatch is None, "cycles": result.output["cycles"],
            "mismatch": mismatch}


# -- sparse attention -------------------------------------------------------------------------

MASK_KINDS = ("random", "empty", "full", "diagonal", "dense_row")


def make_mask(rng: np.random.Generator, tokens: int, density: float, kind: str = "random") -> np.ndarray:
    """A ``tokens x tokens`` bool mask of one kind.

    ``random``: each entry kept with probability ``density``; ``empty``/``full``; ``diagonal``:
    a band around the diagonal holding about ``density`` of the entries plus random ones, as ViT
    attention is diagonal-heavy; ``dense_row``: random at ``density`` with row 0 fully set.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density: must be in [0, 1], got {density}")
    if kind == "empty":
        return np.zeros((tokens, tokens), dtype=bool)
    if kind == "full":
        return np.ones((tokens, tokens), dtype=bool)
    if kind == "random":
        return rng.random((tokens, tokens)) < density
    if kind == "diagonal":
        half_band = int(density * tokens / 2)
        idx = np.arange(tokens)
        band = np.abs(idx[:, None] - idx[None, :]) <= half_band
        return band | (rng.random((tokens, tokens)) < density / 4)
    if kind == "dense_row":
        mask = rng.random((tokens, tokens)) < density
        mask[0] = True
        return mask
    raise ValueError(f"unknown mask kind {kind!r}: use one of {', '.join(MASK_KINDS)}")


def attention_case(config: AccelConfig, *, seed: int, tokens: int, head_dim: int, density: float,
                   mask_kind: str = "random") -> dict[str, Any]:
    """Inputs and golden output of one attention case (int8 Q/K/V, mask, integer parameters)."""
    from vitaccel.hw.spec.nonlinear import softmax_params
    from vitaccel.hw.spec.numerics import quantize_multiplier
    from vitaccel.sim.golden.attention import masked_attention

    if not 1 <= tokens <= config.max_tokens:
        raise ValueError(f"tokens: must be in 1..{config.max_tokens}, got {tokens}")
    rng = np.random.default_rng(seed)
    q, k, v = (rng.integers(-128, 128, (tokens, head_dim), dtype=np.int64) for _ in range(3))
    mask = make_mask(rng, tokens, density, mask_kind)
    # Random int8 dot products have a standard deviation near 5500 sqrt(d): map that to about 2.
    sm = softmax_params(2.0 / (5500.0 * np.sqrt(head_dim)), exp_lut_bits=config.exp_lut_bits,
                        recip_lut_bits=config.recip_lut_bits)
    out_scale = quantize_multiplier(1.0 / 256.0)
    expected = masked_attention(q, k, v, mask, sm, out_scale.multiplier, out_scale.shift)
    return {"q": q, "k": k, "v": v, "mask": mask, "softmax": sm, "out_multiplier": out_scale.multiplier,
            "out_shift": out_scale.shift, "expected": expected}


def attention_program(config: AccelConfig, case: dict[str, Any], max_head_dim: int | None = None) -> dict[str, Any]:
    """What the host writes into the unit: ``loads`` as ``(target, addr, word)`` and the
    run parameters (``tokens``, ``waves``, ``head_dim``, softmax and output scales), for a
    unit built with ``max_head_dim`` (default: the case's head dim)."""
    from vitaccel.hw.spec.sparse import mask_block_cols
    from vitaccel.sim.golden.attention import encode_waves, pack_mask_for, schedule_waves

    q, k, v = case["q"], case["k"], case["v"]
    tokens, head_dim = q.shape
    width = mask_block_cols(config.sparse_pe_cols)
    packed = pack_mask_for(config, case["mask"])
    schedule = schedule_waves(packed, config.sparse_pe_rows)

    def row_word(values) -> int:
        return sum((int(x) & 0xFF) << (8 * e) for e, x in enumerate(values))

    loads = [(int(AttentionLoad.Q), i, row_word(q[i])) for i in range(tokens)]
    n_blocks = -(-tokens // width)
    for target, mat in ((int(AttentionLoad.K), k), (int(AttentionLoad.V), v)):
        padded = np.zeros((n_blocks * width, head_dim), dtype=np.int64)
        padded[:tokens] = mat
        for block in range(n_blocks):
            for t in range(head_dim):
                loads.append((target, block * (max_head_dim or head_dim) + t, row_word(padded[block * width:(block + 1) * width, t])))
    loads += [(int(AttentionLoad.WAVES), wave, word)
              for wave, word in enumerate(encode_waves(config, packed, schedule))]
    sm = case["softmax"]
    return {"loads": loads, "tokens": int(tokens), "waves": int(schedule.shape[0]), "head_dim": int(head_dim),
            "softmax_multiplier": sm.multiplier, "softmax_shift": sm.shift,
            "out_multiplier": case["out_multiplier"], "out_shift": case["out_shift"],
            "packed_rows": packed.rows}


def decode_rows(rows: list[int], head_dim: int) -> np.ndarray:
    """Output row words (``head_dim`` int8, element 0 lowest) as an int8 matrix."""
    out = np.array([[(word >> (8 * e)) & 0xFF for e in range(head_dim)] for word in rows], dtype=np.int64)
    return np.where(out >= 128, out - 256, out).astype(np.int8).reshape(len(rows), head_dim)


def _row_words(matrix: np.ndarray) -> list[int]:
    return [sum((int(x) & 0xFF) << (8 * e) for e, x in enumerate(row)) for row in matrix]


def _run_programs(config: AccelConfig, head_dim: int, runs: list[tuple[dict[str, Any], np.ndarray, str]], *,
                  seed: int, simulator: str, waves: bool) -> list[dict[str, Any]]:
    """Run several programs in one simulator invocation; per run ``{"rows", "cycles"}`` or
    ``{"error"}`` if the simulation produced nothing for it."""
    from vitaccel.hw.sparse_attention import SparseAttention
    from vitaccel.sim.runner import emit_verilog, run_testbench

    name = f"sparse_attention_{config.hash()}_d{head_dim}"
    params = {"head_dim": head_dim, "runs": []}
    for program, expected, label in runs:
        run = {key: value for key, value in program.items() if key != "packed_rows"}
        run.update(loads=[[t, a, int(w)] for t, a, w in program["loads"]], label=label,
                   expected=[str(w) for w in _row_words(expected)])
        params["runs"].append(run)
    # The operand words outgrow an environment variable (the runner's parameter channel):
    # they travel in a file named by the parameters.
    with tempfile.TemporaryDirectory(prefix="vitaccel-sparse-") as tmp:
        program_file = Path(tmp) / "program.json"
        program_file.write_text(json.dumps(params))
        result = run_testbench(verilog=emit_verilog(SparseAttention(config=config, max_head_dim=head_dim), name),
                               toplevel=name, test_module="vitaccel.sim.cocotb.tb_sparse_attention",
                               simulator=simulator, seed=seed, waves=waves, check=False,
                               params={"program_file": str(program_file)})
    outputs = result.output.get("runs", [])
    message = "; ".join(c.message for c in result.cases) or "no output"
    return [outputs[i] if i < len(outputs) else {"error": message} for i in range(len(runs))]


def _judge(case: dict[str, Any], output: dict[str, Any], head_dim: int) -> dict[str, Any]:
    if "error" in output:
        return {"passed": False, "cycles": None,
                "mismatch": {"position": "run", "expected": "output rows", "got": output["error"]}}
    got = decode_rows([int(r) for r in output["rows"]], head_dim)
    mismatch = first_mismatch(case["expected"], got)
    return {"passed": mismatch is None, "cycles": output["cycles"], "mismatch": mismatch}


def run_attention_cases(config: AccelConfig, *, cases: list[dict[str, Any]], head_dim: int,
                        simulator: str = "verilator", seed: int = 0, waves: bool = False,
                        break_reference: int | None = None) -> list[dict[str, Any]]:
    """Several attention cases (keyword dicts of :func:`attention_case`: ``seed``, ``tokens``,
    ``density``, ``mask_kind``) in one simulator run; one result dict per case.
    ``break_reference``: the index of a case whose expected output gets one value flipped
    (tests prove a wrong result fails)."""
    built = [attention_case(config, head_dim=head_dim, **kwargs) for kwargs in cases]
    if break_reference is not None:
        built[break_reference]["expected"] = built[break_reference]["expected"].copy()
        built[break_reference]["expected"][0, 0] ^= 1
    programs = [attention_program(config, case) for case in built]
    outputs = _run_programs(config, head_dim, [(p, c["expected"], str(kw)) for p, c, kw in zip(programs, built, cases)],
                            seed=seed, simulator=simulator, waves=waves)
    results = []
    for case, program, output in zip(built, programs, outputs):
        result = _judge(case, output, head_dim)
        result.update(packed_rows=program["packed_rows"], nnz=int(case["mask"].sum()))
        results.append(result)
    return results


def run_attention_case(config: AccelConfig, *, seed: int, simulator: str = "verilator", tokens: int,
                       head_dim: int, density: float, mask_kind: str = "random", quick: bool = False,
                       waves: bool = False, measure_dense: bool = False) -> dict[str, Any]:
    """Run one attention case in RTL simulation and compare with the golden masked attention.

    Returns ``{"passed", "cycles", "mismatch", "packed_rows", "nnz"}`` plus ``dense_cycles``
    (the same Q, K, V with a full mask on the same unit, in the same simulator run) when
    ``measure_dense``. ``quick`` is accepted for the regression runner's uniform interface;
    one case has nothing to shorten.
    """
    from vitaccel.sim.golden.attention import masked_attention

    case = attention_case(config, seed=seed, tokens=tokens, head_dim=head_dim, density=density,
                          mask_kind=mask_kind)
    program = attention_program(config, case)
    runs = [(program, case["expected"], f"{mask_kind} {density}")]
    if measure_dense:
        full = dict(case, mask=np.ones((tokens, tokens), dtype=bool))
        full["expected"] = masked_attention(full["q"], full["k"], full["v"], full["mask"], full["softmax"],
                                            full["out_multiplier"], full["out_shift"])
        runs.append((attention_program(config, full), full["expected"], "dense"))
    outputs = _run_programs(config, head_dim, runs, seed=seed, simulator=simulator, waves=waves)
    out = _judge(case, outputs[0], head_dim)
    out.update(packed_rows=program["packed_rows"], nnz=int(case["mask"].sum()))
    if measure_dense:
        dense = _judge(full, outputs[1], head_dim)
        out["dense_cycles"] = dense["cycles"]
        out["passed"] = out["passed"] and dense["passed"]
        if out["mismatch"] is None and dense["mismatch"] is not None:
            out["mismatch"] = dict(dense["mismatch"], position=["dense", dense["mismatch"]["position"]])
    return out


def run_attention_vectors_case(config: AccelConfig, *, seed: int, simulator: str = "verilator", quick: bool = False,
                               vectors: int, tokens: int = 16, head_dim: int = 8,
                               break_reference: bool = False) -> dict[str, Any]:
    """``vectors`` random query rows (one vector each: a row of Q against its head's K and V
    under its mask row) as attention heads of ``tokens`` rows, all in one simulator launch;
    the masks cycle through :data:`MASK_KINDS` and densities 0.1 .. 0.9, each head drawn from
    its own seed. ``break_reference`` flips one expected value of the last head."""
    from vitaccel.sim.regress.vectors import combine, split, sub_seeds

    sizes = split(vectors, tokens)
    cases = [dict(seed=case_seed, tokens=rows, density=0.1 + 0.2 * (index % 5),
                  mask_kind=MASK_KINDS[(index // 5) % len(MASK_KINDS)])
             for index, (rows, case_seed) in enumerate(zip(sizes, sub_seeds(seed, len(sizes))))]
    results = run_attention_cases(config, cases=cases, head_dim=head_dim, simulator=simulator, seed=seed,
                                  break_reference=len(cases) - 1 if break_reference else None)
    outcome = combine(results, vectors, sizes=sizes)
    outcome["simulator"] = simulator
    return outcome
