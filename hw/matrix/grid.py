"""The block grid: ``block_rows x block_cols`` block units linked by systolic register hops."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import AccelConfig
from .block_unit import BlockUnit, block_unit_latency
from .layouts import EngineLayouts, block_control_layout

__all__ = ["BlockGrid"]


def _delayed(m: Module, value, cycles: int, name: str):
    """``value`` delayed by ``cycles`` registers (the skew that lines up systolic operands)."""
    for stage in range(cycles):
        reg = Signal(len(value), name=f"{name}_d{stage}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


class BlockGrid(wiring.Component):
    """Output-block-stationary grid computing one ``tile_rows x tile_cols`` output tile.

    Block row ``r`` shares the A block of its ``b`` rows and block column ``c`` shares the B
    block of its ``b`` columns (first broadcast level). The shared operands travel from unit
    to unit through registers; the feeder delays A of block row ``r`` by ``r`` cycles and B
    of block column ``c`` by ``c`` cycles so that matching operands meet in unit ``(r, c)``
    ``r + c`` cycles after they enter. Control travels with A.

    With ``nm_sparsity`` the grid also takes the metadata word (``meta``), which travels with
    B; each unit's A block then spans one sparse step (see :class:`BlockUnit`).

    ``captured`` is high in the cycle the last unit (the one furthest from the feeder)
    stores a finished tile: from the next cycle all of ``result`` holds that tile. That is
    ``block_rows + block_cols - 2`` hops plus the units' pipeline (:attr:`latency` - 1 more
    cycles than a unit's accumulate register alone) after the tile's last step enters.
    """

    def __init__(self, config: AccelConfig):
        self.config = config
        self.layouts = EngineLayouts(config)
        #: Cycles of one block unit's pipeline (:func:`~vitaccel.hw.matrix.block_unit.block_unit_latency`).
        self.latency = block_unit_latency(config.block_size, config.dsp_packing)
        ports = {
            "a": In(self.layouts.a_operand), "b": In(self.layouts.b_word), "ctl": In(block_control_layout()),
            "result": Out(self.layouts.accumulators), "captured": Out(1),
        }
        if self.layouts.meta_word is not None:
            ports["meta"] = In(self.layouts.meta_word)
        super().__init__(ports)

    def _columns(self, word, c: int):
        """Block column ``c``'s ``b x b`` part of a ``[kk][col]`` word (B or metadata)."""
        b = self.config.block_size
        bits = word.shape().elem_shape.elem_shape.width
        return Cat(*[word[kk].as_value()[c * b * bits:(c + 1) * b * bits] for kk in range(b)])

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        b, rows, cols, w = cfg.block_size, cfg.block_rows, cfg.block_cols, cfg.operand_width
        nm = cfg.nm_sparsity
        units = [[BlockUnit(block_size=b, a_width=w + 1, b_width=w, acc_width=cfg.acc_width, nm=nm,
                            packing=cfg.dsp_packing)
                  for _ in range(cols)] for _ in range(rows)]
        a_bits = self.a.as_value()
        block_a_bits = len(a_bits) // rows
        for r in range(rows):
            for c in range(cols):
                unit = units[r][c]
                m.submodules[f"unit_{r}_{c}"] = unit
                if c == 0:
                    a_in = _delayed(m, a_bits[r * block_a_bits:(r + 1) * block_a_bits], r, f"a_skew{r}")
                    ctl_in = _delayed(m, self.ctl.as_value(), r, f"ctl_skew{r}")
                    m.d.comb += [unit.a_in.eq(a_in), unit.ctl_in.eq(ctl_in)]
                else:
                    m.d.comb += [unit.a_in.eq(units[r][c - 1].a_out), unit.ctl_in.eq(units[r][c - 1].ctl_out)]
                if r == 0:
                    m.d.comb += unit.b_in.eq(_delayed(m, self._columns(self.b, c), c, f"b_skew{c}"))
                    if nm is not None:
                        m.d.comb += unit.meta_in.eq(_delayed(m, self._columns(self.meta, c), c, f"meta_skew{c}"))
                else:
                    m.d.comb += unit.b_in.eq(units[r - 1][c].b_out)
                    if nm is not None:
                        m.d.comb += unit.meta_in.eq(units[r - 1][c].meta_out)
                for i in range(b):
                    for j in range(b):
                        m.d.comb += self.result[r * b + i][c * b + j].eq(unit.result[i][j])
        m.d.comb += self.captured.eq(units[rows - 1][cols - 1].tile_done)
        return m
