"""Two int8 multiplies per DSP48E2 (``dsp_packing = 2``): the separation arithmetic of
``hw/spec/dsp_packing.py`` checked exhaustively at the range ends, and the packed block
unit / engine in Amaranth's simulator, bit-exact against the golden ``matmul`` (raw
accumulators) and ``linear`` (post-processed outputs).

Edge operands on every lane (-128 x -128, -128 x 127, 255 x -128 and 255 x 127 in
unsigned-A mode: both ends of the product range, the latter exactly at the borrow
threshold; alternating signs between the two packed rows), K of exactly the accumulation bound and
longer (separated every bound's worth of products), shapes that are no multiple of the
tile, random values with stalls, and N:M sparse mode on a packed engine.
"""

from __future__ import annotations

import gc
import itertools
import warnings

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable

from vitaccel.hw.matrix import BlockUnit
from vitaccel.hw.spec.config import PRESETS, AccelConfig, ConfigError
from vitaccel.hw.spec.dsp_packing import LANE_SHIFT, engine_lanes, pack, packed_lanes, separate
from vitaccel.sim.cases.matrix_engine import EDGE_PATTERNS, first_mismatch, make_case, simulate

TINY = PRESETS["tiny"]
#: b = 2: one packed row pair per unit, 2 products per separation.
PACKED_B2 = TINY.replace(name="packed-b2", dsp_packing=2)
#: b = 8 as on zcu102: 8 products per step, separated in two groups of the bound (4).
PACKED_B8 = TINY.replace(name="packed-b8", block_rows=1, block_cols=1, block_size=8, dsp_packing=2, max_k=1024)
PACKED_NM24 = TINY.replace(name="packed-b4-nm24", block_rows=1, block_cols=1, block_size=4, dsp_packing=2,
                           nm_sparsity=(2, 4))


def check_raw_and_output(config, cases, **kwargs):
    """Both the raw accumulators and the post-processed outputs equal the golden ones."""
    for case, (got, _) in zip(cases, simulate(config, cases, raw=True, **kwargs)):
        assert first_mismatch(case.expected_acc, got) is None, (case.plan, first_mismatch(case.expected_acc, got))
    for case, (got, _) in zip(cases, simulate(config, cases, **kwargs)):
        assert first_mismatch(case.expected, got) is None, (case.plan, first_mismatch(case.expected, got))


# -- the arithmetic (spec) ---------------------------------------------------------------------

def test_engine_bound_is_four_and_int8_bound_is_eight():
    lanes = engine_lanes(8)
    assert lanes.product_range == (-32640, 32385)             # 255 x -128 and 255 x 127
    assert lanes.max_terms == 4 and 4 * 65025 < 1 << LANE_SHIFT < 5 * 65025
    signed = packed_lanes((-128, 127), (-128, 127))           # int8 x int8 only (WP486's case)
    assert signed.product_range == (-16256, 16384) and signed.max_terms == 8
    with pytest.raises(ValueError, match="8-bit"):
        engine_lanes(16)
    with pytest.raises(ValueError, match="27 signed bits"):
        packed_lanes((-256, 255), (-128, 127))


@pytest.mark.parametrize("terms", [1, 2, 3, 4])
def test_separation_is_exact_at_every_range_end(terms):
    """Every combination of end values on both lanes and every term: the worst cases of the
    bound (all products at the low lane's minimum or maximum, the borrow boundary)."""
    lanes = engine_lanes(8)
    ends_a, ends_b = (-128, -1, 0, 1, 127, 255), (-128, -1, 0, 1, 127)
    pairs = list(itertools.product(ends_a, ends_a, ends_b))   # (a_hi, a_lo, b) of one multiply
    rng = np.random.default_rng(terms)
    if terms <= 2:
        combos = itertools.product(pairs, repeat=terms)
    else:
        combos = ([pairs[i] for i in rng.integers(0, len(pairs), size=terms)] for _ in range(20000))
    extremes = [[(hi, lo, b)] * terms for hi in ends_a for lo in ends_a for b in ends_b]
    for combo in itertools.chain(combos, extremes):
        total = sum(pack(hi, lo) * b for hi, lo, b in combo)
        assert separate(total, lanes, terms) == (sum(hi * b for hi, _, b in combo), sum(lo * b for _, lo, b in combo))


