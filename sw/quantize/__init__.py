"""Post-training quantization: float IR + calibration images -> integer-only QGraph."""

from .observers import METHODS, MinMaxObserver, PercentileObserver, make_observer
from .ptq import calibrate, quantize_graph, quantize_model

__all__ = ["quantize_model", "quantize_graph", "calibrate", "make_observer", "MinMaxObserver",
           "PercentileObserver", "METHODS"]
