"""Model capture: ``torch.export`` of a PyTorch module, lowered to vitaccel's IR."""

from .capture import UnsupportedOperator, capture, describe_source

__all__ = ["capture", "UnsupportedOperator", "describe_source"]
