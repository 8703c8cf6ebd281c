"""SAM 2's predictor methods (``SAM2ImagePredictor``'s API), for every backend's predictor: ``predict`` with
``normalize_coords``, ``set_image_batch`` and ``predict_batch``. A mixin over :class:`PredictorBase`:
``class MyPredictor(Sam2PredictorMethods, PredictorBase)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .base import ImageFeatures


class Sam2PredictorMethods:
    """``predict(..., normalize_coords=False)`` (points and box in [0, 1] of the image size),
    ``set_image_batch`` and ``predict_batch``, over the predictor interface (``set_images``,
    ``set_features``, ``predict``)."""

    _batch_features: list[ImageFeatures] | None = None

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
        *,
        strict: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`PredictorBase.predict`; with ``normalize_coords=False`` (SAM 2's predictor) the
        points and box are given relative to the image size, in [0, 1], instead of in pixels."""
        if not normalize_coords:
            self._require_image()
            h, w = self.original_size
            if point_coords is not None:
                point_coords = np.asarray(point_coords, dtype=float) * (w, h)
            if box is not None:
                box = np.asarray(box, dtype=float) * (w, h, w, h)
        return super().predict(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits, strict=strict
        )

    @torch.no_grad()
    def set_image_batch(self, image_list: Sequence[Any], image_format: str = "RGB") -> None:
        """Embed several images for :meth:`predict_batch` (SAM 2's predictor API); the last one is also
        set for :meth:`predict`."""
        if isinstance(image_list, (str, np.ndarray)) or not isinstance(image_list, Sequence) or not image_list:
            raise ValueError(f"image_list: expected a non-empty list of images, got {type(image_list).__name__}")
        self._batch_features = self.set_images(image_list, image_format)

    def predict_batch(
        self,
        point_coords_batch: Sequence[np.ndarray | None] | None = None,
        point_labels_batch: Sequence[np.ndarray | None] | None = None,
        box_batch: Sequence[np.ndarray | None] | None = None,
        mask_input_batch: Sequence[np.ndarray | None] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """One :meth:`predict` per image of the last :meth:`set_image_batch`, with the i-th entry of each
        prompt list (None for none); returns lists of masks, scores and low-res logits."""
        if not self._batch_features:
            raise RuntimeError("An image batch must be set with .set_image_batch(...) before predict_batch.")
        n = len(self._batch_features)
        prompts = {"point_coords_batch": point_coords_batch, "point_labels_batch": point_labels_batch,
                   "box_batch": box_batch, "mask_input_batch": mask_input_batch}
        for name, values in prompts.items():
            if values is not None and len(values) != n:
                raise ValueError(f"{name}: expected one entry per image ({n}), got {len(values)}")
        current = self._features
        out: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        try:
            for i, features in enumerate(self._batch_features):
                self.set_features(features)
                pick = [v[i] if v is not None else None for v in prompts.values()]
                for acc, value in zip(out, self.predict(*pick, multimask_output, return_logits, normalize_coords)):
                    acc.append(value)
        finally:
            if current is not None:
                self.set_features(current)
        return out
