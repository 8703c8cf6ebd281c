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


# Default ``simplify`` tolerance (pixels) of the label writers (YOLO labels, the server's polygons, exports
# to labelling tools): the largest tried that kept IoU >= 0.98 between the simplified and the exact
# polygon's raster on every one of 60 object masks (and their SAM-drawn versions), with about half the
# points; 1.0 px fell to 0.91 on small ones (benchmarks/polygon_simplify.py, numbers in benchmarks/RESULTS.md).
DEFAULT_SIMPLIFY = 0.5


def check_simplify(simplify: Any) -> float:
    """``simplify`` as a float >= 0 (pixels; 0 = the exact contour), or a ValueError naming it."""
    if isinstance(simplify, bool) or not isinstance(simplify, (int, float)) or not simplify >= 0:
        raise ValueError(
            f"simplify: expected a tolerance in pixels >= 0 (0 keeps every contour point), got {simplify!r}"
        )
    return float(simplify)


def simplify_polygon(poly: np.ndarray, tolerance: float) -> np.ndarray:
    """A closed polygon (K, 2) with fewer points: OpenCV's Douglas-Peucker (``approxPolyDP``); no point of
    the result is further than ``tolerance`` pixels from the original outline. 0 returns it unchanged."""
    if tolerance <= 0 or len(poly) < 4:
        return poly
    out = cv2.approxPolyDP(np.asarray(poly, np.float32).reshape(-1, 1, 2), float(tolerance), True)
    return out.reshape(-1, 2).astype(np.float32)


def mask_to_polygons(
    mask: np.ndarray, strategy: str = "largest", min_points: int = 3, simplify: float = 0.0
) -> list[np.ndarray]:
    """Outer contours of a boolean mask (H, W) as float32 (K, 2) arrays of (x, y) pixel coordinates.

    ``strategy="largest"`` keeps only the largest component's contour (one polygon, what a YOLO label
    line can hold faithfully); ``"all"`` returns every component's outer contour, largest first.
    ``simplify`` > 0 simplifies each contour (:func:`simplify_polygon`, tolerance in pixels); a part
    that shrinks below ``min_points`` is dropped. Holes are not represented. An empty mask gives [].
    """
    if strategy not in ("largest", "all"):
        raise ValueError(f"strategy: expected 'largest' or 'all', got {strategy!r}")
    tolerance = check_simplify(simplify)
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"mask: expected a 2-D (H, W) mask, got shape {m.shape}")
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = [c.reshape(-1, 2).astype(np.float32) for c in contours if len(c) >= min_points]
    polys.sort(key=lambda p: -cv2.contourArea(p))
    if strategy == "largest":
        polys = polys[:1]
    if tolerance > 0:
        polys = [q for q in (simplify_polygon(p, tolerance) for p in polys) if len(q) >= min_points]
    return polys


def join_polygons(polys: list[np.ndarray]) -> np.ndarray:
    """Join several polygons into one ring, as Ultralytics writes a multi-part mask as one YOLO segment.

    The parts are linked by a minimum spanning tree of their shortest gaps (found through a Voronoi
    labelling of their points, one distance transform), and each link is walked there and back along the
    same zero-width bridge, so the filled ring covers the union of the parts. The first polygon starts the
    ring. Linear in the image area: speckled masks with thousands of parts join in milliseconds.
    """
    polys = [np.asarray(p, np.float32).reshape(-1, 2) for p in polys if len(p)]
    if len(polys) <= 1:
        return polys[0].copy() if polys else np.zeros((0, 2), np.float32)
    children = _spanning_links(polys)
    out: list[np.ndarray] = []
    # Depth-first walk; a frame is (polygon, its point order, next position in that order).
    stack = [(0, np.arange(len(polys[0])), 0)]
    while stack:
        k, order, pos = stack.pop()
        n = len(order) if k == 0 else len(order) - 1  # a child's last point repeats its first
        links = children.get(k, {})
        stop = next((q for q in range(pos, n) if int(order[q]) in links), None) if links else None
        if stop is None:
            out.append(polys[k][order[pos:]])
            continue
        out.append(polys[k][order[pos : stop + 1]])
        a = int(order[stop])
        c, j = links[a].pop(0)
        if not links[a]:
            del links[a]
        stack.append((k, order, stop))  # back at point a after the child's loop
        m = len(polys[c])
        stack.append((c, np.r_[np.arange(j, m), np.arange(0, j + 1)], 0))
    return np.concatenate(out).astype(np.float32)


