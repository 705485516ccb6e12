"""The one configuration that the generator, the golden model and the compiler agree on.

An :class:`AccelConfig` is a frozen dataclass. Every field is validated on construction,
so a config that exists is a config that can be built; the error messages name the field,
the value and the rule it broke. Named presets live in :data:`PRESETS`; :func:`load_config`
accepts a preset name or a JSON file, :meth:`AccelConfig.to_json` writes one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AccelConfig", "ConfigError", "PRESETS", "load_config", "preset_names"]


class ConfigError(ValueError):
    """An accelerator configuration is invalid; the message says which field and why."""


#: Characters a config name may hold (it becomes part of file and directory names).
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
#: Keys of ``vitaccel spec --json`` output: its ``config`` entry is the config.
_SPEC_JSON_KEYS = frozenset({"config", "derived", "isa"})


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class AccelConfig:
    """Parameters of one accelerator instance.

    Parameters
    ----------
    name : str
        Identifier used in file names and reports.
    block_rows, block_cols : int
        Shape of the grid of block units in the output-block-stationary matrix engine.
    block_size : int
        ``b``: each block unit holds a ``b x b`` output block stationary and has ``b**3``
        multipliers. ``b = 1`` is a plain output-stationary systolic array.
    operand_width : int
        Signed operand width of the matrix engine in bits (8 or 16).
    acc_width : int
        Signed accumulator width in bits. Must hold the sum of ``max_k`` full-scale products.
    max_k : int
        Longest reduction (K) one GEMM instruction may stream; bounds ``acc_width``.
    input_spad_kib, weight_spad_kib : int
        Size of each half of the double-buffered input (A) and weight (B) scratchpads.
    acc_kib : int
        Size of the int32 accumulator buffer.
    vector_kib : int
        Size of the int8 vector buffer that feeds the non-linear, top-k and attention units.
    vector_lanes : int
        Elements per cycle through the softmax, GELU, LayerNorm and element-wise units.
    topk_lanes : int
        Scores compared per cycle by the top-k engine.
    max_tokens : int
        Largest token count (top-k ``n``, attention sequence length) the units accept.
    sparse_pe_rows, sparse_pe_cols : int
        Shape of the score-stationary sparse attention PE array.
    sparse_max_head_dim : int
        Largest head dimension ``d`` a SPARSE_ATTN accepts (the unit's Q/K/V words are this
        wide; any ``1 <= d <= sparse_max_head_dim`` runs). At most 255, the ISA's ``d`` field.
    exp_lut_bits, recip_lut_bits, rsqrt_lut_bits : int
        Index widths of the exp, reciprocal and inverse-square-root tables.
    has_softmax, has_gelu, has_layernorm, has_topk, has_sparse_attention : bool
        Which units the generated accelerator contains.
    nm_sparsity : tuple[int, int] | None
        ``(N, M)`` structured weight sparsity supported by the matrix engine, or ``None``.
    dsp_packing : int
        Multiplies per DSP48E2 in the block units: 1, or 2 (two 8-bit products sharing the B
        operand in one 27x18 multiply, Xilinx WP486; needs ``operand_width`` 8 and an even
        ``block_size``, see docs/dsp_packing.md). Results are the same either way.
    dma_data_width : int
        AXI4 master data width in bits.
    clock_mhz : float
        Target clock frequency.
    """

    name: str = "custom"
    block_rows: int = 2
    block_cols: int = 2
    block_size: int = 2
    operand_width: int = 8
    acc_width: int = 32
    max_k: int = 4096
    input_spad_kib: int = 16
    weight_spad_kib: int = 16
    acc_kib: int = 16
    vector_kib: int = 64
    vector_lanes: int = 4
    topk_lanes: int = 4
    max_tokens: int = 256
    sparse_pe_rows: int = 4
    sparse_pe_cols: int = 4
    sparse_max_head_dim: int = 64
    exp_lut_bits: int = 6
    recip_lut_bits: int = 8
    rsqrt_lut_bits: int = 8
    has_softmax: bool = True
    has_gelu: bool = True
    has_layernorm: bool = True
    has_topk: bool = True
    has_sparse_attention: bool = True
    nm_sparsity: tuple[int, int] | None = None
    dsp_packing: int = 1
    dma_data_width: int = 64
    clock_mhz: float = 100.0
    _extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._extra:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(self._extra))}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name: must be a non-empty string")
        if not _NAME_CHARS.issuperset(self.name) or self.name.startswith("."):
            raise ConfigError(f"name: names files and caches, so only letters, digits and ._- "
                              f"(not starting with .), got {self.name!r}")
        if isinstance(self.nm_sparsity, list):
            object.__setattr__(self, "nm_sparsity", tuple(self.nm_sparsity))
        self._check_ints()
        self._check_rules()

    # -- validation ---------------------------------------------------------------------

    def _check_ints(self) -> None:
        positive = {
            "block_rows": 64, "block_cols": 64, "block_size": 16, "max_k": 65536,
            "input_spad_kib": 4096, "weight_spad_kib": 4096, "acc_kib": 4096,
            "vector_kib": 4096, "vector_lanes": 64, "topk_lanes": 64, "max_tokens": 4096,
            "sparse_pe_rows": 64, "sparse_pe_cols": 64, "sparse_max_head_dim": 255, "exp_lut_bits": 12,
            "recip_lut_bits": 12, "rsqrt_lut_bits": 12,
        }
        for name, upper in positive.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name}: must be an integer, got {value!r}")
            if not 1 <= value <= upper:
                raise ConfigError(f"{name}: must be in 1..{upper}, got {value}")
        for name in ("operand_width", "acc_width", "dma_data_width"):   # checked against lists below
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name}: must be an integer, got {value!r}")
        for name in ("has_softmax", "has_gelu", "has_layernorm", "has_topk", "has_sparse_attention"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.clock_mhz, (int, float)) or isinstance(self.clock_mhz, bool) \
                or not 1 <= self.clock_mhz <= 1000:
            raise ConfigError(f"clock_mhz: must be a number in 1..1000, got {self.clock_mhz!r}")

    def _check_rules(self) -> None:
        if self.operand_width not in (8, 16):
            raise ConfigError(f"operand_width: must be 8 or 16, got {self.operand_width}")
        needed = self.min_acc_width
        if self.acc_width not in (32, 48, 64) or self.acc_width < needed:
            raise ConfigError(
                f"acc_width: must be 32, 48 or 64 and at least {needed} bits to sum max_k="
                f"{self.max_k} products of {self.operand_width}-bit operands, got {self.acc_width}")
        if self.dma_data_width not in (32, 64, 128, 256, 512):
            raise ConfigError(f"dma_data_width: must be one of 32, 64, 128, 256, 512, got {self.dma_data_width}")
        for name in ("vector_lanes", "topk_lanes"):
            if not _is_pow2(getattr(self, name)):
                raise ConfigError(f"{name}: must be a power of two, got {getattr(self, name)}")
        if self.nm_sparsity is not None:
            if (not isinstance(self.nm_sparsity, tuple) or len(self.nm_sparsity) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in self.nm_sparsity)):
                raise ConfigError(f"nm_sparsity: must be null or a pair [N, M], got {self.nm_sparsity!r}")
            n, m = self.nm_sparsity
            if not (_is_pow2(m) and 1 <= n < m <= 16):
                raise ConfigError(f"nm_sparsity: need 1 <= N < M <= 16 with M a power of two, got {n}:{m}")
        if isinstance(self.dsp_packing, bool) or self.dsp_packing not in (1, 2):
            raise ConfigError(f"dsp_packing: must be 1 or 2, got {self.dsp_packing!r}")
        if self.dsp_packing == 2:
            if self.operand_width != 8:
                raise ConfigError(f"dsp_packing: 2 needs operand_width 8 (two products per 27x18 multiply), "
                                  f"got {self.operand_width}")
            if self.block_size % 2:
                raise ConfigError(f"dsp_packing: 2 pairs the rows of a block, so block_size must be even, "
                                  f"got {self.block_size}")
        if self.max_tokens < 2:
            raise ConfigError(f"max_tokens: must be at least 2, got {self.max_tokens}")
        if self.has_sparse_attention and not self.has_softmax:
            raise ConfigError("has_sparse_attention: the sparse attention unit needs has_softmax")

    # -- derived quantities ---------------------------------------------------------------

    @property
    def min_acc_width(self) -> int:
        """Bits needed to accumulate ``max_k`` products of two full-scale signed operands."""
        product_bits = 2 * self.operand_width - 1  # (-2^(w-1))^2 = 2^(2w-2) needs 2w-1 bits signed
        return product_bits + math.ceil(math.log2(self.max_k)) + 1

    @property
    def tile_rows(self) -> int:
        """Output rows computed at once by the block grid (``block_rows * b``)."""
        return self.block_rows * self.block_size

    @property
    def tile_cols(self) -> int:
        """Output columns computed at once by the block grid (``block_cols * b``)."""
        return self.block_cols * self.block_size

    @property
    def macs_per_cycle(self) -> int:
        """Multipliers in the matrix engine: ``block_rows * block_cols * b**3``."""
        return self.block_rows * self.block_cols * self.block_size ** 3

    @property
    def engine_dsp48e2(self) -> int:
        """DSP48E2 the block units' multipliers take: ``macs_per_cycle / dsp_packing``."""
        return self.macs_per_cycle // self.dsp_packing

    @property
    def peak_gmacs(self) -> float:
        """Peak multiply-accumulates per second, in GMAC/s, at ``clock_mhz``."""
        return self.macs_per_cycle * self.clock_mhz / 1e3

    @property
    def operand_bytes(self) -> int:
        return self.operand_width // 8

    def hash(self) -> str:
        """Short stable digest of every field: names build directories and caches."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        if out["nm_sparsity"] is not None:
            out["nm_sparsity"] = list(out["nm_sparsity"])
        return out

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AccelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**{k: v for k, v in data.items() if k in known}, _extra=extra)

    @classmethod
    def from_json(cls, text: str) -> "AccelConfig":
        """A config from JSON text: the config object itself, or the whole output of
        ``vitaccel spec --json`` (an object with ``config`` and optionally ``derived`` and
        ``isa``), whose ``config`` is taken (``derived`` and ``isa`` follow from it)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"config is not valid JSON: {err}") from None
        except RecursionError:
            raise ConfigError("config JSON is nested too deeply") from None
        if isinstance(data, dict) and "config" in data and data.keys() <= _SPEC_JSON_KEYS:
            data = data["config"]
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "AccelConfig":
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, AccelConfig] = {
    # Small enough that every unit builds and simulates in seconds under Verilator.
    "tiny": AccelConfig(
        name="tiny", block_rows=2, block_cols=2, block_size=2, operand_width=8, acc_width=32,
        max_k=4096, input_spad_kib=16, weight_spad_kib=16, acc_kib=16, vector_kib=64,
        vector_lanes=4, topk_lanes=4, max_tokens=256, sparse_pe_rows=4, sparse_pe_cols=4,
        sparse_max_head_dim=64, dma_data_width=64, clock_mhz=100.0,
    ),
    # Sized for an XCZU9EG (ZCU102): 3072 multipliers, two per DSP48E2 (dsp_packing 2), so
    # 1536 of its 2520 DSP48E2 (61%); buffers well inside 912 BRAM36; 128-bit AXI for the HP
    # ports. See docs/perf.md for measured use, docs/dsp_packing.md for the packing.
    # Sparse attention on 16 x 4 PEs: each PE selects its key among mask_block_cols = 16 x
    # sparse_pe_cols lanes, so the selects grow as cols^2 per PE row; 16 x 16 (256-lane selects
    # on 256 PEs) would not emit in reasonable time, nor fit the LUTs (docs/sparse_attention.md).
    "zcu102": AccelConfig(
        name="zcu102", block_rows=2, block_cols=3, block_size=8, operand_width=8, acc_width=32, dsp_packing=2,
        max_k=4096, input_spad_kib=128, weight_spad_kib=256, acc_kib=256, vector_kib=512,
        vector_lanes=16, topk_lanes=16, max_tokens=256, sparse_pe_rows=16, sparse_pe_cols=4,
        sparse_max_head_dim=64, dma_data_width=128, clock_mhz=300.0,
    ),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def load_config(name_or_path: str | Path) -> AccelConfig:
    """A preset by name, or a config read from a JSON file.

    Raises
    ------
    ConfigError
        For an unknown name, an unreadable or non-UTF-8 file or an invalid config; the
        message is one line and names the file.
    """
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key)
    if path.suffix == ".json" or path.exists():
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read config file {key}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {key} is not UTF-8 text (byte {err.start}): not a JSON config") from None
        try:
            return AccelConfig.from_json(text)
        except ConfigError as err:
            raise ConfigError(f"config file {key}: {err}") from None
    raise ConfigError(f"unknown config {key!r}: use one of {', '.join(preset_names())} or a JSON file")
