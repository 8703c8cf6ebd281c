"""Label Studio JSON tasks with pre-annotations: brush masks (Label Studio's RLE) or polygons.

A tasks file is a JSON list; each task is ``{"data": {"image": URL}, "predictions": [{"model_version",
"score", "result": [...]}]}`` and each result one object:

- **brush** (``<BrushLabels name="tag" toName="image">``): ``{"type": "brushlabels", "from_name", "to_name",
  "original_width", "original_height", "image_rotation": 0, "value": {"format": "rle", "rle": [bytes as
  ints], "brushlabels": [class]}, "score"}``. The RLE is Label Studio's own (``label_studio_sdk.converter.
  brush``): a bit stream of the mask as RGBA bytes (every channel 255 inside, 0 outside), header 32 bits
  (number of values), 5 bits (word size - 1 = 7) and four 4-bit run-size fields (3, 4, 8, 16 bits); each
  run is ``1``, a 2-bit size index, the length - 1 and the 8-bit value. :func:`encode_brush` writes the
  bytes Label Studio's ``mask2rle`` writes for the same mask; :func:`decode_brush` reads them back.
- **polygon** (``<PolygonLabels>``): ``{"type": "polygonlabels", ..., "value": {"points": [[x, y], ...],
  "polygonlabels": [class], "closed": true}}`` with x, y in **percent** of the image width and height.

Images are referred to by URL; for Label Studio's local-files storage that is
``/data/local-files/?d=<path relative to the storage root>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_text

LOCAL_FILES = "/data/local-files/?d="
_RUN_SIZES = (3, 4, 8, 16)  # bits of a run's length - 1, by size index


def encode_brush(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a boolean (H, W) mask, as a list of byte values (what ``"rle"`` holds)."""
    m = np.asarray(mask, bool).reshape(-1)
    n = 4 * m.size  # RGBA values
    bits = [f"{n:032b}", f"{7:05b}", "".join(f"{s - 1:04b}" for s in _RUN_SIZES)]
    if m.size:
        change = np.flatnonzero(m[1:] != m[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [m.size]])) * 4  # a pixel run is 4 equal RGBA values
        for length, value in zip(lengths.tolist(), m[starts].tolist()):
            byte = "11111111" if value else "00000000"
            while length > 65536:  # longer than a 16-bit run: 65536-value chunks first
                bits.append("111" + "1" * 16 + byte)
                length -= 65536
            if length <= 8:
                bits.append(f"100{length - 1:03b}{byte}")
            elif length <= 16:
                bits.append(f"101{length - 1:04b}{byte}")
            elif length <= 256:
                bits.append(f"110{length - 1:08b}{byte}")
            else:
                bits.append(f"111{length - 1:016b}{byte}")
    stream = "".join(bits)
    stream += "0" * (8 - len(stream) % 8)  # Label Studio pads with 1 to 8 zero bits
    return [int(stream[i : i + 8], 2) for i in range(0, len(stream), 8)]


def decode_brush(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """The boolean (H, W) mask of a brush RLE (its alpha channel > 0); a ValueError if it does not fit."""
    data = np.asarray(rle, np.uint8)
    bits = np.unpackbits(data)
    pos = 0

    def read(k: int) -> int:
        nonlocal pos
        if pos + k > len(bits):
            raise ValueError("rle: the brush RLE ends in the middle of a run")
        v = 0
        for b in bits[pos : pos + k]:
            v = (v << 1) | int(b)
        pos += k
        return v

    num = read(32)
    if num != 4 * height * width:
        raise ValueError(f"rle: holds {num} values, expected 4 x {height} x {width} = {4 * height * width}")
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        series = read(1)
        j = i + 1 + read(sizes[read(2)])
        if series:
            out[i:j] = read(word)
            i = j
        else:
            while i < j:
                out[i] = read(word)
                i += 1
    return out.reshape(height, width, 4)[..., 3] > 0


def brush_result(
    mask: np.ndarray, label: str, *, score: float | None = None, from_name: str = "tag", to_name: str = "image",
    result_id: str | None = None,
) -> dict[str, Any]:
    """One brush pre-annotation of a boolean (H, W) mask."""
    h, w = mask.shape
    out: dict[str, Any] = {
        "type": "brushlabels", "from_name": from_name, "to_name": to_name,
        "original_width": int(w), "original_height": int(h), "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_brush(mask), "brushlabels": [str(label)]},
    }
    if result_id is not None:
        out["id"] = result_id
    if score is not None:
        out["score"] = round(float(score), 5)
    return out


def polygon_result(
    polygon: np.ndarray, label: str, width: int, height: int, *, score: float | None = None,
    from_name: str = "label", to_name: str = "image", result_id: str | None = None,
) -> dict[str, Any]:
    """One polygon pre-annotation; ``polygon`` (K, 2) in pixels becomes percent of the image size."""
    pts = np.asarray(polygon, np.float64).reshape(-1, 2) * (100.0 / width, 100.0 / height)
    out: dict[str, Any] = {
        "type": "polygonlabels", "from_name": from_name, "to_name": to_name,
        "original_width": int(width), "original_height": int(height), "image_rotation": 0,
        "value": {"points": np.clip(pts, 0, 100).round(4).tolist(), "polygonlabels": [str(label)], "closed": True},
    }
    if result_id is not None:
        out["id"] = result_id
    if score is not None:
        out["score"] = round(float(score), 5)
    return out


def task(image_url: str, results: Iterable[Mapping[str, Any]], model_version: str = "mobilesam") -> dict[str, Any]:
    """A task of one image with its pre-annotations (the ``predictions`` Label Studio shows for review)."""
    results = list(results)
    scores = [r["score"] for r in results if "score" in r]
    pred: dict[str, Any] = {"model_version": model_version, "result": results}
    if scores:
        pred["score"] = round(float(np.mean(scores)), 5)
    return {"data": {"image": image_url}, "predictions": [pred]}


def labeling_config(names: Iterable[str], kind: str = "brush") -> str:
    """The labelling interface XML the tasks fit (paste it into the project's settings)."""
    tag, name = ("BrushLabels", "tag") if kind == "brush" else ("PolygonLabels", "label")
    labels = "".join(f'    <Label value="{_xml(n)}"/>\n' for n in names)
    return f'<View>\n  <Image name="image" value="$image"/>\n  <{tag} name="{name}" toName="image">\n{labels}  </{tag}>\n</View>\n'


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def write_tasks(path: str | os.PathLike, tasks: Sequence[Mapping[str, Any]]) -> Path:
    """Write a tasks JSON file atomically (import it in Label Studio, or through its API)."""
    return atomic_write_text(path, json.dumps(list(tasks), separators=(",", ":")))


__all__ = [
    "LOCAL_FILES", "brush_result", "decode_brush", "encode_brush", "labeling_config", "polygon_result", "task",
    "write_tasks",
]
