"""Top-k engine in Amaranth's simulator against the golden kernel."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.topk import TopKEngine, topk_engine_cycles
from vitaccel.sim.cases.sparse import TOPK_SCORE_KINDS, decode_topk_beats, topk_scores
from vitaccel.sim.golden.topk import topk

TINY = PRESETS["tiny"]


def simulate_topk(config, scores: np.ndarray, k: int, ready=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Load ``scores``, run the engine, return (indices, keep, cycles from start to last beat).
    ``ready(cycle)`` is the result stream's ready (always 1 by default)."""
    dut = TopKEngine(config=config)
    lanes = config.topk_lanes
    padded = np.zeros(-(-scores.size // lanes) * lanes, dtype=np.int64)
    padded[:scores.size] = scores
    out: dict = {}

    async def bench(ctx):
        for g in range(padded.size // lanes):
            ctx.set(dut.scores.payload, [int(v) for v in padded[g * lanes:(g + 1) * lanes]])
            ctx.set(dut.scores.valid, 1)
            await ctx.tick()
        ctx.set(dut.scores.valid, 0)
        ctx.set(dut.n, scores.size)
        ctx.set(dut.k, k)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycles, beats = 1, []
        while True:
            take = 1 if ready is None else ready(cycles)
            ctx.set(dut.result.ready, take)
            if take and ctx.get(dut.result.valid):
                beat = ctx.get(dut.result.payload)
                beats.append((int(beat.mask), int(beat.count), [int(i) for i in beat.indices], int(beat.last)))
                if beat.last:
                    break
            await ctx.tick()
            cycles += 1
            assert cycles < 20 * padded.size + 100, "top-k engine hung"
        out["beats"], out["cycles"] = beats, cycles

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    indices, keep = decode_topk_beats(out["beats"], scores.size, lanes)
    return indices, keep, out["cycles"]


@pytest.mark.parametrize("n,k,kind", [
    (1, 0, "random"), (1, 1, "random"), (7, 0, "ties"), (7, 7, "ties"), (13, 5, "ties"),
    (16, 3, "constant"), (30, 11, "random"), (33, 32, "edges"), (5, 2, "edges"),
])
def test_topk_matches_golden(n, k, kind):
    scores = topk_scores(np.random.default_rng(n * 31 + k), n, kind)
    indices, keep, _ = simulate_topk(TINY, scores, k)
    want_indices, want_keep = topk(scores, k)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(keep, want_keep)


def test_topk_cycles_meet_goal_for_197_tokens():
    scores = topk_scores(np.random.default_rng(5), 197, "ties")
    indices, _, cycles = simulate_topk(TINY, scores, 98)
    np.testing.assert_array_equal(indices, topk(scores, 98)[0])
    assert cycles <= 394, cycles


def test_topk_rejects_bad_config():
    with pytest.raises(TypeError, match="AccelConfig"):
        TopKEngine(config="tiny")


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_topk_random_cases_match_golden(data):
    n = data.draw(st.integers(1, 40))
    k = data.draw(st.integers(0, n))
    kind = data.draw(st.sampled_from(TOPK_SCORE_KINDS))
    scores = topk_scores(np.random.default_rng(data.draw(st.integers(0, 2**16))), n, kind)
    indices, keep, cycles = simulate_topk(TINY, scores, k)
    want_indices, want_keep = topk(scores, k)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(keep, want_keep)
    assert cycles == topk_engine_cycles(TINY.topk_lanes, n)  # the documented cycle count


@pytest.mark.parametrize("config_name", ["tiny", "zcu102"])
def test_topk_under_back_pressure(config_name):
    """The result stream stalls at random: the pipelined compaction holds every stage (no beat
    lost or repeated) and the selection is still the golden one."""
    config = PRESETS[config_name]
    rng = np.random.default_rng(3)
    for n, k, kind in [(37, 12, "ties"), (config.max_tokens, 100, "random"), (9, 9, "constant")]:
        scores = topk_scores(np.random.default_rng(n + k), n, kind)
        pattern = rng.integers(0, 2, 4096)
        indices, keep, cycles = simulate_topk(config, scores, k, ready=lambda c: int(pattern[c % pattern.size]))
        want_indices, want_keep = topk(scores, k)
        np.testing.assert_array_equal(indices, want_indices)
        np.testing.assert_array_equal(keep, want_keep)
        assert cycles > topk_engine_cycles(config.topk_lanes, n)
