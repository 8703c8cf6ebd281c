"""Simulated clicks of the interactive protocol (RITM's, which SAM's evaluation follows).

The first click is the pixel of the object farthest from its boundary. Each next click goes to the
centre of the largest error region: the error pixel farthest from the boundary of its region, among
the misses (ground truth the mask lacks: a positive click) and the spill (mask outside the ground
truth: a negative click), whichever lies deeper (a tie goes to the negative click, as in RITM). Distances are
Euclidean (OpenCV's exact L2 transform; RITM used the 5x5 approximation) with the image border counting as boundary, and a tie between
pixels goes to the first in row-major order. Clicks are pixel indices (x, y), as SAM's predictors take them.
"""

from __future__ import annotations

import cv2
import numpy as np


def depth(region: np.ndarray) -> np.ndarray:
    """Distance of each pixel of a boolean (H, W) region to the nearest pixel outside it (or to the image
    border), float32; 0 outside the region."""
    padded = np.pad(region, 1).astype(np.uint8)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def _deepest(region: np.ndarray) -> tuple[float, int, int]:
    d = depth(region)
    k = int(np.argmax(d))
    y, x = divmod(k, d.shape[1])
    return float(d.flat[k]), x, y


def first_click(gt: np.ndarray) -> tuple[int, int]:
    """(x, y) of the ground-truth pixel farthest from the object's boundary; gt is a non-empty (H, W) mask."""
    _, x, y = _deepest(gt)
    return x, y


def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int] | None:
    """(x, y, label) of the next click for prediction ``pred`` of object ``gt`` (boolean (H, W) masks):
    label 1 in the largest missed region, 0 in the largest spilled one; None when ``pred`` equals ``gt``."""
    missed = gt & ~pred
    spilled = pred & ~gt
    d_miss, xm, ym = _deepest(missed) if missed.any() else (0.0, 0, 0)
    d_spill, xs, ys = _deepest(spilled) if spilled.any() else (0.0, 0, 0)
    if d_miss == 0.0 and d_spill == 0.0:
        return None
    if d_miss > d_spill:
        return xm, ym, 1
    return xs, ys, 0


__all__ = ["depth", "first_click", "next_click"]
