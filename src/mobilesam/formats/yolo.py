"""YOLO segmentation labels (Ultralytics): one ``.txt`` per image, one line per object.

A line is ``class x1 y1 x2 y2 ... xK yK`` (``K >= 3`` points of one polygon), optionally followed by
a confidence. The rule every writer in mobilesam follows (``Results.save_txt``, ``auto_annotate``
and ``mobilesam serve``):

- **numbers**: a point's pixel coordinates are divided by the image width and height (in float64),
  **clipped to [0, 1]** and written with **six decimals** (``f"{v:.6f}"``, e.g. ``0.031250``); a
  confidence, when written, is also ``.6f``. The class is a plain integer.
- **lines** are separated by single spaces and each ends with ``"\\n"``; an image without objects
  gets an empty file. A mask without a polygon (no pixels) gets no line.
- **polygon of a mask**: :func:`mobilesam.masks.mask_to_segment` (``"all"``: every part joined into
  one ring, as Ultralytics writes multi-part masks; ``"largest"``: the largest part), each part's
  outline simplified by ``simplify`` pixels (``approxPolyDP``; default
  :data:`mobilesam.masks.DEFAULT_SIMPLIFY`, 0 = every contour point).

Reading accepts any whitespace between numbers; a line with an even number of values after the
class (``2K + 1``) carries a confidence as its last value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import atomic_write_text
from ..masks import DEFAULT_SIMPLIFY, mask_to_segment

DECIMALS = 6


@dataclass
class YoloSegment:
    """One label line: class index, polygon (K, 2) normalised to [0, 1], confidence if the line has one."""

    cls: int
    xy: np.ndarray
    conf: float | None = None


def format_line(cls: int, segment: np.ndarray, width: int, height: int, conf: float | None = None) -> str:
    """``class x1 y1 ... [conf]`` for a polygon ``segment`` (K, 2) in pixels of a ``width`` x ``height`` image."""
    if width < 1 or height < 1:
        raise ValueError(f"width, height: expected the image size in pixels (>= 1), got {width} x {height}")
    xy = np.clip(np.asarray(segment, np.float64).reshape(-1, 2) / (float(width), float(height)), 0.0, 1.0)
    values = [f"{v:.{DECIMALS}f}" for v in xy.reshape(-1)]
    if conf is not None:
        values.append(f"{float(conf):.{DECIMALS}f}")
    return f"{int(cls)} " + " ".join(values)


def mask_line(
    cls: int, mask: np.ndarray, strategy: str = "all", conf: float | None = None, simplify: float = DEFAULT_SIMPLIFY
) -> str | None:
    """The label line of a boolean (H, W) mask, or None when the mask has no polygon."""
    segment = mask_to_segment(mask, strategy, simplify)
    if segment is None:
        return None
    h, w = mask.shape[-2:]
    return format_line(cls, segment, w, h, conf)


def labels_text(lines: Iterable[str]) -> str:
    """The file's text: each line followed by ``"\\n"`` ("" for no lines)."""
    return "".join(f"{line}\n" for line in lines)


def write_labels(path: str | os.PathLike, lines: Iterable[str]) -> Path:
    """Write label lines to ``path`` atomically (replacing the file, never appending)."""
    return atomic_write_text(path, labels_text(lines))


def parse_line(line: str, where: str = "line") -> YoloSegment:
    """Read one segmentation line; ``where`` names it in errors (e.g. ``"'a.txt' line 3"``)."""
    parts = line.split()
    if len(parts) < 7:
        raise ValueError(f"{where}: expected 'class x1 y1 x2 y2 x3 y3 ...' (3 points or more), got {line.strip()!r}")
    try:
        cls_value = float(parts[0])
        values = np.array([float(v) for v in parts[1:]], np.float64)
    except ValueError:
        raise ValueError(f"{where}: expected numbers, got {line.strip()!r}") from None
    if cls_value < 0 or not cls_value.is_integer():
        raise ValueError(f"{where}: expected a non-negative integer class, got {parts[0]!r}")
    conf = None
    if len(values) % 2:
        conf, values = float(values[-1]), values[:-1]
    return YoloSegment(int(cls_value), values.reshape(-1, 2), conf)


def read_labels(path: str | os.PathLike) -> list[YoloSegment]:
    """Every object of a label file, in line order (blank lines are skipped)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    return [parse_line(line, f"'{p}' line {i}") for i, line in enumerate(text.split("\n"), 1) if line.strip()]


__all__ = [
    "DECIMALS",
    "YoloSegment",
    "format_line",
    "labels_text",
    "mask_line",
    "mask_to_segment",
    "parse_line",
    "read_labels",
    "write_labels",
]
