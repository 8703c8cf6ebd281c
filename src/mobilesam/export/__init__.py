"""Exporters, one module per format, chosen through one registry (:mod:`.registry`).

Built in: ``onnx`` (:func:`export_onnx`) and ``openvino`` (``openvino_export.export_openvino``); for phones
and edge boards ``executorch``, ``tflite`` and ``coreml`` (:func:`export_executorch`, :func:`export_tflite`,
:func:`export_coreml`); ``web`` (a static page that segments in the browser:
:func:`mobilesam.export.web_export.export_web`). ``export_model(model, out, format=...)`` runs any registered
one; ``register_export_format`` adds one. ``export_onnx`` writes the image encoder (pre-processing
inside), the prompt decoder (SAM's official ONNX interface), optional int8 variants and a manifest;
``OnnxSamPredictor`` (``mobilesam.backends``) runs them with ``SamPredictor``'s interface. Needs the
optional extra: ``pip install "mobilesam[onnx]"``.

The names are imported on first use (PEP 562): the ONNX Runtime backend imports this package's graph
and manifest modules without loading the exporter, and the exporter's ``OnnxSamPredictor`` import does
not run in a circle through the backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .registry import (
    available_export_formats,
    default_export_folder,
    export_model,
    get_export_format,
    register_export_format,
    unregister_export_format,
)

# Public name -> the submodule that defines it.
_LAZY_NAMES = {
    "MANIFEST_NAME": "manifest",
    "ExportError": "manifest",
    "read_manifest": "manifest",
    "export_onnx": "onnx_export",
    "quantize_int8": "onnx_export",
    "OnnxSamPredictor": "predictor",
    "export_executorch": "executorch_export",
    "export_tflite": "tflite_export",
    "export_coreml": "coreml_export",
}

register_export_format(
    "onnx",
    ".onnx_export:export_onnx",
    description="ONNX: image encoder (pre-processing inside) + SAM's official ONNX decoder interface",
    options=("model_type", "quantize", "parts", "opset", "return_single_mask", "layout"),
    backends=("onnxruntime", "onnxruntime-int8"),
    extra="onnx",
)
register_export_format(
    "openvino",
    ".openvino_export:export_openvino",
    description="OpenVINO IR: f32 image encoder (batched, pre-processing inside) + prompt decoder; NNCF int8 encoder",
    options=("quantize", "calibration", "calibration_size"),
    backends=("openvino", "openvino-bf16", "openvino-int8"),
    extra="openvino",
)
# Phones and edge boards: static-shape graphs (export/edge_graphs.py), checked in each runtime (edge_export.py).
_EDGE_OPTIONS = ("model_type", "quantize", "parts", "max_points")
register_export_format(
    "executorch",
    ".executorch_export:export_executorch",
    description="ExecuTorch .pte (XNNPACK): encoder + prompt decoder with fixed point slots; int8 via PT2E",
    options=_EDGE_OPTIONS,
    backends=("executorch", "executorch-int8"),
    extra="executorch",
)
register_export_format(
    "tflite",
    ".tflite_export:export_tflite",
    description="LiteRT .tflite (litert-torch): encoder + prompt decoder with fixed point slots; int8 via the LiteRT quantizer",
    options=_EDGE_OPTIONS,
    backends=("litert", "litert-int8"),
    extra="tflite",
)
register_export_format(
    "coreml",
    ".coreml_export:export_coreml",
    description="Core ML .mlpackage (ML program): encoder + prompt decoder with fixed point slots; fp16; runs on macOS/iOS",
    options=_EDGE_OPTIONS,
    backends=(),
    extra="coreml",
)

register_export_format(
    "web",
    ".web_export:export_web",
    description="a static web page that segments in the browser, no server: onnxruntime-web (WebAssembly), "
    "the ONNX image encoder and prompt decoder; COCO / YOLO / PNG labels written by the page",
    options=("model_type", "quantize", "opset"),
    backends=("onnxruntime", "onnxruntime-int8"),  # its model/ folder, as an onnx export
    extra="onnx",
)

__all__ = sorted(
    [
        *_LAZY_NAMES,
        "available_export_formats",
        "default_export_folder",
        "export_model",
        "get_export_format",
        "register_export_format",
        "unregister_export_format",
    ]
)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, globals(), __all__)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from .manifest import MANIFEST_NAME, ExportError, read_manifest
    from .coreml_export import export_coreml
    from .executorch_export import export_executorch
    from .onnx_export import export_onnx, quantize_int8
    from .tflite_export import export_tflite
    from .predictor import OnnxSamPredictor
