"""Pipeline registers and registered adder trees of the matrix engine's datapaths.

Each carry chain gets a cycle of its own: at the ``zcu102`` preset's 300 MHz an UltraScale+
slice has room for one adder (or one unregistered DSP48E2 multiply) between two registers
(docs/timing.md), so sums of many terms are trees with a register after every level.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, Value

__all__ = ["register", "adder_tree", "tree_levels"]


def register(m: Module, value, name: str, shape=None, *, enable=None, keep: bool = False) -> Signal:
    """``value`` one cycle later in a reset-less register (datapath: the valid bits that
    travel beside it carry the reset), loaded only while ``enable`` is high if given.

    ``keep`` keeps it a flip-flop: yosys would otherwise fold a run of plain copies into a
    shift-register LUT (SRL16E), whose clock-to-out is four times a flip-flop's; registers
    at a DSP48E2's ports must stay flip-flops. Such a register gets the domain's reset,
    which an SRL cannot have (a ``keep`` attribute alone did not stop yosys)."""
    value = Value.cast(value)
    reg = Signal(shape if shape is not None else value.shape(), name=name, reset_less=not keep)
    if enable is None:
        m.d.sync += reg.eq(value)
    else:
        with m.If(enable):
            m.d.sync += reg.eq(value)
    return reg


def tree_levels(terms: int) -> int:
    """Register levels of :func:`adder_tree` over ``terms`` values: ``ceil(log2(terms))``."""
    if terms < 1:
        raise ValueError(f"an adder tree needs at least one term, got {terms}")
    return (terms - 1).bit_length()


def adder_tree(m: Module, terms: list, name: str, *, levels: int | None = None) -> Value:
    """The sum of ``terms``, one registered level of pairwise adds at a time.

    The result lags the terms by exactly ``levels`` cycles (default :func:`tree_levels`;
    a larger ``levels`` delays the sum, so that trees of different sizes line up).
    """
    terms = [Value.cast(term) for term in terms]
    needed = tree_levels(len(terms))
    levels = needed if levels is None else levels
    if levels < needed:
        raise ValueError(f"{len(terms)} terms need {needed} levels, got {levels}")
    for level in range(levels):
        pairs = [terms[i:i + 2] for i in range(0, len(terms), 2)]
        terms = [register(m, pair[0] + pair[1] if len(pair) == 2 else pair[0], f"{name}_l{level}_{index}")
                 for index, pair in enumerate(pairs)]
    return terms[0]
