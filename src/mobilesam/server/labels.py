"""Masks on the wire and on disk: display PNGs, COCO RLE checks, COCO / YOLO / PNG exports and the
labels saved next to images in ``--images DIR``."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .. import __version__
from ..io import IMAGE_SUFFIXES
from ..masks import decode_rle, encode_rle, join_polygons, mask_area, mask_to_polygons

LABELS_MARK = "mobilesam serve labels"
CLASSES_FILE = "classes.txt"
_CLASS_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


class LabelError(ValueError):
    """Bad objects or a labels file that cannot be written or read; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class LabelObject:
    class_name: str
    mask: np.ndarray  # (H, W) bool
    score: float | None = None
    prompts: dict[str, Any] = field(default_factory=dict)  # points, labels, box, as the page sent them


def check_class_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _CLASS_RE.match(name.strip() or "\x00"):
        raise LabelError(f"{where}: expected a class name of 1 to 64 printable characters, got {name!r}")
    return name.strip()


def mask_from_rle(rle: Any, size: tuple[int, int], where: str) -> np.ndarray:
    """A client's COCO RLE {size: [h, w], counts: str} as an (h, w) bool mask, after checking it."""
    if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str) or not isinstance(rle.get("size"), list):
        raise LabelError(f"{where}: expected a COCO RLE {{'size': [h, w], 'counts': str}}, got {type(rle).__name__}")
    if [int(s) if isinstance(s, int) else s for s in rle["size"]] != [size[0], size[1]]:
        raise LabelError(
            f"{where}: mask size {rle['size']} does not match the image size [{size[0]}, {size[1]}] (h, w)"
        )
    try:
        return decode_rle({"size": [size[0], size[1]], "counts": rle["counts"]})
    except ValueError as e:
        raise LabelError(f"{where}: invalid RLE counts ({e})") from None


def mask_payload(mask: np.ndarray, score: float) -> dict[str, Any]:
    """What the page needs of a mask: COCO RLE (to save), a PNG whose alpha is the mask (to draw),
    its score, area and XYWH box."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = 255
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=False, compress_level=1)
    png = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {
        "rle": encode_rle(mask),
        "png": png,
        "score": float(score),
        "area": mask_area(mask),
        "bbox": bbox_xywh(mask),
    }


def bbox_xywh(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def class_list(objects: list[LabelObject], known: list[str] | None = None) -> list[str]:
    """``known`` classes first (their order gives YOLO ids), then new ones in order of appearance."""
    classes = list(known or [])
    for o in objects:
        if o.class_name not in classes:
            classes.append(o.class_name)
    return classes


def to_coco(
    objects: list[LabelObject], file_name: str, size: tuple[int, int], classes: list[str], with_prompts: bool = False
) -> dict[str, Any]:
    """A COCO instance-segmentation document for one image (RLE segmentations, category ids from 1)."""
    h, w = size
    anns = []
    for i, o in enumerate(objects):
        ann: dict[str, Any] = {
            "id": i + 1,
            "image_id": 1,
            "category_id": classes.index(o.class_name) + 1,
            "segmentation": encode_rle(o.mask),
            "area": mask_area(o.mask),
            "bbox": bbox_xywh(o.mask),
            "iscrowd": 0,
        }
        if o.score is not None:
            ann["score"] = round(float(o.score), 4)
        if with_prompts and o.prompts:
            ann["prompts"] = o.prompts
        anns.append(ann)
    return {
        "info": {"description": LABELS_MARK if with_prompts else "mobilesam serve export", "version": __version__},
        "images": [{"id": 1, "file_name": file_name, "width": w, "height": h}],
        "categories": [{"id": i + 1, "name": c, "supercategory": ""} for i, c in enumerate(classes)],
        "annotations": anns,
    }


def to_yolo(objects: list[LabelObject], size: tuple[int, int], classes: list[str]) -> str:
    """Ultralytics segmentation labels: ``class x1 y1 x2 y2 ...`` normalised; parts joined into one ring."""
    h, w = size
    lines = []
    for o in objects:
        ring = join_polygons(mask_to_polygons(o.mask, strategy="all"))
        if len(ring) < 3:
            continue  # an empty mask has no polygon; COCO keeps it, YOLO cannot
        xy = np.clip(ring / np.array([w, h], np.float32), 0.0, 1.0)
        lines.append(" ".join([str(classes.index(o.class_name))] + [f"{v:.6f}" for v in xy.reshape(-1)]))
    return "".join(line + "\n" for line in lines)


def to_png_zip(objects: list[LabelObject], stem: str) -> bytes:
    """A zip with one 0/255 PNG mask per object, named ``<stem>_<index>_<class>.png``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, o in enumerate(objects):
            ok, png = cv2.imencode(".png", o.mask.astype(np.uint8) * 255)
            assert ok
            zf.writestr(f"{safe_stem(stem)}_{i + 1:03d}_{safe_stem(o.class_name)}.png", png.tobytes())
    return buf.getvalue()


