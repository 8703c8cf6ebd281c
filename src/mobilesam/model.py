"""``SAM``: the one-line API. Sources and nested prompts in, one ``Results`` per image out.

    from mobilesam import SAM
    model = SAM("mobile_sam.pt")
    model.predict("image.jpg", points=[900, 370], labels=[1])

Pre-processing is the official one (``SamPredictor``), so each mask equals what ``SamPredictor`` gives
for the same prompt. Image embeddings are cached (bounded LRU, keyed by image content; on disk too with
``embedding_cache=DIR``), so prompting the same image again only runs the mask decoder. Several images
are read on a background thread while the encoder runs, ``batch`` per encoder call (:mod:`.pipeline`).
"""

from __future__ import annotations

import contextlib
import copy
import io as _io
import logging
import math
import os
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .backends import BACKENDS, ImageFeatures, create_predictor, get_backend, is_exported_model
from .backends.torch_fast import optimize_for_export
from .build import build_sam, detect_model_type
from .cache import DiskFeatureCache, FeatureCache, feature_key, image_digest
from .device import select_device
from .hub import family_for_size, family_of
from .masks import masks_to_boxes
from .modeling import Sam
from .pipeline import Embedded, embed_stream
from .predict_args import RunWriter, parse_options, save_dir_for, split_kwargs, with_outputs
from .prompts import check_inside_image, validate_boxes
from .results import Results
from .sources import LoadedImage, Source, iter_entries, resolve_sources

logger = logging.getLogger("mobilesam")

_POINT_FORMS = (
    "points=[x, y] (one object from one point); "
    "points=[[x1, y1], [x2, y2], ...] (one object per point); "
    "points=[[[x1, y1], [x2, y2]], ...] (one object per inner list, from several points)"
)


class _ModelInfoFields(NamedTuple):
    layers: int
    parameters: int
    gradients: int
    gflops: float  # encoder at 1024 x 1024 + mask decoder for one point prompt


class ModelInfo(_ModelInfoFields):
    """What ``SAM.info()`` returns: (layers, parameters, gradients, GFLOPs), the four values Ultralytics'
    ``info()`` returns, and ``size_mb`` (the fp32 state_dict saved with torch.save, in 10**6 bytes) as an
    attribute."""

    size_mb: float

    def __new__(cls, layers: int, parameters: int, gradients: int, gflops: float, size_mb: float = math.nan):
        info = super().__new__(cls, layers, parameters, gradients, gflops)
        info.size_mb = size_mb
        return info


@dataclass
class Prompts:
    """Prompts in original-image pixels, one entry per object (B objects)."""

    count: int
    points: list[np.ndarray] | None = None  # B arrays (n_i, 2)
    labels: list[np.ndarray] | None = None  # B arrays (n_i,), 1 = foreground, 0 = background
    bboxes: np.ndarray | None = None  # (B, 4) XYXY
    masks: np.ndarray | None = None  # (B, 1, 256, 256) low-res logits

    def as_dict(self) -> dict[str, Any]:
        """For ``Results.prompts``: stacked arrays when every object has the same number of points."""
        out: dict[str, Any] = {}
        if self.points is not None:
            same = len({len(p) for p in self.points}) <= 1
            out["points"] = np.stack(self.points) if same and self.points else list(self.points)
            out["labels"] = np.stack(self.labels) if same and self.labels else list(self.labels or [])
        if self.bboxes is not None:
            out["bboxes"] = self.bboxes.copy()
        return out


