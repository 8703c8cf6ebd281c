"""SAM 2's prompt encoder: SAM's, with box corners given as points labelled 2 and 3.

SAM 2's predictor passes a box as two points (top-left label 2, bottom-right label 3) ahead of the
clicks and always pads with a "not a point" token; SAM's encoder would ignore labels 2 and 3.
"""

from __future__ import annotations

import torch

from ..prompt_encoder import PromptEncoder

BOX_CORNER_LABELS = (2, 3)  # top-left, bottom-right


class Sam2PromptEncoder(PromptEncoder):
    """Same weights and outputs as :class:`~mobilesam.modeling.prompt_encoder.PromptEncoder`; point
    labels: -1 padding, 0 background, 1 foreground, 2 / 3 box top-left / bottom-right."""

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        emb = torch.where(labels == -1, self.not_a_point_embed.weight, emb)
        for label, embedding in enumerate(self.point_embeddings):  # zeros as a tensor: Core ML's converter
            emb = emb + torch.where(labels == label, embedding.weight, torch.zeros_like(embedding.weight))
        return emb
