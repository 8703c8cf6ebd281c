"""Mask conversions shared by the API, segment-everything, auto-annotation and the server:
bounding boxes, polygons (OpenCV contours) and COCO run-length encoding (pycocotools)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (..., 4) of boolean masks (..., H, W); an empty mask gives [0, 0, 0, 0].

    x2/y2 are the last occupied column/row (inclusive), as the official ``batched_mask_to_box``.
    """
    if masks.numel() == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    h, w = masks.shape[-2:]
    rows = masks.any(dim=-1)  # (..., H)
    cols = masks.any(dim=-2)  # (..., W)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y2 = torch.where(rows, ys, -1).amax(dim=-1)
    y1 = torch.where(rows, ys, h).amin(dim=-1)
    x2 = torch.where(cols, xs, -1).amax(dim=-1)
    x1 = torch.where(cols, xs, w).amin(dim=-1)
    boxes = torch.stack([x1, y1, x2, y2], dim=-1)
    empty = ~rows.any(dim=-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def mask_to_polygons(mask: np.ndarray, strategy: str = "largest", min_points: int = 3) -> list[np.ndarray]:
    """Outer contours of a boolean mask (H, W) as float32 (K, 2) arrays of (x, y) pixel coordinates.

    ``strategy="largest"`` keeps only the largest component's contour (one polygon, what a YOLO label
    line can hold faithfully); ``"all"`` returns every component's outer contour, largest first.
    Holes are not represented. An empty mask gives [].
    """
    if strategy not in ("largest", "all"):
        raise ValueError(f"strategy: expected 'largest' or 'all', got {strategy!r}")
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"mask: expected a 2-D (H, W) mask, got shape {m.shape}")
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = [c.reshape(-1, 2).astype(np.float32) for c in contours if len(c) >= min_points]
    polys.sort(key=lambda p: -cv2.contourArea(p))
    return polys[:1] if strategy == "largest" else polys


def join_polygons(polys: list[np.ndarray]) -> np.ndarray:
    """Join several polygons into one ring, as Ultralytics writes a multi-part mask as one YOLO segment.

    Each polygon is spliced into the ring at its point closest to the ring, going there and back along
    the same zero-width bridge, so the filled ring covers the union of the parts.
    """
    if not polys:
        return np.zeros((0, 2), np.float32)
    ring = polys[0]
    for nxt in polys[1:]:
        d = ((ring[:, None, :] - nxt[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        detour = np.concatenate([nxt[j:], nxt[: j + 1]])
        ring = np.concatenate([ring[: i + 1], detour, ring[i:]])
    return ring.astype(np.float32)


def polygons_to_mask(polys: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise (K, 2) polygons in pixels into a boolean (H, W) mask."""
    m = np.zeros(shape, np.uint8)
    pts = [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in polys if len(p) >= 3]
    if pts:
        cv2.fillPoly(m, pts, 1)
    return m.astype(bool)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a boolean (H, W) mask, with ``counts`` as a str (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"]}


def rle_counts_total(counts: str) -> int:
    """Sum of the runs of a compressed COCO RLE string (pycocotools' LEB128-like code), checking each run.

    pycocotools trusts its input: runs that do not add up to H*W leave memory uninitialised, so
    :func:`decode_rle` checks every compressed RLE with this before decoding it.
    """
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated run")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} is not part of the RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
            if k > 13:
                raise ValueError("run too long")
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError("negative run length")
        runs.append(x)
    return sum(runs)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Boolean (H, W) mask from a COCO RLE (compressed str/bytes counts or uncompressed list counts).

    Raises ValueError when the runs do not cover exactly H*W pixels.
    """
    h, w = (int(s) for s in rle["size"])
    counts = rle.get("counts")
    if isinstance(counts, list):
        total = sum(int(c) for c in counts)
    elif isinstance(counts, (str, bytes)):
        counts = counts.decode("ascii") if isinstance(counts, bytes) else counts
        total = rle_counts_total(counts)
    else:
        raise ValueError(f"rle: expected 'counts' as a str, bytes or list, got {type(counts).__name__}")
    if total != h * w:
        raise ValueError(f"rle: runs cover {total} pixels, expected {h} x {w} = {h * w}")
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        rle = {"size": [h, w], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def mask_area(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))
