"""The matrix engine's pipelined parts alone in Amaranth's simulator: the block unit's
latency and sums (packing 1 and 2, uneven packed groups), and the post-processor bit-exact
against the spec's requantization on edge parameters, with stalls on every stream."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from vitaccel.hw.matrix import BlockUnit, PostProcessor
from vitaccel.hw.matrix.block_unit import block_unit_latency
from vitaccel.hw.matrix.pipeline import tree_levels
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.matrix import BIAS_BITS
from vitaccel.hw.spec.numerics import MULTIPLIER_BITS, round_shift, saturate

TINY = PRESETS["tiny"]


def test_tree_levels_and_latency_formula():
    assert [tree_levels(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [0, 1, 2, 2, 3, 3, 4]
    assert block_unit_latency(1) == 3 and block_unit_latency(2) == 4 and block_unit_latency(8) == 6
    # packing 2: groups of 4 k's (2 levels), the separation, the tree over the groups
    assert block_unit_latency(2, 2) == 5 and block_unit_latency(4, 2) == 6 and block_unit_latency(8, 2) == 7
    with pytest.raises(ValueError):
        tree_levels(0)


def _run_block_unit(unit: BlockUnit, steps: list[tuple[np.ndarray, np.ndarray, bool, bool]], cycles: int):
    """Feed ``(a, b, first, last)`` steps (None: an idle cycle); return per cycle
    ``(tile_done, result)``."""
    seen = []

    async def bench(ctx):
        for cycle in range(cycles):
            step = steps[cycle] if cycle < len(steps) else None
            if step is None:
                ctx.set(unit.ctl_in.valid, 0)
            else:
                a, b, first, last = step
                for i in range(a.shape[0]):
                    for kk in range(a.shape[1]):
                        ctx.set(unit.a_in[i][kk], int(a[i, kk]))
                for kk in range(b.shape[0]):
                    for j in range(b.shape[1]):
                        ctx.set(unit.b_in[kk][j], int(b[kk, j]))
                ctx.set(unit.ctl_in.valid, 1)
                ctx.set(unit.ctl_in.first, int(first))
                ctx.set(unit.ctl_in.last, int(last))
            await ctx.tick()
            size = unit.block_size
            seen.append((ctx.get(unit.tile_done),
                         np.array([[ctx.get(unit.result[i][j]) for j in range(size)] for i in range(size)])))

    sim = Simulator(unit)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen


@pytest.mark.parametrize("size,packing", [(2, 1), (3, 1), (2, 2), (6, 2)])
def test_block_unit_latency_and_sums(size, packing):
    """Two tiles with idle cycles between steps: ``tile_done`` comes ``latency - 1`` cycles
    after each tile's last step enters (the tile's sums in ``result`` one cycle later), with
    operand extremes (uint8 A, -128 B) and random values. b = 6 packs one group of 4 and
    one of 2 k's, whose trees must line up."""
    rng = np.random.default_rng(size * 10 + packing)
    unit = BlockUnit(block_size=size, a_width=9, b_width=8, acc_width=32, packing=packing)
    tiles, steps, last_cycles = [], [], []
    for tile in range(2):
        k_steps = 3 + tile
        a = rng.integers(-128, 256, size=(k_steps, size, size))
        b = rng.integers(-128, 128, size=(k_steps, size, size))
        a[0], b[0] = 255, -128          # the largest low-lane products
        a[1], b[1] = -128, -128
        tiles.append(sum(a[s].astype(np.int64) @ b[s] for s in range(k_steps)))
        for s in range(k_steps):
            steps.append((a[s], b[s], s == 0, s == k_steps - 1))
            if s == k_steps - 1:
                last_cycles.append(len(steps) - 1)
            if s % 2:
                steps.append(None)      # an idle cycle inside the tile
    seen = _run_block_unit(unit, steps, len(steps) + unit.latency + 2)
    done_cycles = [cycle for cycle, (done, _) in enumerate(seen) if done]
    # seen[c] is sampled after the tick of cycle c, i.e. in cycle c + 1
    assert done_cycles == [last + unit.latency - 1 - 1 for last in last_cycles]
    for cycle, expected in zip(done_cycles, tiles):
        np.testing.assert_array_equal(seen[cycle + 1][1], expected)


