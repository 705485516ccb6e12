"""Whole-accelerator cases: programs run in RTL (cocotb) and on the golden machine.

:func:`run_program_case` builds a list of programs (random token-synchronised DMA programs,
hand-written bad programs, random instruction words), runs them in order on one golden
machine and, through ``vitaccel.sim.cocotb.tb_accel``, on the emitted Verilog with a
random-back-pressure ``AxiRam``; then compares per program the final DDR image (runs that
end in FINISH), the status register, and the error code and pc.

Where the hardware legitimately differs from the golden machine the program says so:
``expect_code`` fixes the hardware's error code (WATCHDOG has no golden counterpart; opcodes
in :data:`~vitaccel.hw.accel.core.UNSUPPORTED_OPCODES` stop with INVALID_OPERAND, and so do
parameters a unit is not built for, such as another LAYERNORM table width, and a GEMM with
both ``accumulate`` and ``requant``).
"""

from __future__ import annotations

import dataclasses
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from amaranth.hdl import Shape

from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import Buffer, Instruction, Opcode, Queue, encode
from vitaccel.hw.spec.nonlinear import AddParams
from vitaccel.hw.spec.regmap import ErrorCode, program_crc32

__all__ = ["Program", "random_dma_program", "gelu_program", "add_program", "softmax_program", "layernorm_program", "gemm_program", "default_programs", "bad_programs", "random_word_programs", "golden_outcomes",
           "run_program_case", "STATUS_DONE", "STATUS_ERROR", "topk_program", "gather_program", "package_program",
           "token_programs", "token_bad_programs", "requant_program", "requant_programs", "requant_bad_programs",
           "sparse_attn_program", "sparse_attn_programs", "sparse_attn_bad_programs"]

STATUS_DONE, STATUS_ERROR = 0b010, 0b100
_DDR_BASE = 0x0
_PROGRAM_ADDR = 0x20000   # the program goes here, or past a larger DDR image (4 KiB aligned)
_RAM_BYTES = 0x40000


@dataclass
class Program:
    """One program for both machines. ``expect_code``: the hardware's error code when it
    deliberately differs from the golden machine's (then only the code is compared)."""

    name: str
    words: list[int]
    ddr: np.ndarray
    watchdog: int = 0
    expect_code: ErrorCode | None = None
    golden: dict[str, Any] = field(default_factory=dict)
    #: ``PROGRAM_CRC`` with ``PROGRAM_CHECK.crc`` set, or None (the check off).
    checksum: int | None = None


def _dma(opcode: Opcode, **fields: Any) -> Instruction:
    return Instruction(opcode, **fields)


def random_dma_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, rounds: int,
                       transfers: int, max_row_bytes: int = 80, max_rows: int = 4) -> list[int]:
    """Rounds of LOADs -> compute SYNC -> STOREs, chained by tokens, ending in FINISH.

    Rows, strides, buffer offsets and DDR addresses are random (any byte alignment); each
    round's loads wait for the previous round's stores, as a double-buffered program would.
    """
    program: list[Instruction] = []

    def region(limit: int, rows: int, row_bytes: int, stride: int) -> int:
        span = (rows - 1) * stride + row_bytes
        return rng.randrange(0, limit - span + 1)

    for r in range(rounds):
        for kind in (Opcode.LOAD, Opcode.STORE):
            count = rng.randint(1, transfers)
            for i in range(count):
                buffer = rng.choice(list(Buffer))
                rows, row_bytes = rng.randint(1, max_rows), rng.randint(1, max_row_bytes)
                # a third of the transfers with contiguous DDR rows (one DMA row of them all)
                dram_stride = (row_bytes if rng.random() < 1 / 3 else
                               row_bytes + rng.randint(0, 40) if kind is Opcode.STORE else rng.randint(0, 200))
                sram_stride = row_bytes + rng.randint(0, 40) if kind is Opcode.LOAD else rng.randint(0, 200)
                size = isa.buffer_bytes(config, buffer)
                sram_byte = region(min(size, 4096), rows, row_bytes, sram_stride)
                sram_addr = sram_byte // isa.ADDR_UNIT
                flags: dict[str, int] = {}
                if kind is Opcode.LOAD:
                    flags["pop_next"] = int(i == 0 and r > 0)
                    flags["push_next"] = int(i == count - 1)
                else:
                    flags["pop_prev"] = int(i == 0)
                    flags["push_prev"] = int(i == count - 1)
                program.append(_dma(kind, buffer=buffer, sram_addr=sram_addr,
                                    dram_addr=region(ddr_size, rows, row_bytes, dram_stride), rows=rows,
                                    row_bytes=row_bytes, dram_stride=dram_stride, sram_stride=sram_stride,
                                    **flags))
            if kind is Opcode.LOAD:
                program.append(Instruction(Opcode.SYNC, queue=Queue.COMPUTE, pop_prev=1, push_next=1))
        last = r == rounds - 1
        program.append(Instruction(Opcode.FINISH, pop_next=1) if last else
                       Instruction(Opcode.SYNC, queue=Queue.COMPUTE, pop_next=1, push_prev=1))
    return [encode(instr) for instr in program]


