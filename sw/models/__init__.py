"""The model zoo (see :mod:`vitaccel.sw.models.zoo`)."""

from .vit import VisionTransformer
from .zoo import ZOO, get_model, zoo_names

__all__ = ["VisionTransformer", "ZOO", "get_model", "zoo_names"]