def _as_numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def _floats(x: Any, name: str) -> np.ndarray:
    """Numbers -> float64 array; raises on ragged nesting (handled by the caller) and non-numbers."""
    try:
        arr = np.asarray(_as_numpy(x), dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers, got {x!r:.100}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: all values must be finite, got NaN or inf")
    return arr


def _parse_ragged_points(points: Any) -> list[np.ndarray]:
    """Objects with different numbers of points: a list of (n_i, 2) lists."""
    if not isinstance(points, (list, tuple)):
        raise ValueError(f"points: expected numbers, got {type(points).__name__}; accepted forms: {_POINT_FORMS}")
    objs = []
    for i, obj in enumerate(points):
        try:
            o = _floats(obj, f"points[{i}]")
        except ValueError as e:
            raise ValueError(
                f"points[{i}]: expected a list of [x, y] points ({e}); accepted forms: {_POINT_FORMS}"
            ) from None
        if o.ndim != 2 or o.shape[1] != 2 or o.shape[0] == 0:
            raise ValueError(
                f"points[{i}]: expected shape (n, 2) for one object's points, got shape {o.shape}; "
                f"accepted forms: {_POINT_FORMS}"
            )
        objs.append(o)
    return objs


def _parse_points(points: Any) -> tuple[list[np.ndarray], str]:
    """Nested points -> one (n_i, 2) array per object, and the form: 'single', 'flat' or 'nested'."""
    try:
        arr = _floats(points, "points")
    except ValueError as e:
        if "finite" in str(e):
            raise
        arr = None
    if arr is None:
        return _parse_ragged_points(points), "nested"
    if arr.size == 0:
        return [], "flat"
    if arr.shape == (2,):
        return [arr[None]], "single"
    if arr.ndim == 2 and arr.shape[1] == 2:
        return [p[None] for p in arr], "flat"
    if arr.ndim == 3 and arr.shape[2] == 2 and arr.shape[1] > 0:
        return list(arr), "nested"
    raise ValueError(f"points: got shape {arr.shape}; accepted forms: {_POINT_FORMS}")


def _parse_labels(labels: Any, points: list[np.ndarray], form: str) -> list[np.ndarray]:
    counts = [len(p) for p in points]
    if labels is None:
        return [np.ones(n, np.int64) for n in counts]
    expected = {"single": "labels=[1]", "flat": f"labels of shape ({len(points)},), one per object",
                "nested": f"labels of shape ({len(points)}, n): one list per object, one label per point"}[form]
    try:
        arr = _floats(labels, "labels")
        per_obj = None
    except ValueError as e:
        if "finite" in str(e) or form != "nested" or not isinstance(labels, (list, tuple)):
            raise ValueError(f"labels: expected {expected}, got {labels!r}") from None
        per_obj = [_floats(lab, "labels").reshape(-1) for lab in labels]
        arr = None

    if per_obj is None:
        if form == "single" and arr.size == 1:
            per_obj = [arr.reshape(1)]
        elif form == "flat" and (arr.shape == (len(points),) or arr.shape == (len(points), 1) or (
                arr.ndim == 0 and len(points) == 1)):
            per_obj = [a.reshape(1) for a in arr.reshape(len(points), 1)]
        elif form == "nested" and arr.ndim == 2 and arr.shape[0] == len(points):
            per_obj = list(arr)
        elif form == "nested" and arr.ndim == 1 and len(points) == 1:
            per_obj = [arr]
        else:
            hint = ""
            if form == "flat" and arr.ndim == 2 and arr.shape[0] == 1 and arr.shape[1] == len(points):
                hint = (f"; points of shape ({len(points)}, 2) are {len(points)} objects with one point each; "
                        f"for one object from {len(points)} points nest them: points=[[[x1, y1], [x2, y2]]], "
                        "labels=[[1, 0]]")
            raise ValueError(f"labels: expected {expected}, got shape {arr.shape}{hint}")
    if len(per_obj) != len(points) or any(len(lab) != n for lab, n in zip(per_obj, counts)):
        raise ValueError(
            f"labels: expected one label per point ({counts} points per object), got "
            f"{[len(lab) for lab in per_obj]} labels per object"
        )
    for lab in per_obj:
        if not np.isin(lab, (0, 1)).all():
            raise ValueError(f"labels: expected 1 (foreground) or 0 (background), got {lab.tolist()}")
    return [lab.astype(np.int64) for lab in per_obj]


def _parse_masks(masks: Any) -> np.ndarray:
    arr = np.asarray(_as_numpy(masks), dtype=np.float32)
    if arr.shape == (256, 256):
        arr = arr[None]
    if arr.ndim == 3 and arr.shape[1:] == (256, 256):
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1:] != (1, 256, 256):
        raise ValueError(
            "masks: expected low-resolution logits of shape (256, 256), (B, 256, 256) or (B, 1, 256, 256) "
            f"(the low_res_logits of an earlier result), got shape {tuple(np.shape(masks))}"
        )
    if not np.isfinite(arr).all():
        raise ValueError("masks: all values must be finite, got NaN or inf")
    return arr