def _requantize_reference(acc, bias, multiplier, shift, residual, out_bits=8):
    """The spec's ``sat(round_shift(sat32(acc + bias) * multiplier, shift)) (+ residual)``."""
    biased = saturate(np.int64(acc) + np.int64(bias), BIAS_BITS)
    out = saturate(round_shift(np.int64(biased) * np.int64(multiplier), shift), out_bits)
    if residual is not None:
        out = saturate(np.int64(out) + np.int64(residual), out_bits)
    return int(out)


def _edge_rows(rng: random.Random, cols: int, count: int):
    """Rows of (acc, bias, multiplier, shift, residual) mixing edges and random values."""
    acc_edges = [-(1 << 31), (1 << 31) - 1, 0, -1, 1, 127, -128]
    bias_edges = [-(1 << 31), (1 << 31) - 1, 0, -1]
    mult_edges = [0, 1, (1 << MULTIPLIER_BITS) - 1, 1 << 30, (1 << 17) - 1, 1 << 17, (1 << 26) + 1]
    shift_edges = [0, 1, 2, 7, 8, 9, 31, 32, 61, 62]
    rows = []
    for _ in range(count):
        row = []
        for _ in range(cols):
            edge = rng.random() < 0.5
            row.append((rng.choice(acc_edges) if edge else rng.randrange(-(1 << 31), 1 << 31),
                        rng.choice(bias_edges) if rng.random() < 0.3 else rng.randrange(-(1 << 20), 1 << 20),
                        rng.choice(mult_edges) if edge else rng.randrange(0, 1 << MULTIPLIER_BITS),
                        rng.choice(shift_edges) if edge else rng.randrange(0, 63),
                        rng.randrange(-128, 128)))
        rows.append(row)
    return rows


@pytest.mark.parametrize("residual_enable", [False, True])
def test_post_processor_bit_exact_with_stalls(residual_enable):
    """Rows of edge parameters (saturating bias, multiplier 2^31 - 1, shifts 0..62, each
    split point of the partial products) with random stalls on entry, residual and output:
    every row leaves once, in order, bit-exact; without stalls it leaves after LATENCY."""
    rng = random.Random(17 + residual_enable)
    post = PostProcessor(TINY)
    cols = TINY.tile_cols
    rows = _edge_rows(rng, cols, 60)
    expected = [[_requantize_reference(*entry[:4], entry[4] if residual_enable else None) for entry in row]
                for row in rows]
    got, first_output = [], []

    async def bench(ctx):
        ctx.set(post.residual_enable, int(residual_enable))
        entered, residual_next, cycle = 0, 0, 0
        while len(got) < len(rows) and cycle < 2000:
            stalls = cycle >= 30     # the first rows flow freely: the latency is checked there
            offer = entered < len(rows) and (not stalls or rng.random() < 0.7)
            if offer:
                for col, (acc, bias, mult, shift, _) in enumerate(rows[entered]):
                    ctx.set(post.acc[col], acc)
                    ctx.set(post.params[col].bias, bias)
                    ctx.set(post.params[col].multiplier, mult)
                    ctx.set(post.params[col].shift, shift)
            residual_offer = residual_next < len(rows) and (not stalls or rng.random() < 0.6)
            if residual_offer:
                for col in range(cols):
                    ctx.set(post.residual.payload[col], rows[residual_next][col][4])
            ctx.set(post.residual.valid, int(residual_offer))
            ctx.set(post.output.ready, int(not stalls or rng.random() < 0.5))
            ready = ctx.get(post.ready)
            ctx.set(post.enter, int(offer and ready))
            taken_residual = ctx.get(post.residual.valid) and ctx.get(post.residual.ready)
            if ctx.get(post.output.valid) and ctx.get(post.output.ready):
                got.append([ctx.get(post.output.payload[col]) for col in range(cols)])
                raw = [ctx.get(post.output_acc[col]) for col in range(cols)]
                assert raw == [entry[0] for entry in rows[len(got) - 1]]
            if offer and ready:
                if entered == 0:
                    first_output.append(cycle)
                entered += 1
            residual_next += int(bool(taken_residual))
            await ctx.tick()
            cycle += 1
            if ctx.get(post.output.valid) and len(first_output) == 1:
                first_output.append(cycle)
        assert not ctx.get(post.busy) or len(got) < len(rows)

    sim = Simulator(post)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) == len(rows)
    assert first_output[1] - first_output[0] == PostProcessor.LATENCY + 1
    for index, (row, want) in enumerate(zip(got, expected)):
        assert row == want, (index, rows[index], row, want)
