"""Reading a COCO instance-segmentation JSON (polygons, RLE, crowd) with its image folder.

Every annotation is checked when the file is read, so a run fails at once, not hours later: a
malformed one raises :class:`~.records.AnnotationError` naming the file, the line where the
annotation starts (COCO files are often one line: the line is then 1, and the annotation's index and
id say which) and what is wrong. Images listed but missing from the folder raise ``FileNotFoundError``
naming the first and how many. Crowd annotations and images without annotations are kept and counted.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .records import AnnotationError, ImageEntry, Instance, SegmentationDataset, image_size

# Above this size, an error names the annotation by index and id only: finding its line means scanning
# the text in Python.
LOCATE_MAX_BYTES = 64 * 2**20
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def element_line(text: str, key: str | None, index: int) -> int | None:
    """The line (1-based) where element ``index`` of the top-level array ``key`` (None: the document is
    the array) starts in a JSON text, or None when the text is too large to scan or has no such element."""
    if len(text) > LOCATE_MAX_BYTES:
        return None
    array_depth = 1 if key is None else 2
    depth, last_string, in_array, count = 0, None, False, -1
    for m in _TOKENS.finditer(text):
        tok = m.group()
        opens = False
        if tok in "[{":
            depth += 1
            if tok == "[" and depth == array_depth and (key is None or last_string == key) and not in_array:
                in_array = opens = True
        elif tok in "]}":
            depth -= 1
            if in_array and depth == array_depth - 1:
                return None
        elif tok == ",":
            opens = in_array and depth == array_depth
        elif tok != ":" and depth == 1 and key is not None:
            last_string = json.loads(tok)
        if opens:  # an element starts at the first non-space character after '[' or ','
            start = m.end()
            while start < len(text) and text[start] in " \t\r\n":
                start += 1
            if start < len(text) and text[start] != "]":
                count += 1
                if count == index:
                    return text.count("\n", 0, start) + 1
    return None


class _Where:
    """Names annotations in errors: file, line (found lazily, on error only), index and id."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text

    def __call__(self, key: str, index: int, item: Any, line: bool = True) -> str:
        line = element_line(self.text, key, index) if line else None
        ident = item.get("id") if isinstance(item, dict) else None
        singular = key[:-1] if key.endswith("s") else key
        what = f"{singular} id {ident}" if ident is not None else f"{key}[{index}]"
        if ident is not None:
            what += f" ({key}[{index}])"
        return f"'{self.path}'" + (f" line {line}" if line is not None else "") + f" {what}"


class _Located:
    """One element of a COCO array: ``where()`` with its line (for errors), ``brief()`` without (kept)."""

    def __init__(self, where: _Where, key: str, index: int, item: Any) -> None:
        self.args = (where, key, index, item)

    def __call__(self) -> str:
        where, key, index, item = self.args
        return where(key, index, item)

    def brief(self) -> str:
        where, key, index, item = self.args
        return where(key, index, item, line=False)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise TypeError
    return int(value)