def parse_prompts(points: Any = None, labels: Any = None, bboxes: Any = None, masks: Any = None) -> Prompts | None:
    """Ultralytics-style nested prompts -> one entry per object; None when no prompt is given.

    ``points`` / ``labels`` follow ``_POINT_FORMS``; ``bboxes`` (4,) or (B, 4) XYXY; ``masks`` low-res
    logits. Points, boxes and masks given together pair up per object, so their counts must agree.
    An empty prompt array (``points=[]``, ``bboxes`` of shape (0, 4)) is an error: no prompt at all
    (all None) is what segments everything.
    """
    if points is None and bboxes is None and masks is None:
        if labels is not None:
            raise ValueError("labels: given without points; pass points=[x, y] with labels=[1]")
        return None
    counts: dict[str, int] = {}
    p = lab = box = msk = None
    if points is not None:
        p, form = _parse_points(points)
        if not p:
            raise _empty_prompt("points", points)
        lab = _parse_labels(labels, p, form)
        counts["points"] = len(p)
    elif labels is not None:
        raise ValueError("labels: given without points; pass points=[x, y] with labels=[1]")
    if bboxes is not None:
        arr = _floats(bboxes, "bboxes")
        if arr.size == 0:
            raise _empty_prompt("bboxes", bboxes)
        box = validate_boxes(arr, "bboxes")
        counts["bboxes"] = len(box)
    if masks is not None:
        if np.size(_as_numpy(masks)) == 0:
            raise _empty_prompt("masks", masks)
        msk = _parse_masks(masks)
        counts["masks"] = len(msk)
    if len(set(counts.values())) > 1:
        raise ValueError(
            f"prompts: points, bboxes and masks pair up per object, but they give different numbers of objects: "
            f"{counts}; for one object from several points nest them: points=[[[x1, y1], [x2, y2]]]"
        )
    return Prompts(next(iter(counts.values())), p, lab, box, msk)


def _empty_prompt(name: str, value: Any) -> ValueError:
    return ValueError(
        f"{name}: the prompt array is empty (shape {np.shape(_as_numpy(value))}), so there is no object to "
        f"segment; give at least one prompt, or leave out {name}= (and every other prompt) to segment everything"
    )


def _from_source(result: Results, item: LoadedImage) -> Results:
    """``result`` with where its image came from (a video's frame number and fps), for the run's files."""
    result.source_mode, result.frame, result.fps = item.mode, item.frame, item.fps
    return result


