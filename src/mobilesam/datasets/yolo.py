"""Reading a YOLO segmentation dataset (Ultralytics layout): images, one label file per image, names.

Accepted ``data``:

- a ``data.yaml`` (or a folder holding one): ``path`` (the root, default the file's folder), the
  split's image folder (``train:``, ``val:``, ``test:``, relative to the root), ``names``;
- a folder with ``images/`` and ``labels/`` (names from ``labels/classes.txt`` or ``data.yaml``
  there, else the class numbers).

The label file of ``.../images/SUB/a.jpg`` is ``.../labels/SUB/a.txt`` (the last ``images`` folder of
the path becomes ``labels``, as Ultralytics finds them). An image without a label file is a background
image; a label file without an image is counted; a malformed line raises naming the file and line.
Box lines (``class cx cy w h``) are read too and counted as box-only (no mask).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..formats.classes import CLASSES_FILE, read_classes
from ..formats.data_yaml import DATA_YAML, read_data_yaml
from ..formats.yolo import read_label_file
from ..io import walk_images
from .records import AnnotationError, ImageEntry, Instance, SegmentationDataset

SPLITS = ("train", "val", "test")


def labels_folder(images: Path) -> Path:
    """The labels folder paired with an image folder: the last path part named ``images`` becomes ``labels``."""
    parts = list(images.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    raise ValueError(
        f"data: cannot tell where the labels of '{images}' are: YOLO datasets keep them in a 'labels' folder "
        "beside 'images' (DATASET/images/..., DATASET/labels/...)"
    )


def label_instances(path: Path) -> list[Instance]:
    """The objects of one label file (normalised geometry); AnnotationError naming the file and line."""
    try:
        lines = read_label_file(path)
    except ValueError as e:
        raise AnnotationError(str(e)) from None
    except OSError as e:
        raise AnnotationError(f"labels: cannot read '{path}' ({type(e).__name__}: {e})") from None
    return [
        Instance(category=lab.cls, where=f"labels '{path}' line {lineno}", box=lab.box, polygon=lab.polygon,
                 normalised=True, score=lab.conf)
        for lineno, lab in lines
    ]


def _resolve(data: Path, split: str | None) -> tuple[Path, Path | None, dict[int, str], str | None]:
    """(image folder, the data.yaml read, names, split) of what the user gave."""
    yaml = data if data.is_file() else data / DATA_YAML
    if data.is_file() and data.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"data: '{data}' is neither a COCO .json, a data.yaml nor a dataset folder")
    if yaml.is_file():
        try:
            fields = read_data_yaml(yaml)
        except (ValueError, UnicodeDecodeError) as e:
            raise AnnotationError(str(e)) from None
        root = Path(str(fields.get("path") or "")).expanduser()
        root = root if root.is_absolute() else (yaml.parent / root)
        names = fields.get("names") or {}
        splits = [s for s in SPLITS if fields.get(s)]
        if split is None:
            if "val" in splits:
                split = "val"
            elif len(splits) == 1:
                split = splits[0]
            elif not splits and (root / "images").is_dir():
                return root / "images", yaml, names, None
            else:
                raise ValueError(f"split: '{yaml}' has the splits {splits}; choose one (--split)")
        if split not in splits:
            raise ValueError(f"split: '{yaml}' has no {split!r} split (it has: {', '.join(splits) or 'none'})")
        value = fields[split]
        if isinstance(value, str) and value.endswith(".txt"):
            raise ValueError(f"data: '{yaml}' gives the {split} split as a list file ({value}); give its image folder")
        folder = Path(str(value)).expanduser()
        return (folder if folder.is_absolute() else root / folder), yaml, names, split
    if data.is_dir() and (data / "images").is_dir():
        names = {}
        classes = data / "labels" / CLASSES_FILE
        if classes.is_file():
            names = read_classes(classes)
        return data / "images", None, names, None
    raise FileNotFoundError(
        f"data: '{data}' is not a YOLO dataset (no {DATA_YAML}, no images/ folder) nor a COCO .json file"
    )


def load_yolo(data: str | os.PathLike, split: str | None = None) -> SegmentationDataset:
    """A YOLO segmentation dataset as a :class:`SegmentationDataset` (see the module docstring).

    ``split``: "train", "val" or "test" of a ``data.yaml`` (default: val when there is one, else the
    only split). Class indices are YOLO's; the COCO category id of class i is i + 1.
    """
    given = Path(data).expanduser()
    images_dir, yaml, names, split = _resolve(given, split)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"data: image folder '{images_dir}' not found" + (f" (from '{yaml}')" if yaml else ""))
    labels_dir = labels_folder(images_dir)
    files = walk_images(images_dir)
    entries, seen_labels = [], set()
    for k, rel in enumerate(files):
        label = (labels_dir / rel).with_suffix(".txt")
        instances = label_instances(label) if label.is_file() else []
        if label.is_file():
            seen_labels.add(label.resolve())
        entries.append(ImageEntry(rel, k + 1, instances, where=f"'{label}'"))
    orphans = 0
    if labels_dir.is_dir():
        orphans = sum(1 for p in labels_dir.rglob("*.txt")
                      if p.name != CLASSES_FILE and p.resolve() not in seen_labels
                      and not any(part.startswith(".") for part in p.relative_to(labels_dir).parts))
    classes = sorted({i.category for e in entries for i in e.instances} | set(names))
    names = {c: str(names.get(c, c)) for c in classes}
    counts = {
        "box_only": sum(1 for e in entries for i in e.instances if not i.has_mask),
        "images_without_labels": sum(1 for e in entries if not e.instances),
        "labels_without_image": orphans,
    }
    return SegmentationDataset("yolo", yaml or given, images_dir, entries, names, {c: c + 1 for c in classes},
                               counts, split=split)


__all__ = ["SPLITS", "label_instances", "labels_folder", "load_yolo"]
