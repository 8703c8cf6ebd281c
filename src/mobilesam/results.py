"""``Results`` of a prediction on one image (``Masks``, ``Boxes``), shaped like Ultralytics' own.

``Results.orig_img`` and ``plot()`` use BGR channel order, as OpenCV and Ultralytics do, so
``cv2.imwrite(path, r.plot())`` works; ``plot(pil=True)`` gives an RGB PIL image.
"""

from __future__ import annotations

import colorsys
import csv
import io as _io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch
from PIL import Image

from .formats import yolo
from .io import atomic_write_bytes, atomic_write_text, write_image
from .masks import DEFAULT_SIMPLIFY, check_simplify, encode_rle, mask_to_polygons, mask_to_segment

logger = logging.getLogger("mobilesam")

ArrayLike = Union[torch.Tensor, np.ndarray]


def _palette(n: int = 32) -> list[tuple[int, int, int]]:
    """Distinct, saturated BGR colours: hues spaced by the golden ratio."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
        out.append((int(b * 255), int(g * 255), int(r * 255)))
    return out


COLORS = _palette()
POSITIVE_BGR = (0, 200, 0)
NEGATIVE_BGR = (0, 0, 230)


def colour(i: int) -> tuple[int, int, int]:
    """BGR colour of the i-th mask."""
    return COLORS[i % len(COLORS)]


def _to_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class _TensorData:
    """A torch tensor or numpy array ``data`` with the original image shape (H, W); moves between both."""

    def __init__(self, data: ArrayLike, orig_shape: tuple[int, ...]) -> None:
        if not isinstance(data, (torch.Tensor, np.ndarray)):
            raise TypeError(f"data: expected a torch.Tensor or numpy array, got {type(data).__name__}")
        self.data = data
        self.orig_shape = (int(orig_shape[0]), int(orig_shape[1]))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, idx: Any):
        if isinstance(idx, (int, np.integer)):
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"index {idx} is out of range for {n} items")
            idx = slice(int(idx) % n, int(idx) % n + 1)  # keep the leading dimension
        return self.__class__(self.data[idx], self.orig_shape)

    def cpu(self):
        return self.__class__(self.data.cpu(), self.orig_shape) if isinstance(self.data, torch.Tensor) else self

    def numpy(self):
        return self.__class__(_to_numpy(self.data), self.orig_shape)

    def cuda(self):
        return self.to("cuda")

    def to(self, *args: Any, **kwargs: Any):
        return self.__class__(torch.as_tensor(self.data).to(*args, **kwargs), self.orig_shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data={self.data!r}, orig_shape={self.orig_shape})"


class Boxes(_TensorData):
    """Boxes (N, 6): x1, y1, x2, y2, conf, cls in original-image pixels.

    ``conf`` is the model's predicted IoU of the mask; ``cls`` the index of the prompt the mask answers
    (for segment-everything, the mask's rank by area).
    """

    def __init__(self, data: ArrayLike, orig_shape: tuple[int, ...]) -> None:
        if data.ndim == 1:
            data = data[None]
        if data.ndim != 2 or data.shape[-1] != 6:
            raise ValueError(f"boxes: expected shape (N, 6) as x1, y1, x2, y2, conf, cls, got {tuple(data.shape)}")
        super().__init__(data, orig_shape)

    @property
    def xyxy(self) -> ArrayLike:
        return self.data[:, :4]

    @property
    def conf(self) -> ArrayLike:
        return self.data[:, 4]

    @property
    def cls(self) -> ArrayLike:
        return self.data[:, 5]

    @property
    def id(self) -> None:
        return None  # no tracking; kept for Ultralytics compatibility

    is_track = False

    @property
    def xywh(self) -> ArrayLike:
        """Centre x, centre y, width, height (N, 4)."""
        b = self.xyxy
        xy = (b[:, :2] + b[:, 2:]) / 2
        wh = b[:, 2:] - b[:, :2]
        return torch.cat([xy, wh], -1) if isinstance(b, torch.Tensor) else np.concatenate([xy, wh], -1)

    def _scale(self) -> ArrayLike:
        h, w = self.orig_shape
        s = [w, h, w, h]
        return torch.tensor(s, dtype=self.data.dtype, device=self.data.device) if isinstance(
            self.data, torch.Tensor
        ) else np.asarray(s, dtype=self.data.dtype)

    @property
    def xyxyn(self) -> ArrayLike:
        return self.xyxy / self._scale()

    @property
    def xywhn(self) -> ArrayLike:
        return self.xywh / self._scale()


class Masks(_TensorData):
    """Boolean masks (N, H, W) at the original image size.

    ``xy`` / ``xyn`` hold one polygon per mask, (K, 2) float32 (x, y) in pixels / normalised to [0, 1]:
    every connected part's outline joined into one ring, as Ultralytics does (an empty mask gives a
    (0, 2) array; holes are not represented: COCO RLE keeps them). ``segments(strategy="largest")``
    keeps the largest part; ``segments(simplify=1.0)`` simplifies each outline by that many pixels.
    """

    def __init__(self, data: ArrayLike, orig_shape: tuple[int, ...]) -> None:
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise ValueError(f"masks: expected shape (N, H, W), got {tuple(data.shape)}")
        super().__init__(data, orig_shape)
        self._segments: dict[str, list[np.ndarray]] = {}

    def segments(self, strategy: str = "all", normalize: bool = False, simplify: float = 0.0) -> list[np.ndarray]:
        """One (K, 2) float32 polygon per mask; an empty mask gives a (0, 2) array.

        ``strategy``: "all" joins every part (as ``xy``), "largest" keeps the largest; ``simplify``:
        tolerance in pixels of each outline's simplification (OpenCV ``approxPolyDP``; 0 = exact).
        """
        if strategy not in ("largest", "all"):
            raise ValueError(f"strategy: expected 'largest' or 'all', got {strategy!r}")
        key = f"{strategy}:{check_simplify(simplify)}"
        if key not in self._segments:
            polys = []
            for m in _to_numpy(self.data):
                seg = mask_to_segment(m, strategy, simplify)
                polys.append(seg if seg is not None else np.zeros((0, 2), np.float32))
            self._segments[key] = polys
        polys = self._segments[key]
        if normalize:
            h, w = self.data.shape[-2:]
            scale = np.asarray([w, h], np.float32)
            return [p / scale for p in polys]
        return [p.copy() for p in polys]

    @property
    def xy(self) -> list[np.ndarray]:
        return self.segments("all")

    @property
    def xyn(self) -> list[np.ndarray]:
        return self.segments("all", normalize=True)


class Results:
    """What a prediction gives for one image, with Ultralytics' ``Results`` attributes and methods.

    Attributes:
        orig_img: the image, HxWx3 uint8 **BGR** (OpenCV / Ultralytics order).
        orig_shape: (H, W).
        path: the file, URL, or ``imageN.jpg`` for in-memory images.
        masks: ``Masks`` (N, H, W) bool; mask i answers prompt ``boxes.cls[i]``.
        boxes: ``Boxes`` (N, 6): tight box of each mask, predicted IoU, prompt index.
        low_res_logits: (N, 256, 256) float logits, to pass back as ``masks=`` to refine; None for
            segment-everything.
        prompts: the prompts used, in original-image pixels: ``points`` (B, n, 2) (or a list of
            (n, 2) arrays when objects have different numbers of points), ``labels``, ``bboxes`` (B, 4).
        names: {class index: name}; speed: milliseconds for preprocess, inference and postprocess.
        save_dir: the run folder when ``predict`` saved (or would save) results there, else None.
        probs, keypoints, obb, semantic_mask, depth: always None (other Ultralytics tasks).
    """

    probs = keypoints = obb = semantic_mask = depth = None  # Ultralytics tasks SAM does not have

    def __init__(
        self,
        orig_img: np.ndarray,
        path: str,
        names: dict[int, str] | None = None,
        boxes: ArrayLike | None = None,
        masks: ArrayLike | None = None,
        low_res_logits: ArrayLike | None = None,
        prompts: dict[str, Any] | None = None,
        speed: dict[str, float] | None = None,
    ) -> None:
        self.orig_img = orig_img
        self.orig_shape = tuple(int(s) for s in orig_img.shape[:2])
        self.path = str(path)
        h, w = self.orig_shape
        if masks is None:
            masks = torch.zeros((0, h, w), dtype=torch.bool)
        if boxes is None:
            boxes = torch.zeros((0, 6))
        if len(masks) != len(boxes):
            raise ValueError(f"Results: got {len(masks)} masks but {len(boxes)} boxes")
        if tuple(masks.shape[-2:]) != self.orig_shape:
            raise ValueError(f"Results: masks of size {tuple(masks.shape[-2:])} for an image of size {self.orig_shape}")
        self.masks = Masks(masks, self.orig_shape)
        self.boxes = Boxes(boxes, self.orig_shape)
        self.low_res_logits = low_res_logits
        self.prompts = dict(prompts or {})
        self.names = names if names is not None else {int(c): str(int(c)) for c in _to_numpy(self.boxes.cls)}
        self.speed = dict(speed or {"preprocess": None, "inference": None, "postprocess": None})
        self.save_dir: str | None = None
        # Where the image came from in its source: "image", or "video" with the frame number (from 1).
        self.source_mode, self.frame, self.fps = "image", 0, 0.0

    # --- containers -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, idx: Any) -> Results:
        masks, boxes = self.masks[idx], self.boxes[idx]
        logits = None
        if self.low_res_logits is not None:
            logits = self.low_res_logits[
                slice(int(idx) % len(self), int(idx) % len(self) + 1) if isinstance(idx, (int, np.integer)) else idx
            ]
        return self._new(masks.data, boxes.data, logits)

    def _new(self, masks: ArrayLike, boxes: ArrayLike, logits: ArrayLike | None) -> Results:
        r = Results(self.orig_img, self.path, dict(self.names), boxes, masks, logits, self.prompts, self.speed)
        r.save_dir, r.source_mode, r.frame, r.fps = self.save_dir, self.source_mode, self.frame, self.fps
        return r

    def new(self) -> Results:
        """A Results of the same image, path, names, speed and save_dir, with no masks (as Ultralytics)."""
        h, w = self.orig_shape
        return self._new(torch.zeros((0, h, w), dtype=torch.bool), torch.zeros((0, 6)), None)

    def update(self, boxes: ArrayLike | None = None, masks: ArrayLike | None = None, **others: Any) -> None:
        """Replace the boxes (N, 6), clipped to the image as Ultralytics does, and/or the masks (N, H, W).

        ``low_res_logits`` are dropped when they no longer pair with the masks. Ultralytics' other
        fields (``probs``, ``keypoints``, ``obb``, ...) do not exist for SAM: passing one is an error.
        """
        given = sorted(k for k, v in others.items() if v is not None)
        if given:
            raise ValueError(f"{given[0]}: SAM results hold masks and boxes only; update(boxes=..., masks=...)")
        if boxes is not None:
            b = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, dtype=np.float32, copy=True)
            if b.ndim == 1:
                b = b[None]
            h, w = self.orig_shape
            if isinstance(b, torch.Tensor):
                b[:, [0, 2]] = b[:, [0, 2]].clamp(0, w)
                b[:, [1, 3]] = b[:, [1, 3]].clamp(0, h)
            else:
                b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
                b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
            self.boxes = Boxes(b, self.orig_shape)
        if masks is not None:
            self.masks = Masks(masks, self.orig_shape)
        if self.low_res_logits is not None and len(self.low_res_logits) != len(self.masks):
            self.low_res_logits = None
        if len(self.masks) != len(self.boxes):
            raise ValueError(f"update: {len(self.masks)} masks but {len(self.boxes)} boxes; give both to change N")

    def _apply(self, fn: str, *args: Any, **kwargs: Any) -> Results:
        masks = getattr(self.masks, fn)(*args, **kwargs).data
        boxes = getattr(self.boxes, fn)(*args, **kwargs).data
        logits = self.low_res_logits
        if logits is not None:
            logits = _TensorData(logits, self.orig_shape)
            logits = getattr(logits, fn)(*args, **kwargs).data
        return self._new(masks, boxes, logits)

    def cpu(self) -> Results:
        return self._apply("cpu")

    def numpy(self) -> Results:
        return self._apply("numpy")

    def cuda(self) -> Results:
        return self._apply("cuda")

    def to(self, *args: Any, **kwargs: Any) -> Results:
        return self._apply("to", *args, **kwargs)

    def verbose(self) -> str:
        """Ultralytics' log string: ``"1 0, 1 1, "`` (count and name of each class), ``"(no detections), "``."""
        if len(self) == 0:
            return "(no detections), "
        counts = torch.as_tensor(_to_numpy(self.boxes.cls), dtype=torch.int64).bincount()
        return "".join(f"{n} {self.names[i]}{'s' * (n > 1)}, " for i, n in enumerate(counts.tolist()) if n > 0)

    def __repr__(self) -> str:
        n = len(self)
        return f"Results(path={self.path!r}, orig_shape={self.orig_shape}, {n} mask{'s' if n != 1 else ''})"

    # --- drawing ----------------------------------------------------------------------------------
    def plot(
        self,
        conf: bool = True,
        line_width: float | None = None,
        font_size: float | None = None,
        font: str = "Arial.ttf",
        pil: bool = False,
        img: np.ndarray | None = None,
        kpt_radius: int = 5,
        kpt_line: bool = True,
        labels: bool = True,
        boxes: bool = True,
        masks: bool = True,
        probs: bool = True,
        show: bool = False,
        save: bool = False,
        filename: str | os.PathLike | None = None,
        color_mode: str = "class",
        txt_color: tuple[int, int, int] = (255, 255, 255),
        *,
        points: bool = True,
        alpha: float = 0.45,
    ) -> np.ndarray | Image.Image:
        """Draw masks (filled, outlined), their boxes and labels, and the prompt points and boxes.

        Ultralytics' arguments, in its order: ``line_width`` / ``font_size`` (None: scaled to the image),
        ``color_mode`` ("class": a colour per prompt index, "instance": per mask), ``txt_color`` (BGR of
        the label text), ``show`` (:meth:`show`), ``save`` / ``filename`` (default ``results_<name>``).
        Labels are drawn with OpenCV's vector font, so ``font`` is accepted and not used;
        ``kpt_radius``, ``kpt_line`` and ``probs`` draw nothing (SAM has no keypoints or classes).
        Ours: ``points`` (positive prompt points green, negative red, prompt boxes white), ``alpha``.

        Returns an HxWx3 uint8 BGR array (or an RGB PIL image with ``pil=True``).
        """
        if color_mode not in ("class", "instance"):
            raise ValueError(f"color_mode: expected 'class' or 'instance', got {color_mode!r}")
        out = np.array(self.orig_img if img is None else _to_numpy(img), dtype=np.uint8, copy=True)
        if out.shape[:2] != self.orig_shape:
            raise ValueError(f"img: expected an image of size {self.orig_shape}, got {out.shape[:2]}")
        lw = int(round(line_width)) if line_width else max(round(sum(self.orig_shape) / 2 * 0.003), 2)
        mask_data = _to_numpy(self.masks.data).astype(bool)
        box_data = _to_numpy(self.boxes.data).astype(np.float64)
        keys = [int(c) for c in box_data[:, 5]] if color_mode == "class" else list(range(len(box_data)))
        if masks:
            for i, m in enumerate(mask_data):
                c = np.asarray(colour(keys[i]), np.float32)
                out[m] = (out[m].astype(np.float32) * (1 - alpha) + c * alpha).round().astype(np.uint8)
            for i, m in enumerate(mask_data):
                contours = [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in mask_to_polygons(m, "all")]
                cv2.drawContours(out, contours, -1, colour(keys[i]), max(lw // 2, 1), cv2.LINE_AA)
        if points:
            for b in np.asarray(self.prompts.get("bboxes", np.zeros((0, 4))), np.float64).reshape(-1, 4):
                cv2.rectangle(out, _pt(b[:2]), _pt(b[2:]), (255, 255, 255), max(lw // 2, 1), cv2.LINE_AA)
        if boxes:
            for i, (x1, y1, x2, y2, score, cls) in enumerate(box_data):
                if i < len(mask_data) and not mask_data[i].any():
                    continue  # an empty mask has no box to show
                cv2.rectangle(out, _pt((x1, y1)), _pt((x2, y2)), colour(keys[i]), lw, cv2.LINE_AA)
                if labels or conf:
                    name = [self.names.get(int(cls), str(int(cls)))] if labels else []
                    text = " ".join(name + ([f"{score:.2f}"] if conf else []))
                    _label(out, text, (x1, y1), colour(keys[i]), lw, font_size, tuple(txt_color))
        if points:
            self._draw_points(out, lw)
        if show:
            _show(out, self.path)
        if save:
            self._write_plot(filename, out)
        if pil:
            return Image.fromarray(out[..., ::-1])
        return out

    def _draw_points(self, out: np.ndarray, lw: int) -> None:
        pts, lbl = self.prompts.get("points"), self.prompts.get("labels")
        if pts is None:
            return
        groups = pts if isinstance(pts, list) else list(np.asarray(pts))
        lgroups = lbl if isinstance(lbl, list) else list(np.asarray(lbl))
        r = max(lw * 2, 4)
        for g, lg in zip(groups, lgroups):
            for (x, y), label in zip(np.asarray(g).reshape(-1, 2), np.asarray(lg).reshape(-1)):
                col = POSITIVE_BGR if label == 1 else NEGATIVE_BGR
                cv2.circle(out, _pt((x, y)), r + 1, (255, 255, 255), -1, cv2.LINE_AA)
                cv2.circle(out, _pt((x, y)), r, col, -1, cv2.LINE_AA)

    def show(self, *args: Any, **kwargs: Any) -> None:
        """Display ``plot(*args, **kwargs)``: inline in a notebook, in the system image viewer where there is a
        display; without one (a server, CI) it logs a warning instead of failing."""
        self.plot(*args, show=True, **kwargs)

    def _default_name(self) -> str:
        name = Path(self.path).name or "image0.jpg"
        return f"results_{name}" if Path(name).suffix else f"results_{name}.jpg"

    def _write_plot(self, filename: str | os.PathLike | None, picture: np.ndarray) -> str:
        filename = filename or self._default_name()
        write_image(filename, picture, image_format="BGR")
        return str(filename)

    # --- export -----------------------------------------------------------------------------------
    def save(self, filename: str | os.PathLike | None = None, *args: Any, **plot_kwargs: Any) -> str:
        """Write ``plot(*args, **plot_kwargs)`` to ``filename`` (default ``results_<image name>``; folders are
        created), atomically; returns the path."""
        filename = filename or self._default_name()
        self.plot(*args, save=True, filename=filename, **plot_kwargs)
        return str(filename)

    def save_txt(
        self,
        txt_file: str | os.PathLike,
        save_conf: bool = False,
        strategy: str = "all",
        simplify: float = DEFAULT_SIMPLIFY,
    ) -> str:
        """Append YOLO segmentation labels to ``txt_file``, one line per mask: ``cls x1 y1 x2 y2 ... [conf]``.

        As Ultralytics: lines are appended to an existing file, and no file is written when there is no
        line (no mask, or only empty ones: a mask with no polygon has no line). Coordinates are
        normalised by the image size, clipped to [0, 1] and written with six decimals, the rule of
        :mod:`mobilesam.formats.yolo` (the same bytes ``auto_annotate`` and ``mobilesam serve`` write).
        ``strategy="all"`` joins every part of a mask into one polygon (nothing is lost); ``"largest"``
        keeps the largest part. ``simplify``: tolerance in pixels of the outline simplification
        (default :data:`mobilesam.masks.DEFAULT_SIMPLIFY`; 0 = every contour point, as Ultralytics).
        The file is rewritten atomically with the old lines first.
        """
        h, w = self.orig_shape
        lines = [
            yolo.format_line(int(row[5]), poly, w, h, row[4] if save_conf else None)
            for poly, row in zip(self.masks.segments(strategy, simplify=simplify), _to_numpy(self.boxes.data))
            if len(poly) >= 3
        ]
        if lines:
            path = Path(txt_file)
            old = path.read_text(encoding="utf-8") if path.is_file() else ""
            if old and not old.endswith("\n"):
                old += "\n"
            atomic_write_text(path, old + yolo.labels_text(lines))
        return str(txt_file)

    def save_crop(self, save_dir: str | os.PathLike, file_name: str | os.PathLike = Path("im.jpg")) -> None:
        """Save each mask's box region of the image as ``save_dir/<class name>/<file_name>.jpg`` (as Ultralytics:
        the box grown by 2 % plus 10 pixels, JPEG quality 95; an existing file gets ``-2``, ``-3``, ...)."""
        img = self.orig_img
        ih, iw = img.shape[:2]
        for x1, y1, x2, y2, _, cls in _to_numpy(self.boxes.data).astype(np.float64):
            cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * 1.02 + 10, (y2 - y1) * 1.02 + 10
            # torch's .long() truncates toward zero; then clipped to the image, as Ultralytics' save_one_box.
            a = [int(np.trunc(v)) for v in (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)]
            a = [min(max(a[0], 0), iw), min(max(a[1], 0), ih), min(max(a[2], 0), iw), min(max(a[3], 0), ih)]
            crop = img[a[1] : a[3], a[0] : a[2]]
            target = _increment_file(Path(save_dir) / self.names.get(int(cls), str(int(cls))) /
                                     Path(file_name).with_suffix(".jpg"))
            buf = _io.BytesIO()
            Image.fromarray(np.ascontiguousarray(crop[..., ::-1])).save(buf, format="JPEG", quality=95, subsampling=0)
            atomic_write_bytes(target, buf.getvalue())

    def summary(self, normalize: bool = False, decimals: int = 5, rle: bool = False) -> list[dict[str, Any]]:
        """One dict per mask in Ultralytics' schema: ``name``, ``class`` (prompt index), ``confidence``,
        ``box`` {x1, y1, x2, y2} and ``segments`` {x: [...], y: [...]} (``masks.xy``), in pixels or, with
        ``normalize``, divided by the image width and height. ``rle=True`` adds ``area`` (pixels) and
        ``segmentation`` (COCO RLE, holes kept) to each."""
        h, w = self.orig_shape if normalize else (1, 1)
        out = []
        data = _to_numpy(self.boxes.data).astype(np.float64)
        segments = self.masks.xy if len(self) else []
        masks = _to_numpy(self.masks.data).astype(bool) if rle else None
        for i, (x1, y1, x2, y2, score, cls) in enumerate(data):
            rec: dict[str, Any] = {
                "name": self.names.get(int(cls), str(int(cls))),
                "class": int(cls),
                "confidence": round(float(score), decimals),
                "box": {"x1": round(float(x1 / w), decimals), "y1": round(float(y1 / h), decimals),
                        "x2": round(float(x2 / w), decimals), "y2": round(float(y2 / h), decimals)},
                "segments": {
                    "x": (segments[i][:, 0] / w).astype(float).round(decimals).tolist(),
                    "y": (segments[i][:, 1] / h).astype(float).round(decimals).tolist(),
                },
            }
            if masks is not None:
                rec["area"] = int(masks[i].sum())
                rec["segmentation"] = encode_rle(masks[i])
            out.append(rec)
        return out

    def to_df(self, normalize: bool = False, decimals: int = 5) -> Any:
        """``summary()`` as a DataFrame: polars (what Ultralytics returns) when installed, else pandas."""
        rows = self.summary(normalize=normalize, decimals=decimals)
        try:
            import polars as pl
        except ImportError:
            try:
                import pandas as pd
            except ImportError:
                raise ImportError("to_df() needs polars (as Ultralytics) or pandas: pip install polars") from None
            return pd.DataFrame(rows)
        return pl.DataFrame(rows)

    def to_csv(self, normalize: bool = False, decimals: int = 5) -> str:
        """``summary()`` as CSV text, as Ultralytics writes it: one row per mask, the nested ``box`` and
        ``segments`` as Python ``repr`` text. Needs neither polars nor pandas."""
        rows = self.summary(normalize=normalize, decimals=decimals)
        if not rows:
            return ""
        buf = _io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(list(rows[0]))
        for row in rows:
            writer.writerow([repr(v) if isinstance(v, (dict, list, tuple)) else str(v) for v in row.values()])
        return buf.getvalue()

    def to_json(self, normalize: bool = False, decimals: int = 5) -> str:
        """``summary()`` as JSON text, as Ultralytics writes it (one object per mask, no spaces)."""
        return json.dumps(self.summary(normalize=normalize, decimals=decimals), separators=(",", ":"))

    def to_supervision(self) -> Any:
        """The masks as ``supervision.Detections`` (``pip install supervision``): ``xyxy``, ``mask``,
        ``confidence``, ``class_id`` (prompt index) and ``data["class_name"]``, as
        ``Detections.from_ultralytics`` builds them."""
        try:
            import supervision as sv
        except ImportError:
            raise ImportError("to_supervision() needs supervision: pip install supervision") from None
        data = _to_numpy(self.boxes.data).astype(np.float64)
        cls = data[:, 5].astype(int)
        return sv.Detections(
            xyxy=data[:, :4].astype(np.float32).reshape(-1, 4),
            mask=_to_numpy(self.masks.data).astype(bool),
            confidence=data[:, 4].astype(np.float32),
            class_id=cls,
            data={"class_name": np.array([self.names.get(int(c), str(int(c))) for c in cls], dtype=str)},
        )


def _increment_file(path: Path) -> Path:
    """``path``, or ``stem-2.suffix``, ``stem-3.suffix``, ... : the first that does not exist (Ultralytics)."""
    if not path.exists():
        return path
    n = 2
    while path.with_name(f"{path.stem}-{n}{path.suffix}").exists():
        n += 1
    return path.with_name(f"{path.stem}-{n}{path.suffix}")


def _show(picture: np.ndarray, title: str) -> None:
    """Display a BGR picture: inline in Jupyter, else in the system viewer (PIL), never failing headless."""
    image = Image.fromarray(np.ascontiguousarray(picture[..., ::-1]))
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        from IPython.display import display

        display(image)
        return
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        logger.warning("mobilesam: show(): no display here (headless); use save() or plot() to get the picture")
        return
    image.show(title=title)


def _pt(xy: Any) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))


def _label(
    img: np.ndarray,
    text: str,
    xy: tuple[float, float],
    col: tuple[int, int, int],
    lw: int,
    font_size: float | None = None,
    txt_color: tuple[int, ...] = (255, 255, 255),
) -> None:
    # font_size in pixels of cap height, as Ultralytics' PIL fonts; OpenCV's scale 1 is about 22 pixels.
    scale = font_size / 22 if font_size else lw / 3
    thick = max(lw - 1, 1)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = _pt(xy)
    above = y - th - 3 >= 0
    y2 = y - th - 3 if above else y + th + 3
    cv2.rectangle(img, (x, y), (x + tw, y2), col, -1, cv2.LINE_AA)
    cv2.putText(img, text, (x, y - 2 if above else y + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, txt_color, thick,
                cv2.LINE_AA)
