"""A labelled segmentation dataset in memory: images, their object instances, class names, and the
counts of everything that was set aside (so that nothing is dropped without a word).

The loaders (:mod:`.coco`, :mod:`.yolo`) fill these records; ``val``, ``finetune`` and
``auto_annotate``'s box readers use them. Geometry stays as it was written (COCO polygons or RLE in
pixels; YOLO polygons and boxes normalised to [0, 1]) until a mask or box is asked for at a given
image size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

# COCO's object sizes, by mask area in pixels: small < 32^2 <= medium < 96^2 <= large.
SIZE_NAMES = ("small", "medium", "large")
SMALL_AREA, LARGE_AREA = 32**2, 96**2


def size_of(area: float) -> str:
    """COCO size class of an object of ``area`` pixels."""
    return "small" if area < SMALL_AREA else ("medium" if area < LARGE_AREA else "large")


class AnnotationError(ValueError):
    """A malformed annotation or label line; the message names the file and the line."""


@dataclass
class Instance:
    """One labelled object.

    ``category``: class index (0-based, see :attr:`SegmentationDataset.names`). Geometry, in pixels for
    COCO and normalised to [0, 1] for YOLO (``normalised``): ``segmentation`` (COCO polygons or RLE, as
    in the file), ``polygon`` (YOLO, (K, 2)), ``box`` (4,) XYXY. ``where`` names the file and line.
    """

    category: int
    where: str
    box: np.ndarray | None = None
    segmentation: Any = None
    polygon: np.ndarray | None = None
    normalised: bool = False
    iscrowd: bool = False
    ann_id: int | None = None
    score: float | None = None
    area: float | None = None  # COCO's own 'area' field, if given

    @property
    def has_mask(self) -> bool:
        return self.segmentation is not None or self.polygon is not None

    def rle(self, height: int, width: int) -> dict[str, Any] | None:
        """pycocotools RLE of the mask at ``height`` x ``width`` (None for a box-only label or a polygon
        covering no area). Raises :class:`AnnotationError` naming ``where``."""
        from ..formats.coco import segmentation_rle

        if self.segmentation is not None:
            try:
                return segmentation_rle(self.segmentation, height, width)
            except ValueError as e:
                raise AnnotationError(f"{self.where}: {e}") from None
        if self.polygon is not None:
            xy = (self.polygon * (width, height)).reshape(-1).tolist()
            return segmentation_rle([xy], height, width)
        return None

    def mask(self, height: int, width: int) -> np.ndarray | None:
        """Boolean (H, W) mask, or None for a box-only label."""
        from pycocotools import mask as mask_utils

        if not self.has_mask:
            return None
        rle = self.rle(height, width)
        return np.zeros((height, width), bool) if rle is None else mask_utils.decode(rle).astype(bool)

    def xyxy(self, height: int, width: int) -> np.ndarray:
        """The label's box (4,) XYXY in pixels, float64."""
        if self.box is None:
            raise AnnotationError(f"{self.where}: the annotation has no box")
        box = np.asarray(self.box, np.float64)
        return box * (width, height, width, height) if self.normalised else box


@dataclass
class ImageEntry:
    """One image: ``file`` relative to the dataset's image folder (POSIX), its objects, and the size the
    annotation file gives (COCO; None for YOLO, where the image itself tells)."""

    file: str
    image_id: int
    instances: list[Instance] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    where: str = ""  # the annotation file (and line) that lists the image


@dataclass
class SegmentationDataset:
    """Images with instance masks, from a COCO JSON or a YOLO segmentation dataset.

    ``names``: {class index: name}; ``category_ids``: {class index: COCO category id} (YOLO: index + 1).
    ``counts``: what the loader set aside or found missing (crowd, box_only, images_without_labels,
    labels_without_image, ...), so that callers report it.
    """

    kind: str  # "coco" or "yolo"
    source: Path  # the annotation file or dataset folder
    root: Path  # the image folder
    images: list[ImageEntry]
    names: dict[int, str]
    category_ids: dict[int, int]
    counts: dict[str, int] = field(default_factory=dict)
    split: str | None = None
    coco_json: Path | None = None  # the COCO file itself, for pycocotools' own evaluation

    def path(self, entry: ImageEntry) -> Path:
        return self.root / entry.file

    @property
    def num_instances(self) -> int:
        return sum(len(e.instances) for e in self.images)

    def class_index(self, category_id: int) -> int | None:
        for k, c in self.category_ids.items():
            if c == category_id:
                return k
        return None

    def select_classes(self, classes: Iterable[int | str] | None) -> SegmentationDataset:
        """The dataset with only the objects of ``classes`` (class indices, or names); every image stays
        (one without objects of those classes is a background image). Raises ValueError naming
        ``classes`` when one is unknown or none of the objects matches."""
        if classes is None:
            return self
        wanted: set[int] = set()
        by_name = {n: i for i, n in self.names.items()}
        for c in classes:
            if isinstance(c, str) and not c.lstrip("-").isdigit():
                if c not in by_name:
                    raise ValueError(f"classes: no class named {c!r} in '{self.source}' (its classes: {self.describe_names()})")
                wanted.add(by_name[c])
            else:
                k = int(c)
                if k < 0:
                    raise ValueError(f"classes: expected class indices >= 0 or names, got {c!r}")
                if self.names and k not in self.names:
                    raise ValueError(f"classes: {k} is not a class of '{self.source}' (its classes: {self.describe_names()})")
                wanted.add(k)
        images = [replace(e, instances=[i for i in e.instances if i.category in wanted]) for e in self.images]
        kept = sum(len(e.instances) for e in images)
        if kept == 0:
            raise ValueError(
                f"classes: {sorted(wanted)} matches none of the {self.num_instances} objects of '{self.source}' "
                f"(its classes: {self.describe_names()})"
            )
        counts = dict(self.counts, not_in_classes=self.counts.get("not_in_classes", 0) + self.num_instances - kept)
        return replace(self, images=images, counts=counts)

    def describe_names(self, most: int = 12) -> str:
        items = [f"{i} {n}" for i, n in sorted(self.names.items())]
        return ", ".join(items[:most]) + (f", ... ({len(items)} in all)" if len(items) > most else "") or "none"

    def subset(self, indices: Sequence[int]) -> SegmentationDataset:
        return replace(self, images=[self.images[i] for i in indices])

    def report(self) -> str:
        """One line: images, objects, and what was set aside."""
        parts = [f"{len(self.images)} images, {self.num_instances} objects"]
        labels = {
            "crowd": "crowd (iscrowd=1, not prompted)",
            "box_only": "box-only labels (no mask)",
            "images_without_labels": "images without objects",
            "labels_without_image": "label files without an image",
            "not_in_classes": "objects of other classes",
            "degenerate_polygons": "polygons of < 3 points (no area)",
        }
        for key, text in labels.items():
            if self.counts.get(key):
                parts.append(f"{self.counts[key]} {text}")
        where = f"{self.kind.upper()} '{self.source}'" + (f" ({self.split})" if self.split else "")
        return f"{where}: " + ", ".join(parts)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file as :func:`mobilesam.io.read_image` returns it (EXIF orientation
    applied), read from the header only."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


__all__ = [
    "SIZE_NAMES",
    "AnnotationError",
    "ImageEntry",
    "Instance",
    "SegmentationDataset",
    "image_size",
    "size_of",
]
