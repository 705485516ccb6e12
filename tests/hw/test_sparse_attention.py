"""Sparse attention unit in Amaranth's simulator against the golden masked attention."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from vitaccel.hw.sparse_attention import SparseAttention, max_waves_for
from vitaccel.hw.spec.config import PRESETS
from vitaccel.sim.cases.sparse import attention_case, attention_program, decode_rows

# A small array and sequence keep the Python simulation to seconds.
SMALL = PRESETS["tiny"].replace(name="sparse_small", max_tokens=24, sparse_pe_rows=2, sparse_pe_cols=2)
HEAD_DIM = 4


def simulate_attention(config, head_dim: int, program: dict) -> tuple[np.ndarray, int]:
    """Load the program, run, return the output rows and the cycles from start to the last row."""
    dut = SparseAttention(config=config, max_head_dim=head_dim)
    out: dict = {}

    async def bench(ctx):
        ctx.set(dut.load_en, 1)
        ctx.set(dut.load_mask, (1 << len(dut.load_mask)) - 1)
        for target, addr, word in program["loads"]:
            ctx.set(dut.load_target, target)
            ctx.set(dut.load_addr, addr)
            ctx.set(dut.load_data, word)
            await ctx.tick()
        ctx.set(dut.load_en, 0)
        for name in ("tokens", "waves", "head_dim", "softmax_multiplier", "softmax_shift", "out_multiplier", "out_shift"):
            ctx.set(getattr(dut, name), program[name])
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.out.ready, 1)
        rows, cycles = [], 1
        while True:
            if ctx.get(dut.out.valid):
                rows.append(int(ctx.get(dut.out.payload.as_value())) & ((1 << (8 * head_dim)) - 1))
                if ctx.get(dut.out.payload.last):
                    break
            await ctx.tick()
            cycles += 1
            assert cycles < 200_000, "sparse attention unit hung"
        out["rows"], out["cycles"] = rows, cycles

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return decode_rows(out["rows"], head_dim), out["cycles"]


@pytest.mark.parametrize("tokens,density,kind,seed", [
    (9, 0.3, "random", 1), (9, 0.0, "empty", 2), (7, 1.0, "full", 3), (13, 0.25, "diagonal", 4),
    (11, 0.2, "dense_row", 5), (10, 0.6, "random", 6),
])
def test_sparse_attention_matches_golden(tokens, density, kind, seed):
    case = attention_case(SMALL, seed=seed, tokens=tokens, head_dim=HEAD_DIM, density=density, mask_kind=kind)
    got, _ = simulate_attention(SMALL, HEAD_DIM, attention_program(SMALL, case))
    np.testing.assert_array_equal(got, case["expected"])


@pytest.mark.parametrize("head_dim", [1, 3, 6])
def test_run_time_head_dim_below_the_built_one(head_dim):
    """One unit built for 6-element rows runs heads of 1, 3 and 6 bit-exact."""
    case = attention_case(SMALL, seed=10 + head_dim, tokens=11, head_dim=head_dim, density=0.4)
    got, _ = simulate_attention(SMALL, 6, attention_program(SMALL, case, max_head_dim=6))
    np.testing.assert_array_equal(got[:, :head_dim], case["expected"])


def test_sparse_cycles_shrink_with_density():
    full = attention_case(SMALL, seed=7, tokens=20, head_dim=HEAD_DIM, density=1.0, mask_kind="full")
    sparse = dict(full, mask=np.eye(20, dtype=bool))
    _, dense_cycles = simulate_attention(SMALL, HEAD_DIM, attention_program(SMALL, full))
    _, sparse_cycles = simulate_attention(SMALL, HEAD_DIM, attention_program(SMALL, sparse))
    assert sparse_cycles * 3 < dense_cycles, (sparse_cycles, dense_cycles)


def test_sparse_attention_validates_arguments():
    with pytest.raises(ValueError, match="max_head_dim"):
        SparseAttention(config=SMALL, max_head_dim=0)
    assert max_waves_for(SMALL) >= 12 * 24 // 2
