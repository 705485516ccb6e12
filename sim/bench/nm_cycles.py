"""Measured matrix-engine cycles of one GEMM, dense or N:M sparse (issue 8).

:func:`gemm_cycles` runs a random GEMM of the given shape on the engine's RTL (Verilator by
default, or Amaranth's simulator) with full-rate streams (no stall on any stream) and returns
the cycles from the first operand write to the last output row, scratchpad loading included,
after checking the result bit-exact against the golden kernel. A sparse GEMM runs on the
engine built with that ``nm_sparsity`` (the config's other fields unchanged); a dense one on
the config as given (the dense schedule does not depend on ``nm_sparsity``). Results are
cached on disk by config, shape, pattern, simulator and a digest of the engine's sources
(a changed engine is measured again), so summing per-GEMM cycles over a
whole model (many layers, few distinct shapes) measures each shape once.

:func:`compare` gives dense, 2:4 and 1:4 cycles and their ratios for a list of shapes;
:data:`DIGITS_VIT_LINEARS` and :data:`~vitaccel.sim.bench.gemm.DEIT_S_GEMMS` are the usual lists.
Manual use: ``python -m vitaccel.sim.bench.nm_cycles [CONFIG] [--deit-s] [--amaranth]``.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from vitaccel.hw.spec.config import AccelConfig

__all__ = ["DIGITS_VIT_LINEARS", "NM_PATTERNS", "gemm_cycles", "compare", "cache_path"]

#: (name, M, K, N) of digits-vit's block linear layers (17 tokens, dim 64, MLP 128).
DIGITS_VIT_LINEARS = (
    ("qkv", 17, 64, 192),
    ("proj", 17, 64, 64),
    ("mlp_fc1", 17, 64, 128),
    ("mlp_fc2", 17, 128, 64),
)
#: The sparse patterns :func:`compare` measures besides dense.
NM_PATTERNS = ((2, 4), (1, 4))
_SIMULATORS = ("verilator", "icarus", "amaranth")


def cache_path() -> Path:
    """The JSON cache of measured cycles: ``$VITACCEL_NM_CYCLES_CACHE`` or
    ``~/.cache/vitaccel/nm_cycles.json``."""
    env = os.environ.get("VITACCEL_NM_CYCLES_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vitaccel" / "nm_cycles.json"


def _load_cache(path: Path) -> dict[str, int]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _store(path: Path, key: str, cycles: int) -> None:
    cache = _load_cache(path)  # re-read: another process may have added entries
    cache[key] = cycles
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
    tmp.replace(path)


@lru_cache(maxsize=1)
def _engine_digest() -> str:
    """Digest of the engine's gateware and host-interface sources (part of every cache key)."""
    import vitaccel.hw.matrix
    import vitaccel.hw.spec

    digest = hashlib.sha256()
    spec = Path(vitaccel.hw.spec.__file__).parent
    for path in sorted(Path(vitaccel.hw.matrix.__file__).parent.glob("*.py")) + [
            spec / name for name in ("matrix.py", "nm.py", "numerics.py", "config.py")]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _engine_config(config: AccelConfig, nm: tuple[int, int] | None) -> AccelConfig:
    if nm is None or config.nm_sparsity == nm:
        return config
    return config.replace(name=f"{config.name}-nm{nm[0]}{nm[1]}", nm_sparsity=nm)


