"""System cases: whole compiled programs on ``vitaccel_top`` against the golden machine.

:func:`simulate_runs` runs one program on several DDR images (one per input image) in ONE
launch of the cocotb testbench :mod:`vitaccel.sim.cocotb.tb_system` (the emitted Verilog
under Verilator or Icarus, a stressed ``AxiRam`` as DDR, the runtime's driver sequence as the
host) and returns the driver's record and the final DDR window of each run.
:func:`check_runs` runs the same images in the same order on one golden machine and
compares: the error code and pc, and for runs that finish, every byte of the DDR window.
Both take instruction words and DDR images, never a model: compiled models are run by
:mod:`vitaccel.sw.system_case` (tests, the regression's system cases, benchmarks) and by the
runtime's ``rtl`` backend (:class:`vitaccel.sw.rtl_device.RtlDevice`), on the compiler's side
of the ``sw -> sim`` dependency.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import Opcode
from vitaccel.hw.spec.regmap import ErrorCode

__all__ = ["simulate_runs", "check_runs", "default_watchdog", "default_max_cycles"]

Progress = Callable[[str, float], Any]

def default_watchdog(config: AccelConfig, words: list[int]) -> int:
    """A ``WATCHDOG_LIMIT`` no correct instruction of ``words`` comes near: four times the
    longest GEMM at full array rate (or vector op at one element a cycle), plus 20000
    cycles for DMA under back-pressure."""
    longest = 0
    for word in words:
        try:
            instr = isa.decode(word)
        except isa.IllegalInstruction:
            continue
        if instr.opcode is Opcode.GEMM:
            longest = max(longest, instr.m * instr.k * instr.n // config.macs_per_cycle)
        elif "rows" in instr.fields and "cols" in instr.fields:
            longest = max(longest, instr.rows * instr.cols)
    return 4 * longest + 20_000


def default_max_cycles(config: AccelConfig, words: list[int], macs: int) -> int:
    """How long the host waits for one run: generous in MACs and instructions, and beyond
    the watchdog so that a hang shows as WATCHDOG rather than as a host timeout."""
    return 8 * macs // config.macs_per_cycle + 2000 * len(words) + 2 * default_watchdog(config, words)


def _poll_progress(records: list[Path], progress: Progress, done: threading.Event) -> None:
    """Report runs as their record files appear (the testbench writes them last)."""
    reported = 0
    while not done.wait(0.5):
        finished = sum(1 for path in records if path.exists())
        if finished != reported:
            reported = finished
            progress(f"image {finished}/{len(records)}", finished / len(records))


def simulate_runs(config: AccelConfig, words: list[int], ddrs: list[np.ndarray], *, simulator: str = "verilator",
                  seed: int = 0, backpressure: float = 0.3, max_latency: int = 4, watchdog: int | None = None,
                  max_cycles: int | None = None, macs: int = 0, waves: bool = False,
                  checksum: int | None = None, progress: Progress | None = None,
                  ddr_model: str | None = None, verilog_ddr: bool | None = None) -> dict[str, Any]:
    """Run ``words`` on each DDR window of ``ddrs`` in order, in one simulator launch.

    Parameters
    ----------
    config : AccelConfig
        The accelerator the Verilog is emitted for.
    words : list of int
        The program.
    ddrs : list of ndarray
        One uint8 DDR window per run (all the same size).
    backpressure, max_latency : float, int
        AXI pause probability per channel and cycle; random read latency bound (cycles).
    ddr_model : str, optional
        A board-like DDR model's name (:data:`vitaccel.sim.perf.ddr.DDR_MODELS`): deterministic
        DDR instead of the random one (``backpressure`` and ``max_latency`` then do not apply).
    verilog_ddr : bool, optional
        Board-like DDR only: simulate it in Verilog inside the design
        (:mod:`vitaccel.sim.cocotb.board_ddr`, no Python per clock cycle, the same cycles)
        rather than as cocotbext-axi's ``AxiRam``. Default: yes for a board-like model.
    watchdog : int, optional
        ``WATCHDOG_LIMIT``; default :func:`default_watchdog`.
    max_cycles : int, optional
        The host's wait per run; default :func:`default_max_cycles` (from ``macs``, the
        program's multiply-accumulates per run).
    waves : bool
        Dump waveforms (VCD from Verilator, FST from Icarus); their path is returned.
    checksum : int, optional
        ``PROGRAM_CRC`` with the check enabled (:func:`vitaccel.hw.spec.driver.run_on_accelerator`);
        ``None``: the check is off.
    progress : callable, optional
        ``progress(text, fraction)``: building, then one call per finished run.

    Returns
    -------
    dict
        ``records``: per run the driver's record (:func:`vitaccel.hw.spec.driver.run_on_accelerator`)
        plus ``ddr``, the final DDR window (absent after a hang); ``simulator``; ``waves``;
        ``seconds`` (wall time of the launch, build included).
    """
    from vitaccel.hw.accel import ACCEL_TOP_NAME
    from vitaccel.hw.platform.verilog import accelerator_verilog
    from vitaccel.sim.golden.machine import words_to_bytes
    from vitaccel.sim.cocotb.board_ddr import BOARD_TOP_NAME, board_ddr_top
    from vitaccel.sim.perf.ddr import ddr_model as ddr_model_named
    from vitaccel.sim.runner import run_testbench
    from vitaccel.hw.spec.driver import program_layout

    if not ddrs:
        raise ValueError("simulate_runs needs at least one DDR image")
    sizes = {ddr.size for ddr in ddrs}
    if len(sizes) != 1:
        raise ValueError(f"DDR images differ in size: {sorted(sizes)}")
    started = time.perf_counter()
    layout = program_layout(sizes.pop(), len(words))
    watchdog = default_watchdog(config, words) if watchdog is None else watchdog
    max_cycles = default_max_cycles(config, words, macs) if max_cycles is None else max_cycles
    if progress:
        progress("building RTL", 0.0)
    verilog, toplevel = accelerator_verilog(config), ACCEL_TOP_NAME
    model = ddr_model_named(ddr_model) if ddr_model else None
    if verilog_ddr and (model is None or not model.deterministic):
        raise ValueError("verilog_ddr needs a board-like ddr_model")
    in_verilog = model is not None and model.deterministic and verilog_ddr is not False
    if in_verilog:
        verilog = board_ddr_top(verilog, ACCEL_TOP_NAME, words=-(-layout["buffer_bytes"] // (config.dma_data_width // 8)),
                                read_latency=model.read_latency)
        toplevel = BOARD_TOP_NAME
    with tempfile.TemporaryDirectory(prefix="vitaccel-system-") as tmp:
        root = Path(tmp)
        (root / "program.bin").write_bytes(words_to_bytes(words))
        runs = []
        for index, ddr in enumerate(ddrs):
            (root / f"in{index}.bin").write_bytes(np.asarray(ddr, np.uint8).tobytes())
            runs.append({name: str(root / f"{name}{index}.{ext}")
                         for name, ext in (("ddr_in", "bin"), ("ddr_out", "bin"), ("record", "json"))})
            runs[-1]["ddr_in"] = str(root / f"in{index}.bin")
        (root / "case.json").write_text(json.dumps({
            "seed": seed, "layout": layout, "backpressure": backpressure, "max_latency": max_latency,
            "ddr_model": ddr_model,
            "verilog_ddr": {"word_bytes": (config.dma_data_width // 8)} if in_verilog else None,
            "watchdog": watchdog, "max_cycles": max_cycles, "checksum": checksum,
            "program_file": str(root / "program.bin"),
            "runs": runs}))
        done = threading.Event()
        poller = None
        if progress:
            poller = threading.Thread(target=_poll_progress, daemon=True,
                                      args=([Path(r["record"]) for r in runs], progress, done))
            poller.start()
        try:
            result = run_testbench(verilog=verilog, toplevel=toplevel, test_module="vitaccel.sim.cocotb.tb_system",
                                   simulator=simulator, params={"case_file": str(root / "case.json")}, seed=seed,
                                   waves=waves,
                                   # The testbench touches only the top's ports then.
                                   build_args=("--no-public-flat-rw",) if in_verilog and simulator == "verilator" else ())
        finally:
            done.set()
            if poller is not None:
                poller.join()
        records = []
        for run in runs:
            if not Path(run["record"]).exists():
                break
            record = json.loads(Path(run["record"]).read_text())
            record["ddr"] = np.frombuffer(Path(run["ddr_out"]).read_bytes(), np.uint8).copy()
            records.append(record)
    if progress:
        progress(f"image {len(records)}/{len(ddrs)}", 1.0)
    return {"records": records, "simulator": simulator, "layout": layout, "watchdog": watchdog,
            "max_cycles": max_cycles, "waves": str(result.waves) if result.waves else None,
            "seconds": round(time.perf_counter() - started, 3)}


def check_runs(config: AccelConfig, words: list[int], ddrs: list[np.ndarray], records: list[dict[str, Any]],
               *, regions: list[tuple[str, int, int]] = (), checksum: int | None = None) -> list[dict[str, Any]]:
    """Compare the RTL's runs with the same runs, in the same order, on one golden machine
    (checking ``checksum`` as :func:`simulate_runs` had the RTL do).

    Parameters
    ----------
    ddrs : list of ndarray
        The initial DDR windows (not modified).
    records : list of dict
        From :func:`simulate_runs` (fewer than ``ddrs`` if the simulation stopped early).
    regions : list of (name, address, bytes)
        DDR regions (the program's outputs) whose agreement is reported separately.

    Returns
    -------
    list of dict
        Per run: ``code``/``pc`` (RTL) and ``golden_code``/``golden_pc``, ``golden_message``,
        ``golden_stats`` (the golden machine's counts), ``cycles`` (TOTAL_CYCLES),
        ``outputs_match`` (per region), ``ddr_match`` (whole window), ``bit_exact`` and
        ``problems`` (empty when the RTL behaved like the golden machine).
    """
    from vitaccel.sim.golden.machine import GoldenMachine, MachineError

    machine = GoldenMachine(config)
    checked = []
    for index, ddr in enumerate(ddrs):
        golden_ddr, golden_stats = np.asarray(ddr, np.uint8).copy(), {}
        try:
            golden_stats = machine.run(words, golden_ddr, checksum=checksum).to_dict()
            golden = {"golden_code": ErrorCode.NONE.name, "golden_pc": None, "golden_message": None}
        except MachineError as err:
            golden_ddr = None
            golden = {"golden_code": err.code.name, "golden_pc": err.pc, "golden_message": str(err)}
        entry: dict[str, Any] = {"run": index, **golden, "golden_stats": golden_stats, "problems": []}
        if index >= len(records):
            entry.update(code=None, pc=None, cycles=0, bit_exact=False, ddr_match=False,
                         outputs_match={name: False for name, _, _ in regions})
            entry["problems"].append("not run (the simulation stopped before it)")
            checked.append(entry)
            continue
        record = records[index]
        code = ErrorCode(record["error_code"]).name if record["interrupt"] else "HANG"
        entry.update(code=code, pc=record["error_pc"] if code != "NONE" else None, cycles=record["total_cycles"],
                     counters={k: v for k, v in record.items() if k != "ddr"})
        problems = entry["problems"]
        if code == "HANG":
            problems.append(f"no interrupt within {record['waited']} cycles (hang)")
        elif code != golden["golden_code"]:
            problems.append(f"RTL stopped with {code} at pc {record['error_pc']}, golden: {golden['golden_code']}"
                            + (f" ({golden['golden_message']})" if golden["golden_message"] else ""))
        elif code != "NONE" and golden["golden_pc"] is not None and record["error_pc"] != golden["golden_pc"]:
            problems.append(f"{code} at pc {record['error_pc']}, golden pc {golden['golden_pc']}")
        rtl_ddr = record.get("ddr")
        finished = code == "NONE" and golden_ddr is not None and rtl_ddr is not None
        entry["outputs_match"] = {name: bool(finished and np.array_equal(rtl_ddr[addr:addr + size],
                                                                         golden_ddr[addr:addr + size]))
                                  for name, addr, size in regions}
        entry["ddr_match"] = bool(finished and np.array_equal(rtl_ddr, golden_ddr))
        if finished and not entry["ddr_match"]:
            diff = np.flatnonzero(rtl_ddr != golden_ddr)
            pos = int(diff[0])
            problems.append(f"DDR differs at {diff.size} bytes, first {pos:#x}: rtl {rtl_ddr[pos]:#04x} "
                            f"golden {golden_ddr[pos]:#04x}")
        if finished and record["instructions_retired"] != len(words):
            problems.append(f"retired {record['instructions_retired']} of {len(words)} instructions")
        entry["bit_exact"] = finished and entry["ddr_match"] and all(entry["outputs_match"].values())
        if finished and rtl_ddr is not None:
            entry["ddr"] = rtl_ddr
        checked.append(entry)
    return checked
