"""vitaccel's float IR (see :mod:`vitaccel.sw.ir.graph`)."""

from .graph import KINDS, Graph, IRError, Node, Ref, call_aten

__all__ = ["Graph", "Node", "Ref", "IRError", "KINDS", "call_aten"]
