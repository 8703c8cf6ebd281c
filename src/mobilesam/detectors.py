"""Object detectors for auto-annotation, behind one small interface.

A detector turns an image (H, W, 3) uint8 RGB into :class:`Detections` (XYXY pixel boxes, class ids,
scores) and knows its class names. Implementations:

* :class:`UltralyticsDetector`: YOLO / RT-DETR weights (``yolo11x.pt``) via the optional, AGPL-licensed
  ``ultralytics`` package (``pip install 'mobilesam[annotate-yolo]'``), imported only when asked for.
  Ultralytics ``.pt`` weights are pickled Python objects, so loading one runs code from the file: only
  the official files of :data:`ULTRALYTICS_WEIGHTS` (checked by SHA-256) load without
  ``trust_weights=True``;
* :class:`TorchvisionDetector`: torchvision detection models by name (``fasterrcnn_resnet50_fpn_v2``, ...)
  with COCO class names, pretrained or from a local state_dict (``pip install 'mobilesam[annotate]'``);
* :class:`YoloLabelsDetector` / :class:`CocoBoxesDetector`: existing box labels (a folder of YOLO
  detection ``.txt`` files, or a COCO detection JSON), which turns a box-labelled dataset into a
  mask-labelled one;
* :class:`CallableDetector`: any Python callable ``image -> (boxes, class_ids, scores[, names])``.

:func:`make_detector` picks one from what the user gave; :func:`filter_detections` applies ``conf``,
``classes``, class-aware NMS at ``iou`` and ``max_det`` the same way for every model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .formats.classes import read_classes

logger = logging.getLogger(__name__)

# The 80 COCO classes in the order YOLO models and most datasets number them (class index 0..79).
COCO80_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# Their official COCO category ids (1..90 with gaps), which torchvision models predict as labels.
COCO80_TO_91 = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91),
)  # fmt: skip
COCO91_TO_80 = {cat: i for i, cat in enumerate(COCO80_TO_91)}

# torchvision detection models known by name (``det_model="fasterrcnn_resnet50_fpn_v2"``); any other
# torchvision detection builder works with the "torchvision:" prefix.
TORCHVISION_MODELS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
)

# What Ultralytics loads: weights and exported models (det_model="best.pt", "yolo11n.onnx", ...).
ULTRALYTICS_SUFFIXES = (".pt", ".yaml", ".yml", ".onnx", ".engine", ".torchscript", ".mlpackage", ".tflite", ".pb")
# Of those, the ones Ultralytics reads without unpickling Python objects (a model config, exported graphs);
# anything else (.pt, .pth, a bare name, a URL) goes through torch.load(weights_only=False).
ULTRALYTICS_NOT_PICKLED = (".yaml", ".yml", ".onnx", ".engine", ".torchscript", ".mlpackage", ".tflite", ".pb")

ULTRALYTICS_RELEASES = "https://github.com/ultralytics/assets/releases/download"
# Official Ultralytics weights that load without trust_weights: file name -> (release tag, SHA-256 of the
# file at ULTRALYTICS_RELEASES/TAG/NAME, SHA-256 of other official releases of the name). The hashes are
# those of the ultralytics/assets release files (v8.3.0 and v8.4.0 hold the same bytes; yolov8n.pt of
# v0.0.0 differs), each as pinned by several independent projects. Other names need trust_weights=True.
ULTRALYTICS_WEIGHTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "yolo11n.pt": ("v8.3.0", "0ebbc80d4a7680d14987a577cd21342b65ecfd94632bd9a8da63ae6417644ee1", ()),
    "yolo11s.pt": ("v8.3.0", "85a76fe86dd8afe384648546b56a7a78580c7cb7b404fc595f97969322d502d5", ()),
    "yolo11m.pt": ("v8.3.0", "d5ffc1a674953a08e11a8d21e022781b1b23a19b730afc309290bd9fb5305b95", ()),
    "yolo11l.pt": ("v8.3.0", "9ebd0e09d59811db4b1d61e2bc6730649608b1ac47f8dd01e2da6bca7c20023f", ()),
    "yolo11x.pt": ("v8.3.0", "7bc158aa95c0ebfdd87f70f01653c1131b93e92522dbe15c228bcd742e773a24", ()),
    "yolo11n-seg.pt": ("v8.3.0", "55ed65c56c91713d23e8402371c6c49a6fd84f257f7dce452e8d70e41dcbe152", ()),
    "yolo11s-seg.pt": ("v8.3.0", "1caa81c0195412efa411b632bcfb8c184939dddb6ae41f6a80c41b211ff257c3", ()),
    "yolo11m-seg.pt": ("v8.3.0", "eb9a06f63e2206c35d68d839b08c362429ebecf933ad54c1ad68b2fd001c17cf", ()),
    "yolo11l-seg.pt": ("v8.3.0", "cabe90049795dfc9a370b7934d6dec7f6b9e44a20e573b0ff81b7e205512c872", ()),
    "yolo11x-seg.pt": ("v8.3.0", "4e53a5f5fd3ee2ae3361c62169c6bb3ed4ae251dd0e57606e230955aa52d919c", ()),
    "yolov8n.pt": (
        "v8.3.0",
        "f59b3d833e2ff32e194b5bb8e08d211dc7c5bdf144b90d2c8412c47ccfc83b36",
        ("31e20dde3def09e2cf938c7be6fe23d9150bbbe503982af13345706515f2ef95",),  # the v0.0.0 release
    ),
    "yolov8s.pt": ("v8.3.0", "1f47a78bf100391c2a140b7ac73a1caae18c32779be7d310658112f7ac9aa78a", ()),
    "yolov8m.pt": ("v8.3.0", "5d4a90cdc7a21786cc59cd19778e9eafff836df9e2da32524737c7ee6efe4fe5", ()),
    "yolov8l.pt": ("v8.3.0", "64c9115303f6a25575f82200d1b22ec409fa6bd7d08d0313884fc20d919478cd", ()),
    "yolov8x.pt": ("v8.3.0", "3df4ada6b4dad6d657868f2fdf7faecfb34dcfccf3a25c4b82079064718524c8", ()),
    "yolov8n-seg.pt": ("v8.3.0", "a7cd8f929e1903d78a12a48efecab430209f18dc46cb96c3599a5980c63c423c", ()),
    "yolov8s-seg.pt": ("v8.3.0", "0bac0770b55e5eb5b76a61bc535673288dcec36c2bc0cd25ee0d584c632f3413", ()),
    "yolov8m-seg.pt": ("v8.3.0", "51fa7e5ef385efa6d5b1d8e31b73399be6ed5d7ca71bda4bd4b2794bb445c4f4", ()),
    "yolov8l-seg.pt": ("v8.3.0", "ca3ec94c445aeaf79c2b57982fb451060f18a7561e2c20b4d26bb9dc1fcabf93", ()),
    "yolov8x-seg.pt": ("v8.3.0", "c333d6a7aff884ec821050eacdab29871f3edd10d996cf48746a02f8e01f1b5d", ()),
}  # fmt: skip

# Boxes kept for NMS, best first (the NMS here holds an N x N IoU matrix: 5000 boxes take 100 MB).
MAX_NMS = 5000


class AnnotationInputError(ValueError):
    """One image's input is unusable (unreadable image, malformed label file): it is logged, counted as
    failed and skipped, and the run goes on."""


@dataclass
class Detections:
    """Detections on one image. boxes (N, 4) float32 XYXY pixels; classes (N,) int64; scores (N,) float32."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.classes = np.asarray(self.classes, np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, idx: np.ndarray) -> Detections:
        return Detections(self.boxes[idx], self.classes[idx], self.scores[idx])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))


