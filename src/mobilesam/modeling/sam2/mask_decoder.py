"""SAM 2's mask decoder: SAM's, plus an object-score token, high-resolution skip features in the
upscaling, a sigmoid IoU head, and the dynamic fall-back to a multimask output when the single mask
is unstable."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..mask_decoder import MaskDecoder
from .mlp import MLP


class Sam2MaskDecoder(MaskDecoder):
    """Masks (B, M, 4H, 4W), IoU scores (B, M), mask tokens and object-score logits (B, 1) from
    image and prompt embeddings.

    With ``use_high_res_features`` the two upscaling steps add the stride-8 and stride-4 image features
    (``conv_s1`` / ``conv_s0`` project them; SAM 2 applies those once per image, in the encoder step).
    With ``dynamic_multimask_via_stability`` (SAM 2's predictors), a single-mask request whose mask's
    stability score is below ``dynamic_multimask_stability_thresh`` gets the best of the three
    multimask outputs instead (eval mode only).
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
    ) -> None:
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=transformer,
            num_multimask_outputs=num_multimask_outputs,
            activation=activation,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1)
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head = (
                MLP(transformer_dim, transformer_dim, 1, 3) if pred_obj_scores_mlp else nn.Linear(transformer_dim, 1)
            )
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """image_embeddings (1 or B, C, H, W); sparse (B, N, C); dense (1 or B, C, H, W);
        high_res_features [(1 or B, C/8, 4H, 4W), (1 or B, C/4, 2H, 2W)] already projected.

        Returns masks (B, M, 4H, 4W), IoU scores (B, M), the SAM output tokens for object pointers
        (B, 3 or 1, C) and object-score logits (B, 1); M is 3 with ``multimask_output`` else 1.
        """
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res_features
        )
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]
        # The single-mask token is the object pointer except in multimask tracking (trained that way).
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def predict_masks(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: list[torch.Tensor] | None = None,
        transformer: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks (B, M, 4H, 4W) and scores (B, M), the mask tokens (B, M, C)
        and object-score logits (B, 1). ``transformer(src, pos_src, tokens) -> (tokens, src)`` replaces
        ``self.transformer`` where the same weights run differently (the fixed-slot export masks unused
        prompt tokens)."""
        b = sparse_prompt_embeddings.shape[0]
        weights = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            weights.insert(0, self.obj_score_token.weight)
        first = 1 if self.pred_obj_scores else 0  # the object-score token comes first
        output_tokens = torch.cat(weights, dim=0)
        tokens = torch.cat([output_tokens.expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        src = self._image_source(image_embeddings, dense_prompt_embeddings, b)
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape

        hs, src = (transformer or self.transformer)(src, pos_src, tokens)
        iou_token_out = hs[:, first]
        mask_tokens_out = hs[:, first + 1 : first + 1 + self.num_mask_tokens]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        if self.use_high_res_features:
            if high_res_features is None or len(high_res_features) != 2:
                raise ValueError("high_res_features: expected the two projected high-resolution feature maps, got none")
            up1, norm1, act1, up2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            upscaled = act1(norm1(up1(src) + feat_s1))
            upscaled = act2(up2(upscaled) + feat_s0)
        else:
            upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, c2, h2, w2 = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(upscaled.shape[0], c2, h2 * w2)).reshape(b, -1, h2, w2)
        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            object_score_logits = iou_pred.new_full((b, 1), 10.0)  # "object present": sigmoid(10) ~ 1
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """IoU of the masks thresholded at +delta and -delta: (B, M, H, W) -> (B, M)."""
        flat = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        inter = (flat > delta).sum(dim=-1).float()
        union = (flat > -delta).sum(dim=-1).float()
        # A tensor, not the scalar 1.0: Core ML's converter has no where() with a scalar operand.
        return torch.where(union > 0, inter / union, torch.ones_like(inter))

    def _dynamic_multimask_via_stability(
        self, all_mask_logits: torch.Tensor, all_iou_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The single-mask output where it is stable, else the multimask output with the best IoU score."""
        rows = torch.arange(all_iou_scores.shape[0], device=all_iou_scores.device)
        best = all_iou_scores[:, 1:].argmax(dim=-1) + 1
        best_logits = all_mask_logits[rows, best][:, None]
        best_scores = all_iou_scores[rows, best][:, None]
        single_logits, single_scores = all_mask_logits[:, 0:1], all_iou_scores[:, 0:1]
        stable = self._stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh  # (B, 1)
        return (
            torch.where(stable[..., None, None], single_logits, best_logits),
            torch.where(stable, single_scores, best_scores),
        )