def test_one_term_past_the_bound_can_alias():
    """Why the bound is 4: five products of 255 x -128 in the low lane wrap to a positive sum."""
    lanes = engine_lanes(8)
    total = 5 * pack(0, 255) * -128
    u = total & ((1 << LANE_SHIFT) - 1)
    assert u <= lanes.threshold(4)          # decoded as positive with the 4-term threshold
    with pytest.raises(ValueError, match="terms"):
        separate(total, lanes, 5)


# -- config -----------------------------------------------------------------------------------

def test_config_field_and_derived_dsp_count():
    assert TINY.dsp_packing == 1 and TINY.engine_dsp48e2 == TINY.macs_per_cycle
    zcu102 = PRESETS["zcu102"]
    assert zcu102.dsp_packing == 2
    assert zcu102.macs_per_cycle >= 3072 and zcu102.engine_dsp48e2 == zcu102.macs_per_cycle // 2 <= 2016
    assert AccelConfig.from_json(zcu102.to_json()) == zcu102


@pytest.mark.parametrize("changes, message", [
    ({"dsp_packing": 3}, "dsp_packing: must be 1 or 2, got 3"),
    ({"dsp_packing": True}, "dsp_packing: must be 1 or 2"),
    ({"dsp_packing": 2, "block_size": 3}, "block_size must be even, got 3"),
    ({"dsp_packing": 2, "operand_width": 16, "acc_width": 48}, "needs operand_width 8"),
])
def test_bad_packing_is_rejected(changes, message):
    with pytest.raises(ConfigError, match=message):
        TINY.replace(**changes)


def test_block_unit_rejects_packing_it_cannot_do():
    with warnings.catch_warnings():  # the half-built units are garbage, not forgotten designs
        warnings.simplefilter("ignore", UnusedElaboratable)
        for kwargs in (dict(block_size=3, a_width=9, b_width=8), dict(block_size=2, a_width=17, b_width=16),
                       dict(block_size=2, a_width=9, b_width=8, packing=4)):
            with pytest.raises(ValueError, match="packing"):
                BlockUnit(acc_width=48, **{"packing": 2, **kwargs})
        gc.collect()


# -- the packed engine in Amaranth's simulator ------------------------------------------------

@pytest.mark.parametrize("config", [PACKED_B2, PACKED_B8], ids=["b2", "b8"])
def test_edge_patterns_on_every_lane(config):
    """Each pattern signed and unsigned-A, K of one bound's worth (4), of one b=8 step (8,
    two separations) and long (many steps); shapes no multiple of the tile."""
    cases = [make_case(config, seed=40 + i, M=config.tile_rows + 1, K=K, N=config.tile_cols - 1,
                       pattern=pattern, unsigned_a=unsigned_a)
             for i, (pattern, unsigned_a, K) in enumerate(itertools.product(EDGE_PATTERNS, (False, True),
                                                                             (4, 8, 61)))]
    assert any(case.a.min() == -128 and case.b.min() == -128 for case in cases)
    assert any(case.a.max() == 255 and case.b.min() == -128 for case in cases)
    assert any(case.a.min() == 255 and case.b.min() == 127 for case in cases)    # the borrow threshold
    check_raw_and_output(config, cases)


def test_longest_k_separates_correctly():
    """K = max_k (4096) of -128 x -128 on every lane: 2^26 per output, 1024 separations each."""
    case = make_case(PACKED_B2, seed=50, M=2, K=PACKED_B2.max_k, N=2, pattern="min_min", residual=False)
    assert int(case.expected_acc[0, 0]) == 4096 * 16384
    check_raw_and_output(PACKED_B2, [case])


@pytest.mark.parametrize("config", [PACKED_B2, PACKED_B8], ids=["b2", "b8"])
def test_random_values_with_stalls(config):
    cases = [make_case(config, seed=60, M=13, K=29, N=11), make_case(config, seed=61, M=5, K=9, N=7, unsigned_a=True)]
    check_raw_and_output(config, cases, stall_prob=0.3, seed=60)


def test_nm_sparse_mode_on_a_packed_engine():
    """2:4 GEMMs (both packed rows pick with the same metadata) and a dense one, edges included."""
    cases = [make_case(PACKED_NM24, seed=70, M=7, K=22, N=9, nm=True),
             make_case(PACKED_NM24, seed=71, M=5, K=16, N=6, nm=True, pattern="max_min", unsigned_a=True,
                       nm_sparser=0.0),
             make_case(PACKED_NM24, seed=72, M=6, K=13, N=5, pattern="alternating")]
    check_raw_and_output(PACKED_NM24, cases, stall_prob=0.2, seed=70)
