"""MobileSAM: Segment Anything with a 5.7M-parameter TinyViT image encoder.

High level (Ultralytics-style): ``SAM``, ``Results``, ``auto_annotate``.
Low level (official API): ``build_sam``, ``sam_model_registry``, ``SamPredictor``.
"""

from .annotate import auto_annotate
from .build import build_sam, detect_model_type, sam_model_registry
from .model import SAM
from .modeling import MODEL_CONFIGS, Sam
from .predictor import SamPredictor
from .results import Results
from .weights import WEIGHTS, CheckpointError

__version__ = "0.1.0"

__all__ = [
    "MODEL_CONFIGS",
    "WEIGHTS",
    "CheckpointError",
    "Results",
    "SAM",
    "Sam",
    "SamPredictor",
    "build_sam",
    "detect_model_type",
    "sam_model_registry",
    "__version__",
    "auto_annotate",
]
