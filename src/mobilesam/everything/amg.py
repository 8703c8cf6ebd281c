"""Mask-data utilities of the automatic mask generator: point grids, crop boxes, stability score,
uncropping, run-length encoding, box NMS and small-region removal.

Ported from Meta's ``segment_anything/utils/amg.py`` (Apache-2.0) so that the exact mode makes the same
decisions as the official generator; NMS is a short torch function instead of torchvision's.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import cv2
import numpy as np
import torch


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) points evenly spaced in [0, 1]^2 as (x, y), row by row."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``n_per_side / scale_per_layer**i`` points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, ...], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes (the whole image first, then (2**i)**2 overlapping crops for layer i) and layers."""
    crop_boxes, layer_idxs = [[0, 0, im_size[1], im_size[0]]], [0]
    im_h, im_w = im_size[:2]
    short_side = min(im_h, im_w)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(x0s, y0s):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def calculate_stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU of the masks thresholded at ``threshold +- offset``: logits (..., H, W) -> (...).

    The high-threshold mask lies inside the low-threshold one, so the IoU is a ratio of areas.
    Row sums in int16 as the official code (exact for widths below 32768).
    """
    inter = (masks > (mask_threshold + threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    union = (masks > (mask_threshold - threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inter / union


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """(N,) True for crop-frame XYXY boxes within ``atol`` of a crop edge that is not an image edge."""
    crop_t = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig_t = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop_t[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig_t[None, :], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def erode_masks(masks: torch.Tensor, reach: int) -> torch.Tensor:
    """Binary erosion of bool masks (..., H, W) by a (2 * reach + 1) square, the image border counting as
    inside (a cell at the border stays if its in-image neighbours do). Separable boolean ANDs of shifted
    views: much cheaper than a min-pool over float masks."""
    out = masks.bool()
    for dim in (-2, -1):
        src = out
        out = src.clone()
        n = src.shape[dim]
        for d in range(1, min(reach, n - 1) + 1):
            out.narrow(dim, 0, n - d).logical_and_(src.narrow(dim, d, n - d))
            out.narrow(dim, d, n - d).logical_and_(src.narrow(dim, 0, n - d))
    return out


def box_xyxy_to_xywh(box: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    out = box.clone() if isinstance(box, torch.Tensor) else np.array(box, copy=True)
    out[..., 2] = out[..., 2] - out[..., 0]
    out[..., 3] = out[..., 3] - out[..., 1]
    return out


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0 = crop_box[:2]
    return boxes + torch.tensor([x0, y0, x0, y0], device=boxes.device)


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0 = crop_box[:2]
    return points + torch.tensor([x0, y0], device=points.device)


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """Zero-pad crop masks (N, h, w) back to the image frame (N, orig_h, orig_w)."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    return torch.nn.functional.pad(masks, (x0, pad_x - x0, y0, pad_y - y0), value=0)


def mask_to_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Uncompressed COCO RLE (column-major run lengths, first run = zeros) of boolean masks (N, H, W)."""
    n, h, w = masks.shape
    flat = masks.permute(0, 2, 1).flatten(1)
    change = (flat[:, 1:] ^ flat[:, :-1]).nonzero()
    # Runs of every mask at once: positions where the value changes, split per mask.
    starts = torch.searchsorted(change[:, 0].contiguous(), torch.arange(n + 1, device=masks.device))
    idx = (change[:, 1] + 1).cpu().numpy()
    starts = starts.cpu().numpy()
    first = flat[:, 0].cpu().numpy()
    out = []
    for i in range(n):
        bounds = np.concatenate([[0], idx[starts[i] : starts[i + 1]], [h * w]])
        counts = np.diff(bounds).tolist()
        out.append({"size": [h, w], "counts": ([0] + counts) if first[i] else counts})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Boolean (H, W) mask of an uncompressed RLE."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    return int(sum(rle["counts"][1::2]))


def box_iou(boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU (N, N) of XYXY boxes, computed as torchvision's NMS does (no +1 on widths)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, None] + area[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of kept boxes, by decreasing score.

    Same result as ``torchvision.ops.nms`` (stable descending sort, suppress IoU > threshold).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes.float()[order]).cpu().numpy() > iou_threshold
    n = len(order)
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        removed[i + 1 :] |= iou[i, i + 1 :]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh``.

    Returns the mask and whether it changed. With islands, if every region is small the largest stays.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode: expected 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[:, -1][1:]  # row 0 is the background label
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0] + small
    if not correct_holes:
        fill = [i for i in range(n_labels) if i not in fill]
        if not fill:
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True
