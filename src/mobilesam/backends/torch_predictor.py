"""The PyTorch backend: ``SamPredictor``, API-compatible with the official one.

The model given is the reference (``mobilesam.modeling``); the predictor runs
``optimize_for_inference(model)``, the same weights with the CPU fast paths, under ``torch.no_grad``.
Pre-processing (resize rule, mean/std, padding) comes from the model's family in ``mobilesam.hub``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..hub import family_of
from ..io import load_image
from ..transforms import transform_for
from .base import ImageFeatures, PredictorBase
from .torch_fast import optimize_for_inference

ENCODER_PRECISIONS = ("fp32", "bf16")


class SamPredictor(PredictorBase):
    """Computes an image embedding once and predicts masks for prompts on it, with PyTorch.

    Mirrors ``segment_anything.SamPredictor``: same methods, arguments and outputs.
    ``max_batch`` bounds how many prompts ``predict_torch`` decodes at once: a larger batch is split
    into chunks (same results, bounded memory: full-size masks are thresholded chunk by chunk).
    ``encoder_precision="bf16"`` runs the image encoder under bfloat16 autocast (about 2x faster on CPUs
    with AMX or AVX512-BF16, and on GPUs; embeddings within about 2% of fp32); the decoder stays fp32.
    ``encoder_batch``: images per encoder pass in ``set_images``.
    """

    backend = "torch"

    def __init__(
        self, sam_model: nn.Module, max_batch: int = 16, encoder_precision: str = "fp32", encoder_batch: int = 4
    ) -> None:
        if not isinstance(sam_model, nn.Module):
            raise TypeError(f"sam_model: expected a Sam module (build_sam(...)), got {type(sam_model).__name__}")
        if encoder_precision not in ENCODER_PRECISIONS:
            raise ValueError(f"encoder_precision: expected 'fp32' or 'bf16', got {encoder_precision!r}")
        if isinstance(encoder_batch, bool) or not isinstance(encoder_batch, int) or encoder_batch < 1:
            raise ValueError(f"encoder_batch: expected an int >= 1, got {encoder_batch!r}")
        self.encoder_batch = encoder_batch
        family = family_of(sam_model)
        self.model = sam_model
        self.family = family
        self.encoder_precision = encoder_precision
        if encoder_precision == "bf16":
            self.backend = "torch-bf16"
        pre = family.preprocessing
        self._mean = torch.tensor(pre.pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(pre.pixel_std, dtype=torch.float32).view(-1, 1, 1)
        self._fast = optimize_for_inference(sam_model)
        super().__init__(transform_for(pre), sam_model.mask_threshold, max_batch)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __repr__(self) -> str:
        return f"SamPredictor(backend={self.backend!r}, device={str(self.device)!r}, max_batch={self.max_batch})"

    def _normalise(self, transformed_image: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) 0-255 -> normalised and zero-padded bottom/right to (1, 3, S, S)."""
        dev = self.device
        x = transformed_image.to(dev, torch.float32)
        x = (x - self._mean.to(dev)) / self._std.to(dev)
        size = self.transform.target_length
        return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))

    def _run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder_precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self._fast.image_encoder(x).float()
        return self._fast.image_encoder(x)

    def _encode(self, transformed_image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image_embeddings": self._run_encoder(self._normalise(transformed_image))}

    @torch.no_grad()
    def set_images(self, images: Sequence[Any], image_format: str = "RGB") -> list[ImageFeatures]:
        """Embed several images, ``encoder_batch`` per encoder pass; returns their features in order and
        leaves the last one set. Same features as one ``set_image`` each, up to float rounding."""
        images = list(images)
        out: list[ImageFeatures] = []
        for start in range(0, len(images), self.encoder_batch):
            inputs, sizes = [], []
            for image in images[start : start + self.encoder_batch]:
                rgb = load_image(image, image_format=image_format)
                resized = torch.as_tensor(self.transform.apply_image(rgb)).permute(2, 0, 1)[None]
                inputs.append(self._normalise(resized))
                sizes.append((tuple(rgb.shape[:2]), tuple(resized.shape[-2:])))
            embeddings = self._run_encoder(torch.cat(inputs))
            out += [ImageFeatures({"image_embeddings": embeddings[i : i + 1]}, orig, inp)
                    for i, (orig, inp) in enumerate(sizes)]
        if out:
            self.set_features(out[-1])
        return out

    @torch.no_grad()
    def decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._require_image()
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self._fast.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self._fast.mask_decoder(
            image_embeddings=features.tensors["image_embeddings"],
            image_pe=self._fast.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    @torch.no_grad()
    def postprocess_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        self._require_image()
        return self._fast.postprocess_masks(low_res, self.input_size, self.original_size)
