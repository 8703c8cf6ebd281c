"""Predictor backends: the interface (:class:`Predictor`), the registry every front end uses, and the
built-in runtimes.

Built in: ``torch`` (exact), ``torch-bf16`` (bfloat16 image encoder), ``onnxruntime`` and
``onnxruntime-int8`` (exported once into the cache, or an exported folder; ``pip install
"mobilesam[onnx]"``), ``openvino`` (exact), ``openvino-bf16`` (CPUs with bfloat16 only) and
``openvino-int8`` (NNCF-quantized image encoder), converted once into the cache (``pip install
"mobilesam[openvino]"``). Each runtime's module is imported only when a predictor of it is made, and the
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
    backend_for_folder,
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

        if is_exported_model(model):
            return OnnxSamPredictor(model, precision=precision, **options)
        return OnnxSamPredictor.from_sam(model, precision=precision, **options)

    return factory


def _openvino(precision: str) -> Any:
    def factory(model: Any, **options: Any) -> Predictor:
        from .openvino_predictor import OpenVinoSamPredictor

        if is_exported_model(model):  # written by mobilesam export --format openvino
            return OpenVinoSamPredictor(model, precision=precision, **options)
        return OpenVinoSamPredictor.from_sam(model, precision=precision, **options)

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

__all__ = [
    "BACKENDS",
    "BackendEntry",
    "ImageFeatures",
    "ImageNotSetError",
    "Predictor",
    "PredictorBase",
    "available_backends",
    "backend_for_folder",
    "create_predictor",
    "get_backend",
    "is_exported_model",
    "register_backend",
    "unregister_backend",
]
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, globals(), __all__)
