"""Labelled segmentation datasets: one loader for COCO instance JSON (polygons, RLE, crowd) and YOLO
segmentation folders, shared by ``mobilesam val --data``, ``mobilesam finetune`` and the box-label
readers of ``auto_annotate``.

    from mobilesam.datasets import load_dataset
    ds = load_dataset("coco/annotations/instances_val2017.json", images="coco/val2017")
    ds = load_dataset("my_dataset/data.yaml", split="val")
    print(ds.report())   # images, objects, and everything set aside (crowd, box-only, ...)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .coco import load_coco
from .records import SIZE_NAMES, AnnotationError, ImageEntry, Instance, SegmentationDataset, image_size, size_of
from .yolo import load_yolo


def load_dataset(
    data: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    classes: Iterable[int | str] | None = None,
) -> SegmentationDataset:
    """A COCO JSON (``data`` a .json file, ``images`` its image folder, default the JSON's folder) or a
    YOLO dataset (``data`` a data.yaml or a folder; ``split`` train/val/test), with only the objects of
    ``classes`` (indices or names) if given.

    Raises a one-line error naming the file for a malformed annotation (and its line), a missing image,
    a dataset without images, or a ``classes`` filter that matches nothing.
    """
    path = Path(data).expanduser()
    if path.suffix.lower() == ".json":
        if split is not None:
            raise ValueError(f"split: a COCO file holds one split; give the JSON of the {split!r} split instead")
        ds = load_coco(path, images)
    else:
        if images is not None:
            raise ValueError("images: only for a COCO .json (a YOLO dataset finds its images from data.yaml or images/)")
        ds = load_yolo(path, split)
    if not ds.images:
        raise ValueError(f"data: '{ds.source}' holds no images" + (f" in the {ds.split!r} split" if ds.split else ""))
    return ds.select_classes(classes)


__all__ = [
    "SIZE_NAMES",
    "AnnotationError",
    "ImageEntry",
    "Instance",
    "SegmentationDataset",
    "image_size",
    "load_coco",
    "load_dataset",
    "load_yolo",
    "size_of",
]
