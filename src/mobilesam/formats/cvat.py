"""The two archives CVAT imports masks from (Actions > Upload annotations / Create task from a dataset):

- **Ultralytics YOLO Segmentation 1.0**: a zip with ``data.yaml`` (``path: .``, ``train: train.txt``,
  ``names``), ``train.txt`` (one ``images/train/<file>`` line per image), ``labels/train/<stem>.txt``
  (the YOLO segmentation rule of :mod:`mobilesam.formats.yolo`) and, optionally, the images under
  ``images/train/``.
- **COCO 1.0**: a zip with ``annotations/instances_default.json``; masks are RLE with ``iscrowd: 1``, as
  CVAT itself exports masks (CVAT reads RLE segmentations as masks, polygons as polygons).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes
from . import yolo
from .data_yaml import data_yaml_text

YOLO_SPLIT = "train"
COCO_MEMBER = "annotations/instances_default.json"


def yolo_seg_zip(
    items: Iterable[tuple[str, list[str], Path | None]], names: Mapping[int, str]
) -> bytes:
    """The archive's bytes; ``items``: (image file name, its label lines, the image file to include or None)."""
    buf = io.BytesIO()
    listed = []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data.yaml", data_yaml_text(names, "Ultralytics YOLO segmentation, for CVAT", path=".",
                                                train="train.txt"))
        for file_name, lines, image in items:
            name = Path(file_name).name
            listed.append(f"images/{YOLO_SPLIT}/{name}")
            zf.writestr(f"labels/{YOLO_SPLIT}/{Path(name).stem}.txt", yolo.labels_text(lines))
            if image is not None:
                zf.write(image, f"images/{YOLO_SPLIT}/{name}")
        zf.writestr("train.txt", "".join(f"{p}\n" for p in listed))
    return buf.getvalue()


def coco_zip(doc: Mapping[str, Any]) -> bytes:
    """The COCO 1.0 archive of a COCO document (masks as RLE marked ``iscrowd: 1``, as CVAT exports them)."""
    doc = dict(doc)
    doc["annotations"] = [{**a, "iscrowd": 1} if isinstance(a.get("segmentation"), dict) else a
                          for a in doc["annotations"]]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(COCO_MEMBER, json.dumps(doc, separators=(",", ":")))
    return buf.getvalue()


def write_zip(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write_bytes(path, data)


__all__ = ["COCO_MEMBER", "YOLO_SPLIT", "coco_zip", "write_zip", "yolo_seg_zip"]
