"""Predictor backends: the interface (:class:`Predictor`), the registry every front end uses, and the
built-in runtimes.

Built in: ``torch`` (exact), ``torch-bf16`` (bfloat16 image encoder), ``onnxruntime`` and
``onnxruntime-int8`` (exported once into the cache, or an exported folder; ``pip install
"mobilesam[onnx]"``), ``openvino`` (exact), ``openvino-bf16`` (CPUs with bfloat16 only) and
``openvino-int8`` (NNCF-quantized image encoder), converted once into the cache (``pip install
"mobilesam[openvino]"``), ``executorch`` / ``executorch-int8`` and ``litert`` / ``litert-int8`` (the
phone runtimes' desktop Python packages over an edge export; ``pip install "mobilesam[executorch]"`` or
``"mobilesam[tflite]"``). Each runtime's module is imported only when a predictor of it is made, and the
interface names (``Predictor``, ``PredictorBase``, ``ImageFeatures``) on first use, so listing and checking
backend names (``mobilesam --backend``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import lazy_attributes
from .registry import (
    BACKENDS,
    BackendEntry,
    available_backends,
    create_predictor,
    get_backend,
    is_exported_model,
    register_backend,
    unregister_backend,
)


_LAZY_NAMES = {name: "base" for name in ("ImageFeatures", "ImageNotSetError", "Predictor", "PredictorBase")}
if TYPE_CHECKING:
    from .base import ImageFeatures, ImageNotSetError, Predictor, PredictorBase


def _torch(model: Any, **options: Any) -> Predictor:
    from .torch_predictor import SamPredictor

    return SamPredictor(model, **options)


def _torch_bf16(model: Any, **options: Any) -> Predictor:
    from .torch_predictor import SamPredictor

    return SamPredictor(model, encoder_precision="bf16", **options)


def _onnx(precision: str) -> Any:
    def factory(model: Any, **options: Any) -> Predictor:
        from .onnx_predictor import OnnxSamPredictor
        from .onnx_sam2_predictor import OnnxSam2Predictor, is_sam2_export

        if is_exported_model(model):
            cls = OnnxSam2Predictor if is_sam2_export(model) else OnnxSamPredictor  # the manifest's family
            return cls(model, precision=precision, **options)
        from ..hub import family_of

        cls = OnnxSam2Predictor if family_of(model).name == "sam2" else OnnxSamPredictor
        return cls.from_sam(model, precision=precision, **options)

    return factory


def _openvino(precision: str) -> Any:
    def factory(model: Any, **options: Any) -> Predictor:
        from .openvino_predictor import OpenVinoSamPredictor

        if is_exported_model(model):  # written by mobilesam export --format openvino
            return OpenVinoSamPredictor(model, precision=precision, **options)
        return OpenVinoSamPredictor.from_sam(model, precision=precision, **options)

    return factory


def _edge(module: str, cls: str, precision: str) -> Any:
    def factory(model: Any, **options: Any) -> Predictor:
        import importlib

        # The class of the model's family (SAM or SAM 2), from the folder's manifest or the torch model.
        return getattr(importlib.import_module(module, __package__), cls).open(model, precision=precision, **options)

    return factory


register_backend("torch", _torch, description="PyTorch, fp32 (exact)")
register_backend("torch-bf16", _torch_bf16, description="PyTorch, bfloat16 image encoder, fp32 decoder")
register_backend("onnxruntime", _onnx("fp32"), description="ONNX Runtime, fp32", exported=True)
register_backend("onnxruntime-int8", _onnx("int8"), description="ONNX Runtime, int8 image encoder", exported=True)
register_backend("openvino", _openvino("fp32"), description="OpenVINO, fp32 (exact)", exported=True)
register_backend("openvino-bf16", _openvino("bf16"), description="OpenVINO, bfloat16 image encoder, fp32 decoder",
                 exported=True)
register_backend("openvino-int8", _openvino("int8"), description="OpenVINO, int8 image encoder (NNCF), fp32 decoder",
                 exported=True)
register_backend("executorch", _edge(".executorch_predictor", "ExecuTorchSamPredictor", "fp32"),
                 description="ExecuTorch (XNNPACK), fp32: a .pte export, checked on the desktop", exported=True)
register_backend("executorch-int8", _edge(".executorch_predictor", "ExecuTorchSamPredictor", "int8"),
                 description="ExecuTorch (XNNPACK), dynamic int8 image encoder, fp32 decoder", exported=True)
register_backend("litert", _edge(".litert_predictor", "LiteRtSamPredictor", "fp32"),
                 description="LiteRT (TFLite) interpreter, fp32: a .tflite export, checked on the desktop", exported=True)
register_backend("litert-int8", _edge(".litert_predictor", "LiteRtSamPredictor", "int8"),
                 description="LiteRT (TFLite) interpreter, dynamic int8 encoder and decoder", exported=True)

__all__ = [
    "BACKENDS",
    "BackendEntry",
    "ImageFeatures",
    "ImageNotSetError",
    "Predictor",
    "PredictorBase",
    "available_backends",
    "create_predictor",
    "get_backend",
    "is_exported_model",
    "register_backend",
    "unregister_backend",
]
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, globals(), __all__)
