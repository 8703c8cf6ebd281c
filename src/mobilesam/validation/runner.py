"""``mobilesam.val``: a model on labelled data (COCO JSON or YOLO segmentation), with the box and
interactive-click protocols and, given detections, COCO mask AP."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..backends import Predictor, create_predictor, get_backend
from ..datasets import ImageEntry, SegmentationDataset, load_dataset, size_of
from ..io import atomic_write_text, read_image
from .coco_ap import ground_truth, mask_ap, read_detections
from .protocols import box_ious, click_ious, mask_box
from .report import plot, summarize

logger = logging.getLogger(__name__)


def _image_error(path: Path, e: Exception) -> str:
    from ..train.store import image_error

    return image_error(path, e)


class _Detections:
    """Boxes to segment for AP, per image: from a COCO results file or a detector (as ``auto_annotate``)."""

    def __init__(self, ds: SegmentationDataset, detections: Any, det_model: Any, device: Any, *, conf: float,
                 iou: float, max_det: int, imgsz: int, trust_weights: bool) -> None:
        self.ds = ds
        self.by_image = read_detections(detections, ds) if detections is not None else None
        self.detector = None
        self.unmatched = 0
        if det_model is not None:
            from ..detectors import make_detector

            self.detector = make_detector(det_model, device=device, trust_weights=trust_weights)
            self.detector.configure(conf=conf, iou=iou, imgsz=imgsz, max_det=max_det, classes=None)
            self.filter = dict(conf=conf, iou=iou, max_det=max_det, classes=None)
        self.by_name = {n: i for i, n in ds.names.items()}

    def __call__(self, entry: ImageEntry, rgb: np.ndarray) -> list[tuple[np.ndarray, int, float]]:
        if self.by_image is not None:
            return self.by_image.get(entry.image_id, [])
        from ..detectors import filter_detections

        dets = filter_detections(self.detector.detect(rgb, entry.file), is_model=self.detector.is_model, **self.filter)
        out = []
        for box, cls, score in zip(dets.boxes, dets.classes, dets.scores):
            # A detector's classes match the dataset's by name when it names them, else by index.
            name = self.detector.names.get(int(cls))
            k = self.by_name.get(name) if name is not None and name in self.by_name else (
                int(cls) if int(cls) in self.ds.names and name is None else None)
            if k is None:
                self.unmatched += 1
                continue
            out.append((box.astype(np.float64), k, float(score)))
        return out


@torch.inference_mode()
def _segment_boxes(predictor: Predictor, boxes: np.ndarray) -> np.ndarray:
    b = torch.as_tensor(predictor.transform.apply_boxes(boxes, predictor.original_size), dtype=torch.float,
                        device=predictor.device)
    masks, _, _ = predictor.predict_torch(None, None, b, multimask_output=False)
    return masks[:, 0].cpu().numpy()


def evaluate(
    pred: Predictor,
    ds: SegmentationDataset,
    indices: list[int],
    *,
    max_clicks: int,
    full_curve: bool = False,
    multimask_first_click: bool = True,
    detections: _Detections | None = None,
    embeddings: Any = None,
    progress: bool = True,
    desc: str = "val",
) -> tuple[list[dict[str, Any]], dict[str, int], list[dict[str, Any]], list[tuple[str, str]]]:
    """The protocols on images ``indices`` of ``ds``: per-object records, counts, COCO results (masks of
    the ``detections``' boxes) and the images that could not be read, with why.

    ``embeddings``: an :class:`~mobilesam.train.EmbeddingStore` holding this model's embedding of every
    image (keyed by ``entry.file``), used instead of the image encoder; the images are then not read
    (their sizes come from the annotation file or the image header).
    """
    from ..datasets import image_size
    from ..masks import encode_rle

    want_ap = detections is not None
    counts = {"images": len(indices), "images_evaluated": 0, "images_without_objects": 0, "objects": 0,
              "crowd": 0, "empty_masks": 0, "box_only": 0, "failed_images": 0,
              **{f"dataset_{k}": v for k, v in ds.counts.items() if k in ("not_in_classes", "labels_without_image",
                                                                           "degenerate_polygons")}}
    objects: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    results: list[dict[str, Any]] = []
    for idx in tqdm(indices, desc=desc, unit="img", disable=not progress):
        entry = ds.images[idx]
        usable = []
        for inst in entry.instances:
            if inst.iscrowd:
                counts["crowd"] += 1
            elif not inst.has_mask:
                counts["box_only"] += 1
            else:
                usable.append(inst)
        if not usable:
            counts["images_without_objects"] += 1
            if not want_ap:
                continue
        path = ds.path(entry)
        needs_pixels = embeddings is None or (want_ap and detections.detector is not None)
        try:
            if needs_pixels:
                rgb = read_image(path)
                h, w = rgb.shape[:2]
            else:
                rgb = None
                h, w = (entry.height, entry.width) if entry.width is not None else image_size(path)
        except (OSError, ValueError) as e:
            failed.append((entry.file, _image_error(path, e)))
            with tqdm.external_write_mode():
                logger.warning("%s: skipped '%s': %s", desc, entry.file, failed[-1][1])
            continue
        if entry.width is not None and (entry.width, entry.height) != (w, h):
            failed.append((entry.file, f"{entry.where} gives {entry.width}x{entry.height}, the image is {w}x{h} "
                                       "(EXIF rotation or another file?): its masks would not line up"))
            with tqdm.external_write_mode():
                logger.warning("%s: skipped '%s': %s", desc, entry.file, failed[-1][1])
            continue
        gts, kept = [], []
        for inst in usable:
            m = inst.mask(h, w)
            if not m.any():
                counts["empty_masks"] += 1
                continue
            gts.append(m)
            kept.append(inst)
        found = detections(entry, rgb) if want_ap else []
        counts["images_evaluated"] += 1
        if not gts and not found:
            continue  # nothing to prompt: the image is not embedded
        if embeddings is not None:
            pred.set_embedding(torch.from_numpy(embeddings.read(entry.file)).float()[None], (h, w))
        else:
            pred.set_image(rgb)
        if gts:
            gt = torch.from_numpy(np.stack(gts))
            boxes = np.stack([mask_box(m) for m in gts])
            b_iou = box_ious(pred, gt, boxes)
            run = click_ious(pred, gt, max_clicks, min_clicks=min(5, max_clicks),
                             stop_iou=None if full_curve else 0.90, multimask_first=multimask_first_click)
            noc85, noc90 = run.noc(0.85, max_clicks), run.noc(0.90, max_clicks)
            for j, inst in enumerate(kept):
                area = int(gts[j].sum())
                objects.append({
                    "image": entry.file, "image_id": entry.image_id, "ann_id": inst.ann_id,
                    "category": ds.names.get(inst.category, str(inst.category)), "area": area, "size": size_of(area),
                    "box": boxes[j].tolist(), "box_iou": float(b_iou[j]),
                    "click_ious": [round(v, 6) for v in run.ious[j]], "clicks": [list(c) for c in run.clicks[j]],
                    "noc85": int(noc85[j]), "noc90": int(noc90[j]),
                })
            counts["objects"] += len(kept)
        if found:
            masks = _segment_boxes(pred, np.stack([f[0] for f in found]))
            for (_, cls, score), m in zip(found, masks):
                results.append({"image_id": entry.image_id, "category_id": ds.category_ids[cls],
                                "segmentation": encode_rle(m), "score": score})
    counts["failed_images"] = len(failed)
    return objects, counts, results, failed


def val(
    model: Any,
    data: str | os.PathLike | SegmentationDataset,
    images: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    classes: list[int | str] | None = None,
    backend: str = "torch",
    device: str | torch.device | None = None,
    max_clicks: int = 20,
    full_curve: bool = False,
    multimask_first_click: bool = True,
    detections: str | os.PathLike | None = None,
    det_model: Any = None,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 100,
    imgsz: int = 640,
    trust_weights: bool = False,
    max_images: int | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    predictor: Predictor | None = None,
) -> dict[str, Any]:
    """Validate ``model`` (a checkpoint, known weights name, exported folder or ``Sam``) on labelled data.

    ``data``: a COCO instances JSON (``images``: its image folder, default the JSON's folder), a YOLO
    dataset (``data.yaml`` or folder; ``split``), or a loaded :class:`SegmentationDataset`.
    ``classes``: only objects of these classes (indices or names).

    Protocols (each overall and by COCO size, from the mask area in pixels): box mIoU (the object's box,
    single mask); mIoU after 1, 3 and 5 clicks and NoC@85 / NoC@90 (clicks to reach that IoU, at most
    ``max_clicks``; an object is clicked at least 5 times, then until it reaches 0.90, or always
    ``max_clicks`` times with ``full_curve``). ``multimask_first_click``: the first click takes the best
    (by predicted IoU) of the 3 multimask outputs, as SAM is evaluated.

    COCO mask AP (``pycocotools`` COCOeval ``segm``) when ``detections`` (a COCO results JSON with boxes)
    or ``det_model`` (any detector of ``auto_annotate``: weights, torchvision name, box-label folder,
    callable; ``conf``, ``iou``, ``max_det``, ``imgsz`` as there) is given: each box is segmented by the
    model.

    Each image is embedded once. Crowd annotations, box-only labels, empty masks, images without objects
    and unreadable images are set aside and counted. ``max_images``: a seeded random subset.
    ``out``: write the result as JSON there and the plot beside it (``.png``). Returns a dict with
    ``summary``, ``counts``, ``mask_ap``, ``settings``, ``objects`` (one record per object: image, ids,
    area, size, box IoU, IoU after each click, NoC) and ``failed`` (unreadable images and why).
    """
    if isinstance(max_clicks, bool) or not isinstance(max_clicks, int) or max_clicks < 1:
        raise ValueError(f"max_clicks: expected a positive number of clicks, got {max_clicks!r}")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images: expected a positive integer, got {max_images!r}")
    if detections is not None and det_model is not None:
        raise ValueError("detections: give detections or det_model, not both")
    get_backend(backend)  # an unknown name fails before anything loads
    ds = data if isinstance(data, SegmentationDataset) else load_dataset(data, images, split=split, classes=classes)
    if isinstance(data, SegmentationDataset) and classes is not None:
        ds = ds.select_classes(classes)
    if not any(i.has_mask and not i.iscrowd for e in ds.images for i in e.instances):
        raise ValueError(f"data: '{ds.source}' holds no object with a mask to validate on ({ds.report()})")
    want_ap = detections is not None or det_model is not None
    dets = _Detections(ds, detections, det_model, device, conf=conf, iou=iou, max_det=max_det, imgsz=imgsz,
                       trust_weights=trust_weights) if want_ap else None
    indices = list(range(len(ds.images)))
    if max_images is not None and max_images < len(indices):
        indices = sorted(np.random.default_rng(seed).choice(len(indices), max_images, replace=False).tolist())
    pred = predictor if predictor is not None else create_predictor(model, backend, device=device)

    start = time.perf_counter()
    objects, counts, results, failed = evaluate(
        pred, ds, indices, max_clicks=max_clicks, full_curve=full_curve,
        multimask_first_click=multimask_first_click, detections=dets, progress=progress,
    )
    seconds = time.perf_counter() - start
    if not objects:
        raise ValueError(f"data: no object could be validated ({counts['failed_images']} unreadable images, "
                         f"{counts['empty_masks']} empty masks; {ds.report()})")
    curve_clicks = max_clicks if full_curve else min(5, max_clicks)
    result: dict[str, Any] = {"summary": summarize(objects, max_clicks, curve_clicks), "counts": counts}
    result["mask_ap"] = None
    if want_ap:
        evaluated = [ds.images[i].image_id for i in indices if ds.images[i].file not in {f for f, _ in failed}]
        cats = sorted({ds.category_ids[i.category] for e in ds.images for i in e.instances} or ds.category_ids.values())
        result["mask_ap"] = mask_ap(ground_truth(ds), results, evaluated, cats)
        if dets.unmatched:
            result["mask_ap"]["unmatched_detections"] = dets.unmatched
    result["settings"] = {
        "model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        "data": str(ds.source), "images": str(ds.root), "kind": ds.kind, "split": ds.split, "classes": classes,
        "backend": backend, "max_clicks": max_clicks, "full_curve": full_curve,
        "multimask_first_click": multimask_first_click, "max_images": max_images, "seed": seed,
        "detections": str(detections) if detections is not None else None,
        "det_model": str(det_model) if isinstance(det_model, (str, os.PathLike)) else (
            type(det_model).__name__ if det_model is not None else None),
        "size_classes": "COCO: small < 32^2 <= medium < 96^2 <= large, by ground-truth mask pixels",
        "seconds": round(seconds, 3),
    }
    result["objects"] = objects
    result["failed"] = failed
    if out is not None:
        path = atomic_write_text(out, json.dumps(result, indent=1) + "\n")
        result["plot"] = str(plot(result, Path(path).with_suffix(".png")))
        result["json"] = str(path)
    return result


__all__ = ["val"]
