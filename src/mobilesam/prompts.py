"""Checks of prompts given in original-image pixels: points with labels, XYXY boxes, low-res mask logits.

Every front end (the predictors, the ``SAM`` facade, detectors, the server) checks prompts with these
functions, so a bad prompt gets the same message wherever it comes in.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger("mobilesam")

LOW_RES_SHAPE = (1, 256, 256)  # SAM's low-resolution mask logits, as the decoder returns them


def finite_array(x: Any, name: str, dtype: type = np.float64) -> np.ndarray:
    """``x`` as an array of ``dtype``; a ValueError naming ``name`` for non-numbers, NaN or inf."""
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected numbers, got {type(x).__name__} ({e})") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: all values must be finite, got NaN or inf in {arr.tolist()}")
    return arr


def validate_points(point_coords: Any, point_labels: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Check (N, 2) coordinates and (N,) labels in {0, 1}; returns them as arrays (or None)."""
    if point_coords is None and point_labels is None:
        return None
    if point_coords is None:
        raise ValueError("point_coords: point_labels were given without point_coords")
    if point_labels is None:
        raise ValueError("point_labels: point_coords were given without point_labels (1 = foreground, 0 = background)")
    coords = finite_array(point_coords, "point_coords")
    labels = finite_array(point_labels, "point_labels")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"point_coords: expected shape (N, 2) as (x, y) pixels, got shape {coords.shape}")
    if labels.ndim != 1 or labels.shape[0] != coords.shape[0]:
        raise ValueError(
            f"point_labels: expected shape ({coords.shape[0]},), one label per point, got shape {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"point_labels: expected 1 (foreground) or 0 (background), got {labels.tolist()}")
    return coords, labels.astype(np.int64)


def misordered_boxes(boxes: np.ndarray) -> np.ndarray:
    """Rows of (B, 4) XYXY boxes that break x1 <= x2 and y1 <= y2 (a boolean (B,) array)."""
    return (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])


def validate_boxes(box: Any, name: str = "box") -> np.ndarray:
    """Check XYXY boxes, shape (4,) or (B, 4), with x1 <= x2 and y1 <= y2; returns (B, 4)."""
    arr = finite_array(box, name)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (4,) or (B, 4) as x1, y1, x2, y2, got shape {np.shape(box)}")
    bad = misordered_boxes(arr)
    if bad.any():
        raise ValueError(f"{name}: expected x1 <= x2 and y1 <= y2 (XYXY), got {arr[bad][0].tolist()}")
    return arr


def validate_mask_input(mask_input: Any, batch: int | None, name: str = "mask_input") -> np.ndarray:
    """Check low-resolution mask logits: (1, 256, 256), or (B, 1, 256, 256) when ``batch`` is set."""
    arr = finite_array(mask_input, name, np.float32)
    expected = LOW_RES_SHAPE if batch is None else (batch, *LOW_RES_SHAPE)
    if arr.shape != expected:
        raise ValueError(
            f"{name}: expected low-resolution logits of shape {expected} (the low_res_logits of an earlier "
            f"prediction), got shape {arr.shape}"
        )
    return arr


def outside_image(
    size: tuple[int, int], points: np.ndarray | None = None, boxes: np.ndarray | None = None
) -> str | None:
    """Describe the prompts that lie outside an image of ``size`` (H, W), or None when all are inside.

    ``points`` (..., 2) as (x, y), ``boxes`` (..., 4) XYXY, in original-image pixels. Inside means
    0 <= x <= W and 0 <= y <= H (the image's far edges included).
    """
    h, w = int(size[0]), int(size[1])
    parts = []
    if points is not None and np.size(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        out = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
        if out.any():
            parts.append(f"{int(out.sum())} point(s), e.g. (x, y) = {pts[out][0].tolist()}")
    if boxes is not None and np.size(boxes):
        bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = (bx[:, 0] < 0) | (bx[:, 1] < 0) | (bx[:, 2] > w) | (bx[:, 3] > h)
        if out.any():
            parts.append(f"{int(out.sum())} box(es), e.g. XYXY {bx[out][0].tolist()}")
    if not parts:
        return None
    return (
        f"prompts: {' and '.join(parts)} outside the image of {w} x {h} (W x H) pixels; "
        "coordinates are pixels of the original image, x in [0, W] and y in [0, H]"
    )


def check_inside_image(
    size: tuple[int, int], points: np.ndarray | None = None, boxes: np.ndarray | None = None,
    strict: bool = False,
) -> bool:
    """Warn (logger ``mobilesam``) about prompts outside the image, or raise a ValueError with ``strict``.

    Returns True when a warning was logged, so that a caller checking several images warns once.
    """
    message = outside_image(size, points, boxes)
    if message is None:
        return False
    if strict:
        raise ValueError(message)
    logger.warning("mobilesam: %s (pass strict=True to make this an error)", message)
    return True
