"""SAM's training losses (arXiv 2304.02643, section 3 and appendix A): a linear combination of focal
loss and dice loss, 20:1, on the mask logits, and the mean squared error between the predicted IoU and
the IoU of the predicted mask with the ground truth.

Masks are compared at the decoder's low resolution (256 x 256 for the 1024 input frame), over the
cells that cover the image (``valid``; the padding of the frame is left out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT, DICE_WEIGHT = 20.0, 1.0
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


def mask_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """20 x focal + dice for every mask: logits (N, M, H, W), target and valid (N, 1, H, W) in {0, 1};
    returns (N, M). Focal is averaged over the valid cells; dice is ``1 - (2|p t| + 1) / (|p| + |t| + 1)``."""
    logits = logits.float()
    t, v = target.float().expand_as(logits), valid.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = FOCAL_ALPHA * t + (1 - FOCAL_ALPHA) * (1 - t)
    focal = (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA * v).sum((-2, -1)) / v.sum((-2, -1)).clamp(min=1)
    inter = (p * t * v).sum((-2, -1))
    dice = 1 - (2 * inter + 1) / ((p * v).sum((-2, -1)) + (t * v).sum((-2, -1)) + 1)
    return FOCAL_WEIGHT * focal + DICE_WEIGHT * dice


@torch.no_grad()
def mask_iou(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks (logit > 0) with the target over the valid cells: (N, M); 1.0 when
    both are empty."""
    pred = (logits > 0) & valid.bool()
    t = target.bool().expand_as(pred) & valid.bool()
    inter = (pred & t).sum((-2, -1)).float()
    union = (pred | t).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_loss(predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Mean squared error of predicted IoUs against the masks' actual IoUs (same shape)."""
    return F.mse_loss(predicted.float(), actual.float(), reduction="none")


__all__ = ["DICE_WEIGHT", "FOCAL_WEIGHT", "iou_loss", "mask_iou", "mask_loss"]
