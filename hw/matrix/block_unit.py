"""One block unit: a ``b x b`` output block held stationary, ``b**3`` multipliers."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .layouts import block_control_layout

__all__ = ["BlockUnit", "block_operand_layouts"]


def block_operand_layouts(block_size: int, a_width: int, b_width: int) -> tuple[data.ArrayLayout, data.ArrayLayout]:
    """Layouts of one ``b x b`` A block (``[row][kk]``) and B block (``[kk][col]``)."""
    a = data.ArrayLayout(data.ArrayLayout(signed(a_width), block_size), block_size)
    b = data.ArrayLayout(data.ArrayLayout(signed(b_width), block_size), block_size)
    return a, b


class BlockUnit(wiring.Component):
    """Computes ``P += A_blk @ B_blk`` each valid cycle and forwards its operands.

    Inside the unit, row ``i`` of the A block and column ``j`` of the B block are broadcast to
    the ``b`` multipliers of output ``(i, j)`` (second broadcast level). The operands and the
    control leave through registers (``a_out`` east, ``b_out`` south): one systolic hop, so
    a grid of units has no long wires. On a ``last`` step the finished sums are copied into
    ``result`` (the accumulator buffer) while the next tile starts accumulating.

    Parameters
    ----------
    block_size : int
        ``b``; ``b = 1`` is one output-stationary processing element.
    a_width, b_width : int
        Signed operand widths.
    acc_width : int
        Signed accumulator width.
    """

    def __init__(self, *, block_size: int, a_width: int, b_width: int, acc_width: int):
        for name, value in (("block_size", block_size), ("a_width", a_width), ("b_width", b_width),
                            ("acc_width", acc_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if acc_width < a_width + b_width:
            raise ValueError(f"acc_width={acc_width} cannot hold one {a_width}x{b_width}-bit product")
        self.block_size = block_size
        a_layout, b_layout = block_operand_layouts(block_size, a_width, b_width)
        result = data.ArrayLayout(data.ArrayLayout(signed(acc_width), block_size), block_size)
        super().__init__({
            "a_in": In(a_layout), "b_in": In(b_layout), "ctl_in": In(block_control_layout()),
            "a_out": Out(a_layout), "b_out": Out(b_layout), "ctl_out": Out(block_control_layout()),
            "result": Out(result),
        })

    def elaborate(self, platform):
        m = Module()
        b = self.block_size
        m.d.sync += [self.a_out.eq(self.a_in), self.b_out.eq(self.b_in), self.ctl_out.eq(self.ctl_in)]
        acc_shape = self.result.shape().elem_shape.elem_shape
        for i in range(b):
            for j in range(b):
                acc = Signal(acc_shape, name=f"acc_{i}_{j}")
                total = Signal(acc_shape, name=f"sum_{i}_{j}")
                dot = sum(self.a_in[i][kk] * self.b_in[kk][j] for kk in range(b))
                m.d.comb += total.eq(Mux(self.ctl_in.first, 0, acc) + dot)
                with m.If(self.ctl_in.valid):
                    m.d.sync += acc.eq(total)
                    with m.If(self.ctl_in.last):
                        m.d.sync += self.result[i][j].eq(total)
        return m
