"""Segment everything: the automatic mask generators (official-exact and fast modes) of SAM and SAM 2."""

from .generator import MODES, OUTPUT_MODES, SamAutomaticMaskGenerator, check_options
from .sam2_generator import Sam2AutomaticMaskGenerator, automatic_mask_generator

__all__ = [
    "MODES",
    "OUTPUT_MODES",
    "Sam2AutomaticMaskGenerator",
    "SamAutomaticMaskGenerator",
    "automatic_mask_generator",
    "check_options",
]
