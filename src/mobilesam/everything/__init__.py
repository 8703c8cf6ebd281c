"""Segment everything: the automatic mask generator (official-exact and fast modes)."""

from .generator import MODES, OUTPUT_MODES, SamAutomaticMaskGenerator, check_options

__all__ = ["MODES", "OUTPUT_MODES", "SamAutomaticMaskGenerator", "check_options"]
