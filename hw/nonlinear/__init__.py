"""Streaming non-linear units (softmax, GELU, LayerNorm) and their reusable fixed-point stages."""

from .arith import ExpStage, InvSqrt, Reciprocal
from .units import Gelu, GeluInt16, LayerNorm, Softmax, softmax_input_layout

__all__ = ["Softmax", "Gelu", "GeluInt16", "LayerNorm", "ExpStage", "Reciprocal", "InvSqrt", "softmax_input_layout"]
