"""A stand-in accelerator top with the real bus side: the register file of
:mod:`vitaccel.hw.spec.regmap` on ``s_axi_control_*``, the DMA on ``m_axi_*``, ``interrupt``.

Until the instruction-driven controller exists, ``CONTROL.start`` runs a DDR-to-DDR copy
through the DMA (read engine streamed straight into the write engine): ``PROGRAM_LENGTH``
bytes from ``PROGRAM_ADDR`` to ``DDR_BASE``. It exercises every piece the board package
wires up (ports, clock, reset, interrupt, both AXI interfaces) and serves as the top the
package writer and the lint check are tested on. Status, interrupts, error code and the
DMA byte / cycle counters behave as the register map documents; an AXI error response
stops with ``ADDRESS_OUT_OF_RANGE``.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from vitaccel.hw.axi.dma import AxiDma
from vitaccel.hw.axi.lite import AxiLiteRegisters, accelerator_register_map
from vitaccel.hw.axi.signatures import AXI_RESP_OKAY, FlatPortsWrapper
from vitaccel.hw.spec.regmap import ErrorCode

__all__ = ["AxiCopyCore", "standin_top", "STANDIN_TOP_NAME"]

STANDIN_TOP_NAME = "vitaccel_axi_standin"
_STATUS_BUSY, _STATUS_DONE, _STATUS_ERROR = 0, 1, 2
_IRQ_DONE, _IRQ_ERROR = 0, 1


class AxiCopyCore(wiring.Component):
    """Register file + DMA + copy sequencer (see the module docstring).

    Parameters
    ----------
    data_width : int
        DMA data width (``config.dma_data_width``).
    addr_width : int
        DMA address bits (40 covers the ZCU102's DDR and PL apertures).
    """

    def __init__(self, *, data_width: int = 64, addr_width: int = 40):
        self.regfile = AxiLiteRegisters(accelerator_register_map())
        self.dma = AxiDma(data_width=data_width, addr_width=addr_width, length_width=32)
        super().__init__({
            "control": Out(self.regfile.signature.members["bus"].signature),
            "memory": Out(self.dma.signature.members["bus"].signature),
            "interrupt": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.regfile = regfile = self.regfile
        m.submodules.dma = dma = self.dma
        wiring.connect(m, wiring.flipped(self.control), regfile.bus)
        wiring.connect(m, dma.bus, wiring.flipped(self.memory))
        regs = regfile.regs
        addr_width = self.dma.addr_width

        busy, done, failed = Signal(), Signal(), Signal()
        error_code = Signal(ErrorCode)
        total_cycles = Signal(64)
        start = regs.control[0] & ~busy

        def descriptor(port, base_lo, base_hi):
            length = regs.program_length
            return [port.payload.addr.eq(Cat(base_lo, base_hi)[:addr_width]),
                    port.payload.rows.eq(1), port.payload.row_bytes.eq(length),
                    port.payload.stride.eq(length)]

        issued_read, issued_write = Signal(), Signal()
        m.d.comb += descriptor(dma.rd_desc, regs.program_addr_lo, regs.program_addr_hi)
        m.d.comb += descriptor(dma.wr_desc, regs.ddr_base_lo, regs.ddr_base_hi)
        m.d.comb += [dma.rd_desc.valid.eq(busy & ~issued_read),
                     dma.wr_desc.valid.eq(busy & ~issued_write)]
        wiring.connect(m, dma.rd_data, dma.wr_data)

        with m.If(dma.rd_desc.valid & dma.rd_desc.ready):
            m.d.sync += issued_read.eq(1)
        with m.If(dma.wr_desc.valid & dma.wr_desc.ready):
            m.d.sync += issued_write.eq(1)
        bad_response = ((dma.rd_done & (dma.rd_resp != AXI_RESP_OKAY))
                        | (dma.wr_done & (dma.wr_resp != AXI_RESP_OKAY)))
        with m.If(busy & bad_response):
            m.d.sync += error_code.eq(ErrorCode.ADDRESS_OUT_OF_RANGE)

        # The write engine finishes last (it consumes everything the read engine delivers).
        # A zero length would never finish: it is refused at start with INVALID_OPERAND.
        empty = regs.program_length == 0
        finishing = (busy & dma.wr_done) | (start & empty)
        is_error = (error_code != ErrorCode.NONE) | bad_response | empty
        with m.If(busy):
            m.d.sync += total_cycles.eq(total_cycles + 1)
        with m.If(finishing):
            m.d.sync += [busy.eq(0), done.eq(~is_error), failed.eq(is_error)]
        with m.If(start):
            m.d.sync += [done.eq(0), failed.eq(0), issued_read.eq(0), issued_write.eq(0),
                         error_code.eq(ErrorCode.NONE), total_cycles.eq(0)]
            with m.If(empty):
                m.d.sync += [error_code.eq(ErrorCode.INVALID_OPERAND), failed.eq(1)]
            with m.Else():
                m.d.sync += busy.eq(1)

        pending = Signal(2)
        m.d.comb += [
            pending[_IRQ_DONE].eq(finishing & ~is_error),
            pending[_IRQ_ERROR].eq(finishing & is_error),
            regs.interrupt_status_set.eq(pending),
            regs.status.eq(Cat(busy, done, failed)),
            regs.error_code.eq(error_code),
            regs.error_pc.eq(0),
            regs.total_cycles_lo.eq(total_cycles[:32]),
            regs.total_cycles_hi.eq(total_cycles[32:]),
            regs.dma_read_bytes_lo.eq(dma.rd_bytes),
            regs.dma_write_bytes_lo.eq(dma.wr_bytes),
            self.interrupt.eq((regs.interrupt_status & regs.interrupt_enable).any()),
        ]
        return m


def standin_top(config) -> FlatPortsWrapper:
    """The stand-in top for ``config``: ports ``s_axi_control_*``, ``m_axi_*``, ``interrupt``."""
    return FlatPortsWrapper(AxiCopyCore(data_width=config.dma_data_width),
                            prefixes={"control": "s_axi_control", "memory": "m_axi"})