def _spanning_links(polys: list[np.ndarray]) -> dict[int, dict[int, list[tuple[int, int]]]]:
    """{parent: {point index: [(child, child point index), ...]}}: a tree over the polygons rooted at 0
    whose links are the shortest gaps between Voronoi-adjacent polygons (Kruskal)."""
    pts = np.concatenate(polys)
    owner = np.concatenate([np.full(len(p), k) for k, p in enumerate(polys)])
    index = np.concatenate([np.arange(len(p)) for p in polys])
    lo = pts.min(0)
    # The Voronoi grid is the points' bounding box in pixels, coarsened if it is huge (general polygons).
    scale = max(1.0, float(np.sqrt(np.prod(pts.max(0) - lo + 3) / 2**24)))
    xy = np.round((pts - lo) / scale).astype(np.int64)
    x0, y0 = xy.min(0)
    xy -= (x0 - 1, y0 - 1)  # one pixel of margin all round
    w, h = xy.max(0) + 2
    site = np.full((h, w), -1, np.int64)
    site[xy[:, 1], xy[:, 0]] = np.arange(len(xy))  # a pixel shared by points keeps the last
    free = (site < 0).astype(np.uint8)
    _, lab = cv2.distanceTransformWithLabels(free, cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL)
    # DIST_LABEL_PIXEL numbers the zero pixels 1.. in raster order.
    zero_sites = site.ravel()[np.flatnonzero(free.ravel() == 0)]
    nearest = zero_sites[lab - 1]  # (h, w): the point each pixel is closest to
    a = np.concatenate([nearest[:, :-1].ravel(), nearest[:-1, :].ravel()])
    b = np.concatenate([nearest[:, 1:].ravel(), nearest[1:, :].ravel()])
    cross = owner[a] != owner[b]
    a, b = a[cross], b[cross]
    d = ((pts[a] - pts[b]) ** 2).sum(1)
    parent = list(range(len(polys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    adj: dict[int, list[tuple[int, int, int]]] = {}
    for e in np.argsort(d, kind="stable"):
        p, q = int(owner[a[e]]), int(owner[b[e]])
        rp, rq = find(p), find(q)
        if rp == rq:
            continue
        parent[rp] = rq
        adj.setdefault(p, []).append((int(index[a[e]]), q, int(index[b[e]])))
        adj.setdefault(q, []).append((int(index[b[e]]), p, int(index[a[e]])))
    children: dict[int, dict[int, list[tuple[int, int]]]] = {}
    seen, todo = {0}, [0]
    while todo:
        p = todo.pop()
        for i, q, j in adj.get(p, []):
            if q not in seen:
                seen.add(q)
                todo.append(q)
                children.setdefault(p, {}).setdefault(i, []).append((q, j))
    # A polygon all of whose points coincide with others' has no Voronoi site: link it to polygon 0.
    for q in range(len(polys)):
        if q not in seen:
            dq = ((polys[0][:, None, :] - polys[q][None, :, :]) ** 2).sum(-1)
            i, j = np.unravel_index(np.argmin(dq), dq.shape)
            children.setdefault(0, {}).setdefault(int(i), []).append((q, int(j)))
    return children


def mask_to_segment(mask: np.ndarray, strategy: str = "all", simplify: float = 0.0) -> np.ndarray | None:
    """One polygon (K, 2) in pixels for a boolean (H, W) mask, or None if it has no polygon: the ring a
    YOLO segmentation line holds.

    ``"all"`` joins every component's outer contour into one ring (as Ultralytics writes multi-part
    masks; nothing is lost); ``"largest"`` keeps the largest component. ``simplify``: tolerance in
    pixels for each part's outline before joining (0: exact). Holes are not represented.
    """
    polys = mask_to_polygons(mask, strategy, simplify=simplify)
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else join_polygons(polys)


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


def mask_iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """IoU of boolean masks (..., H, W), pair by pair along the leading dimensions; 1.0 where both are empty.

    Numpy arrays give a float64 array of shape ``a.shape[:-2]`` (0-d for two single masks: ``float()``
    it), torch tensors a float64 tensor. Non-boolean inputs count their non-zero pixels.
    """
    if tuple(a.shape[-2:]) != tuple(b.shape[-2:]):
        raise ValueError(
            f"mask_iou: expected masks of one size (H, W), got {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])}"
        )
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        a, b = torch.as_tensor(a).bool(), torch.as_tensor(b).bool()
        inter = (a & b).flatten(-2).sum(-1).double()
        union = (a | b).flatten(-2).sum(-1).double()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    inter = np.logical_and(a, b).sum((-2, -1), dtype=np.float64)
    union = np.logical_or(a, b).sum((-2, -1), dtype=np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
