"""The compiled-program directory: what ``vitaccel compile`` writes and ``vitaccel run`` reads.

========================  ====================================================================
``program.bin``           instruction words, 16 bytes each, little-endian; its CRC-32 is
                          ``manifest["checksum"]`` (the hardware checks it: ``PROGRAM_CRC``)
``ddr.bin``               initial DDR image (constants: weights, biases, parameters, LUTs) of
                          ``manifest["ddr_image_bytes"]`` bytes; the program needs
                          ``manifest["ddr_size"]`` bytes, zero beyond the file
``manifest.json``         config, inputs/outputs (address, shape, dtype, scale), every tensor's
                          DDR view (``kept``: still valid after a run, as activation blocks
                          are reused), per-layer table (op, shape, MACs, instructions), counts
``program.lst``           disassembly, one instruction per line, tagged with its layer
``reference.npy``         the float model's outputs (float32 ``[images, classes]``) on the
                          model's first evaluation images (``manifest["reference"]``): what
                          ``run`` compares with, so a program never depends on rebuilding its
                          model (random initialisation, a moved file)
========================  ====================================================================

:func:`write_program` writes all files into a temporary directory beside the target and
renames it into place: a failed write (a full disk) leaves the previous program as it was.
:func:`load_program` checks every file against the manifest (sizes, instruction count,
required keys) and says in one line what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig, ConfigError
from vitaccel.hw.spec.regmap import program_crc32
from vitaccel.sim.golden.machine import words_from_bytes, words_to_bytes

__all__ = ["CompiledProgram", "ProgramError", "load_program", "write_program", "check_output_dir",
           "FORMAT_VERSION", "PROGRAM_FILES", "REFERENCE_FILE"]

#: Version 2: ``checksum``, ``reference`` and the size checks.
FORMAT_VERSION = 2
#: The files every program directory has.
PROGRAM_FILES = ("manifest.json", "program.bin", "ddr.bin", "program.lst")
#: The float reference outputs (optional: a program compiled without them cannot be ``run``).
REFERENCE_FILE = "reference.npy"
_WORD_BYTES = isa.INSTRUCTION_BITS // 8
#: Manifest keys a program cannot be loaded without, and their JSON types.
_REQUIRED = {"format_version": int, "config": dict, "model": dict, "ddr_size": int, "ddr_image_bytes": int,
             "instructions": int, "checksum": int, "inputs": list, "outputs": list, "tensors": list,
             "layers": list}


class ProgramError(ValueError):
    """A program directory that cannot be read or written; the message names the file."""


@dataclass
class CompiledProgram:
    """A program, its initial DDR image and its manifest."""

    words: list[int]
    ddr_image: np.ndarray
    manifest: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    #: The float model's outputs on the first evaluation images (``manifest["reference"]``).
    reference: np.ndarray | None = None

    @property
    def config(self) -> AccelConfig:
        return AccelConfig.from_dict(self.manifest["config"])

    @property
    def checksum(self) -> int:
        """The CRC-32 the program was compiled with (the hardware's ``PROGRAM_CRC``)."""
        return int(self.manifest["checksum"])

    def with_words(self, words: list[int]) -> "CompiledProgram":
        """A copy running ``words`` instead, its checksum updated to match them (for tests of
        what the decoder and units do with a word that passed the checksum)."""
        manifest = {**self.manifest, "checksum": program_crc32(words_to_bytes(words)), "instructions": len(words)}
        return CompiledProgram(list(words), self.ddr_image, manifest, list(self.tags), self.reference)

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
            "checksum": program_crc32(words_to_bytes(words)),
            "instruction_counts": dict(sorted(counts.items())),
            "macs": sum(layer.macs for layer in lowering.layers),
            "inputs": [entry(name) for name in qgraph.inputs],
            "outputs": [entry(name) for name in qgraph.outputs],
            "tensors": [entry(name) for name in lowering.views if name in qgraph.tensors],
            "layers": [vars(layer) for layer in lowering.layers],
        }
        return cls(words, lowering.ddr_image, manifest, list(lowering.builder.tags))


