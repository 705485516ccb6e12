"""System cases: whole compiled models on the emitted top in RTL, against the golden machine.

Built on the model-free halves of :mod:`vitaccel.sim.cases.system` (:func:`simulate_runs`
runs instruction words on DDR images in one simulator launch, :func:`check_runs` compares
with the golden machine): here a model is compiled (:func:`compile_for_test`), its first
test images are quantized into DDR images, and both halves run. Used by the tests, by
``vitaccel regress`` (:data:`SYSTEM_CASES`, added to the unit cases of
:data:`vitaccel.sim.regress.registry.CASES`) and by the end-to-end benchmark
(:func:`run_one_image`). It lives beside the compiler so that ``sim`` never imports ``sw``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.sim.cases.system import check_runs, simulate_runs
from vitaccel.sim.regress.registry import CaseSpec

__all__ = ["compile_for_test", "input_ddrs", "run_system_case", "run_one_image", "run_regress_case",
           "SYSTEM_CASES"]


def compile_for_test(model: str, directory: str | Path, *, config: str | AccelConfig = "tiny",
                     calib: int = 4) -> Path:
    """``vitaccel compile`` of ``model`` into ``directory`` (few calibration images: fast)."""
    from vitaccel.sw.compile import compile_model

    compile_model(model, config, directory, calib=calib)
    return Path(directory)


def input_ddrs(program: Any, count: int) -> list[np.ndarray]:
    """DDR images of the compiled ``program`` with its model's first ``count`` test images,
    quantized at the input's scale, as the runtime builds them."""
    from vitaccel.hw.spec.numerics import quantize
    from vitaccel.sw.data import images_for
    from vitaccel.sw.device import GoldenDevice

    spec = program.manifest["inputs"][0]
    images = images_for(tuple(program.manifest["model"]["input_shape"]), count).images[:count]
    device = GoldenDevice(program)   # only for its DDR image builder
    return [device.input_ddr(code) for code in quantize(images, spec["scale"]).astype(np.int8)]


def run_system_case(config: str | AccelConfig | None = None, *, program_dir: str | Path | None = None,
                    model: str = "digits-vit", images: int = 2, seed: int = 0, simulator: str = "verilator",
                    backpressure: float = 0.3, max_latency: int = 4,
                    words: list[int] | None = None, ddr_model: str | None = None) -> dict[str, Any]:
    """A compiled program on its model's first test images, in RTL and on the golden machine.

    ``ddr_model`` names a board-like DDR (see :func:`simulate_runs`). ``program_dir`` is a ``vitaccel compile`` output; without it ``model`` (zoo name or
    ``file.py:function``) is compiled for ``config`` (preset name or config) into a temporary
    directory. ``words`` replaces the program's instructions
    (a corrupted program: then the error code and pc are compared). The runs check the
    program's CRC-32 (``PROGRAM_CHECK.crc``) against the checksum of the words run, so every
    system case also checks the scan pass's CRC against :func:`~vitaccel.hw.spec.regmap.program_crc32`.

    Returns
    -------
    dict
        ``passed``, ``runs`` (per image: codes, pcs, cycles, problems), ``cycles`` (per
        image), ``mismatches``, ``simulator``, ``seconds``.
    """
    from vitaccel.hw.spec.regmap import program_crc32
    from vitaccel.sim.golden.machine import words_to_bytes
    from vitaccel.sw.program import load_program

    with tempfile.TemporaryDirectory(prefix="vitaccel-system-prog-") as tmp:
        if program_dir is None:
            if config is None:
                raise ValueError("run_system_case needs a config or a program_dir")
            program_dir = compile_for_test(model, Path(tmp) / "program", config=config)
        program = load_program(program_dir)
    config = program.config
    ddrs = input_ddrs(program, images)
    words = list(program.words) if words is None else list(words)
    checksum = program_crc32(words_to_bytes(words))
    outcome = simulate_runs(config, words, ddrs, simulator=simulator, seed=seed, backpressure=backpressure,
                            max_latency=max_latency, macs=int(program.manifest["macs"]), checksum=checksum,
                            ddr_model=ddr_model)
    regions = [(o["name"], o["addr"], int(np.prod(o["shape"])) * np.dtype(o["dtype"]).itemsize)
               for o in program.manifest["outputs"]]
    runs = check_runs(config, words, ddrs, outcome["records"], regions=regions, checksum=checksum)
    for run in runs:
        run.pop("ddr", None)
        run.pop("counters", None)
    mismatches = [{"run": r["run"], "problems": r["problems"]} for r in runs if r["problems"]]
    return {"passed": not mismatches, "config": config.name, "simulator": simulator, "seed": seed,
            "runs": runs, "cycles": [r["cycles"] for r in runs], "mismatches": mismatches,
            "seconds": outcome["seconds"]}


def run_one_image(program: Any, *, ddr_model: str | None, simulator: str = "verilator",
                  verilog_ddr: bool | None = None) -> dict[str, Any]:
    """The compiled ``program`` (a :class:`~vitaccel.sw.program.CompiledProgram`) on its
    model's first test image in RTL, checked against the golden machine
    (:func:`check_runs`, every DDR byte). Returns that run's entry with ``counters`` (the RTL
    counters, lower-case register names) and ``seconds`` (wall time of the launch).
    ``verilog_ddr`` as in :func:`simulate_runs`."""
    ddrs = input_ddrs(program, 1)
    words = list(program.words)
    outcome = simulate_runs(program.config, words, ddrs, simulator=simulator, macs=int(program.manifest["macs"]),
                            ddr_model=ddr_model, verilog_ddr=verilog_ddr)
    run = check_runs(program.config, words, ddrs, outcome["records"], regions=[])[0]
    run.pop("ddr", None)
    run["seconds"] = outcome["seconds"]
    return run


def run_regress_case(config: AccelConfig, *, seed: int = 0, simulator: str = "verilator", quick: bool = False,
                     model: str = "digits-vit", images: int = 2) -> dict[str, Any]:
    """:func:`run_system_case` in the regression runner's terms (``cycles`` summed over the
    images, ``mismatch`` the first run that differs); ``quick`` runs one image."""
    outcome = run_system_case(config, model=model, images=1 if quick else images, seed=seed, simulator=simulator)
    return {"passed": outcome["passed"], "cycles": sum(outcome["cycles"]),
            "mismatch": outcome["mismatches"][0] if outcome["mismatches"] else None,
            "runs": len(outcome["runs"])}


# A whole compiled model (digits-vit, compiled for the config) on the top, per image bit-exact
# against the golden machine: a few minutes per image on tiny.
SYSTEM_CASES: tuple[CaseSpec, ...] = (
    CaseSpec("system_digits_vit", __name__, "run_regress_case", quick=({"images": 1},), full=({"images": 2},)),
)