class SAM:
    """MobileSAM / SAM with the Ultralytics interface.

    Args:
        model: a checkpoint path (any name), a known weights name (``mobile_sam.pt``, ``sam_b.pt``, ...),
            a ``Sam`` module, or a folder written by ``mobilesam export`` (runs on the backend of its
            format: ONNX Runtime for ``onnx``, ExecuTorch for ``executorch``, LiteRT for ``tflite``).
        device: "cpu", "cuda", "cuda:1", "mps"; None picks CUDA, then MPS, then CPU.
        backend: "torch" (exact), "torch-bf16" (bf16 image encoder), "onnxruntime" or
            "onnxruntime-int8" (exported once into the cache; needs ``pip install "mobilesam[onnx]"``).
        cache_size: how many image embeddings to keep (LRU); each is 4 MB.
        half: the default of ``predict(half=...)``: float16 autocast, CUDA only (as Ultralytics'
            ``half`` override).
        embedding_cache: a folder that keeps image embeddings across sessions and processes (float16,
            keyed by image content, model weights, backend and precision; least recently used out beyond
            ``embedding_cache_bytes``): an image seen before costs no encoder pass.
    """

    task = "segment"

    def __init__(
        self,
        model: str | os.PathLike | Sam = "mobile_sam.pt",
        device: str | torch.device | None = None,
        backend: str = "torch",
        cache_size: int = 8,
        half: bool = False,
        embedding_cache: str | os.PathLike | None = None,
        embedding_cache_bytes: int | None = None,
    ) -> None:
        get_backend(backend)  # an unknown name fails here, before any file is read
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size: expected an int >= 0, got {cache_size!r}")
        if not isinstance(half, bool):
            raise TypeError(f"half: expected True or False, got {half!r}")
        self.half = half
        self.cache_size = cache_size
        disk = DiskFeatureCache.open(embedding_cache, embedding_cache_bytes)
        self._cache: FeatureCache[ImageFeatures] = FeatureCache(cache_size, disk=disk)
        self._info: ModelInfo | None = None
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of files skipped in the last run
        if is_exported_model(model):
            # An exported folder: no PyTorch model; the default backend becomes the one that runs it.
            if get_backend(backend).exported:
                self.backend = backend
            else:  # the backend of the format that wrote it (ONNX Runtime for ONNX and unknown folders)
                from .export.registry import backend_for_export

                self.backend = backend_for_export(model) or "onnxruntime"
            self.predictor = create_predictor(model, self.backend)
            self.model: Sam | None = None
            self.ckpt_path, self.model_type = os.fspath(model), self.predictor.model_type
            self._check_half(half)
            DiskFeatureCache.check_predictor(disk, self.predictor)
            return
        if isinstance(model, torch.nn.Module):
            family_of(model)  # a module of no registered family (Sam, Sam2, ...) fails here, naming them
            sam, self.ckpt_path = model, None
        elif isinstance(model, (str, os.PathLike)):
            sam, self.ckpt_path = build_sam(model, device="cpu"), os.fspath(model)
        else:
            raise TypeError(
                f"model: expected a checkpoint path or name, or a Sam / Sam2 module, got {type(model).__name__}"
            )
        self.model = sam.eval().to(select_device(device))
        self.model_type = detect_model_type(sam.state_dict())
        self.backend = backend
        self.predictor = create_predictor(self.model, backend)
        self._check_half(half)
        DiskFeatureCache.check_predictor(disk, self.predictor)

    def _check_half(self, half: bool) -> None:
        if half and self.device.type != "cuda":
            raise ValueError(
                f"half: float16 inference runs on CUDA only, and this model is on {self.device.type}; "
                "drop half=True, or pass device='cuda' on a machine with a GPU"
            )

    # --- device -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device if self.model is not None else self.predictor.device

    def _torch_model(self, what: str) -> Sam:
        if self.model is None:
            raise ValueError(f"{what} needs a PyTorch checkpoint; this SAM runs an exported ONNX folder ({self.ckpt_path})")
        return self.model

    def to(self, device: str | torch.device | None) -> SAM:
        self._torch_model("to()")
        dev = select_device(device)
        if dev != self.device:
            self.model.to(dev)
            self.predictor = create_predictor(self.model, self.backend)
            self.clear_cache()
        return self

    def clear_cache(self) -> None:
        """Forget the cached image embeddings."""
        self._cache.clear()

    # --- embedding cache ---------------------------------------------------------------------------
    def _feature_key(self, predictor: Any, cache: FeatureCache, rgb: np.ndarray, half: bool) -> Hashable:
        """The cache key of ``rgb``'s features: in memory only, this predictor's; with the disk tier, a
        name shared with other processes (model, backend, precision)."""
        if cache.disk is None:
            return image_digest(rgb), str(self.device), half
        # The same key as the other front ends give these features (serve, annotate, everything).
        return feature_key(image_digest(rgb), predictor.feature_identity(), *(["half"] if half else []))

    def _embedded(self, images: Iterator[LoadedImage], half: bool, batch: int | None) -> Iterator[Embedded]:
        """The features of each image: from the caches, or ``batch`` per encoder call, read ahead. The
        predictor and cache are taken now: keys are made on the reading thread, while ``_at_input_size``
        may have put the usual ones back."""
        predictor, cache = self.predictor, self._cache
        return embed_stream(predictor, images, lambda item: item.image, batch=batch or 1, cache=cache,
                            key_of=lambda rgb: self._feature_key(predictor, cache, rgb, half),
                            context=lambda: self._autocast(half))

    def _autocast(self, half: bool) -> contextlib.AbstractContextManager:
        # Half precision as autocast: fp16 matmuls and convolutions, fp32 weights and reductions.
        return torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext()

    # --- prediction -------------------------------------------------------------------------------
    def __call__(self, source: Source = None, stream: bool = False, **kwargs: Any):
        """Same as :meth:`predict`."""
        return self.predict(source, stream=stream, **kwargs)

    def predict(
        self,
        source: Source = None,
        stream: bool = False,
        bboxes: Any = None,
        points: Any = None,
        labels: Any = None,
        masks: Any = None,
        multimask_output: bool = False,
        conf: float | None = None,
        device: str | torch.device | None = None,
        half: bool | None = None,
        image_format: str = "BGR",
        verbose: bool = True,
        mode: str = "fast",
        strict: bool = False,
        batch: int | None = None,
        **everything_kwargs: Any,
    ) -> list[Results] | Iterator[Results]:
        """Segment the images of ``source``; one ``Results`` per image (a generator with ``stream=True``).

        Args:
            source: a path, folder, glob, http(s) URL, PIL image, numpy array (BGR, as ``cv2.imread``
                gives; pass ``image_format="RGB"`` otherwise) or a list of these; a video file gives one
                result per frame (pass ``stream=True`` for long ones), the prompts applied to every frame.
            points: ``[x, y]`` one object; ``[[x, y], ...]`` one object per point; ``[[[x, y], ...], ...]``
                one object per inner list. Pixels of the original image.
            labels: same nesting as ``points``; 1 = foreground, 0 = background; omitted = all 1.
            bboxes: ``[x1, y1, x2, y2]`` or (N, 4): one object per box (paired with points if both).
            masks: low-res logits (B, 256, 256) from an earlier result's ``low_res_logits``, to refine.
            multimask_output: three masks per prompt (masks 3i..3i+2 answer prompt i) instead of one.
            conf: opt-in filter: drop masks whose predicted IoU is below ``conf``. By default mask i
                answers prompt i, always.
            half: float16 autocast, CUDA only; None takes the ``half`` given to ``SAM(...)``.
            strict: points or boxes outside an image raise a ValueError; by default they log one warning
                per call (logger ``mobilesam``), however many images and prompts are outside.
            verbose: a progress bar over the images of a source of several, and over the grid points
                of segment-everything (stderr).
            batch: images per image-encoder call when ``source`` has several (default 1); the same masks
                as one at a time. Images are read on a background thread while the encoder runs.
            mode, everything_kwargs: with no prompt at all, every object is segmented by
                ``mobilesam.everything.SamAutomaticMaskGenerator(model, mode=mode, **everything_kwargs)``
                (``progress`` defaults to ``verbose``).
            Ultralytics' predict arguments (``mobilesam.predict_args``): ``save``, ``save_txt``,
                ``save_conf``, ``save_crop``, ``save_frames``, ``project``, ``name``, ``exist_ok`` (the run
                folder ``runs/segment/predict``, as Ultralytics), ``imgsz`` (encoder input size),
                ``retina_masks``, ``show``, ``show_boxes``, ``show_labels``, ``show_conf``, ``line_width``,
                ``vid_stride``, ``quantize``, and ``simplify`` (label polygons, pixels). The others (``augment``,
                ``iou``, ``classes``, ...) are refused with the reason.
        """
        ultralytics_kwargs, everything_kwargs = split_kwargs(everything_kwargs)
        options = parse_options(ultralytics_kwargs)  # Ultralytics' save=, imgsz=, project=, ... (predict_args)
        if half is None:
            half = options.half
        if device is not None:
            self.to(device)
        if half is None:
            half = self.half
        self._check_half(half)
        if conf is not None and not (isinstance(conf, (int, float)) and 0.0 <= conf <= 1.0):
            raise ValueError(f"conf: expected a number in [0, 1] or None, got {conf!r}")
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format: expected 'BGR' (as cv2.imread gives) or 'RGB', got {image_format!r}")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ValueError(f"batch: expected an int >= 1 (images per encoder call) or None, got {batch!r}")
        prompts = parse_prompts(points, labels, bboxes, masks)
        if prompts is not None and everything_kwargs:
            raise TypeError(
                f"predict() got unexpected keyword arguments {sorted(everything_kwargs)}; extra arguments go to "
                "the segment-everything generator, which runs only when no prompt is given"
            )
        if prompts is None and mode not in ("fast", "exact"):
            raise ValueError(f"mode: expected 'fast' or 'exact' (segment everything), got {mode!r}")
        entries = resolve_sources(source, options.vid_stride)
        self.skipped = []
        images = self._images(entries, image_format, verbose)
        if prompts is None:
            everything_kwargs = {"progress": verbose, **everything_kwargs}
        gen = self._run(images, prompts, multimask_output, conf, half, mode, everything_kwargs, strict, batch)
        if options.imgsz is not None and options.imgsz != self._native_imgsz():
            if prompts is not None and prompts.masks is not None:
                raise ValueError(f"imgsz: masks= (256 x 256 low-res logits) refine at the native input size "
                                 f"{self._native_imgsz()} only; leave out imgsz or masks")
            gen = self._at_input_size(gen, options.imgsz)
        if options.writes or verbose:
            inputs = {Path(e.obj).resolve() for e in entries if e.kind in ("file", "video")}
            gen = with_outputs(gen, RunWriter(options, save_dir_for(self, options), inputs, verbose))
        return gen if stream else list(gen)

    # --- Ultralytics' imgsz: the encoder at another input size (mobilesam.input_size) -------------------
    def _native_imgsz(self) -> int:
        return int(self.predictor.transform.target_length)

    def _at_input_size(self, gen: Iterator[Results], imgsz: int) -> Iterator[Results]:
        """``gen``'s results computed with the model at input size ``imgsz``: the resized predictor (and its
        own embedding cache) stand in for the usual ones while each result is computed, never in between."""
        from .input_size import resized_model
        from .transforms import ResizeLongestSide

        if self.model is None or self.backend not in ("torch", "torch-bf16"):
            raise ValueError(
                f"imgsz: another encoder input size needs a PyTorch model on the torch backend; this SAM runs "
                f"{self.backend!r} at {self._native_imgsz()}"
            )
        sized = getattr(self, "_sized", {})
        self._sized = sized
        key = (imgsz, str(self.device))  # after to(device), a new view: its buffers follow the model's
        if key not in sized:
            predictor = create_predictor(resized_model(self.model, imgsz), self.backend)
            predictor.transform = ResizeLongestSide(imgsz)
            sized[key] = (predictor, FeatureCache(self.cache_size))

        def swapped() -> Iterator[Results]:
            while True:
                saved = self.predictor, self._cache
                self.predictor, self._cache = sized[key]
                try:
                    result = next(gen, None)
                finally:
                    self.predictor, self._cache = saved
                if result is None:
                    return
                yield result

        return swapped()

    def _images(self, entries: list, image_format: str, verbose: bool) -> Iterator[LoadedImage]:
        """The images of ``entries``, with a bar over them all when there are several: a skipped file
        counts as done, so the bar ends at 100%."""
        bar = tqdm(total=len(entries), desc="mobilesam", unit="image") if len(entries) > 1 and verbose else None

        def skip(path: str, reason: str) -> None:
            self.skipped.append((path, reason))
            if bar is not None:
                bar.update()

        try:
            for item in iter_entries(entries, image_format, on_skip=skip):
                yield item
                if bar is not None:
                    bar.update()  # once the caller is done with the image
        finally:
            if bar is not None:
                bar.close()

    def _run(
        self,
        images: Iterator[LoadedImage],
        prompts: Prompts | None,
        multimask_output: bool,
        conf: float | None,
        half: bool,
        mode: str,
        everything_kwargs: dict[str, Any],
        strict: bool,
        batch: int | None = None,
    ) -> Iterator[Results]:
        generator = None
        warned = False  # one warning per call about prompts outside the images
        for emb in self._embedded(images, half, batch):
            item = emb.item
            if prompts is None:
                if generator is None:
                    generator = self._everything_generator(mode, everything_kwargs)
                yield _from_source(self._predict_everything(item, generator, half, emb), item)
            else:
                if strict or not warned:
                    points = np.concatenate(prompts.points) if prompts.points else None
                    warned = check_inside_image(item.image.shape[:2], points, prompts.bboxes, strict)
                yield _from_source(self._predict_prompts(item, prompts, multimask_output, conf, half, emb), item)

    def _predict_prompts(
        self, item: LoadedImage, prompts: Prompts, multimask_output: bool, conf: float | None, half: bool,
        emb: Embedded,
    ) -> Results:
        t0 = time.perf_counter()
        rgb = item.image
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        h, w = rgb.shape[:2]
        c = 3 if multimask_output else 1
        dev = self.device
        t1 = time.perf_counter()
        self.predictor.set_features(emb.features)
        masks = torch.empty((prompts.count, c, h, w), dtype=torch.bool, device=dev)
        scores = torch.empty((prompts.count, c), dtype=torch.float32, device=dev)
        side = self.predictor.transform.target_length // 4  # 256 at the native 1024; imgsz changes it
        low_res = torch.empty((prompts.count, c, side, side), dtype=torch.float32, device=dev)
        with self._autocast(half):
            for idx, m, s, lr in self._decode(prompts, multimask_output):
                masks[idx], scores[idx], low_res[idx] = m, s.float(), lr.float()
        t2 = time.perf_counter()
        masks, scores, low_res = masks.flatten(0, 1), scores.flatten(0, 1), low_res.flatten(0, 1)
        cls = torch.arange(prompts.count, device=dev).repeat_interleave(c).float()
        boxes = torch.cat([masks_to_boxes(masks).float(), scores[:, None], cls[:, None]], dim=1)
        if conf is not None:
            keep = scores >= conf
            masks, boxes, low_res = masks[keep], boxes[keep], low_res[keep]
        names = {i: str(i) for i in range(prompts.count)}
        t3 = time.perf_counter()
        # The encoder pass ran before (in a batch of images, this image's share of it).
        inference = t2 - t1 + emb.seconds
        speed = {"preprocess": (t1 - t0) * 1e3, "inference": inference * 1e3, "postprocess": (t3 - t2) * 1e3}
        return Results(bgr, item.path, names, boxes, masks, low_res, prompts.as_dict(), speed)

    def _decode(
        self, prompts: Prompts, multimask_output: bool
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batched decoding: one ``predict_torch`` call per number of points per object (one call usually)."""
        pred, dev = self.predictor, self.device
        size = pred.original_size
        groups: dict[int, list[int]] = {}
        for i in range(prompts.count):
            groups.setdefault(len(prompts.points[i]) if prompts.points is not None else 0, []).append(i)
        for idx in groups.values():
            coords_t = labels_t = boxes_t = masks_t = None
            if prompts.points is not None:
                coords = pred.transform.apply_coords(np.stack([prompts.points[i] for i in idx]), size)
                coords_t = torch.as_tensor(coords, dtype=torch.float, device=dev)
                labels_t = torch.as_tensor(np.stack([prompts.labels[i] for i in idx]), dtype=torch.int, device=dev)
            if prompts.bboxes is not None:
                boxes = pred.transform.apply_boxes(prompts.bboxes[idx], size)
                boxes_t = torch.as_tensor(boxes, dtype=torch.float, device=dev)
            if prompts.masks is not None:
                masks_t = torch.as_tensor(prompts.masks[idx], device=dev)
            m, s, lr = pred.predict_torch(coords_t, labels_t, boxes_t, masks_t, multimask_output=multimask_output)
            yield idx, m, s, lr

    def _everything_generator(self, mode: str, kwargs: dict[str, Any]) -> Any:
        try:
            from .everything import automatic_mask_generator
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.everything":
                raise
            raise RuntimeError(
                "segment everything (predict with no prompt) needs mobilesam.everything, which this "
                "installation lacks; pass points=, bboxes= or masks="
            ) from None
        # The generator of the model's family (SAM 2's has its own defaults and options).
        return automatic_mask_generator(self.predictor, mode=mode, **kwargs)

    def _predict_everything(self, item: LoadedImage, generator: Any, half: bool, emb: Embedded) -> Results:
        from .masks import decode_rle

        t0 = time.perf_counter() - emb.seconds
        rgb = item.image
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        h, w = rgb.shape[:2]
        with self._autocast(half):
            records = generator.generate(rgb, features=emb.features)
        t1 = time.perf_counter()
        records = sorted(records, key=lambda r: -int(r["area"]))
        segs = [r["segmentation"] for r in records]
        segs = [decode_rle(s) if isinstance(s, dict) else np.asarray(s, dtype=bool) for s in segs]
        masks = torch.as_tensor(np.stack(segs) if segs else np.zeros((0, h, w), bool))
        boxes = torch.zeros((len(records), 6))
        for i, r in enumerate(records):
            x, y, bw, bh = (float(v) for v in r["bbox"])
            boxes[i] = torch.tensor([x, y, x + bw, y + bh, float(r["predicted_iou"]), float(i)])
        t2 = time.perf_counter()
        speed = {"preprocess": 0.0, "inference": (t1 - t0) * 1e3, "postprocess": (t2 - t1) * 1e3}
        names = {i: str(i) for i in range(len(records))}
        return Results(bgr, item.path, names, boxes, masks, None, {}, speed)

    def export(self, format: str = "onnx", quantize: str | None = None, out: str | os.PathLike | None = None,
               **kwargs: Any) -> Path:
        """Export in a registered format (``mobilesam.export.available_export_formats()``; default ONNX:
        encoder + prompt decoder, optionally int8) into ``out``; returns the folder."""
        from .export import export_model, get_export_format

        entry = get_export_format(format)
        out = Path(out) if out else Path.cwd() / f"{Path(self.ckpt_path or 'mobilesam').stem}_{entry.folder_suffix}"
        if quantize is not None:
            kwargs["quantize"] = quantize
        if "model_type" in entry.options:
            kwargs.setdefault("model_type", self.model_type)
        export_model(self._torch_model("export()"), out, format, **kwargs)
        return out

    # --- summary ----------------------------------------------------------------------------------
    def info(self, detailed: bool = False, verbose: bool = True) -> ModelInfo:
        """Print (with ``verbose``) and return layers, parameters, gradients, GFLOPs at 1024 and size in MB.

        GFLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a meta-device copy (no
        compute): image encoder at 1024 x 1024 plus the mask decoder for one point prompt.
        """
        m = self._torch_model("info()")
        if self._info is None:
            layers = sum(1 for mod in m.modules() if not list(mod.children()))
            params = sum(p.numel() for p in m.parameters())
            grads = sum(p.numel() for p in m.parameters() if p.requires_grad)
            enc, dec = self._count_gflops()
            buf = _io.BytesIO()
            torch.save(m.state_dict(), buf)
            self._info = ModelInfo(layers, params, grads, enc + dec, buf.tell() / 1e6)
            self._gflops_parts = (enc, dec)
        info = self._info
        if verbose:
            print(
                f"{self.name} summary: {info.layers:,} layers, {info.parameters:,} parameters, "
                f"{info.gradients:,} gradients, {info.gflops:.1f} GFLOPs, {info.size_mb:.1f} MB"
            )
            if detailed:
                enc, dec = self._gflops_parts
                prompt, mask = ("prompt_encoder", "mask_decoder") if hasattr(m, "mask_decoder") else (
                    "sam_prompt_encoder", "sam_mask_decoder")  # SAM 2's names
                for part, gf in (("image_encoder", enc), (prompt, None), (mask, dec)):
                    n = sum(p.numel() for p in getattr(m, part).parameters())
                    extra = f"{gf:10.2f} GFLOPs" if gf is not None else ""
                    print(f"  {part:<15} {n:>12,} parameters {extra}")
        return info

    @property
    def name(self) -> str:
        if not self.model_type:
            return "SAM"
        family = family_of(self.model) if self.model is not None else family_for_size(self.model_type)
        return family.display_name(self.model_type)

    def _count_gflops(self) -> tuple[float, float]:
        """(image encoder, prompt encoder + mask decoder) GFLOPs, counted on a meta-device copy."""
        from torch.utils.flop_counter import FlopCounterMode

        try:
            # No parameter requires grad: FlopCounterMode's module tracker then hooks no autograd
            # (with grads, or under no_grad, it fails on meta tensors in some torch versions).
            # Counted on the decoder's re-associated attention (same values, fewer operations), as it runs.
            meta = optimize_for_export(copy.deepcopy(self.model).to("meta").requires_grad_(False))
            if hasattr(meta, "decode_prompts"):  # a family with several feature levels (SAM 2)
                return self._count_multi_level_gflops(meta)
            size = meta.image_encoder.img_size
            with FlopCounterMode(display=False) as enc_counter:
                emb = meta.image_encoder(torch.empty(1, 3, size, size, device="meta"))
            points = (torch.zeros(1, 1, 2, device="meta"), torch.ones(1, 1, dtype=torch.int, device="meta"))
            with FlopCounterMode(display=False) as dec_counter:
                sparse, dense = meta.prompt_encoder(points=points, boxes=None, masks=None)
                meta.mask_decoder(
                    image_embeddings=emb,
                    image_pe=meta.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )
        except Exception as e:  # noqa: BLE001 - a layer without a meta kernel: report, don't guess
            logger.warning("mobilesam: could not count FLOPs (%s: %s)", type(e).__name__, e)
            return math.nan, math.nan
        return enc_counter.get_total_flops() / 1e9, dec_counter.get_total_flops() / 1e9

    @staticmethod
    def _count_multi_level_gflops(meta: torch.nn.Module) -> tuple[float, float]:
        """(image features, prompt encoder + mask decoder for one point) GFLOPs of a meta-device model
        that has ``image_features`` and ``decode_prompts`` (SAM 2)."""
        from torch.utils.flop_counter import FlopCounterMode

        size = meta.image_size
        with FlopCounterMode(display=False) as enc_counter:
            features = meta.image_features(torch.empty(1, 3, size, size, device="meta"))
        coords, labels = torch.zeros(1, 1, 2, device="meta"), torch.ones(1, 1, dtype=torch.int, device="meta")
        with FlopCounterMode(display=False) as dec_counter:
            meta.decode_prompts(features, coords, labels, None, None, False)
        return enc_counter.get_total_flops() / 1e9, dec_counter.get_total_flops() / 1e9

    def __repr__(self) -> str:
        model = self.ckpt_path or self.model_type
        return f"SAM(model={model!r}, device={str(self.device)!r}, backend={self.backend!r})"


__all__ = ["BACKENDS", "SAM", "ModelInfo", "Prompts", "parse_prompts"]