def check_output_dir(directory: str | Path, *, force: bool = False) -> Path:
    """Check that a program can be written to ``directory``, before any work is done.

    The directory may not exist yet (its parent must be a writable directory), or be empty,
    or hold a program (which is replaced); anything else is refused unless ``force``.

    Raises
    ------
    ProgramError
        For a path that is a file (``/dev/null`` included) or lies under one, an unwritable
        parent, or a non-empty directory that is not a program (without ``force``).
    """
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ProgramError(f"{out} exists and is not a directory; give a directory for the program")
    parent = out.absolute().parent
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ProgramError(f"{out}: {ancestor} is not a directory, cannot create a program under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ProgramError(f"{out}: directory {ancestor} is not writable")
    if out.is_dir() and not force:
        entries = {p.name for p in out.iterdir()}
        if entries and not ("manifest.json" in entries and entries <= {*PROGRAM_FILES, REFERENCE_FILE}):
            raise ProgramError(f"{out} is a non-empty directory that does not hold a vitaccel program; "
                               "choose another directory or pass --force to write the program into it")
    return out


def _write_file(path: Path, data: bytes) -> None:
    """Write and flush one file (its own function: tests make it fail like a full disk)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_program(directory: str | Path, program: CompiledProgram, *, force: bool = False) -> Path:
    """Write the program's files into ``directory``, atomically.

    Everything is written into a temporary directory beside ``directory`` first. A new or
    program-only directory is then replaced by it with renames; into a directory with other
    files (``force``) each file is renamed into place. A failure before the renames removes
    the temporary directory and leaves ``directory`` as it was.

    Raises
    ------
    ProgramError
        As :func:`check_output_dir`, or when writing fails (the message says the previous
        program, if any, is unchanged).
    """
    out = check_output_dir(directory, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    listing = isa.disassemble(program.words).splitlines()
    if program.tags:
        listing = [f"{line:<150s} ; {tag}" if tag else line for line, tag in zip(listing, program.tags)]
    files = {
        "program.bin": words_to_bytes(program.words),
        "ddr.bin": program.ddr_image.tobytes(),
        "program.lst": ("\n".join(listing) + "\n").encode(),
    }
    if program.reference is not None:
        import io

        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(program.reference, dtype=np.float32), allow_pickle=False)
        files[REFERENCE_FILE] = buffer.getvalue()
    # The manifest last: a directory with a manifest is a program (check_output_dir).
    files["manifest.json"] = (json.dumps(program.manifest, indent=1, default=_json_default) + "\n").encode()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
    try:
        for name, data in files.items():
            _write_file(staging / name, data)
        _move_into_place(staging, out)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        kept = "; the previous program is unchanged" if (out / "manifest.json").is_file() else ""
        raise ProgramError(f"cannot write the program to {out}: {err.strerror or err}{kept}") from None
    return out


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the written files from ``staging`` to ``out``: the whole directory when ``out``
    is absent, empty or a program, file by file (manifest last) when it holds other files."""
    if not out.exists():
        os.rename(staging, out)
        return
    entries = {p.name for p in out.iterdir()}
    if entries <= {*PROGRAM_FILES, REFERENCE_FILE}:
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, retired / out.name)
        try:
            os.rename(staging, out)
        except OSError:
            os.rename(retired / out.name, out)   # put the previous program back
            raise
        shutil.rmtree(retired, ignore_errors=True)
        return
    for name in sorted(p.name for p in staging.iterdir() if p.name != "manifest.json") + ["manifest.json"]:
        os.replace(staging / name, out / name)
    if REFERENCE_FILE in entries and not (staging / REFERENCE_FILE).exists():
        (out / REFERENCE_FILE).unlink()
    staging.rmdir()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProgramError(f"{path}: not valid JSON ({err}); the program is corrupted, compile it again") from None
    except RecursionError:
        raise ProgramError(f"{path}: JSON nested too deeply; the program is corrupted, compile it again") from None
    if not isinstance(manifest, dict):
        raise ProgramError(f"{path}: expected a JSON object, got {type(manifest).__name__}; compile it again")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ProgramError(f"{path}: program format {version!r} is not {FORMAT_VERSION}; compile it again")
    for key, kind in _REQUIRED.items():
        if key not in manifest:
            raise ProgramError(f"{path}: missing {key!r}; the program is corrupted, compile it again")
        value = manifest[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProgramError(f"{path}: {key!r} must be a JSON {kind.__name__}, got {type(value).__name__}")
    try:
        AccelConfig.from_dict(manifest["config"])
    except ConfigError as err:
        raise ProgramError(f"{path}: config: {err}") from None
    for key in ("inputs", "outputs"):
        entries = manifest[key]
        if not entries or not all(isinstance(e, dict) and {"addr", "shape", "dtype", "scale"} <= e.keys()
                                  for e in entries):
            raise ProgramError(f"{path}: {key!r} must be a non-empty list of tensors with addr, shape, dtype, scale")
    return manifest


def load_program(directory: str | Path) -> CompiledProgram:
    """Read a program directory written by :func:`write_program`, checking it.

    Raises
    ------
    FileNotFoundError
        If a file is missing (the message names it).
    ProgramError
        If a file is corrupted: the manifest unreadable, of another format version or
        missing a key; ``program.bin`` not whole instructions or not the manifest's count;
        ``ddr.bin`` or ``reference.npy`` not the manifest's size. The message names the file.
    """
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise FileNotFoundError(f"{root}: not a compiled program (not a directory); run `vitaccel compile` first")
    for name in ("program.bin", "ddr.bin", "manifest.json"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root}: not a compiled program (missing {name}); "
                                    "run `vitaccel compile` first")
    manifest = _read_manifest(root)
    blob = (root / "program.bin").read_bytes()
    if len(blob) % _WORD_BYTES:
        raise ProgramError(f"{root / 'program.bin'}: {len(blob)} bytes is not a whole number of "
                           f"{_WORD_BYTES}-byte instructions (truncated or corrupted)")
    if len(blob) // _WORD_BYTES != manifest["instructions"]:
        raise ProgramError(f"{root / 'program.bin'}: holds {len(blob) // _WORD_BYTES} instructions, "
                           f"manifest.json says {manifest['instructions']} (truncated or corrupted)")
    image = np.fromfile(root / "ddr.bin", dtype=np.uint8)
    if image.size != manifest["ddr_image_bytes"] or image.size > manifest["ddr_size"]:
        raise ProgramError(f"{root / 'ddr.bin'}: {image.size} bytes, manifest.json says {manifest['ddr_image_bytes']} "
                           f"({'truncated' if image.size < manifest['ddr_image_bytes'] else 'too long'})")
    reference = None
    if "reference" in manifest:
        reference = _read_reference(root / REFERENCE_FILE, manifest)
    return CompiledProgram(words_from_bytes(blob), image, manifest, reference=reference)


def _read_reference(path: Path, manifest: dict[str, Any]) -> np.ndarray:
    meta = manifest["reference"]
    if not isinstance(meta, dict) or not isinstance(meta.get("images"), int):
        raise ProgramError(f"{path.with_name('manifest.json')}: 'reference' must be an object with 'images'")
    try:
        reference = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ProgramError(f"{path}: missing; the program is incomplete, compile it again") from None
    except (ValueError, OSError, EOFError) as err:
        raise ProgramError(f"{path}: unreadable ({err}); compile the program again") from None
    classes = int(np.prod(manifest["outputs"][0]["shape"]))
    if reference.dtype != np.float32 or reference.shape != (meta["images"], classes):
        raise ProgramError(f"{path}: holds {reference.dtype}{list(reference.shape)}, manifest.json says "
                           f"float32{[meta['images'], classes]}; compile the program again")
    return reference
