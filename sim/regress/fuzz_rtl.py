"""Fuzz programs on the RTL: a whole batch in one simulator launch (:mod:`vitaccel.sim.cocotb.tb_fuzz`).

The cycle budget of a program is stated, not guessed: the hardware watchdog
(``WATCHDOG_LIMIT``) is :func:`vitaccel.sim.cases.system.default_watchdog` (four times the
longest instruction at full rate, plus 20000 cycles) without a retired instruction, and the
host waits :func:`cycle_budget` cycles for the interrupt; no interrupt by then is a hang.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.sim.regress.fuzz_check import Outcome
from vitaccel.sim.regress.fuzz_gen import DDR_BYTES, FuzzProgram

__all__ = ["run_rtl_batch", "watchdog_limit", "cycle_budget"]

_PROGRAM_ADDR = 0x2000   # after the DDR window
_RAM_BYTES = 0x4000
_VERILOG: dict[str, str] = {}


def watchdog_limit(config: AccelConfig, words: tuple[int, ...] | list[int]) -> int:
    """``WATCHDOG_LIMIT`` of a fuzz program (see the module docstring)."""
    from vitaccel.sim.cases.system import default_watchdog

    return default_watchdog(config, list(words))


def cycle_budget(config: AccelConfig, words: tuple[int, ...] | list[int]) -> int:
    """Cycles the host waits for a program's interrupt: twice its watchdog plus 1000 per
    instruction and 10000 (fetch, scan, DMA under back-pressure)."""
    return 2 * watchdog_limit(config, words) + 1000 * len(words) + 10_000


def run_rtl_batch(config: AccelConfig, programs: list[FuzzProgram], *, simulator: str = "verilator",
                  seed: int = 0, backpressure: float = 0.3, max_latency: int = 4) -> list[Outcome]:
    """Run ``programs`` in order in one launch of ``vitaccel_top``; one :class:`Outcome` per
    program (``NOT_RUN`` for programs after a simulator crash)."""
    from vitaccel.hw.accel import ACCEL_TOP_NAME
    from vitaccel.hw.platform.verilog import accelerator_verilog
    from vitaccel.sim.runner import run_testbench

    if not programs:
        return []
    if _PROGRAM_ADDR + 16 * max(len(p.words) for p in programs) > _RAM_BYTES or \
            any(p.ddr.size != DDR_BYTES for p in programs):
        raise ValueError("fuzz programs must have a DDR window of DDR_BYTES and fit the RAM")
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _VERILOG:   # elaborating the top costs ~10 s of CPU: once per process and config
        _VERILOG[key] = accelerator_verilog(config)
    verilog = _VERILOG[key]
    with tempfile.TemporaryDirectory(prefix="vitaccel-fuzz-") as tmp:
        case_file, result_file = Path(tmp) / "case.json", Path(tmp) / "result.jsonl"
        case_file.write_text(json.dumps({
            "seed": seed, "ram_bytes": _RAM_BYTES, "backpressure": backpressure, "max_latency": max_latency,
            "ddr_base": 0, "program_addr": _PROGRAM_ADDR,
            "programs": [{"index": i, "words": [f"{w:x}" for w in p.words], "ddr": p.ddr.tobytes().hex(),
                          "checksum": p.checksum, "watchdog": watchdog_limit(config, p.words),
                          "max_cycles": cycle_budget(config, p.words)} for i, p in enumerate(programs)]}))
        failure = ""
        try:
            run_testbench(verilog=verilog, toplevel=ACCEL_TOP_NAME, test_module="vitaccel.sim.cocotb.tb_fuzz",
                          simulator=simulator, params={"case_file": str(case_file), "result_file": str(result_file)},
                          seed=seed)
        except Exception as err:  # noqa: BLE001 - the programs before the crash still count
            failure = f"simulator failed: {type(err).__name__}: {str(err)[:300]}"
        lines = result_file.read_text().splitlines() if result_file.exists() else []
    outcomes = []
    for line in lines:
        record = json.loads(line)
        if not record["interrupt"]:
            outcomes.append(Outcome("HANG", None, None, f"no interrupt within {record['waited']} cycles",
                                    cycles=record["waited"]))
            continue
        code = ErrorCode(record["error_code"]).name
        ddr = np.frombuffer(bytes.fromhex(record["ddr"]), np.uint8).copy() if "ddr" in record else None
        outcomes.append(Outcome(code, record["error_pc"] if code != "NONE" else None, ddr,
                                retired=record["retired"], cycles=record["cycles"]))
    while len(outcomes) < len(programs):
        outcomes.append(Outcome("NOT_RUN", None, None, failure or "the simulation stopped before it"))
    return outcomes
