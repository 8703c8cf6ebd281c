"""COCO instance segmentation JSON with run-length-encoded masks (what ``pycocotools.coco.COCO`` reads).

A document is ``{"info", "licenses", "images", "annotations", "categories"}``. The rule of every
writer in mobilesam (``auto_annotate``, ``mobilesam serve``):

- an annotation is ``id, image_id, category_id, segmentation, area, bbox, iscrowd[, score]`` then any
  extra fields; ``segmentation`` is a compressed RLE with ``counts`` as a str
  (:func:`mobilesam.masks.encode_rle`), ``area`` the mask's pixel count, ``bbox`` its tight
  ``[x, y, width, height]`` in whole pixels (``[0, 0, 0, 0]`` for an empty mask), ``iscrowd`` 0,
  ``score`` rounded to 5 decimals;
- annotation ids are 1..N in document order; category ids are the caller's (1-based by default);
- files are UTF-8 JSON without spaces between tokens, written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..io import atomic_write_text
from ..masks import decode_rle, encode_rle, mask_area, rle_counts_total

SCORE_DECIMALS = 5


def bbox_xywh(mask: np.ndarray) -> list[int]:
    """Tight ``[x, y, width, height]`` of a boolean (H, W) mask; ``[0, 0, 0, 0]`` when it is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def annotation(
    mask: np.ndarray, category_id: int, *, image_id: int | None = None, score: float | None = None, **extra: Any
) -> dict[str, Any]:
    """The annotation of one boolean (H, W) mask (without ``id``: :func:`document` numbers them)."""
    ann: dict[str, Any] = {} if image_id is None else {"image_id": int(image_id)}
    ann.update(
        category_id=int(category_id),
        segmentation=encode_rle(mask),
        area=mask_area(mask),
        bbox=bbox_xywh(mask),
        iscrowd=0,
    )
    if score is not None:
        ann["score"] = round(float(score), SCORE_DECIMALS)
    ann.update(extra)
    return ann


def image_record(image_id: int, file_name: str, width: int, height: int) -> dict[str, Any]:
    return {"id": int(image_id), "file_name": str(file_name), "width": int(width), "height": int(height)}


def category_records(
    names: Mapping[int, str], category_id: Callable[[int], int] = lambda index: index + 1
) -> list[dict[str, Any]]:
    """COCO categories of {class index: name}; ``category_id`` maps an index to its COCO id."""
    return [{"id": int(category_id(i)), "name": str(n), "supercategory": ""} for i, n in names.items()]


