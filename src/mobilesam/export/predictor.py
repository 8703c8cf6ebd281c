"""Kept so that ``mobilesam.export.predictor.OnnxSamPredictor`` still imports; the backend lives in
``mobilesam.backends.onnx_predictor``."""

from ..backends.onnx_predictor import PRECISIONS, OnnxSamPredictor

__all__ = ["PRECISIONS", "OnnxSamPredictor"]
