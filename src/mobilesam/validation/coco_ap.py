"""COCO mask AP through ``pycocotools.cocoeval.COCOeval``: detections (boxes, classes, scores) from a
COCO results file or a detector become SAM masks, scored against the dataset's ground truth.

The ground truth is the COCO file itself when the data is COCO (its own ``area`` and crowd regions, as
every published COCO number), or a COCO document built from a YOLO dataset (area = mask pixels).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import AnnotationError, SegmentationDataset, image_size
from ..datasets.coco import element_line

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())  # pycocotools prints progress lines


def ground_truth(ds: SegmentationDataset):
    """A ``pycocotools.coco.COCO`` of the dataset's ground truth (see the module docstring)."""
    from pycocotools.coco import COCO

    from ..masks import encode_rle

    with _quiet():
        if ds.coco_json is not None:
            return COCO(str(ds.coco_json))
        images, anns = [], []
        for e in ds.images:
            h, w = image_size(ds.path(e))
            images.append({"id": e.image_id, "file_name": e.file, "width": w, "height": h})
            for inst in e.instances:
                mask = inst.mask(h, w)
                if mask is None:
                    continue
                ys, xs = np.nonzero(mask)
                bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if len(xs) else [0, 0, 0, 0]
                anns.append({"id": len(anns) + 1, "image_id": e.image_id, "category_id": ds.category_ids[inst.category],
                             "segmentation": encode_rle(mask), "area": int(mask.sum()), "bbox": bbox, "iscrowd": 0})
        cats = [{"id": ds.category_ids[i], "name": n} for i, n in ds.names.items()]
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": cats}
        coco.createIndex()
    return coco


def mask_ap(gt, results: list[dict[str, Any]], image_ids: list[int], category_ids: list[int]) -> dict[str, Any]:
    """COCOeval ``segm`` on ``results`` (COCO results: image_id, category_id, segmentation RLE, score),
    restricted to ``image_ids`` and ``category_ids``. Returns AP, AP50, AP75, APs, APm, APl (None where
    COCOeval has nothing to average, its -1) and the number of detections."""
    from pycocotools.cocoeval import COCOeval

    out: dict[str, Any] = {"detections": len(results)}
    if not results:
        return {**out, **{k: 0.0 for k in AP_NAMES}}
    with _quiet():
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.imgIds = sorted(image_ids)
        ev.params.catIds = sorted(category_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for name, value in zip(AP_NAMES, ev.stats[:6]):
        out[name] = None if value < 0 else float(value)
    return out


def read_detections(path: str | os.PathLike, ds: SegmentationDataset) -> dict[int, list[tuple[np.ndarray, int, float]]]:
    """Detections of a COCO results file, by image id: ``(box XYXY, class index, score)``.

    Each entry needs ``image_id`` (or ``file_name``), ``category_id``, ``bbox`` [x, y, w, h] and
    ``score``; one that is malformed or names an unknown image or category raises
    :class:`~mobilesam.datasets.AnnotationError` naming the file and line.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"detections: '{p}' not found")
    text = p.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"detections: '{p}' line {e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(doc, list):
        raise AnnotationError(f"detections: '{p}' holds a {type(doc).__name__}; expected a COCO results list "
                              "[{image_id, category_id, bbox, score}, ...]")
    ids = {e.image_id for e in ds.images}
    by_file = {e.file: e.image_id for e in ds.images}
    out: dict[int, list[tuple[np.ndarray, int, float]]] = {}
    for k, d in enumerate(doc):
        def where() -> str:
            line = element_line(text, None, k)
            return f"detections: '{p}'" + (f" line {line}" if line else "") + f" (entry {k})"

        try:
            image_id = int(d["image_id"]) if "image_id" in d else by_file[str(d["file_name"])]
            x, y, w, h = (float(v) for v in d["bbox"])
            cat = int(d["category_id"])
            score = float(d.get("score", 1.0))
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(f"{where()}: expected image_id (or a known file_name), category_id, bbox [x, y, w, h] "
                                  "and score") from None
        if image_id not in ids:
            raise AnnotationError(f"{where()}: image_id {image_id} is not an image of the dataset")
        cls = ds.class_index(cat)
        if cls is None:
            raise AnnotationError(f"{where()}: category_id {cat} is not a category of the dataset")
        if not np.isfinite([x, y, w, h, score]).all() or w < 0 or h < 0:
            raise AnnotationError(f"{where()}: bbox must be finite with w, h >= 0 and score finite, got {d['bbox']}")
        out.setdefault(image_id, []).append((np.array([x, y, x + w, y + h]), cls, score))
    return out


__all__ = ["AP_NAMES", "ground_truth", "mask_ap", "read_detections"]
