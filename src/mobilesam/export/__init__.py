"""ONNX export and the ONNX Runtime backend.

``export_onnx`` writes the image encoder (pre-processing inside), the prompt decoder (SAM's official ONNX
interface), optional int8 variants and a manifest; ``OnnxSamPredictor`` runs them with
``SamPredictor``'s interface. Needs the optional extra: ``pip install "mobilesam[onnx]"``.
"""

from .manifest import MANIFEST_NAME, ExportError, read_manifest
from .onnx_export import export_onnx, quantize_int8
from .predictor import OnnxSamPredictor

__all__ = ["MANIFEST_NAME", "ExportError", "OnnxSamPredictor", "export_onnx", "quantize_int8", "read_manifest"]
