"""The ``Sam`` module: image encoder + prompt encoder + mask decoder, and the official batched forward."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Segment Anything: an image encoder (TinyViT or ViT, (B, 3, S, S) -> (B, 256, S/16, S/16)), the
    prompt encoder and the mask decoder, with SAM's pixel normalisation and mask post-processing."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise and zero-pad bottom/right to a square: (B, 3, h, w) -> (B, 3, S, S)."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Low-res logits (B, M, 256, 256) -> logits at the original image size (B, M, H, W).

        Upsample to the padded input (img_size square), crop the padding (to ``input_size``), then
        resize to ``original_size``.
        """
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, torch.Tensor]]:
        """The official batched interface.

        Each record holds ``image`` (3, h, w) already resized (longest side = img_size), ``original_size``
        (H, W), and optionally ``point_coords`` (B, N, 2), ``point_labels`` (B, N), ``boxes`` (B, 4),
        ``mask_inputs`` (B, 1, 256, 256), all in the resized frame. Returns per record ``masks``
        (B, M, H, W) bool, ``iou_predictions`` (B, M) and ``low_res_logits`` (B, M, 256, 256).
        """
        images = torch.stack([self.preprocess(rec["image"]) for rec in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        outputs = []
        for rec, emb in zip(batched_input, embeddings):
            points = (rec["point_coords"], rec["point_labels"]) if "point_coords" in rec else None
            sparse, dense = self.prompt_encoder(points=points, boxes=rec.get("boxes"), masks=rec.get("mask_inputs"))
            low_res, iou = self.mask_decoder(
                image_embeddings=emb.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(low_res, rec["image"].shape[-2:], rec["original_size"])
            outputs.append(
                {"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res}
            )
        return outputs