def safe_stem(name: str) -> str:
    """A file-name-safe version of ``name`` (for downloads and zip members)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


# -- labels next to images -------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class LabelStore:
    """Labels of ``--images DIR``: ``<stem>.json`` (COCO, with prompts) and ``<stem>.txt`` (YOLO) beside each
    image, and the shared class list ``classes.txt`` (one name per line, line number = YOLO class id)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def classes(self) -> list[str]:
        path = self.root / CLASSES_FILE
        if not path.is_file() or path.is_symlink():
            return []
        return [
            line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
        ]

    def paths(self, image: Path) -> tuple[Path, Path]:
        return image.with_suffix(".json"), image.with_suffix(".txt")

    def _check_writable(self, image: Path) -> None:
        js, txt = self.paths(image)
        twins = [
            p.name
            for p in image.parent.iterdir()
            if p != image and p.stem == image.stem and p.suffix.lower() in IMAGE_SUFFIXES
        ]
        if twins:
            raise LabelError(
                f"save: '{image.name}' and '{twins[0]}' would share the label files {js.name} and {txt.name}; "
                "rename one of the images",
                409,
            )
        for p in (js, txt):
            if p.is_symlink() or (p.exists() and not p.is_file()):
                raise LabelError(f"save: '{p.name}' is a link or a folder; refusing to write labels there", 409)
        ours = js.is_file() and self._is_ours(js)
        if js.is_file() and not ours:
            raise LabelError(
                f"save: '{js.name}' exists and was not written by mobilesam serve; move it away first", 409
            )
        if txt.is_file() and not ours:
            raise LabelError(
                f"save: '{txt.name}' exists and was not written by mobilesam serve; move it away first", 409
            )

    @staticmethod
    def _is_ours(path: Path) -> bool:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            isinstance(doc, dict)
            and isinstance(doc.get("info"), dict)
            and doc["info"].get("description") == LABELS_MARK
        )

    def save(self, image: Path, objects: list[LabelObject], size: tuple[int, int]) -> list[Path]:
        """Write the image's COCO and YOLO labels atomically (and new class names to classes.txt)."""
        with self._lock:
            self._check_writable(image)
            known = self.classes()
            classes = class_list(objects, known)
            js, txt = self.paths(image)
            written = []
            if classes != known:
                write_atomic(self.root / CLASSES_FILE, "".join(c + "\n" for c in classes).encode("utf-8"))
                written.append(self.root / CLASSES_FILE)
            doc = to_coco(objects, image.name, size, classes, with_prompts=True)
            write_atomic(js, json.dumps(doc).encode("utf-8"))
            write_atomic(txt, to_yolo(objects, size, classes).encode("utf-8"))
            return written + [js, txt]

    def load(self, image: Path, size: tuple[int, int]) -> list[LabelObject]:
        """Objects saved earlier for ``image`` ([] when none); a damaged file raises LabelError."""
        js, _ = self.paths(image)
        if not js.is_file() or js.is_symlink():
            return []
        try:
            doc = json.loads(js.read_text(encoding="utf-8"))
            cats = {c["id"]: c["name"] for c in doc["categories"]}
            objects = []
            for i, a in enumerate(doc["annotations"]):
                where = f"{js.name}: annotations[{i}]"
                objects.append(
                    LabelObject(
                        check_class_name(cats[a["category_id"]], where),
                        mask_from_rle(a["segmentation"], size, where + ".segmentation"),
                        a.get("score"),
                        a.get("prompts") or {},
                    )
                )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LabelError(f"labels: cannot read '{js.name}' ({type(e).__name__}: {e})", 422) from None
        return objects
