"""MobileSAM: Segment Anything with a 5.7M-parameter TinyViT image encoder.

High level (Ultralytics-style): ``SAM``, ``Results``, ``auto_annotate``.
Labelled data: ``val`` (box / click mIoU, NoC, mask AP), ``finetune`` (mask decoder, prompt encoder, LoRA).
Low level (official API): ``build_sam``, ``sam_model_registry``, ``SamPredictor``, ``SamAutomaticMaskGenerator``.
Backends: ``create_predictor``, ``register_backend``, ``available_backends``.
Process set-up for CPU inference: ``tune_allocator``.

The names are imported on first use (PEP 562), so ``import mobilesam`` or ``import mobilesam.modeling``
does not pull in the whole package (OpenCV, pycocotools, the annotation tools, ...).
"""

from __future__ import annotations

from ._lazy import lazy_attributes
from ._version import __version__

# Public name -> the submodule that defines it.
_LAZY_NAMES = {
    "MODEL_CONFIGS": "modeling",
    "Sam": "modeling",
    "WEIGHTS": "weights",
    "CheckpointError": "weights",
    "Results": "results",
    "SAM": "model",
    "SamPredictor": "predictor",
    "SamAutomaticMaskGenerator": "everything",
    "auto_annotate": "annotate",
    "build_sam": "build",
    "detect_model_type": "build",
    "sam_model_registry": "build",
    "available_backends": "backends",
    "create_predictor": "backends",
    "register_backend": "backends",
    "tune_allocator": "allocator",
    "val": "validation",
    "finetune": "train",
}

__all__ = [*_LAZY_NAMES, "__version__"]
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, globals(), __all__)

TYPE_CHECKING = False  # what typing.TYPE_CHECKING is at run time, without importing typing (~10 ms)
if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from .allocator import tune_allocator
    from .annotate import auto_annotate
    from .backends import available_backends, create_predictor, register_backend
    from .build import build_sam, detect_model_type, sam_model_registry
    from .everything import SamAutomaticMaskGenerator
    from .model import SAM
    from .modeling import MODEL_CONFIGS, Sam
    from .predictor import SamPredictor
    from .results import Results
    from .train import finetune
    from .validation import val
    from .weights import WEIGHTS, CheckpointError
