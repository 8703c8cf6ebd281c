"""Hand labels to the tools people label with: a folder of images with its YOLO segmentation labels (what
``mobilesam annotate`` / ``predict save_txt=True`` / ``serve`` write) or a COCO instance-segmentation JSON,
converted to

- ``labelstudio``: Label Studio tasks with brush (mask) pre-annotations (:mod:`mobilesam.formats.labelstudio`)
- ``labelstudio-polygon``: the same with polygon pre-annotations (one per part of a mask, simplified)
- ``cvat-yolo``: CVAT's "Ultralytics YOLO Segmentation 1.0" zip (:mod:`mobilesam.formats.cvat`)
- ``cvat-coco``: CVAT's "COCO 1.0" zip
- ``coco``: one COCO instance-segmentation JSON (RLE masks)
- ``fiftyone``: FiftyOne's COCODetectionDataset folder (:mod:`mobilesam.formats.fiftyone`)

One writer per format lives in ``formats/``; this module reads the input and calls them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .formats import coco, yolo
from .formats.classes import CLASSES_FILE, read_classes
from .formats.data_yaml import DATA_YAML, read_data_yaml
from .io import atomic_write_text, walk_images
from .masks import DEFAULT_SIMPLIFY, check_simplify, mask_to_polygons, polygons_to_mask

FORMATS = ("labelstudio", "labelstudio-polygon", "cvat-yolo", "cvat-coco", "coco", "fiftyone")
DEFAULT_NAMES = {"labelstudio": "tasks.json", "labelstudio-polygon": "tasks.json", "cvat-yolo": "cvat_yolo_seg.zip",
                 "cvat-coco": "cvat_coco.zip", "coco": "instances.json", "fiftyone": "fiftyone_dataset"}


@dataclass
class LabelledImage:
    """One image and its objects: (class index, boolean mask (H, W), score or None)."""

    file_name: str  # relative to the images folder, "/" separated
    path: Path
    width: int
    height: int
    objects: list[tuple[int, np.ndarray, float | None]] = field(default_factory=list)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # the header only; EXIF rotation as mobilesam reads images
        exif = im.getexif()
        w, h = im.size
        return (h, w) if exif.get(0x0112) in (5, 6, 7, 8) else (w, h)


def _yolo_names(labels: Path) -> dict[int, str]:
    if (labels / CLASSES_FILE).is_file():
        return read_classes(labels / CLASSES_FILE)
    if (labels / DATA_YAML).is_file():
        return dict(read_data_yaml(labels / DATA_YAML).get("names", {}))
    return {}


def read_yolo(images: Path, labels: Path) -> tuple[dict[int, str], Iterator[LabelledImage]]:
    """Images under ``images`` with ``labels/<same relative path>.txt`` (an image without one is skipped)."""
    names = _yolo_names(labels)
    found = [n for n in walk_images(images) if (labels / Path(n).with_suffix(".txt")).is_file()]
    if not found:
        raise ValueError(f"labels: no YOLO label file in '{labels}' matches an image of '{images}'")
    seen: set[int] = set()
    for n in found:
        for seg in yolo.read_labels(labels / Path(n).with_suffix(".txt")):
            seen.add(seg.cls)
    names = {**{c: str(c) for c in sorted(seen)}, **names}

    def items() -> Iterator[LabelledImage]:
        for n in found:
            w, h = _image_size(images / n)
            item = LabelledImage(n, images / n, w, h)
            for seg in yolo.read_labels(labels / Path(n).with_suffix(".txt")):
                item.objects.append((seg.cls, polygons_to_mask([seg.xy * (w, h)], (h, w)), seg.conf))
            yield item

    return dict(sorted(names.items())), items()


def read_coco_masks(images: Path, path: Path) -> tuple[dict[int, str], Iterator[LabelledImage]]:
    """The images of a COCO JSON (found under ``images``) with their RLE or polygon masks."""
    from pycocotools import mask as mask_utils

    doc = coco.read_coco(path)
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    names = {i: str(c["name"]) for i, c in enumerate(cats)}
    by_image: dict[Any, list[dict]] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)

    def items() -> Iterator[LabelledImage]:
        for rec in doc["images"]:
            h, w = int(rec["height"]), int(rec["width"])
            item = LabelledImage(str(rec["file_name"]), images / rec["file_name"], w, h)
            for a in by_image.get(rec["id"], []):
                seg = a.get("segmentation")
                if isinstance(seg, dict):
                    m = coco.annotation_mask(a)
                elif seg:
                    m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, h, w))).astype(bool)
                else:
                    continue
                item.objects.append((index[a["category_id"]], m, a.get("score")))
            yield item

    return names, items()


def convert(
    images: str | os.PathLike,
    labels: str | os.PathLike,
    to: str,
    out: str | os.PathLike | None = None,
    *,
    simplify: float = DEFAULT_SIMPLIFY,
    image_url: str | None = None,
    include_images: bool = True,
    progress: bool = True,
) -> Path:
    """Convert ``labels`` (a YOLO label folder or a COCO JSON) of the images under ``images`` to ``to`` (one of
    :data:`FORMATS`) at ``out`` (default ``DEFAULT_NAMES[to]`` in the current folder); returns it.

    ``simplify``: polygon tolerance in pixels (YOLO and Label Studio polygons). ``image_url``: prefix of
    the Label Studio image URLs (default ``/data/local-files/?d=`` + the path relative to ``images``).
    ``include_images``: put the images in the CVAT YOLO zip and the FiftyOne folder.
    """
    if to not in FORMATS:
        raise ValueError(f"to: expected one of {', '.join(FORMATS)}, got {to!r}")
    simplify = check_simplify(simplify)
    images, labels = Path(images).expanduser(), Path(labels).expanduser()
    if not images.is_dir():
        raise FileNotFoundError(f"images: folder '{images}' not found")
    if labels.is_dir():
        names, items = read_yolo(images, labels)
    elif labels.is_file() and labels.suffix.lower() == ".json":
        names, items = read_coco_masks(images, labels)
    else:
        raise FileNotFoundError(f"labels: expected a folder of YOLO label files or a COCO .json, got '{labels}'")
    target = Path(out).expanduser() if out is not None else Path.cwd() / DEFAULT_NAMES[to]
    if target.resolve() in (images.resolve(), labels.resolve()):
        raise ValueError(f"out: '{target}' is an input of this conversion; choose another path")
    bar = tqdm(items, desc=f"convert -> {to}", unit="image", disable=not progress)
    if to.startswith("labelstudio"):
        return _labelstudio(bar, names, target, "polygon" if to.endswith("polygon") else "brush", simplify, image_url)
    if to == "cvat-yolo":
        return _cvat_yolo(bar, names, target, simplify, include_images)
    doc, pictures = _coco_doc(bar, names)
    if to == "cvat-coco":
        from .formats import cvat

        return cvat.write_zip(target, cvat.coco_zip(doc))
    if to == "fiftyone":
        from .formats import fiftyone

        return fiftyone.write_dataset(target, doc, pictures if include_images else [])
    return coco.write_coco(target, doc)


def _labelstudio(items: Any, names: dict[int, str], target: Path, kind: str, simplify: float,
                 image_url: str | None) -> Path:
    from .formats import labelstudio as ls

    tasks = []
    for item in items:
        results: list[dict[str, Any]] = []
        for k, (cls, mask, score) in enumerate(item.objects):
            label = names.get(cls, str(cls))
            if kind == "brush":
                results.append(ls.brush_result(mask, label, score=score, result_id=f"m{k}"))
            else:
                for j, poly in enumerate(mask_to_polygons(mask, "all", simplify=simplify)):
                    results.append(ls.polygon_result(poly, label, item.width, item.height, score=score,
                                                     result_id=f"m{k}p{j}"))
        url = (image_url or ls.LOCAL_FILES) + item.file_name
        tasks.append(ls.task(url, results))
    ls.write_tasks(target, tasks)
    atomic_write_text(target.with_name(f"{target.stem}_labeling_config.xml"), ls.labeling_config(names.values(), kind))
    return target


def _cvat_yolo(items: Any, names: dict[int, str], target: Path, simplify: float, include: bool) -> Path:
    from .formats import cvat

    entries = []
    for item in items:
        lines = [line for cls, mask, _ in item.objects
                 if (line := yolo.mask_line(cls, mask, "all", simplify=simplify)) is not None]
        entries.append((item.file_name, lines, item.path if include else None))
    return cvat.write_zip(target, cvat.yolo_seg_zip(entries, names))


def _coco_doc(items: Any, names: dict[int, str]) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    images, anns, pictures = [], [], []
    for i, item in enumerate(items, 1):
        images.append(coco.image_record(i, item.file_name, item.width, item.height))
        pictures.append((item.file_name, item.path))
        for cls, mask, score in item.objects:
            anns.append(coco.annotation(mask, cls + 1, image_id=i, score=score))
    info = {"description": "converted by mobilesam convert"}
    return coco.document(images, anns, coco.category_records(names), info), pictures


__all__ = ["DEFAULT_NAMES", "FORMATS", "LabelledImage", "convert", "read_coco_masks", "read_yolo"]
