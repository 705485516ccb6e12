"""Layering (issue 15): nothing under ``vitaccel.hw`` (gateware, spec, board flow) imports
``vitaccel.sim`` or ``vitaccel.sw``, and ``vitaccel.sim`` does not import ``vitaccel.sw`` (the
compiler and runtime use the golden machine and the perf model, never the other way round).
Read from the source files' import statements, lazy imports inside functions included, so a
violation fails here before it makes an import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import vitaccel.hw
import vitaccel.sim

FORBIDDEN = ("vitaccel.sim", "vitaccel.sw")


def _imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path`` (a module of ``package``), relative
    imports resolved against ``package``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return sorted(found)


def _violations(root: Path, package: str, forbidden: tuple[str, ...] = FORBIDDEN) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).with_suffix("").parts
        module_package = ".".join((package, *relative[:-1]))
        for line, module in _imported_modules(path, module_package):
            where = f"{path.relative_to(root.parent)}:{line}"
            if any(module == name or module.startswith(name + ".") for name in forbidden) \
                    and not any(entry.startswith(where + " ") for entry in bad):
                bad.append(f"{where} imports {module}")
    return bad


def test_hw_imports_neither_sim_nor_sw():
    root = Path(vitaccel.hw.__file__).parent
    assert len(list(root.rglob("*.py"))) > 20                      # the walk sees the package
    assert _violations(root, "vitaccel.hw") == []


def test_sim_does_not_import_sw():
    root = Path(vitaccel.sim.__file__).parent
    assert len(list(root.rglob("*.py"))) > 20
    assert _violations(root, "vitaccel.sim", ("vitaccel.sw",)) == []


def test_the_check_sees_every_kind_of_import(tmp_path):
    """The walk catches plain, from, lazy (inside a function) and relative imports."""
    package = tmp_path / "hw"
    (package / "platform").mkdir(parents=True)
    (package / "platform" / "ok.py").write_text("from . import verilog\nimport numpy\n")
    (package / "platform" / "bad.py").write_text(
        "import vitaccel.sim.runner\n"
        "from vitaccel.sw import cli\n"
        "def f():\n    from vitaccel.sim.runner import emit_verilog\n"
        "from ...sim import golden\n")
    found = _violations(package, "vitaccel.hw")
    assert found == ["hw/platform/bad.py:1 imports vitaccel.sim.runner", "hw/platform/bad.py:2 imports vitaccel.sw",
                     "hw/platform/bad.py:4 imports vitaccel.sim.runner", "hw/platform/bad.py:5 imports vitaccel.sim"]
