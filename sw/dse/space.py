"""Design spaces: a base config and the values each swept field takes.

A space file is JSON::

    {
      "base": "zcu102",                      (a preset name, or a config object)
      "fields": {"block_size": [4, 8], "dsp_packing": [1, 2], "clock_mhz": [250, 300]}
    }

Its points are the Cartesian product of the field values, in the order the fields are
listed (the last field varies fastest), applied over the base. A point the hardware cannot
be built for (:func:`check_point`: :class:`~vitaccel.hw.spec.config.AccelConfig`'s own
validation, the matrix engine's and the ISA's limits, the controller's fetch width) is kept
as *skipped* with the one-line reason, not dropped and not a crash.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitaccel.hw.spec.config import PRESETS, AccelConfig, ConfigError

__all__ = ["DesignSpace", "SpaceError", "Point", "load_space", "parse_space", "check_point", "MAX_POINTS",
           "SWEEPABLE_FIELDS"]

#: A space larger than this is refused: at a few seconds per point it would run for days.
MAX_POINTS = 20000
#: Fields a space may sweep: every config field but its name.
SWEEPABLE_FIELDS = tuple(f.name for f in dataclasses.fields(AccelConfig)
                         if not f.name.startswith("_") and f.name != "name")


class SpaceError(ValueError):
    """A space file is malformed; the message is one line and names the problem."""


@dataclass(frozen=True)
class Point:
    """One point of a space: its index, the fields it sets, and its config or why it has none."""

    index: int
    values: dict[str, Any]
    config: AccelConfig | None
    skipped: str | None = None


@dataclass(frozen=True)
class DesignSpace:
    """A base config and, per swept field, the values it takes (in file order)."""

    base: AccelConfig
    fields: dict[str, list[Any]]
    name: str = "dse"

    @property
    def size(self) -> int:
        size = 1
        for values in self.fields.values():
            size *= len(values)
        return size

    def points(self) -> list[Point]:
        """Every point, valid or skipped, in product order; names ``{space}-{index:04d}``."""
        names = list(self.fields)
        out = []
        for index, combo in enumerate(itertools.product(*(self.fields[n] for n in names))):
            values = dict(zip(names, combo))
            try:
                config = self.base.replace(name=f"{self.name}-{index:04d}", **values)
                check_point(config)
            except ConfigError as err:
                out.append(Point(index, values, None, skipped=str(err).splitlines()[0]))
                continue
            out.append(Point(index, values, config))
        return out


def check_point(config: AccelConfig) -> None:
    """Raise :class:`ConfigError` (one line) if the accelerator cannot be built for ``config``
    beyond what :class:`AccelConfig` checks itself: the matrix engine (scratchpad halves hold a
    ``max_k`` panel), the ISA's buffer address range, and the controller, which fetches one
    instruction per bus beat at most (``dma_data_width`` <= the instruction width)."""
    from vitaccel.hw.spec import isa
    from vitaccel.hw.spec.matrix import check_engine_config

    check_engine_config(config)
    isa.check_config(config)
    if config.dma_data_width > isa.INSTRUCTION_BITS:
        raise ConfigError(f"dma_data_width {config.dma_data_width}: the controller fetches one "
                          f"{isa.INSTRUCTION_BITS}-bit instruction per beat at most; use <= {isa.INSTRUCTION_BITS}")


def parse_space(data: Any, *, source: str = "space") -> DesignSpace:
    """A :class:`DesignSpace` from the parsed JSON of a space file.

    Raises
    ------
    SpaceError
        For a missing or unknown key, an unknown base or field, an empty or non-list value
        list, or a space of more than :data:`MAX_POINTS` points.
    """
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: must be a JSON object with \"base\" and \"fields\", got {type(data).__name__}")
    unknown = sorted(set(data) - {"base", "fields", "name", "description"})
    if unknown:
        raise SpaceError(f"{source}: unknown key(s) {', '.join(unknown)}; use base, fields, name, description")
    base_spec = data.get("base", "zcu102")
    if isinstance(base_spec, str):
        if base_spec not in PRESETS:
            raise SpaceError(f"{source}: base {base_spec!r} is not a preset ({', '.join(sorted(PRESETS))}); "
                             "give a config object instead")
        base = PRESETS[base_spec]
    else:
        try:
            base = AccelConfig.from_dict(base_spec)
        except (ConfigError, TypeError) as err:
            raise SpaceError(f"{source}: base: {err}") from None
    fields = data.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise SpaceError(f"{source}: \"fields\" must be a non-empty object of field -> list of values")
    parsed: dict[str, list[Any]] = {}
    for name, values in fields.items():
        if name not in SWEEPABLE_FIELDS:
            raise SpaceError(f"{source}: fields: {name!r} is not a sweepable config field "
                             f"(one of {', '.join(SWEEPABLE_FIELDS)})")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{source}: fields: {name} must be a non-empty list of values, got {values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise SpaceError(f"{source}: fields: {name} lists a value twice: {values!r}")
        parsed[name] = [tuple(v) if name == "nm_sparsity" and isinstance(v, list) else v for v in values]
    name = data.get("name", "dse")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "._-" for c in name):
        raise SpaceError(f"{source}: name must be letters, digits and ._- (it names the points' configs), got {name!r}")
    space = DesignSpace(base=base, fields=parsed, name=name)
    if space.size > MAX_POINTS:
        raise SpaceError(f"{source}: {space.size} points is more than {MAX_POINTS}; sweep fewer values")
    return space


def load_space(path: str | Path) -> DesignSpace:
    """Read and parse a space file (one-line :class:`SpaceError` for any problem)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise SpaceError(f"cannot read space file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise SpaceError(f"space file {path} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpaceError(f"space file {path} is not valid JSON: {err}") from None
    return parse_space(data, source=f"space file {path}")