def load_coco(
    annotations: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    check_images: bool = True,
) -> SegmentationDataset:
    """A COCO instance-segmentation JSON and its image folder as a :class:`SegmentationDataset`.

    ``images``: the folder that ``file_name`` is relative to (default: the JSON's folder). Categories,
    sorted by id, become class indices 0..K-1. ``check_images``: every listed image must exist (a
    ``FileNotFoundError`` naming the first missing one otherwise).
    """
    path = Path(annotations).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data: COCO annotation file '{path}' not found")
    try:
        text = path.read_bytes().decode("utf-8")
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        line = f" line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise AnnotationError(f"'{path}'{line}: not a JSON file ({e})") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise AnnotationError(
            f"'{path}': not a COCO instances file (expected an object with 'images', 'annotations' and "
            "'categories' lists)"
        )
    where = _Where(path, text)
    root = Path(images).expanduser() if images is not None else path.parent
    if check_images and not root.is_dir():
        raise FileNotFoundError(f"images: folder '{root}' not found (the images of '{path}')")

    cat_ids: dict[int, str] = {}
    for k, c in enumerate(doc["categories"]):
        try:
            cid = _int(c["id"])
        except (KeyError, TypeError):
            raise AnnotationError(f"{where('categories', k, c)}: expected an integer 'id'") from None
        if cid in cat_ids:
            raise AnnotationError(f"{where('categories', k, c)}: category id {cid} is given twice")
        cat_ids[cid] = str(c.get("name", cid))
    order = sorted(cat_ids)
    index_of = {cid: i for i, cid in enumerate(order)}

    entries: dict[int, ImageEntry] = {}
    missing: list[tuple[int, str]] = []
    for k, im in enumerate(doc["images"]):
        try:
            image_id = _int(im["id"])
            file_name = im["file_name"]
            if not isinstance(file_name, str) or not file_name:
                raise TypeError
            width = _int(im["width"]) if im.get("width") is not None else None
            height = _int(im["height"]) if im.get("height") is not None else None
        except (KeyError, TypeError):
            raise AnnotationError(
                f"{where('images', k, im)}: expected an integer 'id', a 'file_name' and integer 'width' and 'height'"
            ) from None
        if image_id in entries:
            raise AnnotationError(f"{where('images', k, im)}: image id {image_id} is given twice")
        file = Path(file_name).as_posix()
        if check_images and not (root / file).is_file():
            missing.append((k, file))
            continue
        if (width is None or height is None) and check_images:
            height, width = image_size(root / file)  # some tools leave the size out; the image tells
        if (width is not None and width < 1) or (height is not None and height < 1):
            raise AnnotationError(f"{where('images', k, im)}: expected 'width' and 'height' >= 1, got {width} x {height}")
        entries[image_id] = ImageEntry(file, image_id, [], width, height, where=f"'{path}' images[{k}]")
    if missing:
        k, file = missing[0]
        raise FileNotFoundError(
            f"data: {len(missing)} of the {len(doc['images'])} images listed in {where('images', k, doc['images'][k])} "
            f"are missing from '{root}' (first: '{file}'); pass the folder that holds them (--images)"
        )

    counts = {"crowd": 0, "degenerate_polygons": 0}
    for k, a in enumerate(doc["annotations"]):
        if not isinstance(a, dict):
            raise AnnotationError(f"{where('annotations', k, a)}: expected an object, got {type(a).__name__}")
        try:
            image_id = _int(a["image_id"])
            cat = _int(a["category_id"])
        except (KeyError, TypeError):
            raise AnnotationError(f"{where('annotations', k, a)}: expected integer 'image_id' and 'category_id'") from None
        entry = entries.get(image_id)
        if entry is None:
            raise AnnotationError(f"{where('annotations', k, a)}: image_id {image_id} is not in 'images'")
        if cat not in index_of:
            raise AnnotationError(f"{where('annotations', k, a)}: category_id {cat} is not in 'categories'")
        inst, degenerate = _instance(a, index_of[cat], entry, _Located(where, "annotations", k, a))
        counts["degenerate_polygons"] += degenerate
        counts["crowd"] += inst.iscrowd
        entry.instances.append(inst)

    images_list = list(entries.values())
    counts["images_without_labels"] = sum(1 for e in images_list if not e.instances)
    return SegmentationDataset(
        "coco", path, root, images_list, {i: cat_ids[c] for i, c in enumerate(order)},
        {i: c for i, c in enumerate(order)}, counts, coco_json=path,
    )


def _instance(a: dict[str, Any], category: int, entry: ImageEntry, where: _Located) -> tuple[Instance, bool]:
    """One annotation, checked: bbox, segmentation (structure and, for RLE, its size), iscrowd; and
    whether its polygons cover no area (fewer than 3 points each)."""
    from ..formats.coco import check_segmentation

    degenerate = False
    iscrowd = a.get("iscrowd", 0)
    if iscrowd not in (0, 1, True, False):
        raise AnnotationError(f"{where()}: expected 'iscrowd' 0 or 1, got {iscrowd!r}")
    box = None
    if a.get("bbox") is not None:
        bbox = a["bbox"]
        ok = isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
        if not ok or not np.isfinite(bbox).all() or bbox[2] < 0 or bbox[3] < 0:
            raise AnnotationError(f"{where()}: expected 'bbox' [x, y, width, height] with width, height >= 0, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        box = np.array([x, y, x + w, y + h])
    seg = a.get("segmentation")
    if seg in ([], {}):
        seg = None
    if seg is not None:
        if entry.width is None or entry.height is None:
            raise AnnotationError(f"{where()}: a segmentation needs the image's 'width' and 'height' in 'images'")
        try:
            polygons = check_segmentation(seg, entry.height, entry.width)
        except ValueError as e:
            raise AnnotationError(f"{where()}: {e}") from None
        if isinstance(seg, list) and not polygons:
            degenerate = True
    if box is None and seg is None:
        raise AnnotationError(f"{where()}: expected a 'segmentation' or a 'bbox'")
    score = a.get("score")
    area = a.get("area")
    return Instance(
        category=category,
        where=where.brief(),
        box=box,
        segmentation=seg,
        iscrowd=bool(iscrowd),
        ann_id=a.get("id") if isinstance(a.get("id"), int) else None,
        score=float(score) if isinstance(score, (int, float)) else None,
        area=float(area) if isinstance(area, (int, float)) else None,
    ), degenerate


__all__ = ["element_line", "load_coco"]
