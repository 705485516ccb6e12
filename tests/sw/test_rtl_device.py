"""The runtime's device backends without a simulator: the shared register driver against a
golden-backed fake board (PYNQ-style MMIO and buffers), and the rtl backend's checking and
reporting with the simulator replaced by the golden machine."""

from __future__ import annotations

import sys
import textwrap
import types

import numpy as np
import pytest

from vitaccel.hw.spec.isa import INSTRUCTION_BITS, IllegalInstruction, decode
from vitaccel.hw.spec.regmap import ErrorCode, register
from vitaccel.sw.commands import UserError
from vitaccel.sw.device import COUNTERS, BoardDevice, DeviceError, GoldenDevice, open_device
from vitaccel.sw.program import load_program

SMALL_MODEL = """
import torch
from vitaccel.sw.models.vit import VisionTransformer

def build():
    torch.manual_seed(3)
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=16,
                              depth=1, num_heads=2, mlp_ratio=2.0)
    return model, (1, 8, 8)
"""


@pytest.fixture(scope="module")
def program_dir(tmp_path_factory):
    from vitaccel.sw.compile import compile_model

    root = tmp_path_factory.mktemp("rtl_device")
    (root / "small.py").write_text(textwrap.dedent(SMALL_MODEL))
    compile_model(f"{root / 'small.py'}:build", "tiny", root / "prog", calib=2)
    return root / "prog"


@pytest.fixture(scope="module")
def program(program_dir):
    return load_program(program_dir)


def _images(program, count):
    rng = np.random.default_rng(0)
    shape = program.manifest["inputs"][0]["shape"]
    return rng.integers(-128, 128, size=(count, *shape), dtype=np.int8)


def _top_bit_set(program, pc) -> list[int]:
    words = list(program.words)
    words[pc] |= 1 << (INSTRUCTION_BITS - 1)
    return words


def _corrupt(program, pc):
    """The program with a reserved bit set in instruction ``pc``: ILLEGAL_INSTRUCTION there."""
    words = _top_bit_set(program, pc)
    with pytest.raises(IllegalInstruction):   # the top bit is reserved in this opcode
        decode(words[pc])
    return program.with_words(words)   # the checksum matches: the decoder finds the word


def _reserved_top_bit_from(program, pc) -> int:
    """The first instruction at or after ``pc`` whose top bit is reserved (a GEMM's is not)."""
    while True:
        try:
            decode(_top_bit_set(program, pc)[pc])
        except IllegalInstruction:
            return pc
        pc += 1


# -- a board made of the golden machine behind PYNQ-style MMIO ---------------------------------

class _Buffer(np.ndarray):
    physical_address = 0x6000_0000

    def flush(self):
        pass

    def invalidate(self):
        pass