def gemm_cycles(config: AccelConfig, M: int, K: int, N: int, nm: tuple[int, int] | None = None, *,
                simulator: str = "verilator", use_cache: bool = True, seed: int = 0) -> int:
    """Engine cycles of ``C[M x N] = A[M x K] W[K x N]``, measured with full-rate streams.

    Parameters
    ----------
    config : AccelConfig
        Engine geometry; for ``nm`` its ``nm_sparsity`` is replaced by ``nm``.
    M, K, N : int
        GEMM shape (``K`` the dense reduction length).
    nm : (int, int) or None
        ``(N, M)`` sparse weights, or None for a dense GEMM.
    simulator : str
        ``"verilator"``, ``"icarus"`` or ``"amaranth"`` (Amaranth's simulator: no toolchain,
        slow beyond some 10^4 cycles).
    use_cache : bool
        Read and write the cache (:func:`cache_path`).
    seed : int
        Operands (the cycles do not depend on them).

    Raises
    ------
    ValueError
        For an unknown simulator or an invalid shape / pattern (``plan_gemm``'s messages).
    AssertionError
        If the engine's result is not bit-exact (a measured cycle count of a wrong result is
        no measurement).
    """
    if simulator not in _SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(_SIMULATORS)}, got {simulator!r}")
    if nm is not None:
        nm = (int(nm[0]), int(nm[1]))
    engine = _engine_config(config, nm)  # validates nm (ConfigError is a ValueError)
    path = cache_path()
    key = f"{engine.hash()}:{_engine_digest()}:{M}x{K}x{N}:{'dense' if nm is None else f'{nm[0]}:{nm[1]}'}:{simulator}"
    if use_cache and key in (cache := _load_cache(path)):
        return int(cache[key])
    if simulator == "amaranth":
        from vitaccel.sim.cases.matrix_engine import first_mismatch, make_case, simulate

        case = make_case(engine, seed=seed, M=M, K=K, N=N, nm=nm is not None)
        (got, cycles), = simulate(engine, [case], max_cycles=100 * case.plan.compute_cycles + 10_000)
        mismatch = first_mismatch(case.expected, got)
    else:
        from vitaccel.sim.cases.matrix_engine import run_case

        result = run_case(engine, seed=seed, simulator=simulator, M=M, K=K, N=N, nm=nm is not None)
        cycles, mismatch = result["cycles"], result["mismatch"]
    assert mismatch is None, f"{M}x{K}x{N} {nm}: engine result differs from golden: {mismatch}"
    if use_cache:
        _store(path, key, int(cycles))
    return int(cycles)


def compare(config: AccelConfig, shapes, *, patterns=NM_PATTERNS, simulator: str = "verilator",
            use_cache: bool = True) -> list[dict[str, Any]]:
    """Dense and sparse cycles of every ``(name, M, K, N)`` in ``shapes``, plus a ``total`` record.

    Each record has ``name``, ``M``, ``K``, ``N``, ``dense`` (cycles) and, per pattern
    ``n:m``, ``"n:m"`` (cycles) and ``"n:m ratio"`` (to dense, 3 decimals).
    """
    records = []
    for name, M, K, N in shapes:
        record: dict[str, Any] = {"name": name, "M": M, "K": K, "N": N,
                                  "dense": gemm_cycles(config, M, K, N, simulator=simulator, use_cache=use_cache)}
        for n, m in patterns:
            record[f"{n}:{m}"] = gemm_cycles(config, M, K, N, (n, m), simulator=simulator, use_cache=use_cache)
        records.append(record)
    total: dict[str, Any] = {"name": "total", "dense": sum(r["dense"] for r in records)}
    for n, m in patterns:
        total[f"{n}:{m}"] = sum(r[f"{n}:{m}"] for r in records)
    for record in records + [total]:
        for n, m in patterns:
            record[f"{n}:{m} ratio"] = round(record[f"{n}:{m}"] / record["dense"], 3)
    return records + [total]


if __name__ == "__main__":
    import sys

    from vitaccel.hw.spec.config import load_config
    from vitaccel.sim.bench.gemm import DEIT_S_GEMMS

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    shapes = [s for s in DEIT_S_GEMMS if s[0] not in ("scores", "attn_v")] if "--deit-s" in sys.argv \
        else DIGITS_VIT_LINEARS
    sim = "amaranth" if "--amaranth" in sys.argv else "verilator"
    print(json.dumps(compare(load_config(args[0] if args else "tiny"), shapes, simulator=sim), indent=1))
