"""Payload layouts of the matrix engine, derived from :mod:`vitaccel.hw.spec.matrix`."""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from ..spec.config import AccelConfig
from ..spec.matrix import COMMAND_FIELDS, PARAM_FIELDS, check_engine_config, nm_words_per_step
from ..spec.nm import index_bits

__all__ = ["EngineLayouts", "block_control_layout"]


def block_control_layout() -> data.StructLayout:
    """Control bits that travel with the A operands through the grid."""
    return data.StructLayout({"valid": 1, "first": 1, "last": 1})


class EngineLayouts:
    """Every payload layout of one engine configuration.

    Attributes
    ----------
    a_word : A scratchpad word, raw operand bits, ``[row][kk]`` (``tile_rows x b``).
    a_operand : the grid's A input, ``[row][lane]``, each element widened to ``operand_width + 1``
        signed bits: ``b`` lanes, or ``a_span = b * M / N`` (one sparse step) with ``nm_sparsity``.
    b_word : B scratchpad word, ``[kk][col]`` (``b x tile_cols``).
    meta_word : with ``nm_sparsity``, a metadata word ``[kk][col]`` of in-group indices, else None.
    params : per-tile post-processing parameters, ``[col]`` of bias/multiplier/shift.
    out_row : one output (or residual) row, ``[col]`` signed ``operand_width``.
    accumulators : the ``tile_rows x tile_cols`` accumulator block, ``[row][col]``.
    command : the GEMM command word.
    """

    def __init__(self, config: AccelConfig):
        check_engine_config(config)
        w, b = config.operand_width, config.block_size
        self.operand_width = w
        self.a_word = data.ArrayLayout(data.ArrayLayout(unsigned(w), b), config.tile_rows)
        self.nm = config.nm_sparsity
        self.a_span = b * nm_words_per_step(config)
        self.a_operand = data.ArrayLayout(data.ArrayLayout(signed(w + 1), self.a_span), config.tile_rows)
        self.meta_word = None if self.nm is None else data.ArrayLayout(
            data.ArrayLayout(unsigned(index_bits(self.nm[1])), config.tile_cols), b)
        self.b_word = data.ArrayLayout(data.ArrayLayout(signed(w), config.tile_cols), b)
        self.param_entry = data.StructLayout(
            {name: signed(bits) if is_signed else unsigned(bits) for name, bits, is_signed in PARAM_FIELDS})
        self.params = data.ArrayLayout(self.param_entry, config.tile_cols)
        self.out_row = data.ArrayLayout(signed(w), config.tile_cols)
        self.accumulators = data.ArrayLayout(data.ArrayLayout(signed(config.acc_width), config.tile_cols),
                                             config.tile_rows)
        self.command = data.StructLayout({name: unsigned(bits) for name, bits in COMMAND_FIELDS})
