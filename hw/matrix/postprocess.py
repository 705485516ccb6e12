"""Post-processing of one accumulator row: bias, requantization, residual, saturation."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import AccelConfig
from ..spec.matrix import BIAS_BITS
from .layouts import EngineLayouts

__all__ = ["PostProcessor", "saturated"]


def saturated(m: Module, value, bits: int, name: str) -> Signal:
    """A ``bits``-wide signed signal holding ``value`` clamped to its range (spec saturation)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    out = Signal(signed(bits), name=name)
    m.d.comb += out.eq(Mux(value > hi, hi, Mux(value < lo, lo, value)))
    return out


class PostProcessor(wiring.Component):
    """Combinational ``sat(requantize(sat32(acc + bias)) + residual)`` for a row of ``tile_cols``.

    Matches ``sim.golden.gemm.linear`` bit for bit: rounding is the spec's round half up
    (``(x + 2^(shift-1)) >> shift``, arithmetic), saturation the spec's clamp.
    """

    def __init__(self, config: AccelConfig):
        self.config = config
        layouts = EngineLayouts(config)
        acc_row = layouts.accumulators.elem_shape
        super().__init__({
            "acc": In(acc_row), "params": In(layouts.params), "residual": In(layouts.out_row),
            "residual_enable": In(1), "result": Out(layouts.out_row),
        })

    def elaborate(self, platform):
        m = Module()
        out_bits = self.config.operand_width
        for col in range(self.config.tile_cols):
            p = self.params[col]
            biased = saturated(m, self.acc[col] + p.bias, BIAS_BITS, f"biased_{col}")
            product = Signal(signed(BIAS_BITS + len(p.multiplier) + 1), name=f"product_{col}")
            m.d.comb += product.eq(biased * p.multiplier)
            half = (Const(1, 1) << p.shift) >> 1
            rounded = Signal(signed(len(product) + 1), name=f"rounded_{col}")
            m.d.comb += rounded.eq((product + half) >> p.shift)
            requantized = saturated(m, rounded, out_bits, f"requantized_{col}")
            with_residual = Mux(self.residual_enable, requantized + self.residual[col], requantized)
            m.d.comb += self.result[col].eq(saturated(m, with_residual, out_bits, f"out_{col}"))
        return m
