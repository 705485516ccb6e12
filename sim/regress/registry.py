"""The table of regression cases: which unit, which host-side case runner, which sizes.

Every unit's verification lives in a *case runner*, a host-side function that builds the
unit for a config, runs one randomized bit-exact cocotb check against the golden kernel and
returns ``{"passed": bool, "cycles": int, "mismatch": None | {"position", "expected",
"got"}, ...}``. The regression runner only needs to know where each one is and which
parameter sets to run: that is :data:`CASES`, the one table to edit when a unit is added.

A case's module is imported when the case runs, never at import time of this file, so a
unit that is not built yet is reported as *unavailable* (with the module name) instead of
breaking every other unit's regression.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from vitaccel.hw.spec.config import AccelConfig

__all__ = ["CaseSpec", "CaseVariant", "CASES", "variants", "case_names", "resolve_runner",
           "CaseUnavailable"]


class CaseUnavailable(LookupError):
    """The case's module or function does not exist in this build."""


@dataclass(frozen=True)
class CaseSpec:
    """One unit's regression case.

    Parameters
    ----------
    name : str
        Short name, also the prefix of every variant's name (``softmax``, ``topk``, ...).
    module : str
        Importable module holding the case runner.
    function : str
        Name of the case runner in ``module``; it is called as
        ``function(*args, config, seed=, simulator=, quick=, **params)``.
    quick : tuple of mapping
        Parameter sets run by ``--quick`` (small shapes, minutes on 2 cores in total).
    full : tuple of mapping
        Parameter sets run by a full regression.
    args : tuple
        Leading positional arguments (the nonlinear runner takes the unit name first).
    requires : str, optional
        ``AccelConfig`` flag (``has_softmax``, ...) that must be true for the unit to exist.
    vectors : str, optional
        Name of the unit's random-vector runner in ``module`` (``vitaccel regress --vectors
        N``): called as ``vectors(*args, config, seed=, simulator=, quick=, vectors=N,
        **vector_params)``, it runs N random vectors (edge cases among them, drawn from the
        seed) in one simulator launch. None: the case has no such mode.
    vector_params : mapping
        The shape of one vector (e.g. the row width), passed to ``vectors``.
    """

    name: str
    module: str
    function: str
    quick: tuple[Mapping[str, Any], ...]
    full: tuple[Mapping[str, Any], ...]
    args: tuple[Any, ...] = ()
    requires: str | None = None
    vectors: str | None = None
    vector_params: Mapping[str, Any] = field(default_factory=dict)

    def disabled_reason(self, config: AccelConfig) -> str | None:
        """Why ``config`` has no such unit, or ``None`` if it has one."""
        if self.requires is not None and not getattr(config, self.requires):
            return f"config {config.name!r} has {self.requires}=false"
        return None


@dataclass(frozen=True)
class CaseVariant:
    """One parameter set of one case; ``name`` identifies it on the command line."""

    spec: CaseSpec
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        # ``name:k=v,k=v`` uses only characters the shell leaves alone, so reproduce
        # commands need no quoting.
        label = ",".join(f"{key}={value}" for key, value in self.params.items())
        return f"{self.spec.name}:{label}" if label else self.spec.name


