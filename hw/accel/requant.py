"""REQUANT in the accelerator: int32 accumulators in ACC to int8 in VECTOR, per column.

:class:`RequantController` executes ``isa.DESCRIPTIONS[Opcode.REQUANT]``:
``VECTOR[dst][i, j] = sat8(round_shift((ACC[src][i, j] + bias[j]) * multiplier[j], shift[j]))``
with the parameter block (``bias[cols]``, ``multiplier[cols]``, ``shift[cols]``, int32) at
``param_addr`` in ACC.

Checks in the golden machine's order (``GoldenMachine._requant`` and
:func:`vitaccel.hw.spec.numerics.requantize`): the accumulators, then the parameter block out
of ACC (ADDRESS_OUT_OF_RANGE); a multiplier outside ``0 .. 2^31 - 1``, a shift outside
``1 .. MAX_SHIFT``, or an ``|accumulator + bias|`` above ``2^31`` (INVALID_OPERAND: a scan over
the parameters and every element before anything is written); the destination out of
VECTOR (ADDRESS_OUT_OF_RANGE). Then one element per six cycles: its four int32 words are read
back to back from ACC (synchronous reads, one per cycle), the product is registered, the
rounded and saturated byte is written. Elements go in order, so ``dst`` may alias nothing in
ACC; VECTOR and ACC are separate buffers.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from vitaccel.hw.nonlinear.arith import SHIFT_BITS, round_shift, saturate
from vitaccel.hw.spec import isa
from vitaccel.hw.spec.config import AccelConfig
from vitaccel.hw.spec.isa import ADDR_UNIT, Buffer, Opcode
from vitaccel.hw.spec.numerics import MAX_SHIFT, MULTIPLIER_BITS
from vitaccel.hw.spec.regmap import ErrorCode

from .decode import field_slice, instruction_unit_members

__all__ = ["RequantController"]

_ADDR_BITS = 24
_LANE_BITS = (ADDR_UNIT - 1).bit_length()


class RequantController(wiring.Component):
    """Executes REQUANT (see the module docstring).

    Parameters
    ----------
    config : AccelConfig
        Supplies the ACC and VECTOR sizes.

    Attributes
    ----------
    word : in
        The instruction (held from ``start`` to ``done`` / ``error``).
    start : in
        Pulse: execute ``word``.
    done, error : out
        One-cycle pulses: the instruction retired, or stopped with ``error_code``.
    acc_read, acc_read_addr, acc_read_data : ACC read port (byte address; data one cycle later).
    write, write_addr, write_data : VECTOR byte write.
    """

    def __init__(self, *, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config: expected an AccelConfig, got {type(config).__name__}")
        self.config = config
        super().__init__({
            **instruction_unit_members(),
            "acc_read": Out(1), "acc_read_addr": Out(_ADDR_BITS), "acc_read_data": In(ADDR_UNIT * 8),
            "write": Out(1), "write_addr": Out(_ADDR_BITS), "write_data": Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        acc_bytes = isa.buffer_bytes(self.config, Buffer.ACC)
        vector_bytes = isa.buffer_bytes(self.config, Buffer.VECTOR)

        def f(name):
            return field_slice(self.word, Opcode.REQUANT, name)

        rows, cols = f("rows"), f("cols")
        src, dst, param = f("src_addr") * ADDR_UNIT, f("dst_addr") * ADDR_UNIT, f("param_addr") * ADDR_UNIT
        src_out, param_out, dst_out = Signal(), Signal(), Signal()
        m.d.sync += [src_out.eq(src + 4 * rows * cols > acc_bytes),
                     param_out.eq(param + 12 * cols > acc_bytes),
                     dst_out.eq(dst + rows * cols > vector_bytes)]

        def fail(code):
            return [self.error.eq(1), self.error_code.eq(code)]

        # ACC reads: address this cycle, the int32 word the next.
        read_lane = Signal(_LANE_BITS - 2)
        word = self.acc_read_data.word_select(read_lane, 32).as_signed()

        def read(address):
            m.d.comb += [self.acc_read.eq(1), self.acc_read_addr.eq(address)]
            m.d.sync += read_lane.eq(address[2:_LANE_BITS])

        row, col = Signal(12), Signal(13)
        element = Signal(_ADDR_BITS)   # row * cols + col
        acc, bias, multiplier = Signal(signed(32)), Signal(signed(32)), Signal(signed(32))
        shift = Signal(SHIFT_BITS)
        product = Signal(signed(34 + MULTIPLIER_BITS))
        bias_addr = param + 4 * col
        multiplier_addr = param + 4 * (cols + col)
        shift_addr = param + 4 * (2 * cols + col)
        acc_addr = src + 4 * element
        total = acc + bias                                  # 33 bits: |total| <= 2^31 is checked

        def advance(done_state, next_state):
            """Next element in row-major order; ``done_state`` after the last."""
            last_col = col == cols - 1
            m.d.sync += [element.eq(element + 1), col.eq(Mux(last_col, 0, col + 1))]
            with m.If(last_col):
                m.d.sync += row.eq(row + 1)
                with m.If(row == rows - 1):
                    m.next = done_state
                with m.Else():
                    m.next = next_state
            with m.Else():
                m.next = next_state

        with m.FSM(name="requant"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [row.eq(0), col.eq(0), element.eq(0)]
                with m.If(src_out | param_out):
                    m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "PARAM_MULTIPLIER"
            # ---- parameter scan: multiplier and shift of every column ------------------------
            with m.State("PARAM_MULTIPLIER"):
                with m.If(col == cols):
                    m.d.sync += col.eq(0)
                    m.next = "VALUE_ACC"
                with m.Else():
                    read(multiplier_addr)
                    m.next = "PARAM_SHIFT"
            with m.State("PARAM_SHIFT"):
                read(shift_addr)
                m.d.sync += multiplier.eq(word)
                m.next = "PARAM_TEST"
            with m.State("PARAM_TEST"):
                with m.If((multiplier < 0) | (word < 1) | (word > MAX_SHIFT)):
                    m.d.comb += fail(ErrorCode.INVALID_OPERAND)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += col.eq(col + 1)
                    m.next = "PARAM_MULTIPLIER"
            # ---- value scan: |acc + bias| <= 2^31 for every element ---------------------------
            with m.State("VALUE_ACC"):
                with m.If((rows == 0) | (cols == 0)):
                    m.next = "DST"
                with m.Else():
                    read(acc_addr)
                    m.next = "VALUE_BIAS"
            with m.State("VALUE_BIAS"):
                read(bias_addr)
                m.d.sync += acc.eq(word)
                m.next = "VALUE_TEST"
            with m.State("VALUE_TEST"):
                value = acc + word
                with m.If((value > (1 << 31)) | (value < -(1 << 31))):
                    m.d.comb += fail(ErrorCode.INVALID_OPERAND)
                    m.next = "IDLE"
                with m.Else():
                    advance("DST", "VALUE_ACC")
            with m.State("DST"):
                m.d.sync += [row.eq(0), col.eq(0), element.eq(0)]
                with m.If(dst_out):
                    m.d.comb += fail(ErrorCode.ADDRESS_OUT_OF_RANGE)
                    m.next = "IDLE"
                with m.Elif((rows == 0) | (cols == 0)):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "READ_ACC"
            # ---- compute: four reads back to back, product, write -----------------------------
            with m.State("READ_ACC"):
                read(acc_addr)
                m.next = "READ_BIAS"
            with m.State("READ_BIAS"):
                read(bias_addr)
                m.d.sync += acc.eq(word)
                m.next = "READ_MULTIPLIER"
            with m.State("READ_MULTIPLIER"):
                read(multiplier_addr)
                m.d.sync += bias.eq(word)
                m.next = "READ_SHIFT"
            with m.State("READ_SHIFT"):
                read(shift_addr)
                m.d.sync += multiplier.eq(word)
                m.next = "MULTIPLY"
            with m.State("MULTIPLY"):
                m.d.sync += [shift.eq(word[:SHIFT_BITS]), product.eq(total * multiplier[:MULTIPLIER_BITS])]
                m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [self.write.eq(1), self.write_addr.eq(dst + element),
                             self.write_data.eq(saturate(round_shift(product, shift), 8))]
                advance("FINISH", "READ_ACC")
            with m.State("FINISH"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