class Detector:
    """Base class: ``detect(image, name) -> Detections`` plus class ``names`` {index: name}.

    ``image`` is (H, W, 3) uint8 RGB; ``name`` is the image's path relative to the data folder (POSIX),
    which label-file detectors use to find its boxes. ``is_model`` is True for detectors whose output
    ``conf``/``iou``/``max_det`` filter; box labels are kept whole (only ``classes`` and, where labels
    carry scores, ``conf`` apply).
    """

    names: dict[int, str]
    is_model: bool = True

    def __init__(self) -> None:
        self.names = {}

    def configure(
        self,
        *,
        conf: float,
        iou: float,
        imgsz: int,
        max_det: int,
        classes: Sequence[int] | None,
        device: torch.device | None = None,
    ) -> None:
        """Pass the run's thresholds and device to the underlying model (a detector built without a
        device takes the run's). No-op unless the model filters itself."""

    def detect(self, image: np.ndarray, name: str) -> Detections:
        raise NotImplementedError

    def category_id(self, cls: int) -> int:
        """COCO category id written for class index ``cls`` (default ``cls + 1``; COCO ids start at 1)."""
        return int(cls) + 1

    def image_id(self, name: str) -> int | None:
        """COCO image id to keep for this image (box labels from a COCO JSON keep theirs), else None."""
        return None

    def report(self) -> str | None:
        """A line for the end of the run (e.g. images without box labels), or None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ----------------------------------------------------------------------------------------------------
# Filtering shared by every model


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    from .everything.amg import nms  # the package's one greedy NMS (torchvision-exact)

    return nms(boxes, scores, iou_threshold)


def filter_detections(
    dets: Detections,
    *,
    conf: float,
    iou: float,
    max_det: int,
    classes: Sequence[int] | None,
    is_model: bool = True,
) -> Detections:
    """Keep scores >= ``conf`` and the ``classes`` asked for; for models also class-aware NMS at ``iou``
    (as Ultralytics, ``agnostic=False``) and the ``max_det`` best. Models' output is ordered by
    decreasing score; box labels keep their file order."""
    keep = dets.scores >= conf
    if classes is not None:
        keep &= np.isin(dets.classes, np.asarray(list(classes), np.int64))
    dets = dets.select(np.flatnonzero(keep))
    if not is_model or len(dets) == 0:
        return dets
    order = np.argsort(-dets.scores, kind="stable")[:MAX_NMS]
    dets = dets.select(order)
    boxes = torch.from_numpy(dets.boxes).double()
    # Class-aware NMS in one call: shift each class's boxes to its own region of the plane.
    offset = torch.from_numpy(dets.classes).double()[:, None] * (boxes.abs().max() + 1.0)
    kept = _nms(boxes + offset, torch.from_numpy(dets.scores), iou).numpy()
    return dets.select(np.sort(kept)[:max_det])  # order is by score already; sort keeps it


# ----------------------------------------------------------------------------------------------------
# Python callables


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected numbers, got {type(x).__name__} ({e})") from None


def _names_dict(names: Any, where: str) -> dict[int, str]:
    if names is None:
        return {}
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return {i: str(v) for i, v in enumerate(names)}
    raise TypeError(
        f"{where}: class names must be a dict {{id: name}} or a list indexed by id, got {type(names).__name__}"
    )


def detections_from_output(out: Any, where: str) -> tuple[Detections, dict[int, str]]:
    """Validate what a detector callable returned: ``Detections`` or ``(boxes, class_ids, scores[, names])``
    (numpy arrays, tensors or lists; boxes (N, 4) XYXY pixels)."""
    if isinstance(out, Detections):
        return out, {}
    if not isinstance(out, (tuple, list)) or len(out) not in (3, 4):
        raise TypeError(
            f"{where}: expected (boxes, class_ids, scores) or (boxes, class_ids, scores, names), "
            f"got {type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
        )
    boxes = _as_numpy(out[0], f"{where} boxes")
    cls = _as_numpy(out[1], f"{where} class_ids")
    scores = _as_numpy(out[2], f"{where} scores")
    n = boxes.shape[0] if boxes.ndim == 2 else (0 if boxes.size == 0 else -1)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where} boxes: expected shape (N, 4) as x1, y1, x2, y2 pixels, got shape {boxes.shape}")
    if cls.shape != (n,) or scores.shape != (n,):
        raise ValueError(
            f"{where}: expected class_ids and scores of shape ({n},), one per box, got {cls.shape} and {scores.shape}"
        )
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"{where}: boxes and scores must be finite, got NaN or inf")
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        bad = boxes[(boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])][0]
        raise ValueError(f"{where} boxes: expected XYXY with x1 <= x2 and y1 <= y2, got {bad.tolist()}")
    if n and ((cls < 0).any() or (cls != np.round(cls)).any()):
        bad = cls[(cls < 0) | (cls != np.round(cls))][:5]
        raise ValueError(f"{where} class_ids: expected non-negative integers, got {bad.tolist()}")
    names = _names_dict(out[3], f"{where} names") if len(out) == 4 else {}
    return Detections(boxes, cls, scores), names


class CallableDetector(Detector):
    """Wrap ``fn(image) -> (boxes, class_ids, scores[, names])``; ``image`` is (H, W, 3) uint8 RGB.

    ``names`` ({id: name} or a list indexed by id) comes from the argument, ``fn.names`` or the 4th
    returned item; classes without a name are named by their number.
    """

    def __init__(self, fn: Callable[[np.ndarray], Any], names: Any = None) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"det_model: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.names = _names_dict(names if names is not None else getattr(fn, "names", None), "names")

    def detect(self, image: np.ndarray, name: str) -> Detections:
        dets, names = detections_from_output(self.fn(image), f"det_model {getattr(self.fn, '__name__', 'callable')}()")
        self.names.update(names)
        return dets

    def __repr__(self) -> str:
        return f"CallableDetector({getattr(self.fn, '__name__', type(self.fn).__name__)})"


# ----------------------------------------------------------------------------------------------------
# Existing box labels


class YoloLabelsDetector(Detector):
    """Boxes from a folder of YOLO detection labels: ``LABELS/<image path relative to data>.txt`` (or
    ``LABELS/<stem>.txt``), lines ``class cx cy w h [conf]`` normalised to [0, 1]. Segmentation lines
    (``class x1 y1 x2 y2 ...``) give their polygon's box, so existing masks can be redone with SAM.

    Names come from ``names``, else ``LABELS/classes.txt``; a missing label file means no objects
    (a background image), as in YOLO datasets, and is counted.
    """

    is_model = False

    def __init__(self, labels_dir: str | os.PathLike, names: Any = None) -> None:
        super().__init__()
        self.labels_dir = Path(labels_dir)
        if not self.labels_dir.is_dir():
            raise FileNotFoundError(f"det_model: box-label folder '{self.labels_dir}' not found")
        classes_txt = self.labels_dir / "classes.txt"
        self.names = (
            _names_dict(names, "names")
            if names is not None
            else (read_classes(classes_txt) if classes_txt.is_file() else {})
        )
        self.missing = 0

    def label_file(self, name: str) -> Path | None:
        rel = Path(name).with_suffix(".txt")
        for cand in (self.labels_dir / rel, self.labels_dir / rel.name):
            if cand.is_file() and cand.name != "classes.txt":
                return cand
        return None

    def detect(self, image: np.ndarray, name: str) -> Detections:
        from .datasets import AnnotationError
        from .datasets.yolo import label_instances

        path = self.label_file(name)
        if path is None:
            self.missing += 1
            return Detections.empty()
        h, w = image.shape[:2]
        try:
            instances = label_instances(path)  # the dataset loader's reader: boxes, or segments' extents
        except AnnotationError as e:
            raise AnnotationInputError(f"box {e}") from None
        if not instances:
            return Detections.empty()
        b = np.clip(np.stack([i.xyxy(h, w) for i in instances]), 0, [w, h, w, h])
        scores = [1.0 if i.score is None else i.score for i in instances]
        return Detections(b, np.array([i.category for i in instances]), np.asarray(scores))

    def report(self) -> str | None:
        if self.missing:
            return (
                f"{self.missing} image(s) have no label file in '{self.labels_dir}': "
                "written as background (empty label files)"
            )
        return None

    def __repr__(self) -> str:
        return f"YoloLabelsDetector('{self.labels_dir}')"


class CocoBoxesDetector(Detector):
    """Boxes from a COCO detection JSON (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``),
    read by the dataset loader (:func:`mobilesam.datasets.load_coco`): a malformed file or annotation is an
    error naming the file and line, before any image is labelled.

    Images are matched by ``file_name`` (path relative to the data folder, else base name). Category ids,
    sorted, become class indices 0..K-1 (the order of ``classes.txt``); the COCO output keeps the
    original image and category ids. Crowd annotations (``iscrowd=1``) are skipped; an optional
    ``score`` per annotation is used for ``conf``.
    """

    is_model = False

    def __init__(self, json_path: str | os.PathLike) -> None:
        from .datasets import AnnotationError, load_coco

        super().__init__()
        self.json_path = Path(json_path)
        if not self.json_path.is_file():
            raise FileNotFoundError(f"det_model: COCO box JSON '{self.json_path}' not found")
        try:
            self.dataset = load_coco(self.json_path, check_images=False)
        except AnnotationError as e:
            raise ValueError(f"det_model: {e}") from None
        self.names = dict(self.dataset.names)
        self._entries = {e.image_id: e for e in self.dataset.images}
        by_base: dict[str, list[int]] = {}
        for e in self.dataset.images:
            by_base.setdefault(Path(e.file).name, []).append(e.image_id)
        self._by_file = {e.file: e.image_id for e in self.dataset.images}
        self._by_base = {k: v[0] for k, v in by_base.items() if len(v) == 1}
        self.missing = 0
        self.crowd = 0

    def image_id(self, name: str) -> int | None:
        return self._by_file.get(name, self._by_base.get(Path(name).name))

    def category_id(self, cls: int) -> int:
        return self.dataset.category_ids.get(int(cls), int(cls) + 1)

    def detect(self, image: np.ndarray, name: str) -> Detections:
        img_id = self.image_id(name)
        if img_id is None:
            self.missing += 1
            return Detections.empty()
        h, w = image.shape[:2]
        entry = self._entries[img_id]
        if entry.width is not None and entry.height is not None and (entry.width, entry.height) != (w, h):
            raise AnnotationInputError(
                f"box labels: '{self.json_path}' gives {name} a size of {entry.width}x{entry.height}, but the image "
                f"is {w}x{h} (EXIF rotation or a different file?); its boxes would land in the wrong place"
            )
        boxes, cls, scores = [], [], []
        for inst in entry.instances:
            if inst.iscrowd:
                self.crowd += 1
                continue
            if inst.box is None:
                raise AnnotationInputError(f"box labels {inst.where}: expected a 'bbox' [x, y, w, h]")
            boxes.append(inst.xyxy(h, w))
            cls.append(inst.category)
            scores.append(1.0 if inst.score is None else inst.score)
        if not boxes:
            return Detections.empty()
        b = np.clip(np.asarray(boxes), 0, [w, h, w, h])
        return Detections(b, np.asarray(cls), np.asarray(scores))

    def report(self) -> str | None:
        parts = []
        if self.missing:
            parts.append(
                f"{self.missing} image(s) are not in '{self.json_path}': written as background (empty label files)"
            )
        if self.crowd:
            parts.append(f"{self.crowd} crowd annotation(s) (iscrowd=1) skipped")
        return "; ".join(parts) or None

    def __repr__(self) -> str:
        return f"CocoBoxesDetector('{self.json_path}')"


# ----------------------------------------------------------------------------------------------------
# Models


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _pickle_refused(what: str, why: str = "") -> ValueError:
    return ValueError(
        f"det_model: {what} is a pickle of Python objects (Ultralytics weights are){why}: loading it runs code "
        "from the file. Pass trust_weights=True if you trust its source"
    )


def _check_official(path: Path, name: str) -> None:
    """Refuse ``path`` unless its SHA-256 is one of the official releases of ``name``."""
    tag, sha, older = ULTRALYTICS_WEIGHTS[name]
    url = f"{ULTRALYTICS_RELEASES}/{tag}/{name}"
    digest = _sha256(path)
    if digest not in (sha, *older):
        raise _pickle_refused(
            f"'{path}'",
            f", named like the official {name} but with SHA-256 {digest}, not the {sha} of {url}",
        )


def ultralytics_weights(weights: str | os.PathLike, trust_weights: bool = False) -> str:
    """What to hand to Ultralytics for ``weights``, once loading it is safe; reads no pickle itself.

    Model configs and exported models (:data:`ULTRALYTICS_NOT_PICKLED`) pass as they are. Anything else
    (``.pt`` weights, a URL) is a pickle of Python objects, which Ultralytics loads with
    ``torch.load(weights_only=False)``: it passes with ``trust_weights=True``, or when it is an official file
    of :data:`ULTRALYTICS_WEIGHTS` by its SHA-256. A bare official name that is not in the current folder
    is taken from (or downloaded into, checked) ``<cache_dir>/ultralytics/``.
    """
    spec = os.fspath(weights)
    path = Path(spec).expanduser()
    if trust_weights or path.suffix.lower() in ULTRALYTICS_NOT_PICKLED:
        return spec
    if "://" in spec:
        raise _pickle_refused(f"'{spec}'", " (downloaded from a URL)")
    name = path.name if path.suffix else f"{path.name}.pt"  # Ultralytics reads 'yolo11n' as yolo11n.pt
    known = name in ULTRALYTICS_WEIGHTS
    if path.is_file():
        if not known:
            raise _pickle_refused(f"'{spec}'")
        _check_official(path, name)
        return str(path)
    if path.exists():
        raise ValueError(f"det_model: '{spec}' is not a weights file")
    if Path(spec).parent != Path("."):
        raise FileNotFoundError(f"det_model: weights file '{spec}' not found")
    if known and Path(name).is_file():  # 'yolo11n' for the yolo11n.pt Ultralytics downloaded here earlier
        _check_official(Path(name), name)
        return name
    if not known:
        raise _pickle_refused(
            f"'{spec}'", ", not a file here nor one of the official weights mobilesam knows, which Ultralytics "
            "would download"
        )
    # Ultralytics would download an official name and load it unchecked: fetch it into the cache instead,
    # and check it before anything reads it.
    from .weights import cache_dir, download_file, is_offline

    cached = cache_dir() / "ultralytics" / name
    tag, sha, _ = ULTRALYTICS_WEIGHTS[name]
    url = f"{ULTRALYTICS_RELEASES}/{tag}/{name}"
    if not cached.is_file():
        if is_offline():
            raise ValueError(
                f"det_model: '{name}' is not in the current folder nor in {cached.parent}, and downloads are off "
                f"(MOBILESAM_OFFLINE): download {url} there (SHA-256 {sha})"
            )
        logger.info("downloading %s from %s to %s", name, url, cached)
        download_file(url, cached, sha)
    _check_official(cached, name)
    return str(cached)


def _has_ultralytics() -> bool:
    # find_spec locates the package without importing (running) any of it.
    if "ultralytics" in sys.modules:
        return sys.modules["ultralytics"] is not None
    try:
        return importlib.util.find_spec("ultralytics") is not None
    except (ImportError, ValueError):
        return False


class UltralyticsDetector(Detector):
    """Ultralytics YOLO (or RT-DETR) weights, e.g. ``yolo11x.pt``; needs the optional ``ultralytics`` package.

    ``.pt`` weights are pickled Python objects: they load only when official (by SHA-256, see
    :data:`ULTRALYTICS_WEIGHTS`) or with ``trust_weights=True``; see :func:`ultralytics_weights`.
    """

    def __init__(
        self,
        weights: str | os.PathLike = "yolo11x.pt",
        device: str | torch.device | None = None,
        trust_weights: bool = False,
    ) -> None:
        super().__init__()
        if not _has_ultralytics():
            raise ImportError(
                f"det_model={str(weights)!r} is an Ultralytics YOLO model and needs the optional 'ultralytics' "
                "package (AGPL-3.0), which is not installed. Install it with: pip install 'mobilesam[annotate-yolo]' "
                "(or pip install ultralytics). Without it, use a torchvision detector "
                "(det_model='fasterrcnn_resnet50_fpn_v2'), existing box labels (a folder of YOLO .txt files or "
                "a COCO JSON) or a Python callable."
            )
        source = ultralytics_weights(weights, trust_weights)  # before ultralytics is imported or reads a byte
        import ultralytics

        cls = ultralytics.RTDETR if "rtdetr" in Path(source).name.lower() else ultralytics.YOLO
        self.model = cls(source)
        self.device = device
        self.names = {int(k): str(v) for k, v in dict(self.model.names).items()}
        self._kwargs: dict[str, Any] = {}

    def configure(
        self, *, conf: float, iou: float, imgsz: int, max_det: int, classes: Sequence[int] | None, device: Any = None
    ) -> None:
        self._kwargs = dict(conf=conf, iou=iou, imgsz=imgsz, max_det=max_det, classes=classes)
        if self.device is None and device is not None:
            self.device = device

    def detect(self, image: np.ndarray, name: str) -> Detections:
        # Ultralytics reads numpy arrays as BGR (OpenCV order).
        bgr = np.ascontiguousarray(image[..., ::-1])
        dev = "" if self.device is None else str(self.device)
        r = self.model.predict(bgr, device=dev, verbose=False, **self._kwargs)[0]
        b = r.boxes
        return Detections(b.xyxy.cpu().numpy(), b.cls.cpu().numpy(), b.conf.cpu().numpy())

    def __repr__(self) -> str:
        return f"UltralyticsDetector({getattr(self.model, 'ckpt_path', None) or ''!r})"


class TorchvisionDetector(Detector):
    """A torchvision detection model by builder name, e.g. ``fasterrcnn_resnet50_fpn_v2``.

    ``weights``: ``"DEFAULT"`` (pretrained on COCO, downloaded by torchvision), ``None`` (random, for tests)
    or the path of a local state_dict (loaded with ``weights_only=True``). ``device``: None takes the run's.
    With the default ``num_classes=91`` labels are COCO category ids, mapped to the 80 YOLO COCO class
    indices (so ``classes=[0]`` means person, as for YOLO). A model fine-tuned on K classes: ``num_classes=K + 1``
    (torchvision's label 0 is background) and ``names`` for the K classes; class index = label - 1.

    ``imgsz`` sets the longest side the model sees (R-CNN, RetinaNet and FCOS resize to it; SSD models
    have a fixed input size); pretrained R-CNNs were trained at 800-1333, so ``imgsz=1333`` matches them.
    """

    def __init__(
        self,
        name: str,
        weights: str | os.PathLike | None = "DEFAULT",
        device: str | torch.device | None = None,
        num_classes: int = 91,
        names: Any = None,
    ) -> None:
        super().__init__()
        try:
            from torchvision.models import detection as tvd
        except ImportError:
            raise ImportError(
                f"det_model={name!r} is a torchvision detection model and needs torchvision: "
                "pip install 'mobilesam[annotate]' (or pip install torchvision)"
            ) from None
        available = tvd.__dict__
        if name not in available or not callable(available[name]) or name.startswith("_"):
            raise ValueError(
                f"det_model: {name!r} is not a torchvision detection model; known: {', '.join(TORCHVISION_MODELS)}"
            )
        self.name = name
        self.device = torch.device(device) if device else None
        self.coco = num_classes == 91 and names is None
        pretrained = isinstance(weights, str) and weights.upper() == "DEFAULT"
        try:
            if pretrained:
                model = available[name](weights="DEFAULT")
            else:
                model = available[name](weights=None, weights_backbone=None, num_classes=num_classes)
        except Exception as e:  # noqa: BLE001 - download or build failures become one clear message
            how = (
                "download its pretrained weights (no network?); pass weights=PATH to a local state_dict"
                if pretrained
                else "build it"
            )
            raise RuntimeError(
                f"det_model: cannot {how} for torchvision model {name!r} ({type(e).__name__}: {e})"
            ) from None
        if weights is not None and not pretrained:
            from .weights import load_state_dict

            sd = load_state_dict(weights)
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise ValueError(
                    f"det_model: state_dict '{weights}' does not fit torchvision {name!r} with num_classes="
                    f"{num_classes} (a fine-tuned model needs num_classes=K + 1): {str(e).splitlines()[0]}"
                ) from None
        self.model = model.eval().to(self.device or "cpu")
        if self.coco:
            self.names = dict(enumerate(COCO80_NAMES))
        else:
            self.names = _names_dict(names, "names") or {i: str(i) for i in range(num_classes - 1)}

    def configure(
        self, *, conf: float, iou: float, imgsz: int, max_det: int, classes: Sequence[int] | None, device: Any = None
    ) -> None:
        if self.device is None and device is not None:
            self.device = torch.device(device)
            self.model.to(self.device)
        # The model filters too: never stricter than the run's own filter_detections (which decides).
        keep = max_det if classes is None else max(max_det, 1000)
        holder = self.model.roi_heads if hasattr(self.model, "roi_heads") else self.model
        for attr, value in (("score_thresh", conf), ("nms_thresh", iou), ("detections_per_img", keep)):
            if hasattr(holder, attr):
                setattr(holder, attr, value)
        t = getattr(self.model, "transform", None)
        if t is not None and getattr(t, "fixed_size", None) is None and hasattr(t, "min_size"):
            t.min_size, t.max_size = (int(imgsz),), int(imgsz)

    @torch.no_grad()
    def detect(self, image: np.ndarray, name: str) -> Detections:
        h, w = image.shape[:2]
        t = getattr(self.model, "transform", None)
        if t is not None and getattr(t, "fixed_size", None) is None and hasattr(t, "min_size"):
            # The model rescales by this factor and floors the size: under 1 pixel is an error deep in torch.
            scale = min(t.min_size[-1] / min(h, w), t.max_size / max(h, w))
            if int(min(h, w) * scale) < 1:
                raise AnnotationInputError(
                    f"image of {w}x{h} pixels is too thin for torchvision {self.name!r}: scaled to a longest side "
                    f"of {t.max_size} it is under 1 pixel {'high' if h < w else 'wide'}"
                )
        x = torch.from_numpy(np.array(image, copy=True)).to(self.device or "cpu").permute(2, 0, 1).float() / 255.0
        out = self.model([x])[0]
        labels = out["labels"].cpu().numpy()
        if self.coco:
            cls = np.array([COCO91_TO_80.get(int(v), -1) for v in labels], np.int64)
        else:
            cls = labels.astype(np.int64) - 1
        ok = cls >= 0  # background / "N/A" labels (only untrained models give them) are not classes
        return Detections(out["boxes"].cpu().numpy()[ok], cls[ok], out["scores"].cpu().numpy()[ok])

    def category_id(self, cls: int) -> int:
        return COCO80_TO_91[int(cls)] if self.coco and 0 <= int(cls) < 80 else int(cls) + 1

    def __repr__(self) -> str:
        return f"TorchvisionDetector({self.name!r})"


# ----------------------------------------------------------------------------------------------------


def make_detector(
    det_model: Any, device: str | torch.device | None = None, *, trust_weights: bool = False
) -> Detector:
    """A :class:`Detector` from what the user gave.

    * a ``Detector``: as is; any other callable: :class:`CallableDetector`;
    * a folder: YOLO box labels; a ``.json`` file: COCO box labels;
    * a torchvision detection model name (``fasterrcnn_resnet50_fpn_v2``, or ``torchvision:NAME``): pretrained;
    * anything else (``yolo11x.pt``, ``runs/train/weights/best.pt``): Ultralytics weights, which load only
      when official (by SHA-256) or with ``trust_weights=True`` (they are pickles: loading runs their code).
    """
    if isinstance(det_model, Detector):
        return det_model
    if callable(det_model):
        return CallableDetector(det_model)
    if not isinstance(det_model, (str, os.PathLike)):
        raise TypeError(
            "det_model: expected a YOLO weights file ('yolo11x.pt'), a torchvision model name, a folder of "
            f"YOLO box labels, a COCO JSON, a Detector or a callable, got {type(det_model).__name__}"
        )
    spec = os.fspath(det_model)
    path = Path(spec).expanduser()
    if path.is_dir():
        return YoloLabelsDetector(path)
    if path.suffix.lower() == ".json":
        return CocoBoxesDetector(path)
    if spec.startswith("torchvision:"):
        return TorchvisionDetector(spec.split(":", 1)[1], device=device)
    if spec in TORCHVISION_MODELS:
        return TorchvisionDetector(spec, device=device)
    if path.suffix.lower() in ULTRALYTICS_SUFFIXES or path.name.lower().startswith(("yolo", "rtdetr")):
        return UltralyticsDetector(spec, device=device, trust_weights=trust_weights)
    raise ValueError(
        f"det_model: {spec!r} is not an existing folder of YOLO box labels, a COCO box .json, a torchvision model "
        f"name ({', '.join(TORCHVISION_MODELS)}) or Ultralytics weights (yolo11x.pt, path/to/best.pt)"
    )


__all__ = [
    "COCO80_NAMES",
    "COCO80_TO_91",
    "TORCHVISION_MODELS",
    "ULTRALYTICS_WEIGHTS",
    "AnnotationInputError",
    "CallableDetector",
    "CocoBoxesDetector",
    "Detections",
    "Detector",
    "TorchvisionDetector",
    "UltralyticsDetector",
    "YoloLabelsDetector",
    "filter_detections",
    "make_detector",
    "ultralytics_weights",
]
