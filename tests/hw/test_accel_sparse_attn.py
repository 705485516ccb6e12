"""The SPARSE_ATTN controller (``hw/accel/sparse_attn.py``: mask prediction, packing, the sparse
attention unit) alone in Amaranth's simulator.

The buffers are modelled in Python (synchronous, non-transparent reads as the core's
``Memory`` ports). Each instruction's VECTOR is compared with the golden machine's handler on
the same buffers, its error code with the golden machine's, and its cycles with the
performance model (``sim/perf/units.py``) given the wave count of the golden packing
(:func:`~vitaccel.sim.perf.units.sparse_attention_waves`): the cycles pin the number of waves the
on-chip packer wrote.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from vitaccel.hw.accel.sparse_attn import SparseAttentionController
from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import PRESETS
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Instruction, Opcode, encode
from vitaccel.hw.spec.nonlinear import softmax_params
from vitaccel.hw.spec.numerics import quantize_multiplier
from vitaccel.hw.spec.regmap import ErrorCode
from vitaccel.hw.spec.sparse import PREDICT_MARGIN_LIMIT, MaskPredictParams
from vitaccel.sim.golden.attention import predict_mask
from vitaccel.sim.golden.machine import GoldenMachine, MachineError
from vitaccel.sim.perf.units import compute_cycles, sparse_attention_waves

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

# Two 2-wide mask blocks of 32 keys for up to 40 tokens: packing splits, bubbles and a partial
# last block at a few seconds of simulation per case.
SMALL = PRESETS["tiny"].replace(name="sparse_ctrl_small", max_tokens=40, sparse_pe_rows=3, sparse_pe_cols=2,
                                sparse_max_head_dim=20)
TINY = PRESETS["tiny"]
Q_ADDR, K_ADDR, V_ADDR, MASK_ADDR, OUT_ADDR, PARAM_ADDR = 0, 60, 120, 180, 300, 4


def run_controller(config, instr: Instruction, vector: bytearray, acc: bytearray) -> dict:
    """Run one SPARSE_ATTN; returns ``{"cycles", "error", "waves"}`` (``waves``: the unit's wave
    memory words up to its wave count, when it ran). ``vector`` is updated in place."""
    dut = SparseAttentionController(config=config)
    out: dict = {}
    buffers = {"read": vector, "acc_read": acc}

    def word_at(memory: bytearray, address: int) -> int:
        base = (address // ADDR_UNIT) * ADDR_UNIT
        return int.from_bytes(memory[base:base + ADDR_UNIT], "little")

    async def bench(ctx):
        ctx.set(dut.word, encode(instr))
        ctx.set(dut.start, 1)
        cycles = 1
        waves = {}
        await ctx.tick()
        ctx.set(dut.start, 0)
        while True:
            assert cycles < 400_000, "SPARSE_ATTN: no done / error"
            done, error, code = ctx.get(dut.done), ctx.get(dut.error), ctx.get(dut.error_code)
            pending = [(getattr(dut, f"{port}_data"), word_at(memory, ctx.get(getattr(dut, f"{port}_addr"))))
                       for port, memory in buffers.items() if ctx.get(getattr(dut, port))]
            if ctx.get(dut.write):
                vector[ctx.get(dut.write_addr)] = ctx.get(dut.write_data)
            cycles += 1
            await ctx.tick()
            for port, value in pending:
                ctx.set(port, value)
            if done or error:
                out["cycles"] = cycles
                out["error"] = ErrorCode(code) if error else None
                return

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def golden(config, instr: Instruction, vector: bytearray, acc: bytearray) -> tuple[bytes, ErrorCode | None]:
    machine = GoldenMachine(config)
    machine.buffers[Buffer.VECTOR][0, :len(vector)] = np.frombuffer(bytes(vector), np.uint8)
    machine.buffers[Buffer.ACC][0, :len(acc)] = np.frombuffer(bytes(acc), np.uint8)
    try:
        machine._handlers[instr.opcode](instr, 0)
    except MachineError as err:
        return bytes(vector), err.code
    return machine.buffers[Buffer.VECTOR][0, :len(vector)].tobytes(), None


def make_case(config, *, seed: int, n: int, d: int, predict: int, margin: int = 40, density: float = 0.3,
              kind: str = "random", scale: float = 2.0):
    """Buffers and instruction of one SPARSE_ATTN: Q, K, V, mask and parameters of ``kind``."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.integers(-128, 128, (n, d)) for _ in range(3))
    mask = rng.random((n, n)) < density
    if kind == "equal":        # every row the same: ties at the predicted maximum
        q[:] = q[0]
        k[:] = k[0]
    elif kind == "min":        # -128 everywhere
        q[:], k[:], v[:] = -128, -128, -128
    elif kind == "empty_rows":   # predict=0 with rows that keep nothing
        mask[::3] = False
    vector = bytearray(isa.buffer_bytes(config, Buffer.VECTOR))
    acc = bytearray(isa.buffer_bytes(config, Buffer.ACC))
    for addr, matrix in ((Q_ADDR, q), (K_ADDR, k), (V_ADDR, v)):
        raw = matrix.astype(np.int8).tobytes()
        vector[addr * ADDR_UNIT:addr * ADDR_UNIT + len(raw)] = raw
    raw = mask.astype(np.uint8).tobytes()
    vector[MASK_ADDR * ADDR_UNIT:MASK_ADDR * ADDR_UNIT + len(raw)] = raw
    sm = softmax_params(scale / (5500.0 * np.sqrt(d)), exp_lut_bits=config.exp_lut_bits,
                        recip_lut_bits=config.recip_lut_bits)
    out_scale = quantize_multiplier(1.0 / 256.0)
    words = isa.pack_sparse_attn_params(sm, out_scale.multiplier, out_scale.shift, margin)
    raw = words.astype("<i4").tobytes()
    acc[PARAM_ADDR * ADDR_UNIT:PARAM_ADDR * ADDR_UNIT + len(raw)] = raw
    instr = Instruction(Opcode.SPARSE_ATTN, m=n, n=n, d=d, q_addr=Q_ADDR, k_addr=K_ADDR, v_addr=V_ADDR,
                        mask_addr=MASK_ADDR, out_addr=OUT_ADDR, param_addr=PARAM_ADDR, predict=predict)
    used = mask if not predict else predict_mask(q, k, MaskPredictParams(margin)) if margin < PREDICT_MARGIN_LIMIT else None
    return instr, vector, acc, used