def gelu_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, rows: int, cols: int,
                 lut_offset: int = 0, lut_count: int = isa.GELU_LUT_ENTRIES) -> list[int]:
    """LOAD a GELU table and activations, LUT_LOAD (``lut_count`` entries from ``lut_offset``),
    GELU, STORE the result: one program through all three queues."""
    n = rows * cols
    table_at, x_at, y_at = 0, rng.randrange(16, 32), rng.randrange(64, 96)   # VECTOR units
    table_ddr = rng.randrange(0, ddr_size - isa.GELU_LUT_ENTRIES)
    x_ddr, y_ddr = rng.randrange(0, ddr_size - n), rng.randrange(0, ddr_size - n)

    def dma(opcode: Opcode, sram: int, dram: int, nbytes: int, **flags: int) -> Instruction:
        return Instruction(opcode, buffer=Buffer.VECTOR, sram_addr=sram, dram_addr=dram, rows=1,
                           row_bytes=nbytes, dram_stride=nbytes, sram_stride=nbytes, **flags)

    program = [
        dma(Opcode.LOAD, table_at, table_ddr, isa.GELU_LUT_ENTRIES),
        dma(Opcode.LOAD, x_at, x_ddr, n, push_next=1),
        Instruction(Opcode.LUT_LOAD, lut=isa.LutId.GELU, offset=lut_offset, count=lut_count,
                    src_addr=table_at + lut_offset // isa.ADDR_UNIT, pop_prev=1),
        Instruction(Opcode.GELU, rows=rows, cols=cols, src_addr=x_at, dst_addr=y_at, push_next=1),
        dma(Opcode.STORE, y_at, y_ddr, n, pop_prev=1, push_prev=1),
        Instruction(Opcode.FINISH, pop_next=1),
    ]
    return [encode(instr) for instr in program]



def _ddr_image(rng: random.Random, ddr_size: int, chunks: list[bytes], *, reserve: int,
               what: str) -> tuple[np.ndarray, list[int], int]:
    """A random DDR image with ``chunks`` laid out back to back from address 0, their offsets, and
    the first address after them (where the program's output goes).

    ``reserve`` bytes must stay free beyond them (for the program's outputs).
    """
    if sum(map(len, chunks)) + reserve > ddr_size:
        raise ValueError(f"{what} does not fit a {ddr_size}-byte DDR")
    ddr = np.frombuffer(rng.randbytes(ddr_size), np.uint8).copy()
    at, offsets = 0, []
    for chunk in chunks:
        ddr[at:at + len(chunk)] = np.frombuffer(chunk, np.uint8)
        offsets.append(at)
        at += len(chunk)
    return ddr, offsets, at

def add_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, rows: int, cols: int,
                a_multiplier: int, b_multiplier: int, shift: int, in_place: bool = False,
                extreme: bool = False) -> tuple[list[int], np.ndarray]:
    """LOAD two int8 matrices (VECTOR) and an AddParams block (ACC), ADD, STORE the result.
    Returns (words, DDR). ``in_place`` writes the sum over the first source; ``extreme``
    makes one row of each source the range limits -128 / 127 (so that sums saturate)."""
    n = rows * cols
    a = np.array([rng.randint(-128, 127) for _ in range(n)], np.int64)
    b = np.array([rng.randint(-128, 127) for _ in range(n)], np.int64)
    if extreme:
        a[:cols], b[:cols] = [rng.choice([-128, 127]) for _ in range(cols)], [rng.choice([-128, 127]) for _ in range(cols)]
        a[0], b[0] = -128, -128
    params = isa.pack_add_params(AddParams(a_multiplier, b_multiplier, shift)).astype("<i4")
    chunks = [a.astype(np.int8).tobytes(), b.astype(np.int8).tobytes(), params.tobytes()]
    ddr, offsets, free_at = _ddr_image(rng, ddr_size, chunks, reserve=n, what=f"ADD of {rows}x{cols}")
    units = -(-n // isa.ADDR_UNIT)
    a_at = rng.randrange(0, 4)
    b_at = a_at + units + rng.randrange(0, 3)
    out_at = a_at if in_place else b_at + units + rng.randrange(0, 3)
    p_at = rng.randrange(0, 4)

    def dma(opcode: Opcode, buffer: Buffer, sram: int, dram: int, nbytes: int, **flags: int) -> Instruction:
        return Instruction(opcode, buffer=buffer, sram_addr=sram, dram_addr=dram, rows=1, row_bytes=nbytes,
                           dram_stride=nbytes, sram_stride=nbytes, **flags)

    program = [
        dma(Opcode.LOAD, Buffer.VECTOR, a_at, offsets[0], n),
        dma(Opcode.LOAD, Buffer.VECTOR, b_at, offsets[1], n),
        dma(Opcode.LOAD, Buffer.ACC, p_at, offsets[2], len(chunks[2]), push_next=1),
        Instruction(Opcode.ADD, rows=rows, cols=cols, src_addr=a_at, src2_addr=b_at, dst_addr=out_at,
                    param_addr=p_at, pop_prev=1, push_next=1),
        dma(Opcode.STORE, Buffer.VECTOR, out_at, free_at, n, pop_prev=1, push_prev=1),
        Instruction(Opcode.FINISH, pop_next=1),
    ]
    return [encode(instr) for instr in program], ddr


def softmax_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, rows: int, cols: int,
                    input_scale: float, spread: int, extreme: bool = False) -> tuple[list[int], np.ndarray]:
    """LOAD int32 scores and a SoftmaxParams block (``softmax_params(input_scale)`` for the
    config's tables) into ACC, SOFTMAX into VECTOR, STORE the uint8 probabilities.
    Scores are random within ``±spread``; ``extreme`` puts the int32 limits in the first row
    (saturated differences, a probability of 1)."""
    from vitaccel.hw.spec.nonlinear import softmax_params

    n = rows * cols
    scores = np.array([rng.randint(-spread, spread) for _ in range(n)], np.int64)
    if extreme:
        scores[:cols] = -(1 << 31)
        scores[rng.randrange(cols)] = (1 << 31) - 1
    params = isa.pack_softmax_params(softmax_params(input_scale, exp_lut_bits=config.exp_lut_bits,
                                                    recip_lut_bits=config.recip_lut_bits)).astype("<i4")
    chunks = [scores.astype("<i4").tobytes(), params.tobytes()]
    ddr, offsets, free_at = _ddr_image(rng, ddr_size, chunks, reserve=n, what=f"SOFTMAX of {rows}x{cols}")
    s_at = rng.randrange(0, 4)
    p_at = s_at + -(-4 * n // isa.ADDR_UNIT) + rng.randrange(0, 3)
    out_at = rng.randrange(0, 4)

    def dma(opcode: Opcode, buffer: Buffer, sram: int, dram: int, nbytes: int, **flags: int) -> Instruction:
        return Instruction(opcode, buffer=buffer, sram_addr=sram, dram_addr=dram, rows=1, row_bytes=nbytes,
                           dram_stride=nbytes, sram_stride=nbytes, **flags)

    program = [
        dma(Opcode.LOAD, Buffer.ACC, s_at, offsets[0], len(chunks[0])),
        dma(Opcode.LOAD, Buffer.ACC, p_at, offsets[1], len(chunks[1]), push_next=1),
        Instruction(Opcode.SOFTMAX, rows=rows, cols=cols, src_addr=s_at, dst_addr=out_at, param_addr=p_at,
                    pop_prev=1, push_next=1),
        dma(Opcode.STORE, Buffer.VECTOR, out_at, free_at, n, pop_prev=1, push_prev=1),
        Instruction(Opcode.FINISH, pop_next=1),
    ]
    return [encode(instr) for instr in program], ddr


def layernorm_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, rows: int, cols: int,
                      out_scale: float, extreme: bool = False) -> tuple[list[int], np.ndarray]:
    """LOAD int8 rows (VECTOR) and a LayerNorm parameter block (random gamma / beta folded by
    ``layernorm_params`` for the config's table, ACC), LAYERNORM in place, STORE. A small
    ``out_scale`` saturates; ``extreme`` makes the first row -128 / 127 only (and the second,
    if any, constant: zero variance)."""
    from vitaccel.hw.spec.nonlinear import layernorm_params

    n = rows * cols
    x = np.array([rng.randint(-128, 127) for _ in range(n)], np.int64).reshape(rows, cols)
    if extreme:
        x[0] = [rng.choice([-128, 127]) for _ in range(cols)]
        if rows > 1:
            x[1] = rng.randint(-128, 127)
    gamma = np.array([rng.uniform(-2, 2) for _ in range(cols)])
    beta = np.array([rng.uniform(-1, 1) for _ in range(cols)])
    params = isa.pack_layernorm_params(layernorm_params(0.05, gamma, beta, out_scale, 1e-5,
                                                        rsqrt_lut_bits=config.rsqrt_lut_bits)).astype("<i4")
    chunks = [x.astype(np.int8).tobytes(), params.tobytes()]
    ddr, offsets, _ = _ddr_image(rng, ddr_size, chunks, reserve=0, what=f"LAYERNORM of {rows}x{cols}")
    x_at, p_at = rng.randrange(0, 4), rng.randrange(0, 4)

    def dma(opcode: Opcode, buffer: Buffer, sram: int, dram: int, nbytes: int, **flags: int) -> Instruction:
        return Instruction(opcode, buffer=buffer, sram_addr=sram, dram_addr=dram, rows=1, row_bytes=nbytes,
                           dram_stride=nbytes, sram_stride=nbytes, **flags)

    program = [
        dma(Opcode.LOAD, Buffer.VECTOR, x_at, offsets[0], n),
        dma(Opcode.LOAD, Buffer.ACC, p_at, offsets[1], len(chunks[1]), push_next=1),
        Instruction(Opcode.LAYERNORM, rows=rows, cols=cols, src_addr=x_at, dst_addr=x_at, param_addr=p_at,
                    pop_prev=1, push_next=1),
        dma(Opcode.STORE, Buffer.VECTOR, x_at, offsets[0], n, pop_prev=1, push_prev=1),
        Instruction(Opcode.FINISH, pop_next=1),
    ]
    return [encode(instr) for instr in program], ddr


