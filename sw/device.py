"""The runtime: one driver API over interchangeable execution backends.

A :class:`Device` runs a :class:`~vitaccel.sw.program.CompiledProgram` on int8 input
tensors: it builds the DDR image, writes each input at its manifest address, executes, and
reads the outputs back. Backends differ only in :meth:`Device.execute`:

* ``golden``: the golden machine (:mod:`vitaccel.sim.golden.machine`), implemented;
* ``rtl``: the emitted Verilog under cocotb + Verilator (issue 7), not available yet;
* ``board``: a ZCU102 through PYNQ-style MMIO and buffers, not available yet.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from vitaccel.sw.commands import UserError
from vitaccel.sw.program import CompiledProgram

__all__ = ["Device", "GoldenDevice", "open_device", "BACKENDS"]

#: Backend names ``vitaccel run --backend`` accepts.
BACKENDS = ("golden", "rtl", "board")


class Device(ABC):
    """Runs one compiled program; subclasses implement :meth:`execute`."""

    name = "abstract"

    def __init__(self, program: CompiledProgram) -> None:
        self.program = program
        self.last_stats: dict[str, Any] = {}

    @abstractmethod
    def execute(self, ddr: np.ndarray) -> dict[str, Any]:
        """Run the program on ``ddr`` (uint8, modified in place); return run statistics."""

    def infer(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run once with one array per program input; the program's outputs, in their dtypes."""
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
        self.last_stats = self.execute(ddr)
        outputs = []
        for spec in manifest["outputs"]:
            nbytes = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
            raw = ddr[spec["addr"]:spec["addr"] + nbytes]
            outputs.append(raw.view(spec["dtype"]).reshape(spec["shape"]).copy())
        return outputs

    def infer_batch(self, images: np.ndarray) -> np.ndarray:
        """``infer`` over a batch of single-input images; outputs stacked on a new first axis."""
        return np.stack([self.infer(image)[0] for image in images])


class GoldenDevice(Device):
    """The golden machine as a device (bit-exact, no cycle counts)."""

    name = "golden"

    def __init__(self, program: CompiledProgram) -> None:
        super().__init__(program)
        from vitaccel.sim.golden.machine import GoldenMachine

        self.machine = GoldenMachine(program.config)

    def execute(self, ddr: np.ndarray) -> dict[str, Any]:
        return self.machine.run(self.program.words, ddr).to_dict()


def open_device(backend: str, program: CompiledProgram) -> Device:
    """The device for ``backend`` (one of :data:`BACKENDS`).

    Raises
    ------
    UserError
        For an unknown backend or one not available yet.
    """
    if backend == "golden":
        return GoldenDevice(program)
    if backend in ("rtl", "board"):
        raise UserError(f"backend {backend!r} is not available yet (the {backend} device arrives with the "
                        "controller of issue 7); use --backend golden")
    raise UserError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
