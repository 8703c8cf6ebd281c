"""The two SAM 2 modules that are exported to ONNX: the image encoder with its normalisation, and the
prompt encoder + mask decoder. Thin wrappers over :class:`mobilesam.modeling.sam2.Sam2` (the reference
computation); traced, so nothing depends on Python control flow over input values.

The decoder interface follows SAM's official ONNX decoder where SAM 2 allows it (point labels, padding
point, ``mask_input`` / ``has_mask_input``, four outputs with the single-mask one first) and adds what
SAM 2 needs: the two high-resolution feature maps as inputs, and the object-score logit as an output.
Upscaling to the image (and SAM 2's hole filling) is left to the caller, which knows the image size.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backends.torch_fast import optimize_for_export
from ..modeling.sam2 import FEATURE_NAMES, Sam2

ENCODER_INPUTS = ["image"]
ENCODER_OUTPUTS = list(FEATURE_NAMES)  # image_embed, high_res_feats_0, high_res_feats_1
DECODER_INPUTS = [*FEATURE_NAMES, "point_coords", "point_labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["low_res_masks", "iou_predictions", "object_score_logits"]


class Sam2EncoderGraph(nn.Module):
    """RGB image stretched to ``image_size`` x ``image_size`` (1, 3, S, S), float 0-255 -> the decoder's
    three feature maps (``no_mem_embed`` already added to ``image_embed``). ImageNet mean/std inside."""

    def __init__(self, sam: Sam2, pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...]) -> None:
        super().__init__()
        self.sam = sam
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.sam.image_features((image - self.pixel_mean) / self.pixel_std)
        return tuple(features[name] for name in FEATURE_NAMES)


class Sam2DecoderGraph(nn.Module):
    """SAM 2's prompt encoder and mask decoder.

    Inputs: the three feature maps of :class:`Sam2EncoderGraph`; ``point_coords`` (B, N, 2) in the S x S
    input frame; ``point_labels`` (B, N) float: -1 padding point, 0 negative, 1 positive, 2 / 3 box
    top-left / bottom-right. SAM 2's own predictor gives the box corners first, then the clicks, then
    one padding point (always: SAM 2 never passes a box to its prompt encoder). ``mask_input`` (B or 1,
    1, S/4, S/4) and ``has_mask_input`` (1,).
    Outputs: ``low_res_masks`` (B, 4, S/4, S/4) logits and ``iou_predictions`` (B, 4): index 0 is the
    single-mask answer (SAM 2's dynamic choice: the single-mask token where it is stable, else the best
    multimask output), 1-3 the multimask outputs; ``object_score_logits`` (B, 1).
    """

    def __init__(self, sam: Sam2) -> None:
        super().__init__()
        self.prompt_encoder = sam.sam_prompt_encoder
        self.mask_decoder = optimize_for_export(sam.sam_mask_decoder)  # same weights, same values

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        sparse = pe._embed_points(point_coords, point_labels, pad=False)
        dense = has_mask_input * pe.mask_downscaling(mask_input)
        dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        decoder = self.mask_decoder
        masks, iou, _, object_scores = decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        single, single_iou = decoder._dynamic_multimask_via_stability(masks, iou)
        return (torch.cat([single, masks[:, 1:]], dim=1), torch.cat([single_iou, iou[:, 1:]], dim=1),
                object_scores)