def _sizes(*param_sets: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    return tuple(dict(p) for p in param_sets)


# The registry. One row per unit check; ``quick`` keeps every case to a few seconds of
# simulation after its one build. Lead: adjust module/function/parameters here only.
CASES: tuple[CaseSpec, ...] = (
    CaseSpec("selftest_mac", "vitaccel.sim.regress.selftest", "run_case",
             quick=_sizes({"steps": 24}), full=_sizes({"steps": 24}, {"steps": 400})),
    CaseSpec("matrix_engine", "vitaccel.sim.cases.matrix_engine", "run_case",
             vectors="run_vectors_case", vector_params={"K": 8, "N": 4},
             quick=_sizes({"M": 4, "K": 8, "N": 4}),
             full=_sizes({"M": 4, "K": 8, "N": 4}, {"M": 8, "K": 32, "N": 12}, {"M": 5, "K": 7, "N": 3})),
    CaseSpec("softmax", "vitaccel.sim.cases.nonlinear", "run_case", args=("softmax",),
             vectors="run_vectors_case", vector_params={"width": 8},
             requires="has_softmax", quick=_sizes({"rows": 2, "width": 8}),
             full=_sizes({"rows": 2, "width": 8}, {"rows": 4, "width": 64})),
    CaseSpec("gelu", "vitaccel.sim.cases.nonlinear", "run_case", args=("gelu",),
             vectors="run_vectors_case", vector_params={"width": 8},
             requires="has_gelu", quick=_sizes({"rows": 2, "width": 8}),
             full=_sizes({"rows": 2, "width": 8}, {"rows": 4, "width": 64})),
    CaseSpec("layernorm", "vitaccel.sim.cases.nonlinear", "run_case", args=("layernorm",),
             vectors="run_vectors_case", vector_params={"width": 8},
             requires="has_layernorm", quick=_sizes({"rows": 2, "width": 8}),
             full=_sizes({"rows": 2, "width": 8}, {"rows": 4, "width": 64})),
    CaseSpec("topk", "vitaccel.sim.cases.sparse", "run_topk_case", requires="has_topk",
             quick=_sizes({"n": 16, "k": 4}), full=_sizes({"n": 16, "k": 4}, {"n": 64, "k": 8})),
    CaseSpec("sparse_attention", "vitaccel.sim.cases.sparse", "run_attention_case",
             vectors="run_attention_vectors_case", vector_params={"tokens": 16, "head_dim": 8},
             requires="has_sparse_attention",
             quick=_sizes({"tokens": 8, "head_dim": 4, "density": 0.5, "mask_kind": "random"}),
             full=_sizes({"tokens": 8, "head_dim": 4, "density": 0.5, "mask_kind": "random"},
                         {"tokens": 16, "head_dim": 8, "density": 0.25, "mask_kind": "random"})),
    CaseSpec("axi_dma", "vitaccel.sim.cases.axi", "run_dma_case",
             quick=_sizes({"transfers": 6}), full=_sizes({"transfers": 24}, {"transfers": 48, "backpressure": 0.7})),
    CaseSpec("axi_lite", "vitaccel.sim.cases.axi", "run_lite_case", quick=_sizes({}), full=_sizes({})),
    # Whole-accelerator programs (DMA, GEMM, GELU, bad programs) against the golden machine.
    CaseSpec("accelerator", "vitaccel.sim.cases.accel", "run_regress_case", quick=_sizes({}), full=_sizes({})),
)
# Whole compiled models are cases too (``system_digits_vit``), but compiling needs the
# compiler: :data:`vitaccel.sw.system_case.SYSTEM_CASES`, which ``vitaccel regress`` appends.


def variants(*, quick: bool, cases: tuple[CaseSpec, ...] | None = None) -> list[CaseVariant]:
    """Every (case, parameter set) a quick or a full regression runs, in table order."""
    table = CASES if cases is None else cases
    return [CaseVariant(spec, params) for spec in table for params in (spec.quick if quick else spec.full)]


def case_names(cases: tuple[CaseSpec, ...] | None = None) -> list[str]:
    """All selectable names: each case name and each variant name of quick and full runs."""
    names: dict[str, None] = {}
    for spec in (CASES if cases is None else cases):
        names[spec.name] = None
        for variant in variants(quick=True, cases=(spec,)) + variants(quick=False, cases=(spec,)):
            names[variant.name] = None
    return list(names)


def resolve_runner(module_name: str, function: str) -> Callable[..., Mapping[str, Any]]:
    """Import the case runner ``module_name.function``.

    Raises
    ------
    CaseUnavailable
        If the module itself (not a module it imports) or the function does not exist.
    """
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # Only a missing case module means "not built yet"; a missing dependency inside an
        # existing module is a real error and propagates as a failure of the case.
        if err.name is not None and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise CaseUnavailable(f"module {module_name} does not exist in this build") from None
        raise
    runner = getattr(module, function, None)
    if runner is None:
        raise CaseUnavailable(f"{module_name} has no function {function}()")
    return runner
