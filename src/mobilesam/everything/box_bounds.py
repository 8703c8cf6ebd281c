"""Bounds on the full-resolution box of a mask known only at low resolution, and on box IoUs from them.

SAM's full-resolution mask is its 256x256 logits upsampled by bilinear interpolation (to the padded
input, cropped, then to the image: each step a convex combination of at most 2 x 2 values), thresholded.
So a full-resolution pixel can be in the mask only if one of the low-resolution cells it interpolates
between is (the *outer* box: the low-resolution box grown by the interpolation's reach), and it is
certainly in the mask if all of them are (the *inner* box: the box of the cells whose whole neighbourhood
is in the mask, each mapped to the pixel at its centre). The true box lies between the two, edge by edge,
which bounds the IoU of two boxes without upsampling either.
"""

from __future__ import annotations

import math

import torch

from ..masks import masks_to_boxes
from .amg import erode_masks


def _axis_bounds(c0: torch.Tensor, c1: torch.Tensor, px: float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Outer pixel range of cells [c0, c1] along one axis (``px`` pixels per cell, ``size`` pixels)."""
    # Pixel x interpolates between cells within [(x + 0.5) / px - 1.75, (x + 0.5) / px + 0.75]; one more
    # pixel either way for rounding.
    lo = torch.floor((c0 - 0.75) * px - 0.5) - 1
    hi = torch.ceil((c1 + 1.75) * px - 0.5) + 1
    return lo.clamp(0, size - 1), hi.clamp(0, size - 1)


def low_res_box_bounds(
    masks: torch.Tensor, px_x: float, px_y: float, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outer and inner XYXY pixel boxes (N, 4) of the full-resolution masks of low-resolution masks
    (N, h, w) bool (cells of ``px_x`` x ``px_y`` pixels; the image is ``width`` x ``height`` pixels).

    The full-resolution box of mask i is within ``outer[i]`` and contains ``inner[i]``, edge by edge. An
    inner box that cannot be bounded (no cell deep enough inside the mask) is all -1 (nothing is
    certain); an empty mask's outer box is all -1 too (nothing to suppress or be suppressed by)."""
    masks = masks.bool()
    n = len(masks)
    outer = torch.full((n, 4), -1.0)
    inner = torch.full((n, 4), -1.0)
    if n == 0:
        return outer, inner
    any_cell = masks.flatten(1).any(1)
    cells = masks_to_boxes(masks).float().cpu()
    x0, x1 = _axis_bounds(cells[:, 0], cells[:, 2], px_x, width)
    y0, y1 = _axis_bounds(cells[:, 1], cells[:, 3], px_y, height)
    outer = torch.where(any_cell.cpu()[:, None], torch.stack([x0, y0, x1, y1], 1), outer)
    # The pixel nearest a cell's centre interpolates between cells at most this far from it (one cell
    # when a cell is at least one pixel wide; more when the image is smaller than the 256 low-res grid).
    reach = 1 + math.floor(0.25 + 0.5 / min(px_x, px_y))
    deep = erode_masks(masks, reach)
    # Only cells whose centre pixel is inside the image.
    h, w = masks.shape[-2:]
    max_r = min(h - 1, math.floor((height - 1) / px_y - 0.5))
    max_c = min(w - 1, math.floor((width - 1) / px_x - 0.5))
    deep[:, max_r + 1 :, :] = False
    deep[:, :, max_c + 1 :] = False
    has_deep = deep.flatten(1).any(1).cpu()
    e = masks_to_boxes(deep).float().cpu()

    def centre(c: torch.Tensor, px: float, size: int) -> torch.Tensor:
        return torch.round((c + 0.5) * px - 0.5).clamp(0, size - 1)

    ib = torch.stack([centre(e[:, 0], px_x, width), centre(e[:, 1], px_y, height),
                      centre(e[:, 2], px_x, width), centre(e[:, 3], px_y, height)], 1)
    inner = torch.where(has_deep[:, None], ib, inner)
    return outer, inner


def _area(b: torch.Tensor) -> torch.Tensor:
    """Box area as ``box_iou`` computes it (no +1 on widths), 0 for an unknown (-1) box."""
    return ((b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)) * (b[..., 0] >= 0)


def _inter(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1] * (a[..., 0] >= 0) * (b[..., 0] >= 0)


def box_iou_bounds(outer: torch.Tensor, inner: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds (K,) on the IoU (as ``box_iou``) between a box known to lie between
    ``inner`` and ``outer`` (4,) and each exact box of ``boxes`` (K, 4). A bound is NaN where it cannot be
    computed (boxes of zero area): then neither "above" nor "at most" a threshold is certain."""
    i_max = _inter(outer[None], boxes)
    i_min = _inter(inner[None], boxes)
    a_min, a_max, a = _area(inner), _area(outer), _area(boxes)
    # IoU = i / (a1 + a2 - i) grows with the intersection i and shrinks with the areas a1, a2 >= i.
    hi = i_max / (torch.maximum(a_min, i_max) + torch.maximum(a, i_max) - i_max)
    lo = i_min / (a_max + a - i_min)
    return lo, hi