class _Mmio:
    """The accelerator's register file; CONTROL.start runs the golden machine on the buffer."""

    def __init__(self, board):
        self.board, self.regs = board, {}

    def write(self, offset, value):
        if offset == register("INTERRUPT_STATUS").offset:
            self.regs[offset] = self.regs.get(offset, 0) & ~value
            return
        self.regs[offset] = value
        if offset == register("CONTROL").offset and value & 1:
            self._run()

    def read(self, offset):
        return 0 if offset == register("CONTROL").offset else self.regs.get(offset, 0)

    def _reg(self, name):
        return self.regs.get(register(name).offset, 0)

    def _set(self, name, value):
        self.regs[register(name).offset] = value

    def _run(self):
        from vitaccel.sim.golden.machine import GoldenMachine, MachineError, words_from_bytes

        buf = self.board.buffers[-1]
        phys = buf.physical_address
        start = (self._reg("PROGRAM_ADDR_HI") << 32 | self._reg("PROGRAM_ADDR_LO")) - phys
        base = (self._reg("DDR_BASE_HI") << 32 | self._reg("DDR_BASE_LO")) - phys
        words = words_from_bytes(bytes(buf[start:start + 16 * self._reg("PROGRAM_LENGTH")]))
        window = np.asarray(buf[base:base + self._reg("DDR_SIZE")]).view(np.ndarray)
        self.board.starts += 1
        checksum = self._reg("PROGRAM_CRC") if self._reg("PROGRAM_CHECK") & 1 else None
        try:
            stats = GoldenMachine(self.board.config).run(words, window, checksum=checksum)
            self._set("STATUS", 0b010)
            self._set("ERROR_CODE", 0)
            self._set("INTERRUPT_STATUS", 0b01)
            self._set("TOTAL_CYCLES_LO", 1000 + stats.macs // 32)
            self._set("INSTRUCTIONS_RETIRED_LO", len(words))
        except MachineError as err:
            self._set("STATUS", 0b100)
            self._set("ERROR_CODE", err.code.value)
            self._set("ERROR_PC", err.pc or 0)
            self._set("INTERRUPT_STATUS", 0b10)


@pytest.fixture
def fake_pynq(monkeypatch, program):
    board = types.SimpleNamespace(buffers=[], starts=0, config=program.config)
    module = types.ModuleType("pynq")

    class Overlay:
        def __init__(self, bitfile, download=True):
            self.ip_dict = {"vitaccel_top_0": {"phys_addr": 0xA000_0000, "addr_range": 0x1000}}

    def allocate(shape, dtype):
        board.buffers.append(np.zeros(shape, dtype).view(_Buffer))
        return board.buffers[-1]

    module.Overlay, module.allocate = Overlay, allocate
    module.MMIO = lambda base, size: _Mmio(board)
    module.PL = types.SimpleNamespace(bitfile_name="vitaccel.bit")
    monkeypatch.setitem(sys.modules, "pynq", module)
    return board


def test_board_device_runs_the_shared_driver(fake_pynq, program):
    images = _images(program, 3)
    board = open_device("board", program)
    assert isinstance(board, BoardDevice)
    got = board.infer_batch(images)
    np.testing.assert_array_equal(got, GoldenDevice(program).infer_batch(images))
    assert fake_pynq.starts == 3
    assert [s["cycles"] for s in board.batch_stats] == [s["total_cycles"] for s in board.batch_stats]
    assert all(s["cycles"] > 1000 and s["instructions_retired"] == len(program.words) for s in board.batch_stats)
    assert {c.lower() for c in COUNTERS} <= set(board.last_stats)


def test_board_device_reports_code_pc_and_layer(fake_pynq, program):
    pc = _reserved_top_bit_from(program, len(program.words) // 2)
    with pytest.raises(DeviceError, match=f"ILLEGAL_INSTRUCTION at instruction {pc} \\(layer ") as err:
        BoardDevice(_corrupt(program, pc)).infer(_images(program, 1)[0])
    assert err.value.code is ErrorCode.ILLEGAL_INSTRUCTION and err.value.pc == pc


def test_board_device_checks_the_program_checksum(fake_pynq, program):
    """A bit flipped after compilation: the shared driver enables PROGRAM_CHECK, so the run
    stops with PROGRAM_CHECKSUM (the golden device says the same)."""
    from vitaccel.sw.program import CompiledProgram

    words = list(program.words)
    words[7] ^= 1 << 40
    flipped = CompiledProgram(words, program.ddr_image, program.manifest)
    with pytest.raises(DeviceError, match="PROGRAM_CHECKSUM") as err:
        BoardDevice(flipped).infer(_images(program, 1)[0])
    assert err.value.code is ErrorCode.PROGRAM_CHECKSUM
    with pytest.raises(DeviceError, match="PROGRAM_CHECKSUM.*checksum mismatch") as err:
        open_device("golden", flipped).infer(_images(program, 1)[0])
    assert err.value.code is ErrorCode.PROGRAM_CHECKSUM


def test_board_without_pynq_is_a_user_error(monkeypatch, program):
    monkeypatch.setitem(sys.modules, "pynq", None)   # import pynq raises ImportError
    with pytest.raises(UserError, match="needs PYNQ"):
        open_device("board", program)


def test_rtl_without_simulator_is_a_user_error(monkeypatch, program):
    monkeypatch.setattr("vitaccel.sim.runner.simulator_available", lambda name: "Verilator is missing: make setup")
    with pytest.raises(UserError, match="backend 'rtl' cannot run: Verilator is missing"):
        open_device("rtl", program)


# -- the rtl backend with the golden machine standing in for the simulator ----------------------

def _fake_simulation(monkeypatch, *, tamper=None):
    """Replace the simulator launch by golden runs (``tamper(index, record)`` edits a record)."""
    from vitaccel.sim.golden.machine import GoldenMachine, MachineError

    calls = []

    def simulate_runs(config, words, ddrs, **options):
        calls.append(len(ddrs))
        machine, records = GoldenMachine(config), []
        for index, ddr in enumerate(ddrs):
            out = ddr.copy()
            record = {"interrupt": True, "waited": 10, "status": 0b010, "error_code": 0, "error_pc": 0,
                      "interrupt_status": 1, **{c.lower(): 0 for c in COUNTERS}}
            try:
                stats = machine.run(words, out)
                record.update(total_cycles=5000 + index, instructions_retired=len(words),
                              dma_read_bytes=stats.dma_read_bytes)
            except MachineError as err:
                record.update(status=0b100, error_code=err.code.value, error_pc=err.pc)
            record["ddr"] = out
            if tamper:
                tamper(index, record)
            records.append(record)
        return {"records": records, "simulator": "fake", "seconds": 0.5, "waves": None}

    monkeypatch.setattr("vitaccel.sim.runner.simulator_available", lambda name: None)
    monkeypatch.setattr("vitaccel.sim.cases.system.simulate_runs", simulate_runs)
    return calls


def test_rtl_run_json_one_launch_per_batch(monkeypatch, program_dir):
    from vitaccel.sw.run import run_program_dir

    calls = _fake_simulation(monkeypatch)
    result = run_program_dir(program_dir, backend="rtl", images=3)
    assert calls == [3]
    assert result["bit_exact_vs_golden"] is True and result["problems"] == []
    assert result["cycles"] == 3 * 5000 + 3 and result["cycles_by_image"] == [5000, 5001, 5002]
    assert result["cycles_per_image"] == 5001 and result["simulator"] == "fake"
    assert result["int8_top1"] is not None and result["macs_per_image"] > 0
    golden = run_program_dir(program_dir, backend="golden", images=3)
    assert result["agreement"] == golden["agreement"] and result["logit_cosine"] == golden["logit_cosine"]
    assert "cycles" not in golden and "bit_exact_vs_golden" not in golden


def test_rtl_output_difference_is_not_bit_exact(monkeypatch, program_dir, program):
    out = program.manifest["outputs"][0]

    def tamper(index, record):
        if index == 1:
            record["ddr"][out["addr"]] ^= 1

    _fake_simulation(monkeypatch, tamper=tamper)
    from vitaccel.sw.run import run_program_dir

    result = run_program_dir(program_dir, backend="rtl", images=2)
    assert result["bit_exact_vs_golden"] is False
    assert len(result["problems"]) == 1 and result["problems"][0].startswith("image 1: DDR differs at 1 bytes")


def test_rtl_scratch_difference_is_not_bit_exact(monkeypatch, program):
    """A byte outside the outputs (an intermediate activation) also breaks bit-exactness."""
    _fake_simulation(monkeypatch, tamper=lambda index, record: record["ddr"].__setitem__(
        slice(-1, None), record["ddr"][-1:] ^ 0xFF))
    device = open_device("rtl", program)
    device.infer_batch(_images(program, 1))
    stats = device.last_stats
    assert stats["bit_exact"] is False and stats["ddr_match"] is False and all(stats["outputs_match"].values())


def test_rtl_error_names_code_pc_layer_and_golden_verdict(monkeypatch, program):
    pc = 7

    def tamper(index, record):
        record.update(status=0b100, error_code=ErrorCode.INVALID_OPERAND.value, error_pc=pc)

    _fake_simulation(monkeypatch, tamper=tamper)
    with pytest.raises(DeviceError, match=f"INVALID_OPERAND at instruction {pc} \\(layer .*golden machine "
                                          "finishes") as err:
        open_device("rtl", program).infer(_images(program, 1)[0])
    assert err.value.code is ErrorCode.INVALID_OPERAND and err.value.pc == pc


def test_rtl_error_golden_agrees(monkeypatch, program):
    _fake_simulation(monkeypatch)
    with pytest.raises(DeviceError, match="ILLEGAL_INSTRUCTION at instruction 3 .*golden machine agrees"):
        open_device("rtl", _corrupt(program, 3)).infer(_images(program, 1)[0])


def test_rtl_hang_is_reported(monkeypatch, program):
    _fake_simulation(monkeypatch, tamper=lambda index, record: record.update(interrupt=False, waited=99))
    with pytest.raises(DeviceError, match="no interrupt within 99 cycles"):
        open_device("rtl", program).infer(_images(program, 1)[0])


def test_simulator_options_need_the_rtl_backend(program_dir, capsys):
    from vitaccel.sw.cli import main

    assert main(["run", str(program_dir), "--images", "1", "--waves"]) == 2
    assert "--backend rtl only" in capsys.readouterr().err
