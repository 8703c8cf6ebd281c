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


@dataclass
class YoloLabel:
    """One line of a YOLO detection or segmentation label file, normalised to [0, 1].

    ``box`` (4,) XYXY (from ``cx cy w h``, or the polygon's extent); ``polygon`` (K, 2) for a
    segmentation line, None for a box line; ``conf`` if the line carries one.
    """

    cls: int
    box: np.ndarray
    polygon: np.ndarray | None = None
    conf: float | None = None


# Normalised coordinates a little outside [0, 1] are rounding; beyond this they are another convention.
NORMALISED_SLACK = 0.01


def parse_label_line(line: str, where: str = "line") -> YoloLabel:
    """Read a box line ``class cx cy w h [conf]`` or a segment line ``class x1 y1 ... xK yK [conf]``
    (K >= 3). ``where`` names the line in errors (e.g. ``"'labels/a.txt' line 3"``)."""
    parts = line.split()
    n = len(parts)
    if n not in (5, 6) and n < 7:
        raise ValueError(
            f"{where}: expected 'class cx cy w h [conf]' or a segment 'class x1 y1 x2 y2 x3 y3 ... [conf]', "
            f"got {n} values"
        )
    try:
        cls_value = float(parts[0])
        values = np.array([float(v) for v in parts[1:]], np.float64)
    except ValueError:
        raise ValueError(f"{where}: expected numbers, got {line.strip()!r}") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: values must be finite, got {line.strip()!r}")
    if cls_value < 0 or not cls_value.is_integer():
        raise ValueError(f"{where}: class id must be a non-negative integer, got {parts[0]!r}")
    conf = None
    if n in (5, 6):
        if n == 6:
            conf, values = float(values[-1]), values[:-1]
        coords = values
    else:
        if len(values) % 2:
            conf, values = float(values[-1]), values[:-1]
        coords = values
    if (coords < -NORMALISED_SLACK).any() or (coords > 1 + NORMALISED_SLACK).any():
        raise ValueError(f"{where}: YOLO coordinates must be normalised to [0, 1] by the image size, got {line.strip()!r}")
    if n in (5, 6):
        cx, cy, w, h = coords
        if w < 0 or h < 0:
            raise ValueError(f"{where}: box width and height must be >= 0, got {line.strip()!r}")
        return YoloLabel(int(cls_value), np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]), None, conf)
    xy = coords.reshape(-1, 2)
    return YoloLabel(int(cls_value), np.concatenate([xy.min(0), xy.max(0)]), xy, conf)


def read_label_file(path: str | os.PathLike) -> list[tuple[int, YoloLabel]]:
    """``(line number, label)`` for every non-blank line of a detection or segmentation label file.

    Raises ValueError naming the file and line of the first malformed line, or the file if it is not
    UTF-8 text."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"labels: '{p}' is not UTF-8 text ({e})") from None
    return [(i, parse_label_line(line, f"labels '{p}' line {i}"))
            for i, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_labels(path: str | os.PathLike) -> list[YoloSegment]:
    """Every object of a label file, in line order (blank lines are skipped)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    return [parse_line(line, f"'{p}' line {i}") for i, line in enumerate(text.split("\n"), 1) if line.strip()]


__all__ = [
    "DECIMALS",
    "NORMALISED_SLACK",
    "YoloLabel",
    "YoloSegment",
    "format_line",
    "labels_text",
    "mask_line",
    "mask_to_segment",
    "parse_label_line",
    "parse_line",
    "read_label_file",
    "read_labels",
    "write_labels",
]
