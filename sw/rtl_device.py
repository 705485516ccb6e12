"""The ``rtl`` backend: compiled programs on the emitted Verilog, checked against the golden machine.

:class:`RtlDevice` emits ``vitaccel_top`` for the program's config, builds it with Verilator
(default; cached in ``~/.cache/vitaccel/rtl``, a few minutes the first time) or Icarus, and
runs every image of a batch in ONE simulator launch (each launch costs seconds) through the
cocotb testbench :mod:`vitaccel.sim.cocotb.tb_system`: cocotbext-axi's ``AxiRam`` with random
back-pressure and read latency as DDR, ``AxiLiteMaster`` as the host, driven by the same
register sequence as the board (:func:`vitaccel.hw.spec.driver.run_on_accelerator`). Each run is
replayed on the golden machine; a run that stops with an error code raises
:class:`~vitaccel.sw.device.DeviceError` naming the code, the pc and its layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vitaccel.sw.commands import UserError
from vitaccel.sw.device import Device, DeviceError, Progress, instruction_text, layer_at
from vitaccel.sw.program import CompiledProgram

__all__ = ["RtlDevice"]


class RtlDevice(Device):
    """The accelerator's RTL in simulation, one launch per batch.

    Parameters
    ----------
    program : CompiledProgram
        The program; the Verilog is emitted for its config.
    simulator : str
        ``"verilator"`` (default) or ``"icarus"`` (slower; a cross-check).
    seed : int
        Seed of the random AXI back-pressure and read latency.
    backpressure : float
        Probability that an AXI channel of the DDR model pauses in a cycle.
    max_latency : int
        Each DDR read beat waits 0..``max_latency`` cycles.
    ddr_model : str, optional
        A board-like DDR model (:data:`vitaccel.sim.perf.ddr.DDR_MODELS`, e.g.
        ``"zcu102-ps-ddr4-hp"``): deterministic DDR for latency records instead of the random
        back-pressure (``backpressure`` and ``max_latency`` then do not apply).
    waves : bool
        Dump waveforms (VCD from Verilator, FST from Icarus); the path is in :attr:`simulation`.

    Attributes
    ----------
    simulation : dict
        The last launch: ``simulator``, ``seconds`` (wall time, build included), ``waves``.
    """

    name = "rtl"

    def __init__(self, program: CompiledProgram, *, simulator: str = "verilator", seed: int = 0,
                 backpressure: float = 0.3, max_latency: int = 4, waves: bool = False,
                 ddr_model: str | None = None) -> None:
        from vitaccel.sim.runner import simulator_available

        super().__init__(program)
        reason = simulator_available(simulator)
        if reason is not None:
            raise UserError(f"backend 'rtl' cannot run: {reason}")
        if not 0.0 <= backpressure < 1.0:
            raise UserError(f"backpressure must be in [0, 1), got {backpressure}")
        self.simulator, self.seed, self.waves = simulator, seed, waves
        self.backpressure, self.max_latency = backpressure, max_latency
        self.ddr_model = None
        if ddr_model is not None:
            from vitaccel.sim.perf.ddr import ddr_model as find_model

            try:
                model = find_model(ddr_model)
            except KeyError as err:
                raise UserError(err.args[0]) from None
            if not model.deterministic:   # the random one is the default behaviour
                ddr_model = None
            self.ddr_model = ddr_model
        self.simulation: dict[str, Any] = {}

    def execute(self, ddr: np.ndarray) -> dict[str, Any]:
        return self.execute_batch([ddr])[0]

    def execute_batch(self, ddrs: list[np.ndarray], progress: Progress | None = None) -> list[dict[str, Any]]:
        """Run every DDR image in one simulator launch, in order; compare each run with the
        golden machine. ``ddrs`` receive the RTL's final DDR windows.

        Returns
        -------
        list of dict
            Per run: ``cycles`` (TOTAL_CYCLES), ``bit_exact`` (every output and the whole DDR
            window equal the golden machine's), ``outputs_match``, ``ddr_match``, ``problems``,
            the RTL's counters (lower-case register names) and the golden ``macs``.

        Raises
        ------
        DeviceError
            If a run stops with an error code or hangs (the golden machine's verdict is in
            the message).
        """
        from vitaccel.sim.cases.system import check_runs, simulate_runs

        program, manifest = self.program, self.program.manifest
        words = list(program.words)
        outcome = simulate_runs(program.config, words, ddrs, simulator=self.simulator, seed=self.seed,
                                backpressure=self.backpressure, max_latency=self.max_latency,
                                macs=int(manifest.get("macs", 0)), waves=self.waves, checksum=program.checksum,
                                progress=progress, ddr_model=self.ddr_model)
        self.simulation = {key: outcome[key] for key in ("simulator", "seconds", "waves")}
        regions = [(o["name"], o["addr"], int(np.prod(o["shape"])) * np.dtype(o["dtype"]).itemsize)
                   for o in manifest["outputs"]]
        checked = check_runs(program.config, words, ddrs, outcome["records"], regions=regions,
                             checksum=program.checksum)
        stats = []
        for index, (ddr, entry) in enumerate(zip(ddrs, checked)):
            if entry["code"] != "NONE":
                raise self._run_error(index, entry)
            ddr[:] = entry["ddr"]
            stats.append({"cycles": entry["cycles"], "bit_exact": entry["bit_exact"],
                          "outputs_match": entry["outputs_match"], "ddr_match": entry["ddr_match"],
                          "problems": entry["problems"], **entry["counters"],
                          "macs": entry["golden_stats"].get("macs")})
        return stats

    def _run_error(self, index: int, entry: dict[str, Any]) -> DeviceError:
        """The error for run ``index`` that did not finish, with the golden machine's verdict."""
        from vitaccel.hw.spec.regmap import ErrorCode

        if entry["code"] is None:
            return DeviceError(f"rtl run {index}: " + "; ".join(entry["problems"]))
        if entry["code"] == "HANG":
            return DeviceError(f"rtl run {index}: {entry['problems'][0]}")
        pc = entry["pc"]
        if entry["code"] == ErrorCode.PROGRAM_CHECKSUM.name:   # found by the scan: no instruction at fault
            agrees = entry["golden_code"] == entry["code"]
            return DeviceError(f"rtl run {index}: the accelerator stopped with PROGRAM_CHECKSUM before executing: "
                               "the program's CRC-32 is not the manifest's checksum (program.bin is corrupted); "
                               + ("the golden machine agrees" if agrees else
                                  f"the golden machine stops differently: {entry['golden_code']}"),
                               code=ErrorCode.PROGRAM_CHECKSUM, pc=None)
        layer = layer_at(self.program.manifest, pc)
        text = instruction_text(self.program.words, pc)
        if entry["golden_code"] == entry["code"] and entry["golden_pc"] in (None, pc):
            verdict = f"the golden machine agrees: {entry['golden_message']}"
        elif entry["golden_code"] == "NONE":
            verdict = "the golden machine finishes this run: the RTL lacks or mis-executes this instruction"
        else:
            verdict = f"the golden machine stops differently: {entry['golden_code']}, {entry['golden_message']}"
        return DeviceError(f"rtl run {index}: the accelerator stopped with {entry['code']} at instruction {pc}"
                           + (f" (layer {layer})" if layer else "") + f": {text}; {verdict}",
                           code=ErrorCode[entry["code"]], pc=pc)
