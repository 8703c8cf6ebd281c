"""``Results`` of a prediction on one image (``Masks``, ``Boxes``), shaped like Ultralytics' own.

``Results.orig_img`` and ``plot()`` use BGR channel order, as OpenCV and Ultralytics do, so
``cv2.imwrite(path, r.plot())`` works; ``plot(pil=True)`` gives an RGB PIL image.
"""

from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch
from PIL import Image

from .formats import yolo
from .io import write_image
from .masks import encode_rle, mask_to_polygons, mask_to_segment

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
    the outline of the mask's largest connected part, as Ultralytics does by default; holes are not
    represented. ``segments(strategy="all")`` joins every part into one ring (what ``save_txt`` writes).
    """

    def __init__(self, data: ArrayLike, orig_shape: tuple[int, ...]) -> None:
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise ValueError(f"masks: expected shape (N, H, W), got {tuple(data.shape)}")
        super().__init__(data, orig_shape)
        self._segments: dict[str, list[np.ndarray]] = {}

    def segments(self, strategy: str = "largest", normalize: bool = False) -> list[np.ndarray]:
        """One (K, 2) float32 polygon per mask; an empty mask gives a (0, 2) array."""
        if strategy not in ("largest", "all"):
            raise ValueError(f"strategy: expected 'largest' or 'all', got {strategy!r}")
        if strategy not in self._segments:
            polys = []
            for m in _to_numpy(self.data):
                seg = mask_to_segment(m, strategy)
                polys.append(seg if seg is not None else np.zeros((0, 2), np.float32))
            self._segments[strategy] = polys
        polys = self._segments[strategy]
        if normalize:
            h, w = self.data.shape[-2:]
            scale = np.asarray([w, h], np.float32)
            return [p / scale for p in polys]
        return [p.copy() for p in polys]

    @property
    def xy(self) -> list[np.ndarray]:
        return self.segments("largest")

    @property
    def xyn(self) -> list[np.ndarray]:
        return self.segments("largest", normalize=True)


class Results:
    """What a prediction gives for one image.

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
    """

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
        return Results(self.orig_img, self.path, dict(self.names), boxes, masks, logits, self.prompts, self.speed)

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
        n = len(self)
        return f"{n} mask{'s' if n != 1 else ''}"

    def __repr__(self) -> str:
        return f"Results(path={self.path!r}, orig_shape={self.orig_shape}, {self.verbose()})"

    # --- drawing ----------------------------------------------------------------------------------
    def plot(
        self,
        conf: bool = True,
        labels: bool = True,
        boxes: bool = True,
        masks: bool = True,
        points: bool = True,
        line_width: int | None = None,
        alpha: float = 0.45,
        pil: bool = False,
        img: np.ndarray | None = None,
    ) -> np.ndarray | Image.Image:
        """Draw masks (filled, outlined), their boxes and labels, and the prompt points and boxes.

        Returns an HxWx3 uint8 BGR array (or an RGB PIL image with ``pil=True``). Positive prompt points
        are green, negative ones red, prompt boxes white.
        """
        out = (self.orig_img if img is None else img).copy()
        if out.shape[:2] != self.orig_shape:
            raise ValueError(f"img: expected an image of size {self.orig_shape}, got {out.shape[:2]}")
        lw = line_width or max(round(sum(self.orig_shape) / 2 * 0.003), 2)
        mask_data = _to_numpy(self.masks.data).astype(bool)
        box_data = _to_numpy(self.boxes.data).astype(np.float64)
        if masks:
            for i, m in enumerate(mask_data):
                c = np.asarray(colour(i), np.float32)
                out[m] = (out[m].astype(np.float32) * (1 - alpha) + c * alpha).round().astype(np.uint8)
            for i, m in enumerate(mask_data):
                contours = [np.round(p).astype(np.int32).reshape(-1, 1, 2) for p in mask_to_polygons(m, "all")]
                cv2.drawContours(out, contours, -1, colour(i), max(lw // 2, 1), cv2.LINE_AA)
        if points:
            for b in np.asarray(self.prompts.get("bboxes", np.zeros((0, 4))), np.float64).reshape(-1, 4):
                cv2.rectangle(out, _pt(b[:2]), _pt(b[2:]), (255, 255, 255), max(lw // 2, 1), cv2.LINE_AA)
        if boxes:
            for i, (x1, y1, x2, y2, score, cls) in enumerate(box_data):
                if i < len(mask_data) and not mask_data[i].any():
                    continue  # an empty mask has no box to show
                cv2.rectangle(out, _pt((x1, y1)), _pt((x2, y2)), colour(i), lw, cv2.LINE_AA)
                if labels or conf:
                    name = [self.names.get(int(cls), str(int(cls)))] if labels else []
                    text = " ".join(name + ([f"{score:.2f}"] if conf else []))
                    _label(out, text, (x1, y1), colour(i), lw)
        if points:
            self._draw_points(out, lw)
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

    # --- export -----------------------------------------------------------------------------------
    def save(self, filename: str | os.PathLike | None = None, **plot_kwargs: Any) -> str:
        """Write ``plot()`` to ``filename`` (default ``results_<image name>``), atomically; returns the path."""
        if filename is None:
            name = Path(self.path).name or "image0.jpg"
            filename = f"results_{name}" if Path(name).suffix else f"results_{name}.jpg"
        write_image(filename, self.plot(**plot_kwargs), image_format="BGR")
        return str(filename)

    def save_txt(self, txt_file: str | os.PathLike, save_conf: bool = False, strategy: str = "all") -> str:
        """Write YOLO segmentation labels, one line per mask: ``cls x1 y1 x2 y2 ... [conf]``.

        Coordinates are normalised by the image size, clipped to [0, 1] and written with six decimals,
        the rule of :mod:`mobilesam.formats.yolo` (the same bytes ``auto_annotate`` and ``mobilesam serve``
        write). ``strategy="all"`` joins every part of a mask into one polygon (nothing is lost);
        ``"largest"`` keeps the largest part, like ``masks.xyn``. A mask with no pixels has no polygon
        and no line. The file is replaced atomically (not appended to).
        """
        h, w = self.orig_shape
        lines = [
            yolo.format_line(int(row[5]), poly, w, h, row[4] if save_conf else None)
            for poly, row in zip(self.masks.segments(strategy), _to_numpy(self.boxes.data))
            if len(poly) >= 3
        ]
        yolo.write_labels(txt_file, lines)
        return str(txt_file)

    def summary(self, normalize: bool = False, decimals: int = 5) -> list[dict[str, Any]]:
        """One dict per mask: name, class (prompt index), confidence, box, area and COCO RLE segmentation."""
        h, w = self.orig_shape
        out = []
        masks = _to_numpy(self.masks.data).astype(bool)
        for m, (x1, y1, x2, y2, score, cls) in zip(masks, _to_numpy(self.boxes.data).astype(np.float64)):
            if normalize:
                x1, x2, y1, y2 = x1 / w, x2 / w, y1 / h, y2 / h
            out.append(
                {
                    "name": self.names.get(int(cls), str(int(cls))),
                    "class": int(cls),
                    "confidence": round(float(score), decimals),
                    "box": {k: round(float(v), decimals) for k, v in zip(("x1", "y1", "x2", "y2"), (x1, y1, x2, y2))},
                    "area": int(m.sum()),
                    "segmentation": encode_rle(m),
                }
            )
        return out

    def to_json(self, normalize: bool = False, decimals: int = 5) -> str:
        """``summary()`` as JSON text; masks as COCO RLE (``pycocotools.mask.decode`` reads them back)."""
        return json.dumps(self.summary(normalize, decimals), indent=2)


def _pt(xy: Any) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))


def _label(img: np.ndarray, text: str, xy: tuple[float, float], col: tuple[int, int, int], lw: int) -> None:
    scale = lw / 3
    thick = max(lw - 1, 1)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = _pt(xy)
    above = y - th - 3 >= 0
    y2 = y - th - 3 if above else y + th + 3
    cv2.rectangle(img, (x, y), (x + tw, y2), col, -1, cv2.LINE_AA)
    cv2.putText(img, text, (x, y - 2 if above else y + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)
