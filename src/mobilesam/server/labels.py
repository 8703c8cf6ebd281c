"""Masks on the wire and on disk: display PNGs, COCO RLE checks, COCO / YOLO / PNG exports and the
labels saved next to images in ``--images DIR``."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .._version import __version__
from ..formats import coco, yolo
from ..formats.classes import CLASSES_FILE, check_name, classes_text, parse_classes
from ..formats.coco import bbox_xywh
from ..io import IMAGE_SUFFIXES, atomic_write_bytes, atomic_write_text
from ..masks import DEFAULT_SIMPLIFY, decode_rle, encode_rle, mask_area

LABELS_MARK = "mobilesam serve labels"
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
    try:
        return check_name(name.strip(), where)  # one line of classes.txt: no U+2028, U+0085, ...
    except ValueError as e:
        raise LabelError(str(e)) from None


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


def mask_payload(mask: np.ndarray, score: float | None) -> dict[str, Any]:
    """What the page needs of a mask: COCO RLE (to save), a PNG whose alpha is the mask (to draw),
    its score (None for a saved object sent without one), area and XYWH box."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = 255
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=False, compress_level=1)
    png = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {
        "rle": encode_rle(mask),
        "png": png,
        "score": None if score is None else float(score),
        "area": mask_area(mask),
        "bbox": bbox_xywh(mask),
    }


def class_list(objects: list[LabelObject], known: list[str] | None = None) -> list[str]:
    """``known`` classes first (their order gives YOLO ids), then new ones in order of appearance."""
    classes = list(known or [])
    for o in objects:
        if o.class_name not in classes:
            classes.append(o.class_name)
    return classes


Classes = Sequence[str] | Mapping[int, str]  # names in id order, or {id: name} (classes.txt may skip lines)


def _by_id(classes: Classes) -> dict[int, str]:
    return dict(classes) if isinstance(classes, Mapping) else dict(enumerate(classes))


def _ids(classes: Classes) -> dict[str, int]:
    """{name: id}; a name on two lines keeps its first id."""
    ids: dict[str, int] = {}
    for i, n in sorted(_by_id(classes).items(), reverse=True):
        ids[n] = i
    return ids


def to_coco(
    objects: list[LabelObject], file_name: str, size: tuple[int, int], classes: Classes, with_prompts: bool = False
) -> dict[str, Any]:
    """A COCO instance-segmentation document for one image (RLE segmentations, category id = class id + 1)."""
    h, w = size
    ids = _ids(classes)
    anns = []
    for o in objects:
        extra = {"prompts": o.prompts} if with_prompts and o.prompts else {}
        anns.append(coco.annotation(o.mask, ids[o.class_name] + 1, image_id=1, score=o.score, **extra))
    info = {"description": LABELS_MARK if with_prompts else "mobilesam serve export", "version": __version__}
    cats = coco.category_records(_by_id(classes))
    return coco.document([coco.image_record(1, file_name, w, h)], anns, cats, info)


def to_yolo(
    objects: list[LabelObject], size: tuple[int, int], classes: Classes, simplify: float = DEFAULT_SIMPLIFY
) -> str:
    """Ultralytics segmentation labels (the rule of :mod:`mobilesam.formats.yolo`); parts joined into one ring,
    each outline simplified by ``simplify`` pixels.

    An empty mask has no polygon and no line (COCO keeps it, YOLO cannot).
    """
    ids = _ids(classes)
    lines = (yolo.mask_line(ids[o.class_name], o.mask, "all", simplify=simplify) for o in objects)
    return yolo.labels_text(line for line in lines if line is not None)


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


write_atomic = atomic_write_bytes  # the old name of the one atomic write


class LabelStore:
    """Labels of ``--images DIR``: ``<stem>.json`` (COCO, with prompts) and ``<stem>.txt`` (YOLO) beside each
    image, and the shared class list ``classes.txt`` (one name per line, line number = YOLO class id; new
    names are appended to it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def _classes_bytes(self) -> bytes:
        path = self.root / CLASSES_FILE
        if not path.is_file() or path.is_symlink():
            return b""
        return path.read_bytes()

    def class_ids(self) -> dict[int, str]:
        """{class id: name} of ``classes.txt``, by the rule of :mod:`mobilesam.formats.classes`."""
        return parse_classes(self._classes_bytes().decode("utf-8", errors="replace"))

    def classes(self) -> list[str]:
        # The page lists the names in file order; a blank line names nothing.
        return list(self.class_ids().values())

    def _add_classes(self, names: list[str]) -> dict[int, str]:
        """Append ``names`` to ``classes.txt`` (atomically) and return the new {id: name}.

        Appended, never rewritten: the lines already there keep their bytes and so their numbers, which
        are the class ids of every label file of the folder (a blank line or a name a foreign tool wrote
        with a U+2028 in it included, which a rewrite would renumber or refuse).
        """
        old = self._classes_bytes()
        if old and not old.endswith(b"\n"):
            old += b"\n"
        data = old + classes_text(names).encode("utf-8")
        atomic_write_bytes(self.root / CLASSES_FILE, data)
        return parse_classes(data.decode("utf-8", errors="replace"))

    def paths(self, image: Path) -> tuple[Path, Path]:
        return image.with_suffix(".json"), image.with_suffix(".txt")

    def _check_writable(self, image: Path) -> None:
        js, txt = self.paths(image)
        if txt.parent.resolve() == self.root.resolve() and txt.name.lower() == CLASSES_FILE.lower():
            # The YOLO labels of classes.png would be classes.txt, the class list of the whole folder (and
            # YOLO tools look for them under no other name): refused, nothing written.
            raise LabelError(
                f"save: the YOLO labels of '{image.name}' would be {txt.name}, the class list of this folder; "
                "rename the image (e.g. to classes_1" + image.suffix + ") to label it",
                409,
            )
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
            classes = self.class_ids()
            new = [n for n in class_list(objects) if n not in classes.values()]
            js, txt = self.paths(image)
            written = []
            if new:
                classes = self._add_classes(new)
                written.append(self.root / CLASSES_FILE)
            coco.write_coco(js, to_coco(objects, image.name, size, classes, with_prompts=True))
            atomic_write_text(txt, to_yolo(objects, size, classes))
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
