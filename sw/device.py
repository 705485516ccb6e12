"""The runtime: one driver API over interchangeable execution backends.

A :class:`Device` runs a :class:`~vitaccel.sw.program.CompiledProgram` on int8 input
tensors: it builds the DDR image, writes each input at its manifest address, executes, and
reads the outputs back. Backends differ only in how they execute:

* ``golden``: the golden machine (:mod:`vitaccel.sim.golden.machine`);
* ``rtl``: the emitted Verilog under cocotb + Verilator or Icarus, checked run by run
  against the golden machine (:class:`vitaccel.sw.rtl_device.RtlDevice`);
* ``board``: a ZCU102 through PYNQ-style MMIO and contiguous buffers (:class:`BoardDevice`).

The register-level driver sequence (program address, length, DDR base, start, wait for the
interrupt, read status, error and counters) is written once, in
:func:`~vitaccel.hw.spec.driver.run_on_accelerator` (part of the register-map contract),
against an abstract :class:`ControlPort`: the cocotb testbench implements the port with
cocotbext-axi's ``AxiLiteMaster``, the board with PYNQ's ``MMIO``.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np

from vitaccel.hw.spec.driver import (COUNTERS, STATUS_BUSY, STATUS_DONE, STATUS_ERROR, ControlPort, program_layout,
                                     run_on_accelerator)
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.sw.commands import UserError
from vitaccel.sw.program import CompiledProgram

__all__ = ["Device", "GoldenDevice", "PerfDevice", "BoardDevice", "DeviceError", "ControlPort", "run_on_accelerator",
           "COUNTERS", "STATUS_BUSY", "STATUS_DONE", "STATUS_ERROR", "open_device", "BACKENDS",
           "program_layout", "record_error", "layer_at", "machine_error_message", "instruction_text"]

#: Backend names ``vitaccel run --backend`` accepts.
BACKENDS = ("golden", "perf", "rtl", "board")

Progress = Callable[[str, float], Any]


class DeviceError(UserError):
    """A run the accelerator stopped with an error, or that disagrees with the golden machine.

    ``code`` is the :class:`ErrorCode` the device reported (``NONE`` for a mismatch), ``pc``
    the index of the instruction at fault (or ``None``).
    """

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.NONE, pc: int | None = None) -> None:
        super().__init__(message)
        self.code, self.pc = code, pc


def layer_at(manifest: dict[str, Any], pc: int) -> str | None:
    """``name (source)`` of the compiled layer that instruction ``pc`` belongs to, if any."""
    for layer in manifest.get("layers", ()):
        first = layer.get("first_instruction")
        if first is not None and first <= pc < first + layer.get("instructions", 0):
            return f"{layer['name']}" + (f", {layer['source']}" if layer.get("source") else "")
    return None


def instruction_text(words: list[int], pc: int) -> str:
    """The disassembly of instruction ``pc`` of ``words`` (``?`` outside the program)."""
    from vitaccel.hw.spec import isa

    if not 0 <= pc < len(words):
        return "?"
    # disassemble() numbers its lines from 0: drop that index, the pc is given already.
    return isa.disassemble([words[pc]]).strip().split(maxsplit=1)[-1]


def machine_error_message(err: Exception, program: CompiledProgram) -> str:
    """A golden :class:`~vitaccel.sim.golden.machine.MachineError` as one line: the code, the
    instruction (index and disassembly) and the layer it belongs to."""
    pc = getattr(err, "pc", None)
    code = getattr(err, "code", ErrorCode.NONE)
    if pc is None or not 0 <= pc < len(program.words):
        return f"the golden machine stopped with {code.name}: {err}"
    layer = layer_at(program.manifest, pc)
    return (f"the golden machine stopped with {code.name} at instruction {pc}"
            + (f" (layer {layer})" if layer else "") + f" [{instruction_text(program.words, pc)}]: "
            + str(err).removeprefix(f"instruction {pc}: "))


def record_error(record: dict[str, Any], manifest: dict[str, Any] | None = None) -> DeviceError | None:
    """The :class:`DeviceError` a driver record stands for, or ``None`` for a clean FINISH.
    With the program's ``manifest`` the message names the layer at fault."""
    if not record["interrupt"]:
        return DeviceError(f"the accelerator did not finish within {record['waited']} cycles (hang); "
                           f"{record['instructions_retired']} instructions retired")
    code = ErrorCode(record["error_code"])
    if code is ErrorCode.NONE and record["status"] & STATUS_DONE:
        return None
    pc = record["error_pc"]
    layer = layer_at(manifest, pc) if manifest else None
    where = f" (layer {layer})" if layer else ""
    return DeviceError(f"the accelerator stopped with {code.name} at instruction {pc}{where}", code=code, pc=pc)


# -- devices ---------------------------------------------------------------------------------

