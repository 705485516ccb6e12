"""The compiled-program directory: what ``vitaccel compile`` writes and ``vitaccel run`` reads.

========================  ====================================================================
``program.bin``           instruction words, 16 bytes each, little-endian
``ddr.bin``               initial DDR image (constants: weights, biases, parameters, LUTs);
                          the program needs ``manifest["ddr_size"]`` bytes, zero beyond the file
``manifest.json``         config, inputs/outputs (address, shape, dtype, scale), every tensor's
                          DDR view (``kept``: still valid after a run, as activation blocks
                          are reused), per-layer table (op, shape, MACs, instructions), counts
``program.lst``           disassembly, one instruction per line, tagged with its layer
========================  ====================================================================
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.sim.golden.machine import words_from_bytes, words_to_bytes

__all__ = ["CompiledProgram", "load_program", "write_program", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_FILES = ("program.bin", "ddr.bin", "manifest.json", "program.lst")


@dataclass
class CompiledProgram:
    """A program, its initial DDR image and its manifest."""

    words: list[int]
    ddr_image: np.ndarray
    manifest: dict[str, Any]
    tags: list[str] = field(default_factory=list)

    @property
    def config(self) -> AccelConfig:
        return AccelConfig.from_dict(self.manifest["config"])

    @property
    def ddr_size(self) -> int:
        return int(self.manifest["ddr_size"])

    def fresh_ddr(self) -> np.ndarray:
        """A DDR array of ``ddr_size`` bytes holding the initial image."""
        ddr = np.zeros(self.ddr_size, dtype=np.uint8)
        ddr[:self.ddr_image.size] = self.ddr_image
        return ddr

    def tensor_values(self, ddr: np.ndarray, name: str) -> np.ndarray:
        """Tensor ``name`` of the manifest (address, shape, strides, dtype) read from ``ddr``.

        Raises
        ------
        KeyError
            If the manifest has no tensor ``name``.
        """
        from vitaccel.sw.backend.memory import TensorView

        entry = next((t for t in self.manifest["tensors"] if t["name"] == name), None)
        if entry is None:
            raise KeyError(f"the program's manifest has no tensor {name!r}")
        return TensorView(entry["addr"], tuple(entry["shape"]), tuple(entry["strides"]), entry["dtype"]).numpy(ddr)

    @classmethod
    def from_lowering(cls, lowering: Any, qgraph: Any, config: AccelConfig, meta: dict[str, Any]) -> "CompiledProgram":
        words = lowering.builder.words()
        counts = Counter(instr.opcode.name for instr in lowering.builder.instructions)

        def entry(name: str) -> dict[str, Any]:
            view, tensor = lowering.views[name], qgraph.tensors[name]
            kept = (not lowering.reuse_ddr or name in qgraph.inputs or name in qgraph.outputs
                    or name in qgraph.constants)
            return {"name": name, "addr": view.base, "shape": list(view.shape), "strides": list(view.strides),
                    "dtype": view.dtype, "scale": tensor.scale, "kept": kept}

        manifest = {
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "model": {**qgraph.meta, **meta},
            "ddr_size": lowering.ddr_size,
            "ddr_image_bytes": int(lowering.ddr_image.size),
            "instructions": len(words),
            "instruction_counts": dict(sorted(counts.items())),
            "macs": sum(layer.macs for layer in lowering.layers),
            "inputs": [entry(name) for name in qgraph.inputs],
            "outputs": [entry(name) for name in qgraph.outputs],
            "tensors": [entry(name) for name in lowering.views if name in qgraph.tensors],
            "layers": [vars(layer) for layer in lowering.layers],
        }
        return cls(words, lowering.ddr_image, manifest, list(lowering.builder.tags))


def write_program(directory: str | Path, program: CompiledProgram) -> Path:
    """Write the four files into ``directory`` (created if needed)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "program.bin").write_bytes(words_to_bytes(program.words))
    (out / "ddr.bin").write_bytes(program.ddr_image.tobytes())
    (out / "manifest.json").write_text(json.dumps(program.manifest, indent=1, default=_json_default) + "\n")
    listing = isa.disassemble(program.words).splitlines()
    if program.tags:
        listing = [f"{line:<150s} ; {tag}" if tag else line for line, tag in zip(listing, program.tags)]
    (out / "program.lst").write_text("\n".join(listing) + "\n")
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def load_program(directory: str | Path) -> CompiledProgram:
    """Read a program directory written by :func:`write_program`.

    Raises
    ------
    FileNotFoundError
        If a file is missing (the message names it).
    ValueError
        If the manifest's format version is unknown.
    """
    root = Path(directory)
    for name in _FILES[:3]:
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root}: not a compiled program (missing {name}); "
                                    "run `vitaccel compile` first")
    manifest = json.loads((root / "manifest.json").read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root}: program format {manifest.get('format_version')!r} is not {FORMAT_VERSION}")
    words = words_from_bytes((root / "program.bin").read_bytes())
    image = np.frombuffer((root / "ddr.bin").read_bytes(), dtype=np.uint8).copy()
    return CompiledProgram(words, image, manifest)
