"""Planning: config x cases x seeds x simulator -> independent, picklable tasks."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.sim.regress.registry import (CASES, CaseSpec, CaseUnavailable, CaseVariant,
                                           case_names, resolve_runner, variants)

__all__ = ["Task", "NotRun", "Plan", "make_plan", "reproduce_command"]


@dataclass(frozen=True)
class Task:
    """One case, one seed, one simulator: everything a worker needs, nothing it must share.

    The config travels as a plain dict so a worker on another machine rebuilds the same
    design from it (and caches the build under its own hash).
    """

    case: str
    module: str
    function: str
    args: tuple[Any, ...]
    params: Mapping[str, Any]
    seed: int
    simulator: str
    quick: bool
    config: Mapping[str, Any]
    config_source: str
    #: Random vectors in the launch (``--vectors``), or None for the case's fixed parameter set.
    vectors: int | None = None

    @property
    def reproduce(self) -> str:
        return reproduce_command(self.config_source, self.case, self.seed, self.simulator, self.quick,
                                 self.vectors)


@dataclass(frozen=True)
class NotRun:
    """A case that was selected but cannot run here, and why."""

    case: str
    status: str  # "unavailable" (module not built) or "disabled" (config has no such unit)
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.case, "status": self.status, "reason": self.reason}


@dataclass
class Plan:
    config: AccelConfig
    simulator: str
    seeds: list[int]
    quick: bool
    tasks: list[Task] = field(default_factory=list)
    vectors: int | None = None
    not_run: list[NotRun] = field(default_factory=list)


def reproduce_command(config_source: str, case: str, seed: int, simulator: str, quick: bool,
                      vectors: int | None = None) -> str:
    """The command that runs exactly this case with this seed, and nothing else."""
    words = ["vitaccel", "regress", "--config", config_source, "--case", case,
             "--seed", str(seed), "--sim", simulator]
    if quick:
        words.append("--quick")  # the case runner's ``quick`` flag changes what it checks
    if vectors is not None:
        words += ["--vectors", str(vectors)]
    return shlex.join(words)


def _select(selection: str | None, *, quick: bool, cases: tuple[CaseSpec, ...]) -> list[CaseVariant]:
    if selection is None:
        return variants(quick=quick, cases=cases)
    chosen = [v for v in variants(quick=quick, cases=cases) if selection in (v.name, v.spec.name)]
    if not chosen:  # a variant of the other mode, named exactly (from a reproduce command)
        chosen = [v for v in variants(quick=not quick, cases=cases) if v.name == selection]
    if not chosen:
        raise ValueError(f"unknown case {selection!r}: use one of {', '.join(case_names(cases))}")
    return chosen[:1] if chosen[0].name == selection else chosen


def make_plan(config: AccelConfig, *, config_source: str, simulator: str, seeds: list[int],
              quick: bool, case: str | None = None,
              cases: tuple[CaseSpec, ...] | None = None, vectors: int | None = None) -> Plan:
    """Expand the registry into tasks for ``config``.

    Parameters
    ----------
    config : AccelConfig
        The design to verify.
    config_source : str
        What the user named it by (preset or file), used in reproduce commands.
    simulator : str
        ``verilator`` or ``icarus``.
    seeds : list of int
        Every selected case runs once per seed.
    quick : bool
        Use the registry's quick parameter sets.
    case : str, optional
        A case name (all its parameter sets) or a variant name (exactly that one).
    cases : tuple of CaseSpec, optional
        Registry to use instead of :data:`CASES`.
    vectors : int, optional
        Random-vector mode: one task per case and seed that runs the case's ``vectors``
        runner with this many vectors in one launch; cases without one are listed as not run.

    Raises
    ------
    ValueError
        For an unknown ``case``, an empty seed list or fewer than one vector.
    """
    if not seeds:
        raise ValueError("seeds: need at least one seed")
    table = CASES if cases is None else cases
    if vectors is not None:
        return _vector_plan(config, config_source=config_source, simulator=simulator, seeds=seeds,
                            quick=quick, case=case, table=table, vectors=vectors)
    plan = Plan(config=config, simulator=simulator, seeds=list(seeds), quick=quick)
    config_dict = config.to_dict()
    for variant in _select(case, quick=quick, cases=table):
        not_run = _not_run(variant.name, variant.spec, variant.spec.function, config)
        if not_run is not None:
            plan.not_run.append(not_run)
            continue
        for seed in seeds:
            plan.tasks.append(Task(case=variant.name, module=variant.spec.module,
                                   function=variant.spec.function, args=variant.spec.args,
                                   params=dict(variant.params), seed=seed, simulator=simulator,
                                   quick=quick, config=config_dict, config_source=config_source))
    return plan


def _not_run(name: str, spec: CaseSpec, function: str, config: AccelConfig) -> NotRun | None:
    """Why ``spec`` cannot run ``function`` for ``config`` (disabled unit, missing module), or None."""
    disabled = spec.disabled_reason(config)
    if disabled:
        return NotRun(name, "disabled", disabled)
    try:
        resolve_runner(spec.module, function)
    except CaseUnavailable as err:
        return NotRun(name, "unavailable", str(err))
    # A case module that exists but fails to import is not "unavailable": it runs and
    # fails with the import error, so a broken unit never disappears from the report.
    except Exception:  # noqa: BLE001 - reported by the task itself
        pass
    return None


def _vector_plan(config: AccelConfig, *, config_source: str, simulator: str, seeds: list[int], quick: bool,
                 case: str | None, table: tuple[CaseSpec, ...], vectors: int) -> Plan:
    """:func:`make_plan` with ``vectors``: each selected case's vector runner, once per seed."""
    if vectors < 1:
        raise ValueError(f"vectors: need at least one vector, got {vectors}")
    specs = list(table) if case is None else [spec for spec in table if case == spec.name
                                              or case in {v.name for v in variants(quick=True, cases=(spec,))
                                                          + variants(quick=False, cases=(spec,))}]
    if not specs:
        raise ValueError(f"unknown case {case!r}: use one of {', '.join(case_names(table))}")
    plan = Plan(config=config, simulator=simulator, seeds=list(seeds), quick=quick, vectors=vectors)
    config_dict = config.to_dict()
    for spec in specs:
        not_run = (NotRun(spec.name, "disabled", "no random-vector mode (--vectors) for this case")
                   if spec.vectors is None else _not_run(spec.name, spec, spec.vectors, config))
        if not_run is not None:
            plan.not_run.append(not_run)
            continue
        for seed in seeds:
            plan.tasks.append(Task(case=spec.name, module=spec.module, function=spec.vectors, args=spec.args,
                                   params=dict(spec.vector_params), seed=seed, simulator=simulator, quick=quick,
                                   config=config_dict, config_source=config_source, vectors=vectors))
    return plan