class Device(ABC):
    """Runs one compiled program; subclasses implement :meth:`execute` (one run) and may
    override :meth:`execute_batch` (several runs at once, for backends with a start-up cost)."""

    name = "abstract"

    def __init__(self, program: CompiledProgram) -> None:
        self.program = program
        self.last_stats: dict[str, Any] = {}
        #: Statistics of every run of the last :meth:`infer_batch`.
        self.batch_stats: list[dict[str, Any]] = []

    @abstractmethod
    def execute(self, ddr: np.ndarray) -> dict[str, Any]:
        """Run the program on ``ddr`` (uint8, modified in place); return run statistics."""

    def execute_batch(self, ddrs: list[np.ndarray], progress: Progress | None = None) -> list[dict[str, Any]]:
        """:meth:`execute` on each DDR image in order; the statistics of each run."""
        stats = []
        for index, ddr in enumerate(ddrs):
            stats.append(self.execute(ddr))
            if progress:
                progress(f"image {index + 1}/{len(ddrs)}", (index + 1) / len(ddrs))
        return stats

    def input_ddr(self, *inputs: np.ndarray) -> np.ndarray:
        """A fresh DDR image with one array per program input written at its manifest address."""
        manifest = self.program.manifest
        if len(inputs) != len(manifest["inputs"]):
            raise ValueError(f"program takes {len(manifest['inputs'])} input(s), got {len(inputs)}")
        ddr = self.program.fresh_ddr()
        for spec, value in zip(manifest["inputs"], inputs):
            value = np.ascontiguousarray(value)
            if list(value.shape) != spec["shape"] or value.dtype != np.dtype(spec["dtype"]):
                raise ValueError(f"input {spec['name']}: expected {spec['dtype']}{spec['shape']}, "
                                 f"got {value.dtype}{list(value.shape)}")
            ddr[spec["addr"]:spec["addr"] + value.nbytes] = value.view(np.uint8).ravel()
        return ddr

    def read_outputs(self, ddr: np.ndarray) -> list[np.ndarray]:
        """The program's outputs in ``ddr``, in their dtypes and shapes."""
        outputs = []
        for spec in self.program.manifest["outputs"]:
            nbytes = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
            raw = ddr[spec["addr"]:spec["addr"] + nbytes]
            outputs.append(raw.view(spec["dtype"]).reshape(spec["shape"]).copy())
        return outputs

    def infer(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run once with one array per program input; the program's outputs, in their dtypes."""
        ddr = self.input_ddr(*inputs)
        self.last_stats = self.execute(ddr)
        return self.read_outputs(ddr)

    def infer_batch(self, images: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """Run a batch of single-input images (through :meth:`execute_batch`); the first
        output of each run, stacked on a new first axis. Per-run statistics land in
        :attr:`batch_stats`, the last run's in :attr:`last_stats`."""
        ddrs = [self.input_ddr(image) for image in images]
        self.batch_stats = self.execute_batch(ddrs, progress)
        self.last_stats = self.batch_stats[-1] if self.batch_stats else {}
        return np.stack([self.read_outputs(ddr)[0] for ddr in ddrs])


class GoldenDevice(Device):
    """The golden machine as a device (bit-exact, no cycle counts)."""

    name = "golden"

    def __init__(self, program: CompiledProgram) -> None:
        super().__init__(program)
        from vitaccel.sim.golden.machine import GoldenMachine

        self.machine = GoldenMachine(program.config)
        self._batch_ddrs: np.ndarray | None = None     # reused by infer_batch (see _fresh_ddrs)
        self._stored: list[tuple[int, int]] = []
        self._shared: list[tuple[int, int]] = []       # DDR bytes equal in every row of the batch

    def execute(self, ddr: np.ndarray) -> dict[str, Any]:
        """One run, the program's checksum checked as the hardware does.

        Raises
        ------
        DeviceError
            If the machine stops with an error: its code, the instruction and its layer.
        """
        from vitaccel.sim.golden.machine import MachineError

        try:
            return self.machine.run(self.program.words, ddr, checksum=self.program.checksum).to_dict()
        except MachineError as err:
            raise DeviceError(machine_error_message(err, self.program), code=err.code, pc=err.pc) from None

    def infer_batch(self, images: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """:meth:`Device.infer_batch` with the whole batch through each instruction at once
        (:meth:`~vitaccel.sim.golden.machine.GoldenMachine.run_batch`): the same outputs and
        statistics as image by image. The first image that faults raises its :class:`DeviceError`."""
        manifest = self.program.manifest
        images = np.asarray(images)
        if len(manifest["inputs"]) != 1 or len(images) == 0:
            return super().infer_batch(images, progress)
        spec, out = manifest["inputs"][0], manifest["outputs"][0]
        if list(images.shape[1:]) != spec["shape"] or images.dtype != np.dtype(spec["dtype"]):
            raise ValueError(f"input {spec['name']}: expected {spec['dtype']}{spec['shape']}, "
                             f"got {images.dtype}{list(images.shape[1:])}")
        count = len(images)
        ddrs = self._fresh_ddrs(count)
        raw = np.ascontiguousarray(images).view(np.uint8).reshape(count, -1)
        ddrs[:, spec["addr"]:spec["addr"] + raw.shape[1]] = raw
        outcomes = self.machine.run_batch(self.program.words, ddrs, checksum=self.program.checksum,
                                          shared=self._shared)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise DeviceError(machine_error_message(outcome, self.program), code=outcome.code,
                                  pc=outcome.pc) from None
        self.batch_stats = [self._run_stats(outcome.to_dict()) for outcome in outcomes]
        self.last_stats = self.batch_stats[-1]
        if progress:
            progress(f"batch of {count}", 1.0)
        nbytes = int(np.prod(out["shape"])) * np.dtype(out["dtype"]).itemsize
        return ddrs[:, out["addr"]:out["addr"] + nbytes].copy().view(out["dtype"]).reshape(count, *out["shape"])

    def _run_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        """What :meth:`execute` reports for one run, from the machine's statistics."""
        return stats

    def _fresh_ddrs(self, count: int) -> np.ndarray:
        """``count`` fresh DDR images (rows). The array is kept between batches of the same size
        and only the bytes a run can change (the program's STORE ranges) are restored: a fresh
        90 MB array per batch cost more in page faults and copies than the batch's compute."""
        from vitaccel.sim.golden.machine import stored_ranges

        image = self.program.ddr_image   # the fresh DDR: this image, zeros beyond it
        if self._batch_ddrs is None or self._batch_ddrs.shape[0] != count:
            self._batch_ddrs = None   # free the old one first
            self._batch_ddrs = np.repeat(self.program.fresh_ddr()[None], count, axis=0)
            self._stored = stored_ranges(self.program.words)
            # Rows differ only where inputs are written and where STOREs write: the rest is
            # the program's image in every row (the machine loads such weights once).
            private = sorted(self._stored + [
                (spec["addr"], spec["addr"] + int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize)
                for spec in self.program.manifest["inputs"]])
            self._shared, position = [], 0
            for start, end in private:
                if start > position:
                    self._shared.append((position, start))
                position = max(position, end)
            if position < self._batch_ddrs.shape[1]:
                self._shared.append((position, self._batch_ddrs.shape[1]))
        else:
            for start, end in self._stored:
                inside = min(end, image.size)
                if start < inside:
                    self._batch_ddrs[:, start:inside] = image[start:inside]
                if max(start, inside) < end:
                    self._batch_ddrs[:, max(start, inside):end] = 0
        return self._batch_ddrs


class PerfDevice(GoldenDevice):
    """The golden machine for values and the performance model (:mod:`vitaccel.sim.perf`) for
    cycles: what the RTL's counters would read, without RTL.

    Parameters
    ----------
    program : CompiledProgram
        The program.
    ddr_model : str
        A DDR model of :data:`vitaccel.sim.perf.DDR_MODELS` (default: the board-like
        ``zcu102-ps-ddr4-hp``).
    """

    name = "perf"

    def __init__(self, program: CompiledProgram, *, ddr_model: str = "zcu102-ps-ddr4-hp") -> None:
        from vitaccel.sim.perf import ddr_model as find_model

        super().__init__(program)
        try:
            self.ddr_model = find_model(ddr_model)
        except KeyError as err:
            raise UserError(err.args[0]) from None
        self._estimate: dict[str, Any] | None = None

    def estimate(self) -> dict[str, Any]:
        """The performance model's counters for one run (the program's timing does not depend on
        the input: computed once)."""
        if self._estimate is None:
            from vitaccel.sim.perf import PerfModelError, estimate

            started = time.perf_counter()
            try:
                result = estimate(self.program.config, list(self.program.words), self.program.ddr_size,
                                  ddr=self.ddr_model).to_dict()
            except PerfModelError as err:
                layer = layer_at(self.program.manifest, err.pc) if err.pc is not None else None
                raise DeviceError(f"perf: the accelerator would stop with {err.code}"
                                  + (f" (layer {layer})" if layer else "") + f": {err}",
                                  code=ErrorCode[err.code], pc=err.pc) from None
            result.update(ddr_model=self.ddr_model.name, model_seconds=round(time.perf_counter() - started, 3))
            self._estimate = result
        return self._estimate

    def execute(self, ddr: np.ndarray) -> dict[str, Any]:
        return self._run_stats(super().execute(ddr))

    def _run_stats(self, stats: dict[str, Any]) -> dict[str, Any]:
        perf = self.estimate()
        return {**stats, "cycles": perf["cycles"], "perf": perf}


class _MmioPort(ControlPort):
    """:class:`ControlPort` over a PYNQ ``MMIO`` window; the interrupt is polled in ``STATUS``."""

    def __init__(self, mmio: Any, clock_hz: float) -> None:
        from vitaccel.hw.spec.regmap import register

        self.mmio, self.clock_hz, self._register = mmio, clock_hz, register

    async def write(self, name: str, value: int) -> None:
        self.mmio.write(self._register(name).offset, int(value))

    async def read(self, name: str) -> int:
        return int(self.mmio.read(self._register(name).offset))

    async def wait_interrupt(self, max_cycles: int) -> tuple[bool, int]:
        start, limit = time.perf_counter(), max_cycles / self.clock_hz
        while True:
            elapsed = time.perf_counter() - start
            if await self.read("INTERRUPT_STATUS"):
                return True, int(elapsed * self.clock_hz)
            if elapsed > limit:
                return False, int(elapsed * self.clock_hz)
            await asyncio.sleep(0)


class BoardDevice(Device):
    """A ZCU102 running the accelerator bitstream, through PYNQ (``pynq``, imported lazily).

    One contiguous buffer holds the DDR window and the program (:func:`program_layout`);
    the driver sequence is :func:`run_on_accelerator`, the same as in RTL simulation.
    Not testable without the board: kept to buffer plumbing around the shared driver.

    Parameters
    ----------
    bitstream : str, optional
        The ``.bit`` (with its ``.hwh``) to load; default: the overlay already loaded.
    ip_name : str
        The accelerator's name in the overlay's ``ip_dict``.
    timeout_s : float
        How long to wait for a run before declaring a hang.
    """

    name = "board"

    def __init__(self, program: CompiledProgram, *, bitstream: str | None = None, ip_name: str = "vitaccel_top_0",
                 timeout_s: float = 10.0) -> None:
        super().__init__(program)
        try:
            import pynq
        except ImportError:
            raise UserError("backend 'board' needs PYNQ (`import pynq` failed): run it on the ZCU102 "
                            "with the emitted bitstream loaded; use --backend golden or rtl here") from None
        overlay = pynq.Overlay(bitstream) if bitstream else pynq.Overlay(pynq.PL.bitfile_name, download=False)
        if ip_name not in overlay.ip_dict:
            raise UserError(f"the overlay has no IP {ip_name!r}; it has {', '.join(overlay.ip_dict)}")
        ip = overlay.ip_dict[ip_name]
        clock_hz = program.config.clock_mhz * 1e6
        self.port = _MmioPort(pynq.MMIO(ip["phys_addr"], ip["addr_range"]), clock_hz)
        self.max_cycles = int(timeout_s * clock_hz)
        self.layout = program_layout(program.ddr_size, len(program.words))
        self.buffer = pynq.allocate(shape=(self.layout["buffer_bytes"],), dtype=np.uint8)

    def execute(self, ddr: np.ndarray) -> dict[str, Any]:
        from vitaccel.sim.golden.machine import words_to_bytes

        lay, buf = self.layout, self.buffer
        buf[lay["ddr_base"]:lay["ddr_base"] + ddr.size] = ddr
        code = np.frombuffer(words_to_bytes(self.program.words), np.uint8)
        buf[lay["program_addr"]:lay["program_addr"] + code.size] = code
        buf.flush()
        base = buf.physical_address
        record = asyncio.run(run_on_accelerator(
            self.port, program_addr=base + lay["program_addr"], length=len(self.program.words),
            ddr_base=base + lay["ddr_base"], ddr_size=ddr.size, max_cycles=self.max_cycles,
            checksum=self.program.checksum))
        error = record_error(record, self.program.manifest)
        if error is not None:
            raise error
        buf.invalidate()
        ddr[:] = buf[lay["ddr_base"]:lay["ddr_base"] + ddr.size]
        return {**record, "cycles": record["total_cycles"]}


def open_device(backend: str, program: CompiledProgram, **options: Any) -> Device:
    """The device for ``backend`` (one of :data:`BACKENDS`); ``options`` go to its constructor
    (``rtl``: :class:`~vitaccel.sw.rtl_device.RtlDevice`'s ``simulator``, ``waves``, ...).

    Raises
    ------
    UserError
        For an unknown backend, or one that cannot run here (no simulator, no PYNQ).
    """
    if backend == "golden":
        return GoldenDevice(program, **options)
    if backend == "perf":
        return PerfDevice(program, **options)
    if backend == "rtl":
        from vitaccel.sw.rtl_device import RtlDevice

        return RtlDevice(program, **options)
    if backend == "board":
        return BoardDevice(program, **options)
    raise UserError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