def document(
    images: Iterable[dict[str, Any]],
    annotations: Iterable[dict[str, Any]],
    categories: Iterable[dict[str, Any]],
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A COCO document; the annotations get ids 1..N in order (each must carry its ``image_id``)."""
    anns = []
    for k, a in enumerate(annotations):
        if "image_id" not in a:
            raise ValueError(f"annotations[{k}]: expected an 'image_id', got the keys {sorted(a)}")
        anns.append({"id": k + 1, **{key: v for key, v in a.items() if key != "id"}})
    return {
        "info": dict(info or {}),
        "licenses": [],
        "images": list(images),
        "annotations": anns,
        "categories": list(categories),
    }


def dumps(doc: Mapping[str, Any]) -> str:
    """The JSON text of a document (compact; non-ASCII characters as \\u escapes)."""
    return json.dumps(doc, separators=(",", ":"))


def write_coco(path: str | os.PathLike, doc: Mapping[str, Any]) -> Path:
    """Write a document to ``path`` atomically."""
    return atomic_write_text(path, dumps(doc))


def read_coco(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO document, checking that ``images``, ``annotations`` and ``categories`` are lists."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"coco: '{p}' is not a JSON file ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"coco: '{p}' holds a {type(doc).__name__}, expected a COCO document (an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise ValueError(f"coco: '{p}' has no '{key}' list; expected a COCO instance-segmentation document")
    return doc


def annotation_mask(ann: Mapping[str, Any]) -> np.ndarray:
    """The boolean (H, W) mask of an annotation's RLE ``segmentation`` (checked before decoding)."""
    return decode_rle(ann["segmentation"])


def _number_list(value: Any, what: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"{what}: expected a list of numbers")
    if not np.isfinite(np.asarray(value, np.float64)).all():
        raise ValueError(f"{what}: holds NaN or inf")
    return [float(v) for v in value]


def check_segmentation(segmentation: Any, height: int, width: int) -> list[list[float]] | dict[str, Any]:
    """A COCO ``segmentation`` checked for an image of ``height`` x ``width``: the polygons that have an
    area (3 points or more), or the RLE in pycocotools' form. Raises ValueError saying what is wrong.

    Accepted: polygons ``[[x1, y1, x2, y2, ...], ...]`` in pixels, an uncompressed RLE
    ``{"size": [h, w], "counts": [run, ...]}`` (crowd annotations) or a compressed one (``counts`` a str).
    """
    if isinstance(segmentation, list):
        polygons = []
        for k, poly in enumerate(segmentation):
            coords = _number_list(poly, f"segmentation[{k}]")
            if len(coords) % 2:
                raise ValueError(f"segmentation[{k}]: expected x, y pairs, got an odd count of {len(coords)} numbers")
            if len(coords) >= 6:  # pycocotools reads a list of exactly 4 numbers as a box, not a polygon
                polygons.append(coords)
        return polygons
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError("segmentation: expected a list of polygons or an RLE {'size': [h, w], 'counts': ...}")
    size = segmentation["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or list(size) != [height, width]:
        raise ValueError(f"segmentation: RLE size {size!r} differs from the image's [height, width] [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        runs = _number_list(counts, "segmentation counts")
        if any(r < 0 or r != int(r) for r in runs):
            raise ValueError("segmentation counts: expected non-negative integer runs")
        if sum(runs) != height * width:
            raise ValueError(f"segmentation counts: runs cover {int(sum(runs))} pixels, expected {height} x {width}")
        return mask_utils.frPyObjects({"size": [height, width], "counts": [int(r) for r in runs]}, height, width)
    if isinstance(counts, (str, bytes)):
        text = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
        try:
            total = rle_counts_total(text)
        except ValueError as e:
            raise ValueError(f"segmentation counts: not a compressed RLE ({e})") from None
        if total != height * width:
            raise ValueError(f"segmentation counts: runs cover {total} pixels, expected {height} x {width}")
        return {"size": [height, width], "counts": text.encode("ascii")}
    raise ValueError(f"segmentation counts: expected a str or a list of runs, got {type(counts).__name__}")


def segmentation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any] | None:
    """The compressed RLE (pycocotools' own, ``counts`` as bytes) of a COCO ``segmentation`` on an image
    of ``height`` x ``width`` (see :func:`check_segmentation`); None for polygons covering no area.

    Polygons are rasterised as pycocotools does, which is what ``COCOeval`` scores.
    """
    checked = check_segmentation(segmentation, height, width)
    if isinstance(checked, dict):
        return checked
    if not checked:
        return None
    return mask_utils.merge(mask_utils.frPyObjects(checked, height, width))


def segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The boolean (H, W) mask of a COCO ``segmentation`` (see :func:`segmentation_rle`; all False when
    no polygon covers any area)."""
    rle = segmentation_rle(segmentation, height, width)
    if rle is None:
        return np.zeros((height, width), bool)
    return mask_utils.decode(rle).astype(bool)


__all__ = [
    "SCORE_DECIMALS",
    "annotation",
    "annotation_mask",
    "bbox_xywh",
    "check_segmentation",
    "category_records",
    "document",
    "dumps",
    "image_record",
    "read_coco",
    "segmentation_mask",
    "segmentation_rle",
    "write_coco",
]