def check(config, instr, vector, acc, used_mask=None):
    want, want_error = golden(config, instr, vector, acc)
    result = run_controller(config, instr, vector, acc)
    assert result["error"] == want_error
    assert bytes(vector) == want
    if want_error is None and used_mask is not None:
        waves = sparse_attention_waves(config, used_mask)
        assert result["cycles"] == compute_cycles(config, instr, sparse_waves=waves)
    return result


@pytest.mark.parametrize("n,d,predict,margin,kind,seed", [
    (13, 5, 1, 40, "random", 1),        # n not a multiple of the PE array, d of anything
    (40, 3, 1, 60, "random", 2),        # two mask blocks, the last partial
    (17, 16, 1, 0, "random", 3),        # margin 0: only the row maxima
    (9, 20, 1, PREDICT_MARGIN_LIMIT - 1, "random", 4),   # huge margin: everything
    (11, 7, 1, 0, "equal", 5),          # all rows equal: ties at the max, all kept
    (10, 4, 1, 10, "min", 6),           # -128 everywhere
    (14, 6, 0, 0, "random", 7),         # mask from VECTOR
    (37, 2, 0, 0, "empty_rows", 8),     # empty mask rows: zero outputs
    (1, 1, 0, 0, "random", 9),
])
def test_sparse_attn_matches_golden_and_the_perf_model(n, d, predict, margin, kind, seed):
    instr, vector, acc, used = make_case(SMALL, seed=seed, n=n, d=d, predict=predict, margin=margin, kind=kind)
    check(SMALL, instr, vector, acc, used)


@pytest.mark.parametrize("change,code", [
    ({"d": 0}, ErrorCode.INVALID_OPERAND),
    ({"d": 21}, ErrorCode.INVALID_OPERAND),          # above sparse_max_head_dim
    ({"m": 5}, ErrorCode.INVALID_OPERAND),           # m != n
    ({"n": 41, "m": 41}, ErrorCode.INVALID_OPERAND),   # above max_tokens
    ({"v_addr": 4095}, ErrorCode.ADDRESS_OUT_OF_RANGE),
    ({"out_addr": 4095}, ErrorCode.ADDRESS_OUT_OF_RANGE),
    ({"param_addr": 1023}, ErrorCode.ADDRESS_OUT_OF_RANGE),
])
def test_sparse_attn_bad_operands(change, code):
    instr, vector, acc, _ = make_case(SMALL, seed=11, n=8, d=4, predict=1)
    fields = dict(instr.fields, **change)
    bad = Instruction(Opcode.SPARSE_ATTN, **fields)
    result = check(SMALL, bad, vector, acc)
    assert result["error"] == code


def test_sparse_attn_bad_margin_and_mask_address():
    instr, vector, acc, _ = make_case(SMALL, seed=12, n=8, d=4, predict=1, margin=PREDICT_MARGIN_LIMIT)
    assert check(SMALL, instr, vector, acc)["error"] == ErrorCode.INVALID_OPERAND
    # predict=0 ignores the margin but reads the mask: out of VECTOR is an address error...
    bad = Instruction(Opcode.SPARSE_ATTN, **dict(instr.fields, predict=0, mask_addr=4095))
    assert check(SMALL, bad, vector, acc)["error"] == ErrorCode.ADDRESS_OUT_OF_RANGE
    # ...which predict=1 never reads.
    instr, vector, acc, used = make_case(SMALL, seed=12, n=8, d=4, predict=1, margin=30)
    ok = Instruction(Opcode.SPARSE_ATTN, **dict(instr.fields, mask_addr=4095))
    assert check(SMALL, ok, vector, acc, used)["error"] is None


def test_sparse_attn_tiny_digits_head():
    """digits-vit's head on the tiny preset: 17 tokens, head dim 16."""
    instr, vector, acc, used = make_case(TINY, seed=13, n=17, d=16, predict=1, margin=30)
    check(TINY, instr, vector, acc, used)


def test_perf_model_runs_sparse_attn_programs():
    """The scheduler takes SPARSE_ATTN (no longer an INVALID_OPERAND stop) with the estimated
    wave count; the estimate of a density-0.5 random mask is near the exact count."""
    from vitaccel.sim.perf import estimate
    from vitaccel.sim.perf.units import SPARSE_ESTIMATE_DENSITY, sparse_attention_cycles

    instr, *_ = make_case(TINY, seed=14, n=17, d=16, predict=1)
    result = estimate(TINY, [encode(instr), encode(Instruction(Opcode.FINISH))], 4096)
    estimated = sparse_attention_waves(TINY, tokens=17)
    assert result.by_opcode["SPARSE_ATTN"] == sparse_attention_cycles(TINY, instr.fields, estimated)
    rng = np.random.default_rng(15)
    exact = sparse_attention_waves(TINY, rng.random((197, 197)) < SPARSE_ESTIMATE_DENSITY)
    assert abs(sparse_attention_waves(TINY, tokens=197) - exact) <= 0.1 * exact
