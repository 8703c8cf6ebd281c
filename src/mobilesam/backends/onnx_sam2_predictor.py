"""The ONNX Runtime backend for SAM 2 / SAM 2.1: ``OnnxSam2Predictor`` over a ``mobilesam export`` folder
whose manifest says ``"family": "sam2"`` (graphs: :mod:`mobilesam.export.sam2_graphs`).

Pre-processing (the square resize, coordinates) and post-processing (SAM 2's hole and sprinkle filling,
the bilinear upscaling, the clamp of the low-resolution logits handed back) are the torch backend's code;
normalisation, the Hiera encoder, the prompt encoder and the mask decoder run in the graphs.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..export.manifest import ExportError, read_manifest
from ..export.sam2_graphs import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS
from ..hub import SAM2_FAMILY
from ..transforms import fill_holes_and_sprinkles, transform_for
from .base import ExportedPredictor, ImageFeatures, check_fill_areas
from .sam2_api import Sam2PredictorMethods
from .onnx_predictor import _key, cached_export, open_export, open_sessions

LABEL_PAD = -1.0
BOX_LABELS = (2.0, 3.0)


def is_sam2_export(model_dir: str | os.PathLike) -> bool:
    """True for an export folder (or manifest) of the SAM 2 family."""
    try:
        _, manifest = read_manifest(model_dir)
    except (FileNotFoundError, ExportError):
        return False
    return manifest.get("family") == "sam2"


class OnnxSam2Predictor(Sam2PredictorMethods, ExportedPredictor):
    """A SAM 2 predictor on ONNX Runtime, with :class:`~mobilesam.predictor.SamPredictor`'s methods and
    outputs and ``SAM2ImagePredictor``'s (``normalize_coords``, ``set_image_batch``, ``predict_batch``);
    tensors are on the CPU.

    ``model_dir``: a SAM 2 export folder (or its manifest). ``precision`` / ``decoder_precision``: "fp32"
    or "int8" files. ``max_hole_area`` / ``max_sprinkle_area``: as SAM 2's predictor (0 = off).
    """

    family = SAM2_FAMILY

    def __init__(
        self,
        model_dir: str | os.PathLike,
        precision: str = "fp32",
        decoder_precision: str = "fp32",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        verify: bool = True,
        max_batch: int = 16,
        *,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
    ) -> None:
        self.max_hole_area, self.max_sprinkle_area = check_fill_areas(max_hole_area, max_sprinkle_area)
        folder, manifest = open_export(self, model_dir, precision, decoder_precision)
        if manifest.get("family") != "sam2":
            raise ExportError(f"onnx model: '{folder}' is a {manifest.get('family', 'sam')!r} export, not SAM 2's; "
                              "run it with OnnxSamPredictor")
        self.low_res_limit = float(manifest.get("low_res_logit_limit", 32.0))
        self.feature_layout = {k: tuple(v) for k, v in manifest["feature_layout"].items()}
        self.encoder, self.decoder = open_sessions(
            self, folder, manifest, threads, providers, verify, ("SAM 2 image encoder", ENCODER_INPUTS, ENCODER_OUTPUTS),
            ("SAM 2 prompt decoder", DECODER_INPUTS, DECODER_OUTPUTS))
        super().__init__(transform_for(SAM2_FAMILY.preprocessing), float(manifest.get("mask_threshold", 0.0)),
                         max_batch)

    @classmethod
    def from_sam(
        cls, sam: torch.nn.Module, precision: str = "fp32", cache: str | os.PathLike | None = None, **kwargs: Any
    ) -> OnnxSam2Predictor:
        """Export ``sam`` (a ``Sam2``) once into a cache folder keyed by its weights, then load it."""
        return cls(cached_export(sam, precision, cache, kwargs.get("decoder_precision")), precision=precision, **kwargs)

    def _encode(self, transformed_image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.encoder is None:
            raise ExportError(f"onnx model: the export in '{self.model_dir}' has no image encoder; use "
                              "set_features(...) or re-export with the encoder")
        image = np.ascontiguousarray(transformed_image.detach().cpu().numpy(), dtype=np.float32)
        outputs = self.encoder.run(None, {"image": image})
        return {name: torch.from_numpy(a) for name, a in zip(ENCODER_OUTPUTS, outputs)}

    def feature_identity(self) -> str:
        """``sam2/size/encoder file digest/backend`` (the disk cache's key; the digest names weights and precision)."""
        entry = self.manifest["files"][_key("encoder", self.precision)] if self.encoder is not None else {}
        return f"sam2/{self.model_type or 'unknown'}/{entry.get('sha256', 'no-encoder')[:32]}/{self.backend}"

    def _check_features(self, features: ImageFeatures) -> None:
        got = {k: tuple(v.shape) for k, v in features.tensors.items()}
        if got != self.feature_layout:
            raise ValueError(f"features: expected the SAM 2 feature maps {self.feature_layout}, got {got}")

    def _embedding_tensors(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        raise ValueError(
            f"set_embedding: a SAM 2 model decodes from {list(self.feature_layout)}, not one embedding tensor; "
            "keep and restore all of them with get_features() / set_features()"
        )

    def decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._require_image()
        batch = next((t.shape[0] for t in (point_coords, boxes, mask_input) if t is not None), 1)
        coords, labels = [], []
        if boxes is not None:  # SAM 2's order: box corners, clicks, one padding point
            coords.append(boxes.detach().cpu().numpy().astype(np.float32).reshape(batch, 2, 2))
            labels.append(np.tile(np.array([BOX_LABELS], np.float32), (batch, 1)))
        if point_coords is not None:
            coords.append(point_coords.detach().cpu().numpy().astype(np.float32))
            labels.append(point_labels.detach().cpu().numpy().astype(np.float32))
        coords.append(np.zeros((batch, 1, 2), np.float32))
        labels.append(np.full((batch, 1), LABEL_PAD, np.float32))
        low = self.feature_layout["high_res_feats_0"][-1]  # S/4: the low-resolution mask side
        if mask_input is not None:
            mask, has_mask = mask_input.detach().cpu().numpy().astype(np.float32), np.ones(1, np.float32)
        else:
            mask, has_mask = np.zeros((1, 1, low, low), np.float32), np.zeros(1, np.float32)
        feeds = {name: features.tensors[name].numpy() for name in ENCODER_OUTPUTS}
        feeds.update(point_coords=np.ascontiguousarray(np.concatenate(coords, axis=1)),
                     point_labels=np.ascontiguousarray(np.concatenate(labels, axis=1)),
                     mask_input=np.ascontiguousarray(mask), has_mask_input=has_mask)
        low_res, iou, _ = (torch.from_numpy(a) for a in self.decoder.run(None, feeds))
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return low_res[:, sl], iou[:, sl]

    def postprocess_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        self._require_image()
        low_res = fill_holes_and_sprinkles(low_res, self.mask_threshold, self.max_hole_area, self.max_sprinkle_area)
        return F.interpolate(low_res.float(), self.original_size, mode="bilinear", align_corners=False)
