"""The board-like DDR in Verilog (sim/cocotb/board_ddr.v): the same cycles as cocotbext-axi's
AxiRam with the board model (what the performance model was calibrated on), without Python in
every clock cycle."""

import numpy as np
import pytest

from vitaccel.sim.cocotb.board_ddr import BOARD_TOP_NAME, board_ddr_top, read_memory_hex, write_memory_hex
from vitaccel.sim.perf import BOARD_DDR_MODEL
from vitaccel.sim.runner import simulator_available

rtl = pytest.mark.skipif(simulator_available("verilator") is not None, reason=str(simulator_available("verilator")))


def test_memory_hex_round_trip_is_little_endian(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    write_memory_hex(tmp_path / "m.hex", data, 16)
    first = (tmp_path / "m.hex").read_text().split("\n")[0]
    assert first == data[:16][::-1].hex()   # byte 0 is the least significant
    assert read_memory_hex(tmp_path / "m.hex", 16) == data


def test_wrapper_keeps_the_control_port_and_hides_the_manager_port():
    verilog = ("(* top =  1  *)\nmodule acc(clk, rst, m_axi_rdata, interrupt);\n  input clk;\n  input rst;\n"
               "  input [127:0] m_axi_rdata;\n  output interrupt;\nendmodule\n")
    with pytest.raises(ValueError, match="lacks AXI manager ports"):
        board_ddr_top(verilog, "acc", words=16, read_latency=40)
    with pytest.raises(ValueError, match="no module 'nope'"):
        board_ddr_top(verilog, "nope", words=16, read_latency=40)


@pytest.mark.slow   # two top builds; the default run covers the Verilog DDR through test_perf_model
@pytest.mark.cocotb
@rtl
def test_verilog_ddr_gives_axiram_s_cycles_and_bytes(tmp_path):
    """The DeiT-T-shaped block on tiny, once on AxiRam and once on the Verilog DDR: every RTL
    counter equal (TOTAL_CYCLES included), both bit-exact against the golden machine."""
    from vitaccel.sw.models.blocks import DEIT_BLOCK_SPEC
    from vitaccel.sw.system_case import compile_for_test, run_one_image
    from vitaccel.sw.program import load_program

    program = load_program(compile_for_test(DEIT_BLOCK_SPEC, tmp_path / "block", config="tiny"))
    axiram = run_one_image(program, ddr_model=BOARD_DDR_MODEL.name, verilog_ddr=False)
    verilog = run_one_image(program, ddr_model=BOARD_DDR_MODEL.name, verilog_ddr=True)
    assert axiram["bit_exact"] and verilog["bit_exact"], (axiram["problems"], verilog["problems"])
    assert verilog["counters"] == axiram["counters"]
