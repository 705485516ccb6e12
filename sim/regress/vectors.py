"""Random-vector mode of the unit cases (``vitaccel regress --vectors N``): shared helpers.

A unit's vector runner (``vectors`` in :data:`~vitaccel.sim.regress.registry.CASES`) splits
N vectors into the unit's own cases (GEMMs of many rows, attention heads of many query
rows), runs them all in one simulator launch and reports them as one result through
:func:`combine`. The cases are drawn from seeds derived from the task's seed by
:func:`sub_seeds`, so a seed names the same vectors on every machine.
"""

from __future__ import annotations

from typing import Any

__all__ = ["sub_seeds", "split", "combine"]


def sub_seeds(seed: int, count: int) -> list[int]:
    """``count`` seeds of the cases of one vector run, disjoint from other tasks' (the seed
    times a prime above any case count, plus the case's index)."""
    return [seed * 1_000_003 + index for index in range(count)]


def split(vectors: int, per_case: int) -> list[int]:
    """``vectors`` as case sizes of ``per_case`` (the last one smaller)."""
    if vectors < 1 or per_case < 1:
        raise ValueError(f"vectors and per_case must be positive, got {vectors} and {per_case}")
    return [min(per_case, vectors - start) for start in range(0, vectors, per_case)]


def combine(results: list[dict[str, Any]], vectors: int, *, sizes: list[int]) -> dict[str, Any]:
    """One verdict for the cases of a vector run: passed if all passed; cycles summed; the
    first failing case's mismatch, with its index and first vector."""
    failing = next((i for i, result in enumerate(results) if not result["passed"]), None)
    mismatch = None
    if failing is not None:
        mismatch = {"case": failing, "first_vector": sum(sizes[:failing]), **(results[failing]["mismatch"] or {})}
    cycles = [result.get("cycles") for result in results]
    return {"passed": failing is None and len(results) == len(sizes), "vectors": vectors, "cases": len(results),
            "cycles": sum(c for c in cycles if c is not None), "mismatch": mismatch}
