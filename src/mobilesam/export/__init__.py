"""ONNX export and the ONNX Runtime backend.

``export_onnx`` writes the image encoder (pre-processing inside), the prompt decoder (SAM's official ONNX
interface), optional int8 variants and a manifest; ``OnnxSamPredictor`` (``mobilesam.backends``) runs
them with ``SamPredictor``'s interface. Needs the optional extra: ``pip install "mobilesam[onnx]"``.

The names are imported on first use (PEP 562): the ONNX Runtime backend imports this package's graph
and manifest modules without loading the exporter, and the exporter's ``OnnxSamPredictor`` import does
not run in a circle through the backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

# Public name -> the submodule that defines it.
_LAZY_NAMES = {
    "MANIFEST_NAME": "manifest",
    "ExportError": "manifest",
    "read_manifest": "manifest",
    "export_onnx": "onnx_export",
    "quantize_int8": "onnx_export",
    "OnnxSamPredictor": "predictor",
}

__all__ = sorted(_LAZY_NAMES)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, globals(), __all__)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from .manifest import MANIFEST_NAME, ExportError, read_manifest
    from .onnx_export import export_onnx, quantize_int8
    from .predictor import OnnxSamPredictor
