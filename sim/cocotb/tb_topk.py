"""cocotb testbench of the top-k engine: load scores through the wide port, start, collect the
result beats, compare with the expected indices passed by the host, report the cycle count."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from vitaccel.sim.runner import tb_params, write_tb_output


def _field(word: int, offset: int, width: int) -> int:
    return (word >> offset) & ((1 << width) - 1)


@cocotb.test()
async def topk_matches_golden(dut):
    p = tb_params()
    lanes, score_bits, index_bits, count_bits = p["lanes"], p["score_bits"], p["index_bits"], p["count_bits"]
    scores = p["scores"] + [0] * (-len(p["scores"]) % lanes)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    dut.scores__valid.value = 0
    dut.result__ready.value = 1
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    for g in range(len(scores) // lanes):
        word = 0
        for lane in range(lanes):
            word |= scores[g * lanes + lane] << (lane * score_bits)
        dut.scores__payload.value = word
        dut.scores__valid.value = 1
        await RisingEdge(dut.clk)
    dut.scores__valid.value = 0
    dut.n.value = len(p["scores"])
    dut.k.value = p["k"]
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    cycles, beats = 1, []
    idx_offset, last_offset = lanes + count_bits, lanes + count_bits + lanes * index_bits
    while True:
        await ReadOnly()
        if dut.result__valid.value:
            word = dut.result__payload.value.to_unsigned()
            beat = [_field(word, 0, lanes), _field(word, lanes, count_bits),
                    [_field(word, idx_offset + s * index_bits, index_bits) for s in range(lanes)],
                    _field(word, last_offset, 1)]
            beats.append(beat)
            if beat[3]:
                break
        await RisingEdge(dut.clk)
        cycles += 1
        assert cycles < 20 * len(scores) + 100, "top-k engine hung"
    write_tb_output(beats=beats, cycles=cycles)
    kept = [i for mask, count, indices, _ in beats for i in indices[:count]]
    assert kept == p["expected"], f"kept indices: expected {p['expected']}, got {kept}"
