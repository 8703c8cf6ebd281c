"""The two modules that are exported to ONNX: the image encoder with its pre-processing, and the
prompt encoder + mask decoder + post-processing with the interface of SAM's official ONNX export.

Both are thin wrappers around the modules of :mod:`mobilesam.modeling` (the reference computation);
the decoder's are first given the rewrites that are plain tensor algebra
(:func:`mobilesam.backends.torch_fast.optimize_for_export`: re-associated few-token attention,
token-layout upscaling), which ONNX Runtime runs about twice as fast. They are traced (not scripted),
so everything that depends on input sizes is written with tensor arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backends.torch_fast import optimize_for_export
from ..modeling import Sam

# Point labels of the official ONNX decoder (segment_anything/utils/onnx.py).
LABEL_PAD, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


def pad_square(image: np.ndarray, img_size: int, pixel_mean: Sequence[float]) -> np.ndarray:
    """(B, 3, h, w) 0-255 -> (B, 3, S, S) float32, padded bottom/right with the pixel mean, which the encoder
    graph's normalisation turns into exactly the zero padding it gives one unpadded image: images of any
    aspect ratio then share one encoder run."""
    b, c, h, w = image.shape
    out = np.empty((b, c, img_size, img_size), np.float32)
    out[...] = np.asarray(pixel_mean, np.float32).reshape(1, c, 1, 1)
    out[:, :, :h, :w] = image
    return out


class EncoderGraph(nn.Module):
    """RGB images resized to longest side ``img_size`` (B, 3, h, w), float 0-255 -> embeddings (B, 256, 64, 64).

    Normalisation with SAM's pixel mean/std and zero padding (bottom/right) happen inside the graph. A batch
    of images of different sizes is given padded to the square input with :func:`pad_square`.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder
        self.img_size = sam.image_encoder.img_size
        self.register_buffer("pixel_mean", sam.pixel_mean.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.detach().clone().view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        x = F.pad(x, (0, self.img_size - w, 0, self.img_size - h))
        return self.image_encoder(x)


class HWCEncoderGraph(EncoderGraph):
    """The encoder with samexporter's / X-AnyLabeling's input: ``input_image`` (h, w, 3) float RGB 0-255,
    resized so the longest side is ``img_size`` (not padded) -> embedding (1, 256, 64, 64)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return super().forward(image.permute(2, 0, 1).unsqueeze(0))


class DecoderGraph(nn.Module):
    """SAM's official ONNX decoder interface (``SamOnnxModel``), over our modules.

    Inputs: ``image_embeddings`` (1, 256, 64, 64); ``point_coords`` (B, N, 2) in the resized frame
    (longest side 1024); ``point_labels`` (B, N) float with -1 = padding point, 0 = negative,
    1 = positive, 2 / 3 = box top-left / bottom-right; ``mask_input`` (B or 1, 1, 256, 256);
    ``has_mask_input`` (1,); ``orig_im_size`` (2,) float (H, W).
    Outputs: ``masks`` (B, M, H, W) logits at the original size, ``iou_predictions`` (B, M),
    ``low_res_masks`` (B, M, 256, 256). M is 4 (index 0 is the single-mask output, 1-3 the multimask
    outputs), or 1 with ``return_single_mask`` (the official selection by number of points).
    """

    def __init__(self, sam: Sam, return_single_mask: bool = False) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = optimize_for_export(sam.mask_decoder)  # same weights, same values
        self.img_size = sam.image_encoder.img_size
        self.return_single_mask = return_single_mask

    def _embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        coords = (point_coords + 0.5) / self.img_size
        emb = pe.pe_layer._pe_encoding(coords)
        labels = point_labels.unsqueeze(-1).expand_as(emb)
        # Arithmetic masks instead of control flow, as in the official export.
        emb = emb * (labels != LABEL_PAD)
        emb = emb + pe.not_a_point_embed.weight * (labels == LABEL_PAD)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (labels == i)
        return emb

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        dense = has_mask_input * pe.mask_downscaling(mask_input)
        return dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def _postprocess(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        # int(x * scale + 0.5) as ResizeLongestSide, in float64 so it rounds like the Python code.
        size = orig_im_size.to(torch.float64)
        input_size = torch.floor(size * (self.img_size / torch.max(size)) + 0.5).to(torch.int64)
        masks = masks[..., : input_size[0], : input_size[1]]
        orig = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(orig[0], orig[1]), mode="bilinear", align_corners=False)

    def _select_single(
        self, masks: torch.Tensor, iou: torch.Tensor, num_points: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The official rule: one click (plus the padding point) -> best multimask output; more -> token 0.
        reweight = torch.zeros_like(iou[:1])
        reweight[:, 0] = 1000.0
        best = torch.argmax(iou + (num_points - 2.5) * reweight, dim=1)
        rows = torch.arange(masks.shape[0])
        return masks[rows, best].unsqueeze(1), iou[rows, best].unsqueeze(1)

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        low_res, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        if self.return_single_mask:
            low_res, iou = self._select_single(low_res, iou, point_coords.shape[1])
        return self._postprocess(low_res, orig_im_size), iou, low_res
