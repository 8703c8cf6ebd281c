"""The layout FiftyOne imports as ``fo.types.COCODetectionDataset`` (masks as instance segmentations):

    <dataset>/
        data/<image files>
        labels.json        COCO instance segmentation (RLE masks, holes kept)

    import fiftyone as fo
    ds = fo.Dataset.from_dir("<dataset>", fo.types.COCODetectionDataset, label_types="segmentations")
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import coco

DATA = "data"
LABELS = "labels.json"


def write_dataset(
    folder: str | os.PathLike, doc: Mapping[str, Any], images: Iterable[tuple[str, Path]], copy: bool = True
) -> Path:
    """Write ``labels.json`` and put the images under ``data/`` (copied, or hard-linked when ``copy`` is
    False and the file system allows). ``images``: (file name in ``doc``, the file)."""
    out = Path(folder)
    (out / DATA).mkdir(parents=True, exist_ok=True)
    for name, src in images:
        dst = out / DATA / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() and dst.resolve() == Path(src).resolve():
            continue
        if not copy:
            try:
                os.link(src, dst)
                continue
            except OSError:
                pass
        shutil.copyfile(src, dst)
    coco.write_coco(out / LABELS, doc)
    return out


__all__ = ["DATA", "LABELS", "write_dataset"]