def gemm_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, m: int, k: int, n: int,
                 bias: bool = True, residual: bool = False, unsigned_a: bool = False, b_transposed: bool = False,
                 extreme: bool = False, requant: bool = True, accumulate: bool = False,
                 bias_limit: int = 1 << 14, a_vector: bool = False, nm: bool = False,
                 nm_corrupt: str | None = None) -> tuple[list[int], np.ndarray]:
    """LOAD A (INPUT, or VECTOR with ``a_vector``, after the output region), B (WEIGHT), a
    parameter block (ACC) and, with ``residual``, the residual (VECTOR); one GEMM; STORE its
    result. Returns (words, DDR).

    With ``nm`` B is pruned to ``config.nm_sparsity`` (largest magnitudes kept) and stored
    compressed (values, then indices: ``isa.nm_weight_layout``) for an ``nm=1`` GEMM;
    ``nm_corrupt`` ("range": an index M, "duplicate": a position used twice) spoils one group.

    With ``requant`` the result is int8 in VECTOR. Without it the GEMM is raw: int32 sums
    to ACC (after the parameter block), with ``accumulate`` added to random int32 partials
    loaded there first (within ``±bias_limit``), and the STORE writes the int32 result.
    ``extreme`` fills A and B with their range limits (-128 / 127, or 0 / 255 for an
    unsigned A) so that accumulators and outputs saturate; otherwise values are random and
    the per-channel scales keep most outputs inside int8. Biases are random within
    ``±bias_limit`` (their int32 limits with ``bias_limit=1 << 31``).
    """
    a_lo, a_hi = (0, 255) if unsigned_a else (-128, 127)
    if extreme:
        a = rng.choice([a_lo, a_hi]) * np.ones((m, k), np.int64)
        a[rng.randrange(m), :] = a_hi if a[0, 0] == a_lo else a_lo
        b = np.array([[rng.choice([-128, 127]) for _ in range(n)] for _ in range(k)], np.int64)
    else:
        a = np.array([[rng.randint(a_lo, a_hi) for _ in range(k)] for _ in range(m)], np.int64)
        b = np.array([[rng.randint(-128, 127) for _ in range(n)] for _ in range(k)], np.int64)
    b_stored = b.T if b_transposed else b
    if nm:
        from vitaccel.hw.spec.nm import compress, magnitude_keep_mask

        keep, group = config.nm_sparsity
        b = np.where(magnitude_keep_mask(b, keep, group), b, 0)
        weights = compress(b, keep, group)
        indices = weights.indices.copy()
        row, col = rng.randrange(weights.groups) * keep, rng.randrange(n)
        if nm_corrupt == "range":
            indices[row + rng.randrange(keep), col] = group
        elif nm_corrupt == "duplicate":
            indices[row + 1, col] = indices[row, col]
        layout = isa.nm_weight_layout(k, n, config.nm_sparsity)
        b_stored = np.zeros(layout.nbytes, np.uint8)
        b_stored[:weights.values.size] = weights.values.view(np.uint8).ravel()
        b_stored[layout.indices_offset:] = indices.ravel()
    biases = [rng.randint(-bias_limit, bias_limit - 1) for _ in range(n)]
    multipliers = [rng.randrange(1 << 30, 1 << 31) for _ in range(n)]
    shifts = [rng.randrange(36, 44) for _ in range(n)]
    params = np.array(biases + multipliers + shifts, "<i4")
    res = np.array([[rng.randint(-128, 127) for _ in range(n)] for _ in range(m)], np.int64)
    partials = np.array([rng.randint(-bias_limit, bias_limit - 1) for _ in range(m * n if accumulate else 0)],
                        "<i4")
    chunks = [a.astype(np.uint8 if unsigned_a else np.int8).tobytes(), b_stored.astype(np.int8).tobytes(),
              params.tobytes(), res.astype(np.int8).tobytes(), partials.tobytes()]
    out_bytes = m * n if requant else 4 * m * n
    ddr, offsets, free_at = _ddr_image(rng, ddr_size, chunks, reserve=out_bytes, what=f"GEMM {m}x{k}x{n}")
    a_at, b_at, p_at, out_at = rng.randrange(0, 4), rng.randrange(0, 4), rng.randrange(0, 4), rng.randrange(0, 4)
    # A raw output goes after the parameter block (which the hardware reads while writing it).
    acc_at = 0 if requant else p_at + -(-len(chunks[2]) // isa.ADDR_UNIT) + rng.randrange(0, 3)

    def dma(opcode: Opcode, buffer: Buffer, sram: int, dram: int, nbytes: int, **flags: int) -> Instruction:
        return Instruction(opcode, buffer=buffer, sram_addr=sram, dram_addr=dram, rows=1, row_bytes=nbytes,
                           dram_stride=nbytes, sram_stride=nbytes, **flags)

    if a_vector:   # past a requantized output (m x n bytes at out_at), which it must not overlap
        a_at = out_at + -(-m * n // isa.ADDR_UNIT) + rng.randrange(0, 3)
    transfers = [(Buffer.VECTOR if a_vector else Buffer.INPUT, a_at, 0), (Buffer.WEIGHT, b_at, 1),
                 (Buffer.ACC, p_at, 2)]
    if residual:
        transfers.append((Buffer.VECTOR, out_at, 3))
    if accumulate:
        transfers.append((Buffer.ACC, acc_at, 4))
    # The last LOAD hands the compute queue its token: LOADs retire in order.
    out_buffer, out_unit = (Buffer.VECTOR, out_at) if requant else (Buffer.ACC, acc_at)
    program = [dma(Opcode.LOAD, buffer, sram, offsets[i], len(chunks[i]), push_next=int(j == len(transfers) - 1))
               for j, (buffer, sram, i) in enumerate(transfers)] + [
        Instruction(Opcode.GEMM, m=m, k=k, n=n, requant=int(requant), accumulate=int(accumulate), bias=int(bias),
                    residual=int(residual), unsigned_a=int(unsigned_a), b_transposed=int(b_transposed),
                    a_vector=int(a_vector), nm=int(nm), a_addr=a_at, b_addr=b_at, param_addr=p_at, out_addr=out_at, acc_addr=acc_at,
                    pop_prev=1, push_next=1),
        dma(Opcode.STORE, out_buffer, out_unit, free_at, out_bytes, pop_prev=1, push_prev=1),
        Instruction(Opcode.FINISH, pop_next=1),
    ]
    return [encode(instr) for instr in program], ddr


def bad_programs(config: AccelConfig, ddr_size: int) -> list[Program]:
    """Hand-written programs that must each stop with a specific error."""
    from vitaccel.hw.accel import UNSUPPORTED_OPCODES

    def load(**kw: Any) -> int:
        base = dict(buffer=Buffer.VECTOR, sram_addr=0, dram_addr=0, rows=1, row_bytes=16, dram_stride=16,
                    sram_stride=16)
        return encode(Instruction(Opcode.LOAD, **{**base, **kw}))

    def store(**kw: Any) -> int:
        base = dict(buffer=Buffer.VECTOR, sram_addr=0, dram_addr=0, rows=1, row_bytes=16, dram_stride=16,
                    sram_stride=16)
        return encode(Instruction(Opcode.STORE, **{**base, **kw}))

    finish = encode(Instruction(Opcode.FINISH))
    # FINISH must wait for the store queue (golden: FINISH with work queued is an error).
    finish_after_store = encode(Instruction(Opcode.FINISH, pop_next=1))
    vector_bytes = isa.buffer_bytes(config, Buffer.VECTOR)
    acc_units = isa.buffer_bytes(config, Buffer.ACC) // 16
    reserved = isa.LAYOUTS[Opcode.SYNC]["reserved"].offset
    cases = [
        ("zero word", [load(), 0, finish], None),
        ("unknown opcode 63", [63, finish], None),
        ("reserved bit", [load(), finish | (1 << (isa.INSTRUCTION_BITS - 1))], None),
        ("SYNC reserved bit", [encode(Instruction(Opcode.SYNC, queue=Queue.COMPUTE)) | (1 << reserved), finish], None),
        ("invalid queue enum", [encode(Instruction(Opcode.SYNC, queue=Queue.COMPUTE)) | (3 << isa.LAYOUTS[Opcode.SYNC]["queue"].offset), finish], None),
        ("load flag on store queue", [store() | (1 << isa.LAYOUTS[Opcode.STORE]["push_next"].offset), finish], None),
        ("ddr out of range", [load(dram_addr=ddr_size - 8), finish], None),
        ("ddr stride out of range", [load(rows=3, dram_stride=ddr_size // 2), finish], None),
        ("sram out of range", [store(sram_addr=vector_bytes // 16 - 1, row_bytes=17, push_prev=1),
                               finish_after_store], None),
        ("load sram stride overlap", [load(rows=2, sram_stride=8), finish], None),
        ("store dram stride overlap", [store(rows=2, dram_stride=15, push_prev=1), finish_after_store], None),
        ("deadlock", [encode(Instruction(Opcode.SYNC, queue=Queue.COMPUTE, pop_prev=1)), finish], None),
        ("finish with store waiting", [load(push_next=1), encode(Instruction(Opcode.SYNC, queue=Queue.COMPUTE, pop_prev=1)),
                            encode(Instruction(Opcode.SYNC, queue=Queue.STORE, pop_prev=1)), finish], None),
        ("missing finish", [load(), load(dram_addr=64)], None),
        ("finish before store", [finish, store()], None),
        ("empty transfers then finish", [load(rows=0), store(row_bytes=0, push_prev=1), finish_after_store], None),
        ("store then finish", [store(push_prev=1), finish_after_store], None),
        ("circular wait", [load(pop_next=1, push_next=1),
                           encode(Instruction(Opcode.SYNC, queue=Queue.COMPUTE, pop_prev=1, push_prev=1)),
                           finish], None),
        # A raw GEMM of the zeros ACC holds at unit 0 (runs); accumulate with requant: the
        # engine's post-processor cannot add partials (the golden machine runs it).
        ("gemm raw", [encode(Instruction(Opcode.GEMM, m=1, k=1, n=1)), finish], None),
        ("gemm accumulate", [encode(Instruction(Opcode.GEMM, m=1, k=1, n=1, requant=1, accumulate=1)), finish],
         ErrorCode.INVALID_OPERAND),
        ("gemm raw output out of range", [encode(Instruction(Opcode.GEMM, m=4, k=1, n=5, acc_addr=acc_units - 1)),
                                          finish], None),
        ("gemm partials out of range", [encode(Instruction(Opcode.GEMM, m=2, k=1, n=3, accumulate=1,
                                                           acc_addr=acc_units - 1)), finish], None),
        ("gemm a out of range", [encode(Instruction(Opcode.GEMM, m=2, k=16, n=1, requant=1,
                                                    a_addr=isa.buffer_bytes(config, Buffer.INPUT) // 16 - 1)),
                                 finish], None),
        ("gemm residual without requant", [encode(Instruction(Opcode.GEMM, m=1, k=1, n=1, residual=1)), finish],
         None),
        ("gemm a_vector with residual", [encode(Instruction(Opcode.GEMM, m=1, k=1, n=1, requant=1, residual=1,
                                                            a_vector=1)), finish], None),
        ("gemm a_vector a out of range", [encode(Instruction(Opcode.GEMM, m=2, k=16, n=1, requant=1, a_vector=1,
                                                             a_addr=vector_bytes // 16 - 1)), finish], None),
        # In range of VECTOR (which is larger than INPUT on every preset): runs.
        ("gemm a_vector past input", [encode(Instruction(Opcode.GEMM, m=1, k=16, n=1, a_vector=1,
                                                         a_addr=isa.buffer_bytes(config, Buffer.INPUT) // 16)),
                                      finish], None),
        ("gemm zero k", [encode(Instruction(Opcode.GEMM, m=1, k=0, n=1, requant=1)), finish], None),
        ("gemm output out of range", [encode(Instruction(Opcode.GEMM, m=4, k=1, n=5, requant=1, bias=1,
                                                         out_addr=vector_bytes // 16 - 1)), finish], None),
        *((f"unsupported {op.name.lower()}", [encode(Instruction(op)), finish], ErrorCode.INVALID_OPERAND)
          for op in UNSUPPORTED_OPCODES if op is not Opcode.GEMM),
        ("lut_load past the table", [encode(Instruction(Opcode.LUT_LOAD, offset=200, count=57)), finish], None),
        ("lut_load source out of range", [encode(Instruction(Opcode.LUT_LOAD, count=17,
                                                             src_addr=vector_bytes // 16 - 1)), finish], None),
        ("gelu destination out of range", [encode(Instruction(Opcode.GELU, rows=2, cols=9, src_addr=0,
                                                              dst_addr=vector_bytes // 16 - 1)), finish], None),
    ]
    out = [Program(name, words, np.zeros(ddr_size, np.uint8), expect_code=code) for name, words, code in cases]
    # Parameter values the golden requantize rejects: a negative multiplier, a zero shift.
    params_from_ddr = [load(buffer=Buffer.ACC, row_bytes=12, dram_stride=12, sram_stride=12, push_next=1),
                       encode(Instruction(Opcode.GEMM, m=1, k=1, n=1, requant=1, pop_prev=1)), finish]
    for name, multiplier, shift in (("gemm negative multiplier", -1, 5), ("gemm zero shift", 1 << 30, 0)):
        ddr = np.zeros(ddr_size, np.uint8)
        ddr[:12] = np.frombuffer(np.array([0, multiplier, shift], "<i4").tobytes(), np.uint8)
        out.append(Program(name, params_from_ddr, ddr))
    # Raw GEMMs whose int32 sums overflow (A = 1 at DDR 0, B = 1 / -1 at DDR 16 / 32, the
    # bias block at DDR 48, a partial at DDR 64): the golden machine checks the overflow
    # before the output region, so an out-of-range output still reports INVALID_OPERAND.
    raw_loads = [load(buffer=Buffer.INPUT), load(buffer=Buffer.WEIGHT, dram_addr=16),
                 load(buffer=Buffer.WEIGHT, sram_addr=1, dram_addr=32),
                 load(buffer=Buffer.ACC, dram_addr=48), load(buffer=Buffer.ACC, sram_addr=1, dram_addr=64, push_next=1)]
    raw_cases = [  # (name, bias, partial, GEMM fields)
        ("gemm raw bias overflow", (1 << 31) - 1, 0, dict(bias=1, acc_addr=2)),
        ("gemm raw overflow, output out of range", (1 << 31) - 1, 0, dict(bias=1, acc_addr=acc_units)),
        ("gemm raw output out of range, bias", 5, 0, dict(m=3, n=7, bias=1, acc_addr=acc_units - 1)),
        ("gemm accumulate overflow", 0, -(1 << 31), dict(b_addr=1, accumulate=1, acc_addr=1)),
    ]
    for name, bias_value, partial, fields in raw_cases:
        ddr = np.zeros(ddr_size, np.uint8)
        ddr[0], ddr[16], ddr[32] = 1, 1, 0xFF
        ddr[48:52] = np.frombuffer(np.array([bias_value], "<i4").tobytes(), np.uint8)
        ddr[64:68] = np.frombuffer(np.array([partial], "<i4").tobytes(), np.uint8)
        gemm = encode(Instruction(Opcode.GEMM, **{"m": 1, "k": 1, "n": 1, **fields}, pop_prev=1))
        out.append(Program(name, [*raw_loads, gemm, finish], ddr))
    # ADD: a shift the rounding rule rejects, an empty ADD (whose parameter block, at ACC
    # unit 0, the programs after it use), then operand checks in the golden machine's order.
    for name, unit, shift in (("add shift too large", 1, 63), ("add empty", 0, 62)):
        ddr = np.zeros(ddr_size, np.uint8)
        ddr[:12] = np.frombuffer(isa.pack_add_params(AddParams(3, 5, shift)).astype("<i4").tobytes(), np.uint8)
        out.append(Program(name, [load(buffer=Buffer.ACC, sram_addr=unit, row_bytes=12, dram_stride=12,
                                       sram_stride=12, push_next=1),
                                  encode(Instruction(Opcode.ADD, rows=0, cols=5, param_addr=unit, pop_prev=1)),
                                  finish], ddr))
    add_cases = [("add source2 out of range", dict(rows=2, cols=9, src2_addr=vector_bytes // 16 - 1,
                                                   param_addr=acc_units)),
                 ("add params out of range", dict(rows=1, cols=4, param_addr=acc_units)),
                 ("add destination out of range", dict(rows=3, cols=6, dst_addr=vector_bytes // 16 - 1))]
    for name, fields in add_cases:
        out.append(Program(name, [encode(Instruction(Opcode.ADD, **fields)), finish], np.zeros(ddr_size, np.uint8)))
    # SOFTMAX: a parameter block at ACC unit 2 with the config's tables, variants of it.
    from vitaccel.hw.spec.nonlinear import softmax_params

    good = softmax_params(0.01, exp_lut_bits=config.exp_lut_bits, recip_lut_bits=config.recip_lut_bits)
    softmax_cases = [  # (name, params, instruction fields, hardware code where it may differ)
        ("softmax shift too large", dataclasses.replace(good, shift=63), dict(rows=1, cols=4), None),
        ("softmax other exp table", dataclasses.replace(good, exp_lut_bits=config.exp_lut_bits + 1),
         dict(rows=1, cols=4), None),
        ("softmax multiplier too wide", dataclasses.replace(good, multiplier=1 << 16), dict(rows=1, cols=4), None),
        ("softmax row too long", good, dict(rows=1, cols=config.max_tokens + 1), None),
        ("softmax destination out of range", good, dict(rows=2, cols=9, dst_addr=vector_bytes // 16 - 1), None),
        ("softmax scores out of range", good, dict(rows=2, cols=9, src_addr=acc_units - 4), None),
    ]
    for name, params, fields, code in softmax_cases:
        ddr = np.zeros(ddr_size, np.uint8)
        ddr[:16] = np.frombuffer(isa.pack_softmax_params(params).astype("<i4").tobytes(), np.uint8)
        out.append(Program(name, [load(buffer=Buffer.ACC, sram_addr=2, push_next=1),
                                  encode(Instruction(Opcode.SOFTMAX, param_addr=2, pop_prev=1, **fields)), finish],
                           ddr, expect_code=code))
    # LAYERNORM: a 4-channel parameter block at ACC unit 4, variants of it.
    from vitaccel.hw.spec.nonlinear import layernorm_params

    ln = layernorm_params(0.05, np.array([1.0, -0.5, 2.0, 0.25]), np.array([0.1, 0.0, -0.3, 0.2]), 0.02,
                          rsqrt_lut_bits=config.rsqrt_lut_bits)
    layernorm_cases = [  # (name, params, instruction fields, hardware code where it may differ)
        ("layernorm channels differ", ln, dict(rows=1, cols=5), None),
        ("layernorm source out of range", ln, dict(rows=5, cols=4, src_addr=vector_bytes // 16 - 1), None),
        ("layernorm out_shift too large", dataclasses.replace(ln, out_shift=63), dict(rows=1, cols=4), None),
        ("layernorm other rsqrt table", dataclasses.replace(ln, rsqrt_lut_bits=config.rsqrt_lut_bits + 1),
         dict(rows=1, cols=4), None),
        ("layernorm destination out of range", ln, dict(rows=5, cols=4, dst_addr=vector_bytes // 16 - 1), None),
        ("layernorm gamma too wide", dataclasses.replace(ln, gamma=(1 << 17, *ln.gamma[1:])), dict(rows=1, cols=4),
         None),
        ("layernorm beta too wide", dataclasses.replace(ln, beta=(*ln.beta[:3], -(1 << 47) - 1)), dict(rows=1, cols=4),
         None),
    ]
    for name, params, fields, code in layernorm_cases:
        ddr = np.zeros(ddr_size, np.uint8)
        block = isa.pack_layernorm_params(params).astype("<i4").tobytes()
        ddr[:len(block)] = np.frombuffer(block, np.uint8)
        out.append(Program(name, [load(buffer=Buffer.ACC, sram_addr=4, row_bytes=len(block), dram_stride=len(block),
                                       sram_stride=len(block), push_next=1),
                                  encode(Instruction(Opcode.LAYERNORM, param_addr=4, pop_prev=1, **fields)), finish],
                           ddr, expect_code=code))
    big = [load(rows=ddr_size // 256, row_bytes=256, dram_stride=256, sram_stride=256, push_next=1),
           encode(Instruction(Opcode.FINISH, pop_prev=1))]
    out.append(Program("watchdog", big, np.zeros(ddr_size, np.uint8), watchdog=40,
                       expect_code=ErrorCode.WATCHDOG))
    # The program checksum: a wrong PROGRAM_CRC stops before anything runs, also over an
    # illegal word (the corruption is the cause); the right one lets the program run.
    stored = [load(push_next=1), encode(Instruction(Opcode.FINISH, pop_prev=1))]
    right = program_crc32(b"".join(w.to_bytes(16, "little") for w in stored))
    out.append(Program("checksum right", stored, np.zeros(ddr_size, np.uint8), checksum=right))
    out.append(Program("checksum wrong", stored, np.zeros(ddr_size, np.uint8), checksum=right ^ 1 << 7))
    out.append(Program("checksum wrong with illegal word", [load(), 0, finish], np.zeros(ddr_size, np.uint8),
                       checksum=right))
    return out


def random_word_programs(rng: random.Random, ddr_size: int, count: int) -> list[Program]:
    """Programs of random 128-bit words, and valid programs with one random bit flipped."""
    out = []
    for i in range(count):
        words = [rng.getrandbits(isa.INSTRUCTION_BITS) for _ in range(rng.randint(1, 4))]
        out.append(Program(f"random words {i}", words, np.zeros(ddr_size, np.uint8)))
    return out


def golden_outcomes(config: AccelConfig, programs: list[Program]) -> None:
    """Run ``programs`` in order on one golden machine; fill each ``golden`` record."""
    from vitaccel.sim.golden.machine import GoldenMachine, MachineError

    machine = GoldenMachine(config)
    for program in programs:
        ddr = program.ddr.copy()
        try:
            machine.run(program.words, ddr, checksum=program.checksum)
            program.golden = {"code": ErrorCode.NONE, "pc": None, "ddr": ddr}
        except MachineError as err:
            program.golden = {"code": err.code, "pc": err.pc, "ddr": None, "message": str(err)}


def _compare(program: Program, record: dict[str, Any]) -> list[str]:
    """Differences between the RTL's record and the golden (or expected) outcome."""
    problems = []
    if not record["interrupt"]:
        return [f"no interrupt within {record['waited']} cycles (hang)"]
    code = ErrorCode(record["error_code"])
    want = program.expect_code if program.expect_code is not None else program.golden["code"]
    if code is not want:
        problems.append(f"error code {code.name}, expected {want.name} ({program.golden.get('message', 'golden ok')})")
    status = STATUS_DONE if want is ErrorCode.NONE else STATUS_ERROR
    if record["status"] != status:
        problems.append(f"status {record['status']:#05b}, expected {status:#05b}")
    if program.expect_code is None and want is not ErrorCode.NONE and program.golden["pc"] is not None \
            and record["error_pc"] != program.golden["pc"]:
        problems.append(f"error pc {record['error_pc']}, golden {program.golden['pc']}")
    if want is ErrorCode.NONE:
        got = np.frombuffer(bytes.fromhex(record["ddr"]), np.uint8)
        diff = np.flatnonzero(got != program.golden["ddr"])
        if diff.size:
            pos = int(diff[0])
            problems.append(f"DDR differs at {diff.size} bytes, first {pos:#x}: "
                            f"rtl {got[pos]:#04x} golden {program.golden['ddr'][pos]:#04x}")
        if record["total_cycles"] <= 0 or record["instructions_retired"] != len(program.words):
            problems.append(f"counters: cycles {record['total_cycles']}, retired "
                            f"{record['instructions_retired']} of {len(program.words)}")
    return problems


def default_programs(config: AccelConfig, *, seed: int, quick: bool, ddr_size: int = 4096) -> list[Program]:
    """Valid random DMA programs first (buffers persist between runs), then bad programs,
    then random words."""
    rng = random.Random(seed)
    programs = []
    for i in range(2 if quick else 6):
        ddr = np.frombuffer(rng.randbytes(ddr_size), np.uint8).copy()
        words = random_dma_program(rng, config, ddr_size, rounds=1 if quick and i == 0 else 2,
                                   transfers=2 if quick else 3)
        programs.append(Program(f"dma program {i}", words, ddr))
    for i, (rows, cols, offset, count) in enumerate([(3, 7, 0, 256), (2, 40, 32, 100)][:1 if quick else 2]):
        ddr = np.frombuffer(rng.randbytes(ddr_size), np.uint8).copy()
        words = gelu_program(rng, config, ddr_size, rows=rows, cols=cols, lut_offset=offset, lut_count=count)
        programs.append(Program(f"gelu program {i}", words, ddr))
    # Requantizing GEMMs on the matrix engine: shapes off the tile grid, residual and
    # unsigned A, a transposed B with saturating range limits.
    gemms = [(5, 7, 6, dict(bias=True, unsigned_a=True, residual=True)),
             (3, 16, 9, dict(bias=True, b_transposed=True, extreme=True))]
    for m, k, n, flags in gemms[:1 if quick else 2]:
        words, ddr = gemm_program(rng, config, ddr_size, m=m, k=k, n=n, **flags)
        programs.append(Program(f"gemm {m}x{k}x{n}", words, ddr))
    # Raw int32 GEMMs to ACC: bias and unsigned A; ACC partials, transposed B, range limits.
    raw_gemms = [(5, 7, 6, dict(bias=True, unsigned_a=True)),
                 (6, 5, 9, dict(bias=False, accumulate=True, b_transposed=True, extreme=True, bias_limit=1 << 30))]
    for m, k, n, flags in raw_gemms[:1 if quick else 2]:
        words, ddr = gemm_program(rng, config, ddr_size, m=m, k=k, n=n, requant=False, **flags)
        programs.append(Program(f"raw gemm {m}x{k}x{n}", words, ddr))
    # Residual ADDs in the controller: a saturating one with the widest multipliers, in place.
    adds = [(3, 11, 23000, 17000, 15, dict()),
            (2, 9, (1 << 32) - 1, (1 << 31) + 5, 38, dict(in_place=True, extreme=True))]
    for rows, cols, a_mult, b_mult, shift, flags in adds[:1 if quick else 2]:
        words, ddr = add_program(rng, config, ddr_size, rows=rows, cols=cols, a_multiplier=a_mult,
                                 b_multiplier=b_mult, shift=shift, **flags)
        programs.append(Program(f"add {rows}x{cols}", words, ddr))
    # SOFTMAX through the non-linear unit (when the config has it): a row off the lane grid,
    # and int32 limits.
    softmaxes = [(2, 7, 0.01, 500, False), (3, 5, 0.002, 3000, True)] if config.has_softmax else []
    for rows, cols, scale, spread, extreme in softmaxes[:1 if quick else 2]:
        words, ddr = softmax_program(rng, config, ddr_size, rows=rows, cols=cols, input_scale=scale,
                                     spread=spread, extreme=extreme)
        programs.append(Program(f"softmax {rows}x{cols}", words, ddr))
    # LAYERNORM through the non-linear unit (when the config has it), in place.
    layernorms = [(2, 6, 0.02, False), (3, 9, 0.002, True)] if config.has_layernorm else []
    for rows, cols, out_scale, extreme in layernorms[:1 if quick else 2]:
        words, ddr = layernorm_program(rng, config, ddr_size, rows=rows, cols=cols, out_scale=out_scale,
                                       extreme=extreme)
        programs.append(Program(f"layernorm {rows}x{cols}", words, ddr))
    # TOPK / GATHER / PACKAGE (INVALID_OPERAND throughout on a config without the top-k engine).
    programs += token_programs(config, seed=seed + 1, quick=quick, ddr_size=ddr_size)
    programs += bad_programs(config, ddr_size)
    programs += token_bad_programs(config, ddr_size)
    programs += requant_programs(config, seed=seed + 2, quick=quick, ddr_size=ddr_size)
    programs += requant_bad_programs(config, ddr_size)
    programs += random_word_programs(rng, ddr_size, 4 if quick else 16)
    return programs


def run_program_case(config: AccelConfig, *, seed: int = 0, simulator: str = "verilator",
                     words: list[int] | None = None, ddr: np.ndarray | None = None, quick: bool = False, backpressure: float = 0.3,
                     max_latency: int = 4, max_cycles: int | None = None, program_offset: int = 0,
                     programs: list[Program] | None = None) -> dict[str, Any]:
    """Programs on the RTL and on the golden machine, compared (see the module docstring).

    Parameters
    ----------
    words, ddr : optional
        One program and its DDR image to run (instead of the default suite).
    programs : list of Program, optional
        These programs instead of the default suite (e.g. with checksums).
    max_cycles : int, optional
        Cycles to wait for each program's interrupt (then it counts as a hang); default
        200 000 for the default suite, 10 000 000 for a given program (a compiled tiny
        digits-vit takes about 0.9 M).
    program_offset : int
        Bytes added to the program's DDR address (not a multiple of 16: unaligned fetch).

    Returns
    -------
    dict
        ``passed``, ``programs`` (per program: name, code, cycles, problems), ``mismatches``.
    """
    from vitaccel.hw.accel import ACCEL_TOP_NAME
    from vitaccel.hw.platform.verilog import accelerator_verilog
    from vitaccel.sim.runner import run_testbench

    given = programs
    if programs is not None:
        programs = list(programs)
    elif words is not None:
        if ddr is None:
            raise ValueError("run_program_case: words needs its ddr image")
        programs = [Program("program", list(words), np.asarray(ddr, np.uint8).copy())]
    else:
        programs = default_programs(config, seed=seed, quick=quick)
    if max_cycles is None:
        max_cycles = 200_000 if words is None and given is None else 10_000_000
    golden_outcomes(config, programs)
    biggest = max(p.ddr.size for p in programs)
    program_addr = max(_PROGRAM_ADDR, -(-(_DDR_BASE + biggest) // 4096) * 4096)
    if not 0 <= program_offset < 4096:
        raise ValueError(f"program_offset must be in 0..4095, got {program_offset}")
    ram_bytes = max(_RAM_BYTES, program_addr + program_offset + 16 * max(len(p.words) for p in programs))
    with tempfile.TemporaryDirectory(prefix="vitaccel-accel-") as tmp:
        case_file, result_file = Path(tmp) / "case.json", Path(tmp) / "result.json"
        case_file.write_text(json.dumps({
            "seed": seed, "ram_bytes": ram_bytes, "backpressure": backpressure, "max_latency": max_latency,
            "ddr_base": _DDR_BASE, "program_addr": program_addr + program_offset, "max_cycles": max_cycles,
            "programs": [{"name": p.name, "words": [f"{w:x}" for w in p.words], "ddr": p.ddr.tobytes().hex(),
                          "watchdog": p.watchdog, "checksum": p.checksum} for p in programs]}))
        run_testbench(verilog=accelerator_verilog(config), toplevel=ACCEL_TOP_NAME,
                      test_module="vitaccel.sim.cocotb.tb_accel", simulator=simulator,
                      params={"case_file": str(case_file), "result_file": str(result_file)}, seed=seed)
        records = json.loads(result_file.read_text())
    summary, mismatches = [], []
    for program, record in zip(programs, records):
        problems = _compare(program, record)
        entry = {**{k: record[k] for k in record if k not in ("ddr", "name")},
                 "name": program.name, "instructions": len(program.words),
                 "error_code": ErrorCode(record["error_code"]).name, "error_pc": record["error_pc"],
                 "golden_code": program.golden["code"].name, "problems": problems}
        summary.append(entry)
        if problems:
            mismatches.append({"name": program.name, "problems": problems})
    if len(records) < len(programs):
        mismatches.append({"name": programs[len(records)].name if records else programs[0].name,
                           "problems": ["testbench stopped early"]})
    return {"passed": not mismatches, "config": config.name, "simulator": simulator, "seed": seed,
            "programs": summary, "mismatches": mismatches}


def run_regress_case(config: AccelConfig, *, seed: int = 0, simulator: str = "verilator",
                     quick: bool = False) -> dict[str, Any]:
    """:func:`run_program_case` on the default program suite, in the regression runner's terms:
    ``cycles`` (TOTAL_CYCLES counters) summed over the programs, ``mismatch`` the first program
    that differs."""
    outcome = run_program_case(config, seed=seed, simulator=simulator, quick=quick)
    cycles = sum(int(program.get("total_cycles", 0) or 0) for program in outcome["programs"])
    return {"passed": outcome["passed"], "cycles": cycles,
            "mismatch": outcome["mismatches"][0] if outcome["mismatches"] else None,
            "programs": len(outcome["programs"])}


# -- token pruning (TOPK, GATHER, PACKAGE on the top-k engine) and REQUANT --------------------------

def _with_flags(instr: Instruction, **flags: int) -> Instruction:
    """``instr`` with the dependency flags ``flags`` set."""
    return Instruction(instr.opcode, **{**instr.fields, **flags})


def _vector_program(rng: random.Random, ddr_size: int, chunks: list[bytes], compute, out_bytes: int, *,
                    what: str, out_buffer: Buffer = Buffer.VECTOR,
                    buffers: list[Buffer] | None = None) -> tuple[list[int], np.ndarray]:
    """LOAD ``chunks`` (into VECTOR, or ``buffers``) one after another at random unit gaps, run
    ``compute(addresses, out_at)`` (one compute Instruction), STORE ``out_bytes`` from ``out_at``
    of VECTOR. Returns (words, DDR)."""
    buffers = buffers or [Buffer.VECTOR] * len(chunks)
    ddr, offsets, free_at = _ddr_image(rng, ddr_size, chunks, reserve=out_bytes, what=what)
    at = {buffer: rng.randrange(0, 3) for buffer in Buffer}
    addresses = []
    for chunk, buffer in zip(chunks, buffers):
        addresses.append(at[buffer])
        at[buffer] += -(-len(chunk) // isa.ADDR_UNIT) + rng.randrange(0, 3)
    out_at = at[Buffer.VECTOR] + rng.randrange(0, 2)

    def dma(opcode: Opcode, buffer: Buffer, sram: int, dram: int, nbytes: int, **flags: int) -> Instruction:
        return Instruction(opcode, buffer=buffer, sram_addr=sram, dram_addr=dram, rows=1, row_bytes=nbytes,
                           dram_stride=nbytes, sram_stride=nbytes, **flags)

    loads = [dma(Opcode.LOAD, buffer, sram, offsets[i], len(chunk))
             for i, (chunk, buffer, sram) in enumerate(zip(chunks, buffers, addresses)) if chunk]
    loads = loads or [dma(Opcode.LOAD, Buffer.VECTOR, 0, 0, 0)]
    loads[-1] = _with_flags(loads[-1], push_next=1)   # LOADs retire in order: the last hands over
    instr = _with_flags(compute(addresses, out_at), pop_prev=1, push_next=1)
    program = [*loads, instr,
               dma(Opcode.STORE, Buffer.VECTOR, out_at, free_at, out_bytes, pop_prev=1, push_prev=1),
               Instruction(Opcode.FINISH, pop_next=1)]
    return [encode(i) for i in program], ddr


def _scores(rng: random.Random, shape: tuple[int, ...], limit: int, mode: str) -> np.ndarray:
    """Random scores below ``limit``: ``random``, ``ties`` (four values), ``equal`` (one value),
    ``extreme`` (0 and ``limit - 1`` only), ``zero``."""
    size = int(np.prod(shape))
    if mode == "random":
        values = [rng.randrange(limit) for _ in range(size)]
    elif mode == "ties":
        levels = [rng.randrange(limit) for _ in range(4)]
        values = [rng.choice(levels) for _ in range(size)]
    elif mode == "equal":
        values = [rng.randrange(limit)] * size
    elif mode == "zero":
        values = [0] * size
    elif mode == "extreme":
        values = [rng.choice([0, limit - 1]) for _ in range(size)]
    else:
        raise ValueError(f"score mode {mode!r}")
    return np.array(values, np.int64).reshape(shape)


def topk_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, rows: int, n: int, k: int,
                 sum_rows: bool = False, mode: str = "random") -> tuple[list[int], np.ndarray]:
    """LOAD ``rows`` score rows of ``n`` (uint16, or uint8 summed column-wise with ``sum_rows``)
    into VECTOR, TOPK, STORE the uint16 indices. ``mode``: see :func:`_scores`."""
    scores = _scores(rng, (rows, n), 256 if sum_rows else 1 << 16, mode)
    chunk = scores.astype(np.uint8 if sum_rows else "<u2").tobytes()
    out_bytes = 2 * k * (1 if sum_rows else rows)
    return _vector_program(rng, ddr_size, [chunk], lambda at, out: Instruction(
        Opcode.TOPK, rows=rows, n=n, k=k, sum_rows=int(sum_rows), src_addr=at[0], dst_addr=out),
        out_bytes, what=f"TOPK {rows}x{n} k={k}")


def gather_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, rows: int, n: int, cols: int,
                   ascending: bool = True) -> tuple[list[int], np.ndarray]:
    """LOAD ``n`` rows of ``cols`` bytes and ``rows`` uint16 indices (ascending distinct as TOPK
    writes them, or random with repeats) into VECTOR, GATHER, STORE the gathered rows."""
    if ascending:
        indices = sorted(rng.sample(range(n), rows))
    else:
        indices = [rng.randrange(n) for _ in range(rows)]
    source = rng.randbytes(n * cols)
    chunks = [np.array(indices, "<u2").tobytes(), source]
    return _vector_program(rng, ddr_size, chunks, lambda at, out: Instruction(
        Opcode.GATHER, rows=rows, cols=cols, n=n, index_addr=at[0], src_addr=at[1], dst_addr=out),
        rows * cols, what=f"GATHER {rows} of {n}x{cols}")


def package_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, n: int, cols: int, k: int,
                    heads: int, mode: str = "random", extreme: bool = False) -> tuple[list[int], np.ndarray]:
    """LOAD ``heads`` uint8 probability rows of ``n``, ``k`` kept indices (random order) and
    ``n`` int8 token rows of ``cols`` into VECTOR, PACKAGE, STORE the package token.
    ``mode`` shapes the probabilities (:func:`_scores`); ``extreme`` makes tokens -128 / 127."""
    probs = _scores(rng, (heads, n), 256, mode)
    kept = rng.sample(range(n), k)
    x = np.array([rng.choice([-128, 127]) if extreme else rng.randint(-128, 127) for _ in range(n * cols)],
                 np.int64)
    chunks = [probs.astype(np.uint8).tobytes(), np.array(kept, "<u2").tobytes(), x.astype(np.int8).tobytes()]
    return _vector_program(rng, ddr_size, chunks, lambda at, out: Instruction(
        Opcode.PACKAGE, n=n, cols=cols, k=k, heads=heads, prob_addr=at[0], index_addr=at[1], src_addr=at[2],
        dst_addr=out), cols, what=f"PACKAGE of {n}x{cols} k={k}")


#: (rows, n, k, sum_rows, mode): ties, all-equal scores, k = n, k = 1, k = 0, rows and n off
#: the lane grid, uint16 limits, the widest column sum (257 rows of 255 = 65535).
TOPK_CASES = [(2, 13, 5, False, "random"), (3, 9, 4, False, "ties"), (1, 7, 7, False, "equal"),
              (1, 11, 1, False, "extreme"), (4, 10, 3, True, "random"), (3, 6, 2, True, "ties"),
              (2, 5, 5, True, "equal"), (1, 4, 0, False, "random"), (257, 3, 1, True, "extreme")]
#: (rows, n, cols, ascending): TOPK-style index lists and repeats in any order.
GATHER_CASES = [(5, 9, 7, True), (6, 4, 3, False), (1, 1, 17, True), (0, 3, 5, True)]
#: (n, cols, k, heads, mode, extreme): ties, no pruned token (k = n), all-zero weights,
#: saturating tokens, the widest weights (four heads of 255).
PACKAGE_CASES = [(9, 6, 4, 3, "random", False), (7, 5, 2, 2, "ties", True), (5, 3, 5, 1, "random", False),
                 (6, 4, 1, 2, "equal", False), (8, 3, 3, 4, "extreme", True), (5, 4, 2, 1, "zero", False)]


def token_programs(config: AccelConfig, *, seed: int, quick: bool = False, ddr_size: int = 4096) -> list[Program]:
    """TOPK, GATHER and PACKAGE programs of :data:`TOPK_CASES`, :data:`GATHER_CASES` and
    :data:`PACKAGE_CASES` (every other case when ``quick``)."""
    rng = random.Random(seed)
    step = 2 if quick else 1
    programs = []
    for rows, n, k, sum_rows, mode in TOPK_CASES[::step]:
        if rows * n * (1 if sum_rows else 2) > ddr_size - 64:
            continue
        words, ddr = topk_program(rng, config, ddr_size, rows=rows, n=n, k=k, sum_rows=sum_rows, mode=mode)
        programs.append(Program(f"topk {rows}x{n} k={k} sum_rows={sum_rows} {mode}", words, ddr))
    for rows, n, cols, ascending in GATHER_CASES[::step]:
        words, ddr = gather_program(rng, config, ddr_size, rows=rows, n=n, cols=cols, ascending=ascending)
        programs.append(Program(f"gather {rows} of {n}x{cols}", words, ddr))
    for n, cols, k, heads, mode, extreme in PACKAGE_CASES[::step]:
        words, ddr = package_program(rng, config, ddr_size, n=n, cols=cols, k=k, heads=heads, mode=mode,
                                     extreme=extreme)
        programs.append(Program(f"package {n}x{cols} k={k} heads={heads} {mode}", words, ddr))
    return programs


def _past_end(units: int) -> int:
    """An on-chip address at or past the end of a buffer of ``units`` units, where the ISA's
    address field reaches one; else the field's largest value (a buffer that fills the field,
    zcu102's VECTOR, has no encodable address past its end)."""
    largest = (1 << Shape.cast(isa.LAYOUTS[Opcode.LOAD].members["sram_addr"]).width) - 1
    return min(units, largest)


def token_bad_programs(config: AccelConfig, ddr_size: int) -> list[Program]:
    """TOPK, GATHER and PACKAGE programs that must stop, each check in the golden machine's
    order (the same programs on a config without ``has_topk`` stop at the unit check)."""
    vector_units = isa.buffer_bytes(config, Buffer.VECTOR) // isa.ADDR_UNIT
    last, beyond = vector_units - 1, _past_end(vector_units)
    finish = encode(Instruction(Opcode.FINISH))
    # VECTOR unit 0: indices 0, 1, 2, 300 (uint16); unit 1: index 3, then more.
    ddr = np.zeros(ddr_size, np.uint8)
    ddr[:8] = np.frombuffer(np.array([0, 1, 2, 300], "<u2").tobytes(), np.uint8)
    ddr[16:18] = np.frombuffer(np.array([3], "<u2").tobytes(), np.uint8)
    load = encode(Instruction(Opcode.LOAD, buffer=Buffer.VECTOR, sram_addr=0, dram_addr=0, rows=1, row_bytes=64,
                              dram_stride=64, sram_stride=64, push_next=1))
    m = config.max_tokens
    cases = [
        ("topk k > n", Instruction(Opcode.TOPK, rows=1, n=3, k=4)),
        ("topk n > max_tokens", Instruction(Opcode.TOPK, rows=1, n=m + 1, k=1)),
        ("topk sum_rows zero rows", Instruction(Opcode.TOPK, rows=0, n=3, k=1, sum_rows=1)),
        ("topk sum_rows 258 rows", Instruction(Opcode.TOPK, rows=258, n=3, k=1, sum_rows=1, src_addr=last)),
        ("topk scores out of range", Instruction(Opcode.TOPK, rows=2, n=5, k=1, src_addr=last)),
        ("topk summed scores out of range", Instruction(Opcode.TOPK, rows=2, n=9, k=1, sum_rows=1, src_addr=last)),
        ("topk indices out of range", Instruction(Opcode.TOPK, rows=3, n=4, k=3, dst_addr=last)),
        ("topk summed indices out of range", Instruction(Opcode.TOPK, rows=3, n=9, k=9, sum_rows=1, dst_addr=last)),
        ("topk empty rows, destination past the end", Instruction(Opcode.TOPK, rows=0, n=5, k=2, src_addr=3,
                                                                         dst_addr=_past_end(vector_units + 1))),
        ("gather source out of range", Instruction(Opcode.GATHER, rows=3, n=4, cols=5, src_addr=last,
                                                   index_addr=beyond)),
        ("gather index list out of range", Instruction(Opcode.GATHER, rows=9, n=4, cols=5, index_addr=last)),
        ("gather index >= n", Instruction(Opcode.GATHER, rows=4, n=300, cols=2, src_addr=2, dst_addr=last)),
        ("gather index > n", Instruction(Opcode.GATHER, rows=5, n=3, cols=2, index_addr=0, src_addr=2)),
        ("gather destination out of range", Instruction(Opcode.GATHER, rows=3, n=4, cols=7, src_addr=2,
                                                        dst_addr=last)),
        ("package k > n", Instruction(Opcode.PACKAGE, n=3, k=4, cols=2, heads=1)),
        ("package n > max_tokens", Instruction(Opcode.PACKAGE, n=m + 1, k=1, cols=2, heads=1)),
        ("package no heads", Instruction(Opcode.PACKAGE, n=3, k=1, cols=2, heads=0, prob_addr=beyond)),
        ("package 258 heads", Instruction(Opcode.PACKAGE, n=3, k=1, cols=2, heads=258)),
        ("package probabilities out of range", Instruction(Opcode.PACKAGE, n=9, k=1, cols=2, heads=2,
                                                           prob_addr=last)),
        ("package tokens out of range", Instruction(Opcode.PACKAGE, n=9, k=1, cols=2, heads=1, src_addr=last)),
        ("package index list out of range", Instruction(Opcode.PACKAGE, n=9, k=9, cols=2, heads=1, index_addr=last)),
        ("package index >= n", Instruction(Opcode.PACKAGE, n=4, k=4, cols=2, heads=1, src_addr=4, prob_addr=4,
                                           dst_addr=beyond)),
        ("package destination out of range", Instruction(Opcode.PACKAGE, n=5, k=4, cols=17, heads=2, src_addr=4,
                                                         prob_addr=4, index_addr=1, dst_addr=last)),
    ]
    return [Program(name, [load, encode(_with_flags(instr, pop_prev=1)), finish], ddr.copy())
            for name, instr in cases]


def requant_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, rows: int, cols: int,
                    extreme: bool = False) -> tuple[list[int], np.ndarray]:
    """LOAD int32 accumulators and a bias / multiplier / shift block into ACC, REQUANT, STORE
    the int8 result. ``extreme``: accumulator + bias at exactly ``±2^31`` (the limit
    ``requantize`` accepts), multipliers up to ``2^31 - 1``, shifts 1 and ``MAX_SHIFT``."""
    from vitaccel.hw.spec.numerics import MAX_SHIFT

    acc = np.array([[rng.randint(-(1 << 20), 1 << 20) for _ in range(cols)] for _ in range(rows)], np.int64)
    bias = np.array([rng.randint(-(1 << 12), 1 << 12) for _ in range(cols)], np.int64)
    multipliers = [rng.randrange(1 << 30, 1 << 31) for _ in range(cols)]
    shifts = [rng.randrange(36, 44) for _ in range(cols)]
    if extreme:
        bias[0], acc[:, 0] = -(1 << 31), 0                       # -2^31 exactly
        bias[-1], acc[:, -1] = (1 << 31) - 1, 1                  # +2^31 exactly
        multipliers[0], multipliers[-1] = (1 << 31) - 1, 0
        shifts[0], shifts[-1] = MAX_SHIFT, 1
        if cols > 2:
            shifts[1], multipliers[1] = 1, (1 << 31) - 1        # saturates both ways
    params = np.array([*bias, *multipliers, *shifts], np.int64).astype("<i4")
    chunks = [acc.astype("<i4").tobytes(), params.tobytes()]
    return _vector_program(rng, ddr_size, chunks, lambda at, out: Instruction(
        Opcode.REQUANT, rows=rows, cols=cols, src_addr=at[0], param_addr=at[1], dst_addr=out),
        rows * cols, what=f"REQUANT {rows}x{cols}", buffers=[Buffer.ACC, Buffer.ACC])


#: (rows, cols, extreme): off the 16-byte grid, one element, the int32 limits.
REQUANT_CASES = [(3, 7, False), (1, 1, False), (2, 5, True), (5, 3, True)]


def requant_programs(config: AccelConfig, *, seed: int, quick: bool = False, ddr_size: int = 4096) -> list[Program]:
    """REQUANT programs of :data:`REQUANT_CASES` (every other one when ``quick``)."""
    rng = random.Random(seed)
    out = []
    for rows, cols, extreme in REQUANT_CASES[::2 if quick else 1]:
        words, ddr = requant_program(rng, config, ddr_size, rows=rows, cols=cols, extreme=extreme)
        out.append(Program(f"requant {rows}x{cols} extreme={extreme}", words, ddr))
    return out


def requant_bad_programs(config: AccelConfig, ddr_size: int) -> list[Program]:
    """REQUANT programs that must stop, each check in the golden machine's order. ACC unit 0
    holds a 2-column block (bias, multiplier, shift) from DDR, unit 2 accumulators, zeros
    up to unit 8."""
    acc_units = isa.buffer_bytes(config, Buffer.ACC) // isa.ADDR_UNIT
    vector_units = isa.buffer_bytes(config, Buffer.VECTOR) // isa.ADDR_UNIT
    good = [5, -7, 1 << 30, 3, 20, 30]
    cases = [  # (name, parameter block, accumulators, instruction fields)
        ("requant accumulators out of range", good, [0, 0], dict(rows=3, cols=2, src_addr=acc_units - 1,
                                                               param_addr=acc_units)),
        ("requant parameters out of range", good, [0, 0], dict(rows=1, cols=2, src_addr=2, param_addr=acc_units - 1)),
        ("requant negative multiplier", [5, -7, -1, 3, 20, 30], [0, 0], dict(rows=1, cols=2, src_addr=2,
                                                                              dst_addr=_past_end(vector_units))),
        ("requant zero shift", [5, -7, 1, 3, 0, 30], [0, 0], dict(rows=0, cols=2, src_addr=2)),
        ("requant shift too large", [5, -7, 1, 3, 20, 63], [0, 0], dict(rows=1, cols=2, src_addr=2)),
        ("requant accumulator + bias above 2^31", [(1 << 31) - 1, 0, 1, 1, 20, 20], [2, 0],
         dict(rows=1, cols=2, src_addr=2, dst_addr=_past_end(vector_units))),
        ("requant accumulator + bias below -2^31", [-(1 << 31), 0, 1, 1, 20, 20], [-1, 0], dict(rows=1, cols=2,
                                                                                              src_addr=2)),
        ("requant destination out of range", good, [0, 0], dict(rows=9, cols=2, src_addr=2, dst_addr=vector_units - 1)),
    ]
    out = []
    for name, block, acc, fields in cases:
        ddr = np.zeros(ddr_size, np.uint8)
        ddr[:24] = np.frombuffer(np.array(block, np.int64).astype("<i4").tobytes(), np.uint8)
        ddr[32:40] = np.frombuffer(np.array(acc, np.int64).astype("<i4").tobytes(), np.uint8)
        load = Instruction(Opcode.LOAD, buffer=Buffer.ACC, sram_addr=0, dram_addr=0, rows=1, row_bytes=128,
                           dram_stride=128, sram_stride=128, push_next=1)
        out.append(Program(name, [encode(load), encode(Instruction(Opcode.REQUANT, pop_prev=1, **fields)),
                                  encode(Instruction(Opcode.FINISH))], ddr))
    return out


def sparse_attn_program(rng: random.Random, config: AccelConfig, ddr_size: int, *, n: int, d: int, predict: int,
                        margin: int = 40, kind: str = "random", density: float = 0.3) -> tuple[list[int], np.ndarray]:
    """LOAD Q, K, V, a mask (uint8 0/1) into VECTOR and the SPARSE_ATTN block (softmax, output
    scale, ``margin``) into ACC, SPARSE_ATTN with ``predict``, STORE the int8 output.
    ``kind``: ``random``; ``equal`` (every Q row and every K row the same: ties at the predicted
    maximum); ``min`` (-128 everywhere); ``empty_rows`` (every third mask row empty)."""
    from vitaccel.hw.spec.nonlinear import softmax_params
    from vitaccel.hw.spec.numerics import quantize_multiplier

    q, k, v = (np.array([[rng.randrange(-128, 128) for _ in range(d)] for _ in range(n)], np.int64)
               for _ in range(3))
    mask = np.array([[rng.random() < density for _ in range(n)] for _ in range(n)])
    if kind == "equal":
        q[:], k[:] = q[0], k[0]
    elif kind == "min":
        q[:], k[:], v[:] = -128, -128, -128
    elif kind == "empty_rows":
        mask[::3] = False
    sm = softmax_params(2.0 / (5500.0 * np.sqrt(d)), exp_lut_bits=config.exp_lut_bits,
                        recip_lut_bits=config.recip_lut_bits)
    out_scale = quantize_multiplier(1.0 / 256.0)
    params = isa.pack_sparse_attn_params(sm, out_scale.multiplier, out_scale.shift, margin).astype("<i4")
    # predict=1 never reads the mask: none is loaded (Q, K, V of 197 x 64 and a mask outgrow tiny's VECTOR).
    chunks = [q.astype(np.int8).tobytes(), k.astype(np.int8).tobytes(), v.astype(np.int8).tobytes(),
              b"" if predict else mask.astype(np.uint8).tobytes(), params.tobytes()]
    return _vector_program(rng, ddr_size, chunks, lambda at, out: Instruction(
        Opcode.SPARSE_ATTN, m=n, n=n, d=d, q_addr=at[0], k_addr=at[1], v_addr=at[2], mask_addr=at[3],
        param_addr=at[4], out_addr=out, predict=predict), n * d, what=f"SPARSE_ATTN {n}x{d}",
        buffers=[Buffer.VECTOR] * 4 + [Buffer.ACC])


#: (n, d, predict, margin, kind): n off the PE array and the mask block, d of 16, 17 and 64,
#: margins 0 and the largest, ties at the maximum, -128 everywhere, empty mask rows.
SPARSE_ATTN_CASES = [(17, 16, 1, 30, "random"), (13, 17, 0, 0, "empty_rows"), (9, 64, 1, 0, "random"),
                     (11, 5, 1, 65535, "equal"), (6, 8, 1, 7, "min"), (70, 3, 1, 50, "random")]


def sparse_attn_programs(config: AccelConfig, *, seed: int, quick: bool = False,
                         ddr_size: int = 16384) -> list[Program]:
    """SPARSE_ATTN programs of :data:`SPARSE_ATTN_CASES` (the first two when ``quick``)."""
    rng = random.Random(seed)
    programs = []
    for n, d, predict, margin, kind in SPARSE_ATTN_CASES[:2 if quick else None]:
        words, ddr = sparse_attn_program(rng, config, ddr_size, n=n, d=d, predict=predict, margin=margin, kind=kind)
        programs.append(Program(f"sparse_attn {n}x{d} predict={predict} margin={margin} {kind}", words, ddr))
    return programs


def sparse_attn_bad_programs(config: AccelConfig, ddr_size: int) -> list[Program]:
    """SPARSE_ATTN programs that must stop, each check in the golden machine's order: a head
    dim of 0 and above ``sparse_max_head_dim``, ``m != n``, V and the mask out of VECTOR, the
    margin (zeros in ACC but a margin of ``PREDICT_MARGIN_LIMIT`` loaded at unit 0), the
    output out of VECTOR."""
    from vitaccel.hw.spec.nonlinear import softmax_params
    from vitaccel.hw.spec.numerics import quantize_multiplier
    from vitaccel.hw.spec.sparse import PREDICT_MARGIN_LIMIT

    last = isa.buffer_bytes(config, Buffer.VECTOR) // isa.ADDR_UNIT - 1
    sm = softmax_params(0.001, exp_lut_bits=config.exp_lut_bits, recip_lut_bits=config.recip_lut_bits)
    out_scale = quantize_multiplier(1.0 / 256.0)
    ddr = np.zeros(ddr_size, np.uint8)
    for unit, margin in ((0, 10), (1, PREDICT_MARGIN_LIMIT)):
        raw = isa.pack_sparse_attn_params(sm, out_scale.multiplier, out_scale.shift, margin).astype("<i4").tobytes()
        ddr[64 * unit:64 * unit + len(raw)] = np.frombuffer(raw, np.uint8)
    load = encode(Instruction(Opcode.LOAD, buffer=Buffer.ACC, sram_addr=0, dram_addr=0, rows=1, row_bytes=128,
                              dram_stride=128, sram_stride=128, push_next=1))
    finish = encode(Instruction(Opcode.FINISH))
    # 18-byte matrices and a 36-byte mask: none fits the last 16-byte unit of VECTOR.
    good = dict(m=6, n=6, d=3, q_addr=0, k_addr=2, v_addr=4, mask_addr=6, out_addr=10, param_addr=0, predict=1)
    cases = [("d 0", dict(d=0)), ("d above sparse_max_head_dim", dict(d=config.sparse_max_head_dim + 1)),
             ("m != n", dict(m=5)), ("v out of range", dict(v_addr=last)),
             ("mask out of range", dict(predict=0, mask_addr=last)),
             ("margin too large", dict(param_addr=4)), ("output out of range", dict(out_addr=last)),
             ("good", dict())]
    return [Program(f"sparse_attn {name}", [load, encode(Instruction(Opcode.SPARSE_ATTN, **{**good, **change},
                                                                     pop_prev=1)), finish], ddr.copy())
            for name, change in cases]
