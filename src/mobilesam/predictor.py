"""``SamPredictor``: embed an image once, then answer many prompts. API-compatible with the official one.

The class is the PyTorch backend (``mobilesam.backends.torch_predictor``); this module keeps the names
that were always imported from here.
"""

from .allocator import tune_allocator as tune_cpu_allocator  # the old name; no longer called on construction
from .backends.base import ImageNotSetError
from .backends.torch_predictor import SamPredictor
from .prompts import validate_boxes, validate_mask_input, validate_points

__all__ = ["ImageNotSetError", "SamPredictor", "tune_cpu_allocator", "validate_boxes", "validate_mask_input", "validate_points"]
