"""``SamAutomaticMaskGenerator``: segment everything in an image by prompting SAM with a grid of points.

``mode="exact"`` reproduces Meta's generator decision for decision. ``mode="fast"`` gives records of the
same format for a fraction of the work (see the class docstring for what it does and may miss).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..backends import ImageFeatures, Predictor, create_predictor
from ..io import ImageLike, load_image
from ..masks import encode_rle, masks_to_boxes
from .amg import (
    area_from_rle,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_rle,
    nms,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)

logger = logging.getLogger("mobilesam")

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
MODES = ("exact", "fast")
# Fast mode keeps masks whose low-resolution stability is this close below the threshold, then decides
# at full resolution: low- and full-resolution stability scores differ by up to about this much.
FAST_STABILITY_MARGIN = 0.03
# Fast mode skips a grid point only inside a mask eroded by this many low-resolution cells (4 pixels
# each at 1024): points near an edge, where a neighbouring or nested object may start, are decoded.
FAST_COVER_ERODE = 1
# ... and only once two decoded points have given the same finest mask (IoU at 1/4 resolution).
FAST_CONFIRM_IOU = 0.9
# Seconds before the progress bar over the grid points appears: a small image is done before that.
PROGRESS_DELAY = 1.0


@dataclass
class FilterCounts:
    """What the filters of one ``generate`` call removed: each candidate mask (3 per decoded point) is
    counted at the first filter it fails; NMS duplicates are not counted."""

    points: int = 0
    candidates: int = 0
    below_iou: int = 0
    below_stability: int = 0
    near_crop_edge: int = 0
    best_iou: float = float("-inf")  # over all candidates
    best_stability: float = float("-inf")  # over the candidates that passed pred_iou_thresh

    def add_iou(self, iou: torch.Tensor, keep: torch.Tensor) -> None:
        self.candidates += iou.numel()
        if iou.numel():
            self.best_iou = max(self.best_iou, float(iou.max()))
        self.below_iou += int((~keep).sum())

    def add_stability(self, stability: torch.Tensor, keep: torch.Tensor) -> None:
        finite = stability[torch.isfinite(stability)]  # an empty mask scores NaN
        if finite.numel():
            self.best_stability = max(self.best_stability, float(finite.max()))
        self.below_stability += int((~keep).sum())

    def explain(self, pred_iou_thresh: float, stability_score_thresh: float) -> str:
        """Why no mask is left, one line: the count per filter and which threshold to lower."""
        parts = [f"{self.candidates} candidates from {self.points} points"]
        lower = []
        if self.below_iou:
            parts.append(f"{self.below_iou} below pred_iou_thresh={pred_iou_thresh:g} (best {self.best_iou:.3g})")
            lower.append("pred_iou_thresh")
        if self.below_stability:
            best = f" (best {self.best_stability:.3g})" if np.isfinite(self.best_stability) else ""
            parts.append(f"{self.below_stability} below stability_score_thresh={stability_score_thresh:g}{best}")
            lower.append("stability_score_thresh")
        if self.near_crop_edge:
            parts.append(f"{self.near_crop_edge} touching a crop edge")
        hint = f"; lower {' or '.join(lower)}" if lower else ""
        return f"0 masks: {', '.join(parts)}{hint}"


def _erode(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """Binary erosion of a (H, W) mask by a (2*cells+1) square: points near a mask's edge stay undecided."""
    if cells <= 0:
        return mask
    k = 2 * cells + 1
    return -F.max_pool2d(-mask[None, None].float(), k, stride=1, padding=cells)[0, 0] > 0.5


class _FinestMasks:
    """Fast mode's record of each decoded point's finest accepted mask, compared at 1/4 resolution."""

    def __init__(self) -> None:
        self.bank: torch.Tensor | None = None  # (capacity, cells) float 0/1
        self.n = 0
        self.pending: dict[int, torch.Tensor] = {}  # full masks not yet matched by another point's

    def add(self, mask: torch.Tensor, covered: torch.Tensor) -> None:
        """Record ``mask`` (H, W bool). If it matches (IoU >= FAST_CONFIRM_IOU) an earlier point's finest
        mask, mark both as covered (eroded), in place in ``covered``."""
        small = (F.avg_pool2d(mask[None, None].float(), 4, ceil_mode=True) > 0.5).flatten().float()
        if self.bank is None:
            self.bank = small.new_zeros(64, small.numel())
        match: list[int] = []
        if self.n:
            prev = self.bank[: self.n]
            inter = prev @ small
            iou = inter / (prev.sum(1) + small.sum() - inter).clamp(min=1)
            match = (iou >= FAST_CONFIRM_IOU).nonzero().flatten().tolist()
        if self.n == len(self.bank):
            self.bank = torch.cat([self.bank, torch.zeros_like(self.bank)])
        self.bank[self.n] = small
        self.n += 1
        if not match:
            self.pending[self.n - 1] = mask
            return
        covered |= _erode(mask, FAST_COVER_ERODE)
        for j in match:
            earlier = self.pending.pop(j, None)
            if earlier is not None:
                covered |= _erode(earlier, FAST_COVER_ERODE)


def coarse_to_fine_order(points: np.ndarray) -> np.ndarray:
    """Farthest-point order of (N, 2) points: a coarse cover of the image first, then finer and finer."""
    n = len(points)
    order = np.empty(n, dtype=np.int64)
    dist = np.full(n, np.inf)
    cur = int(np.argmin(((points - points.mean(0)) ** 2).sum(1)))
    for k in range(n):
        order[k] = cur
        dist = np.minimum(dist, ((points - points[cur]) ** 2).sum(1))
        dist[cur] = -1.0
        cur = int(np.argmax(dist))
    return order


class MaskData:
    """Per-mask columns (tensors, arrays or lists of equal length) filtered and concatenated together."""

    def __init__(self, **columns: Any) -> None:
        self.columns: dict[str, Any] = dict(columns)

    def __getitem__(self, key: str) -> Any:
        return self.columns[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.columns[key] = value

    def __delitem__(self, key: str) -> None:
        del self.columns[key]

    def __contains__(self, key: str) -> bool:
        return key in self.columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def filter(self, keep: torch.Tensor) -> None:
        """Keep rows selected by a boolean mask or an index tensor (in that order)."""
        keep = torch.as_tensor(keep)
        idx = keep.nonzero().flatten() if keep.dtype == torch.bool else keep
        idx_list = idx.cpu().tolist()
        for k, v in self.columns.items():
            if isinstance(v, torch.Tensor):
                self.columns[k] = v[idx.to(v.device)]
            elif isinstance(v, np.ndarray):
                self.columns[k] = v[np.asarray(idx_list, dtype=np.int64)]
            else:
                self.columns[k] = [v[i] for i in idx_list]

    def cat(self, other: MaskData) -> None:
        for k, v in other.columns.items():
            if k not in self.columns:
                self.columns[k] = v
            elif isinstance(v, torch.Tensor):
                self.columns[k] = torch.cat([self.columns[k], v.to(self.columns[k].device)])
            elif isinstance(v, np.ndarray):
                self.columns[k] = np.concatenate([self.columns[k], v])
            else:
                self.columns[k] = list(self.columns[k]) + list(v)


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from None
    ok = (low < v if low_open else low <= v) and v <= high and np.isfinite(v)
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name}: expected a value in {bracket}{low}, {high}], got {value}")
    return v


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def _check_point_grids(point_grids: Any, crop_n_layers: int) -> list[np.ndarray]:
    if not isinstance(point_grids, (list, tuple)):
        raise TypeError(
            f"point_grids: expected a list of (N, 2) arrays, one per crop layer, got {type(point_grids).__name__}"
        )
    if len(point_grids) < crop_n_layers + 1:
        raise ValueError(
            f"point_grids: expected one grid per crop layer ({crop_n_layers + 1} for crop_n_layers="
            f"{crop_n_layers}), got {len(point_grids)}"
        )
    grids = []
    for i, g in enumerate(point_grids):
        arr = np.asarray(g, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
            raise ValueError(f"point_grids[{i}]: expected a non-empty (N, 2) array of (x, y), got shape {arr.shape}")
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"point_grids[{i}]: coordinates must be normalised to [0, 1]")
        grids.append(arr)
    return grids


def check_options(**options: Any) -> dict[str, Any]:
    """Validate the generator's options (clear errors naming the option); returns them all normalised,
    options not given at their ``SamAutomaticMaskGenerator`` defaults, with ``point_grids`` built from
    ``points_per_side`` when that is given."""
    defaults = {
        name: param.default
        for name, param in inspect.signature(SamAutomaticMaskGenerator.__init__).parameters.items()
        if name not in ("self", "model", "backend", "progress")
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"unexpected option(s) {', '.join(unknown)}; the options are {', '.join(defaults)}")
    return _normalised_options(**{**defaults, **options})


def _normalised_options(
    *,
    points_per_side: int | None,
    points_per_batch: int,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    stability_score_offset: float,
    box_nms_thresh: float,
    crop_n_layers: int,
    crop_nms_thresh: float,
    crop_overlap_ratio: float,
    crop_n_points_downscale_factor: int,
    point_grids: list[np.ndarray] | None,
    min_mask_region_area: int,
    output_mode: str,
    mode: str,
) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"output_mode: expected one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}")
    if (points_per_side is None) == (point_grids is None):
        raise ValueError(
            "points_per_side, point_grids: give exactly one of them (point_grids needs points_per_side=None), "
            f"got points_per_side={points_per_side!r} and point_grids={'None' if point_grids is None else 'a list'}"
        )
    crop_n_layers = _check_int("crop_n_layers", crop_n_layers, 0)
    crop_n_points_downscale_factor = _check_int("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1)
    if points_per_side is not None:
        points_per_side = _check_int("points_per_side", points_per_side, 1)
        grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        if any(len(g) == 0 for g in grids):
            raise ValueError(
                f"points_per_side: {points_per_side} with crop_n_points_downscale_factor="
                f"{crop_n_points_downscale_factor} leaves no points in crop layer {crop_n_layers}"
            )
    else:
        grids = _check_point_grids(point_grids, crop_n_layers)
    if isinstance(min_mask_region_area, bool) or not isinstance(
        min_mask_region_area, (int, float, np.integer, np.floating)
    ) or not min_mask_region_area >= 0:
        raise ValueError(f"min_mask_region_area: expected a number of pixels >= 0, got {min_mask_region_area!r}")
    return dict(
        points_per_side=points_per_side,
        point_grids=grids,
        points_per_batch=_check_int("points_per_batch", points_per_batch, 1),
        pred_iou_thresh=_check_range("pred_iou_thresh", pred_iou_thresh, -np.inf, 1.0),
        stability_score_thresh=_check_range("stability_score_thresh", stability_score_thresh, -np.inf, 1.0),
        stability_score_offset=_check_range("stability_score_offset", stability_score_offset, 0.0, np.inf),
        box_nms_thresh=_check_range("box_nms_thresh", box_nms_thresh, 0.0, 1.0),
        crop_n_layers=crop_n_layers,
        crop_nms_thresh=_check_range("crop_nms_thresh", crop_nms_thresh, 0.0, 1.0),
        crop_overlap_ratio=_check_range("crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0),
        crop_n_points_downscale_factor=crop_n_points_downscale_factor,
        min_mask_region_area=min_mask_region_area,
        output_mode=output_mode,
        mode=mode,
    )


class SamAutomaticMaskGenerator:
    """Generates masks for a whole image from a grid of point prompts; a drop-in for Meta's class.

    Arguments are the official ones (``points_per_side`` points per side of a regular grid, or explicit
    normalised ``point_grids``, one per crop layer; ``pred_iou_thresh`` and ``stability_score_thresh``
    filter masks; ``box_nms_thresh`` removes duplicates; ``crop_n_layers`` re-runs on 2**i x 2**i
    crops; ``min_mask_region_area`` removes small islands and holes; ``output_mode`` is
    ``"binary_mask"``, ``"uncompressed_rle"`` or ``"coco_rle"``), plus ``backend``, ``mode`` and
    ``progress`` (a bar over the grid points on stderr, shown once an image takes over a second).

    When the filters leave no mask, ``generate`` logs why (logger ``mobilesam``, one warning with the
    count per filter); ``counts`` holds those counts for the last image.

    ``model`` is a ``Sam``, a checkpoint path or known weights name, an exported folder, or a predictor
    of any backend (then used as it is); otherwise the predictor is made with
    ``mobilesam.backends.create_predictor(model, backend)``. Both modes need only the predictor
    interface, so they run on every backend that decodes batches of prompts.

    ``mode``:

    - ``"exact"`` (default): the official algorithm. Every grid point is decoded, each of the 3
      multimask outputs is upsampled to the image size, filtered, and de-duplicated by box NMS.
    - ``"fast"``: the same filters, applied where they are cheap. Grid points are decoded
      coarse-to-fine (farthest-point order: a sparse cover of the image first) and a point is skipped
      when it lies inside (one low-resolution cell away from the edge of) a mask that two earlier
      points both returned as their finest accepted mask; predicted-IoU and stability filters, boxes and NMS run on
      the 256x256 low-resolution logits; only the masks that survive NMS are upsampled to the image
      size, where their stability score and box are recomputed and the thresholds applied again (a
      survivor that fails is dropped and NMS re-run, so a duplicate it suppressed can take its place).

    What ``"fast"`` may miss, compared to ``"exact"``: masks that only clicks inside an already
    confirmed mask would give -- a part nested in it, or on smooth gradients and textures, where the
    returned region depends on where the click lands, the variants of that region; duplicates whose
    box IoU is within a few pixels of ``box_nms_thresh`` (NMS runs on boxes of the 4x coarser masks);
    masks of a few pixels that exist only at full resolution; and, where several points give
    near-identical masks, another representative may be kept (other ``point_coords`` and scores).
    """

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        mode: str = "exact",
        backend: str = "torch",
        progress: bool = True,
    ) -> None:
        if not isinstance(progress, bool):
            raise TypeError(f"progress: expected True or False, got {progress!r}")
        self.progress = progress
        self.counts = FilterCounts()
        opts = check_options(
            **{k: v for k, v in locals().items() if k not in ("self", "model", "backend", "progress")}
        )
        self.point_grids: list[np.ndarray] = opts.pop("point_grids")
        opts.pop("points_per_side")
        for k, v in opts.items():
            setattr(self, k, v)
        if isinstance(model, Predictor):
            if backend != "torch" and backend != model.backend:
                raise ValueError(f"backend: {backend!r} was asked for, but model is a {model.backend!r} predictor")
            self.predictor = model
        else:
            self.predictor = create_predictor(model, backend)

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def generate(self, image: ImageLike, features: ImageFeatures | None = None) -> list[dict[str, Any]]:
        """Masks for an image (HxWx3 uint8 RGB array, as the official; a PIL image or path also works).

        ``features``: the image's features when they are at hand (from a cache, or a batch of images
        embedded together: :mod:`mobilesam.pipeline`); they replace the encoder pass of the whole image
        (crops of ``crop_n_layers`` are still embedded).

        Returns one record per mask: ``segmentation`` (HxW bool array, or an RLE dict per
        ``output_mode``), ``area`` (int), ``bbox`` (XYWH), ``predicted_iou``, ``point_coords``
        ([[x, y]]), ``stability_score`` and ``crop_box`` (XYWH).
        """
        image = load_image(image)
        if features is not None and tuple(features.original_size) != image.shape[:2]:
            raise ValueError(f"features: they are of an image of size {tuple(features.original_size)}, but the image "
                             f"is {image.shape[:2]}")
        self.counts = FilterCounts()
        data = self._generate_masks(image, features)
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        records = self._records(data)
        if not records:
            logger.warning("mobilesam: %s", self.counts.explain(self.pred_iou_thresh, self.stability_score_thresh))
        return records

    # ------------------------------------------------------------------ pipeline

    def _records(self, data: MaskData) -> list[dict[str, Any]]:
        rles = data["rles"]
        if self.output_mode == "coco_rle":
            segs: list[Any] = [encode_rle(rle_to_mask(r)) for r in rles]
        elif self.output_mode == "binary_mask":
            segs = [rle_to_mask(r) for r in rles]
        else:
            segs = rles
        boxes = box_xyxy_to_xywh(np.asarray(data["boxes"]))
        crops = box_xyxy_to_xywh(np.asarray(data["crop_boxes"]))
        return [
            {
                "segmentation": segs[i],
                "area": area_from_rle(rles[i]),
                "bbox": boxes[i].tolist(),
                "predicted_iou": float(data["iou_preds"][i]),
                "point_coords": [np.asarray(data["points"][i]).tolist()],
                "stability_score": float(data["stability_score"][i]),
                "crop_box": crops[i].tolist(),
            }
            for i in range(len(rles))
        ]

    def _generate_masks(self, image: np.ndarray, features: ImageFeatures | None = None) -> MaskData:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        data = MaskData()
        total = sum(len(self.point_grids[i]) for i in layer_idxs)
        # leave=False: under a bar over images (the CLI's, SAM.predict's) it goes when the image is done.
        with tqdm(total=total, desc="grid points", unit="point", leave=False, delay=PROGRESS_DELAY,
                  disable=not self.progress) as bar:
            for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
                whole = features if layer_idx == 0 else None  # layer 0 is the whole image
                data.cat(self._process_crop(image, crop_box, layer_idx, orig_size, bar, whole))
        if len(crop_boxes) > 1 and len(data):
            # Prefer masks from smaller crops.
            crop = data["crop_boxes"].float()
            scores = 1 / ((crop[:, 2] - crop[:, 0]) * (crop[:, 3] - crop[:, 1]))
            data.filter(nms(data["boxes"].float(), scores, self.crop_nms_thresh))
        if "rles" not in data:
            return self._empty()
        for k in ("boxes", "points", "iou_preds", "stability_score", "crop_boxes"):
            data[k] = data[k].cpu().numpy()
        return data

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], layer_idx: int, orig_size: tuple[int, ...], bar: tqdm,
        features: ImageFeatures | None = None,
    ) -> MaskData:
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1, :]
        crop_size = cropped.shape[:2]
        if features is not None:
            self.predictor.set_features(features)
        else:
            self.predictor.set_image(cropped)
        points = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]
        if self.mode == "fast":
            data = self._process_crop_fast(points, crop_size, crop_box, orig_size, bar)
        else:
            data = MaskData()
            for start in range(0, len(points), self.points_per_batch):
                batch = points[start : start + self.points_per_batch]
                data.cat(self._process_batch(batch, crop_size, crop_box, orig_size))
                bar.update(len(batch))
            if len(data):
                data.filter(nms(data["boxes"].float(), data["iou_preds"], self.box_nms_thresh))
        self.predictor.reset_image()
        if "rles" in data:
            data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
            data["points"] = uncrop_points(data["points"], crop_box)
            data["crop_boxes"] = torch.tensor([crop_box]).expand(len(data["rles"]), 4).clone()
        return data

    @staticmethod
    def _empty() -> MaskData:
        return MaskData(
            rles=[],
            boxes=np.zeros((0, 4), np.int64),
            points=np.zeros((0, 2)),
            iou_preds=np.zeros(0, np.float32),
            stability_score=np.zeros(0, np.float32),
            crop_boxes=np.zeros((0, 4), np.int64),
        )

    def _process_batch(
        self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int], orig_size: tuple[int, ...]
    ) -> MaskData:
        """The official per-batch step: decode, upsample all masks, filter, box, RLE."""
        orig_h, orig_w = orig_size
        pred = self.predictor
        in_points = torch.as_tensor(pred.transform.apply_coords(points, im_size), device=pred.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=pred.device)
        masks, iou_preds, _ = pred.predict_torch(
            in_points[:, None, :], in_labels[:, None], multimask_output=True, return_logits=True
        )
        data = MaskData(
            masks=masks.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=torch.as_tensor(points.repeat(masks.shape[1], axis=0)),
        )
        del masks
        self.counts.points += len(points)
        iou = data["iou_preds"]
        keep = iou > self.pred_iou_thresh
        self.counts.add_iou(iou, keep if self.pred_iou_thresh > 0.0 else torch.ones_like(keep))
        if self.pred_iou_thresh > 0.0:
            data.filter(keep)
        thr = self.predictor.mask_threshold
        data["stability_score"] = stability = calculate_stability_score(data["masks"], thr, self.stability_score_offset)
        keep = stability >= self.stability_score_thresh
        self.counts.add_stability(stability, keep if self.stability_score_thresh > 0.0 else torch.ones_like(keep))
        if self.stability_score_thresh > 0.0:
            data.filter(keep)
        data["masks"] = data["masks"] > thr
        data["boxes"] = masks_to_boxes(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            self.counts.near_crop_edge += int((~keep).sum())
            data.filter(keep)
        data["rles"] = mask_to_rle(uncrop_masks(data["masks"], crop_box, orig_h, orig_w))
        del data["masks"]
        return data

    def _process_crop_fast(
        self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int], orig_size: tuple[int, ...],
        bar: tqdm,
    ) -> MaskData:
        """Fast mode on one crop: coarse-to-fine points skipping covered ones, filters and NMS on the
        low-resolution logits, then full resolution for the NMS survivors only."""
        pred = self.predictor
        thr = pred.mask_threshold
        crop_h, crop_w = im_size
        in_h, in_w = pred.input_size
        in_points = pred.transform.apply_coords(points, im_size)
        cand_low, cand_iou, cand_pts, cand_stab = [], [], [], []
        covered: torch.Tensor | None = None
        remaining = list(coarse_to_fine_order(points / np.array([crop_w, crop_h])))
        scale = lh = lw = 0
        counts = self.counts
        while remaining:
            take: list[int] = []
            before = len(remaining)
            while remaining and len(take) < self.points_per_batch:
                i = remaining.pop(0)
                if covered is not None:
                    cx = min(int(in_points[i, 0] / scale), lw - 1)
                    cy = min(int(in_points[i, 1] / scale), lh - 1)
                    if covered[cy, cx]:
                        continue  # inside a mask already accepted as some point's finest mask
                take.append(i)
            bar.update(before - len(remaining))  # the skipped points are done too
            if not take:
                break
            counts.points += len(take)
            coords = torch.as_tensor(in_points[take], dtype=torch.float, device=pred.device)[:, None, :]
            low, iou = self._decode_low(coords)
            if covered is None:
                scale = pred.transform.target_length / low.shape[-1]
                lh, lw = int(np.ceil(in_h / scale)), int(np.ceil(in_w / scale))
                covered = torch.zeros(lh, lw, dtype=torch.bool, device=low.device)
                finest = _FinestMasks()
            nb, nm = iou.shape
            # One extra row and column: bilinear upsampling reads them at the image's bottom/right edge.
            low = low[:, :, : lh + 1, : lw + 1].flatten(0, 1)
            iou = iou.flatten()
            pt_idx = torch.arange(nb, device=low.device).repeat_interleave(nm)
            inner = low[:, :lh, :lw]
            # Scored with the extra row and column: upsampled, they reach into the image's last pixels.
            stab = calculate_stability_score(low, thr, self.stability_score_offset)
            keep = torch.ones_like(iou, dtype=torch.bool)
            if self.pred_iou_thresh > 0.0:
                keep &= iou > self.pred_iou_thresh
            counts.add_iou(iou, keep)
            strict = keep.clone()
            if self.stability_score_thresh > 0.0:
                # A margin at low resolution; the exact threshold is applied at full resolution.
                unstable = keep & ~(stab >= self.stability_score_thresh - FAST_STABILITY_MARGIN)  # NaN too
                counts.add_stability(stab[unstable], torch.zeros_like(stab[unstable], dtype=torch.bool))
                keep &= ~unstable
                strict &= stab >= self.stability_score_thresh
            # Each point's finest confident mask; once two points give the same one, the points inside
            # it are taken as answered (the model has shown it returns that mask wherever it is clicked).
            areas = (inner > thr).sum((-1, -2))
            big = torch.iinfo(areas.dtype).max
            for p in range(nb):
                rows = (pt_idx == p) & strict
                if rows.any():
                    finest.add(inner[torch.where(rows, areas, areas.new_tensor(big)).argmin()] > thr, covered)
            cand_low.append(low[keep])
            cand_iou.append(iou[keep])
            cand_stab.append(stab[keep])
            cand_pts.append(torch.as_tensor(points[take], dtype=torch.float64)[pt_idx[keep].cpu()])
        if not cand_low:
            return MaskData()
        low = torch.cat(cand_low)
        data = MaskData(iou_preds=torch.cat(cand_iou), points=torch.cat(cand_pts), stability_score=torch.cat(cand_stab))
        orig_h, orig_w = orig_size
        crop_frame = [0, 0, orig_w, orig_h]
        # Boxes from the low-resolution masks, in crop pixels, for the edge filter and NMS.
        cells = masks_to_boxes(low > thr).float()
        sx, sy = scale * crop_w / in_w, scale * crop_h / in_h
        boxes = torch.stack(
            [cells[:, 0] * sx, cells[:, 1] * sy, (cells[:, 2] + 1) * sx - 1, (cells[:, 3] + 1) * sy - 1], dim=1
        )
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([crop_w - 1, crop_h - 1] * 2))
        candidates = (~is_box_near_crop_edge(boxes, crop_box, crop_frame)).nonzero().flatten()
        counts.near_crop_edge += len(low) - len(candidates)
        # Exact mode filters at full resolution and then runs NMS; here NMS runs first, on the cheap
        # low-resolution boxes, and only its winners are upsampled and checked. A winner that fails
        # the full-resolution check leaves the candidates and NMS is re-run, so a duplicate it had
        # suppressed can take its place, as it would have in exact mode.
        iou_preds = data["iou_preds"]
        checked: dict[int, tuple[torch.Tensor, float]] = {}  # candidate -> (full mask, stability)
        rejected = torch.zeros(len(low), dtype=torch.bool, device=low.device)
        while True:
            alive = candidates[~rejected[candidates]]
            winners = alive[nms(boxes[alive], iou_preds[alive], self.box_nms_thresh)].tolist()
            new = [i for i in winners if i not in checked]
            if not new:
                break
            for start in range(0, len(new), self.points_per_batch):
                chunk = new[start : start + self.points_per_batch]
                logits = self._upsample_low(low[chunk], scale, im_size)
                stability = calculate_stability_score(logits, thr, self.stability_score_offset)
                masks = logits > thr
                near_edge = is_box_near_crop_edge(masks_to_boxes(masks), crop_box, crop_frame)
                # An empty mask has a NaN stability, which fails ">=" here as in the official filter.
                ok = ~near_edge
                counts.near_crop_edge += int(near_edge.sum())
                if self.stability_score_thresh > 0.0:
                    stable = stability >= self.stability_score_thresh
                    counts.add_stability(stability[ok], stable[ok])
                    ok &= stable
                for k, i in enumerate(chunk):
                    if not ok[k]:
                        rejected[i] = True
                    else:
                        checked[i] = (masks[k], float(stability[k]))
        if not winners:
            return MaskData()
        data.filter(torch.as_tensor(winners, dtype=torch.long))
        masks = torch.stack([checked[i][0] for i in winners])
        data["stability_score"] = torch.tensor([checked[i][1] for i in winners])
        data["boxes"] = masks_to_boxes(masks)
        data["rles"] = mask_to_rle(uncrop_masks(masks, crop_box, orig_h, orig_w))
        return data

    def _decode_low(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits (N, 3, 256, 256) and predicted IoUs (N, 3) of single positive points
        (N, 1, 2) in the input frame, decoded ``max_batch`` points at a time, as the predictor does: the
        decoder's activations grow with the batch, its work per point does not."""
        pred = self.predictor
        lows, ious = [], []
        for start in range(0, len(coords), pred.max_batch):
            chunk = coords[start : start + pred.max_batch]
            labels = torch.ones(len(chunk), 1, dtype=torch.int, device=chunk.device)
            low, iou = pred.decode_low_res(chunk, labels, None, None, multimask_output=True)
            lows.append(low)
            ious.append(iou)
        return torch.cat(lows), torch.cat(ious)

    def _upsample_low(self, low: torch.Tensor, scale: float, im_size: tuple[int, ...]) -> torch.Tensor:
        """Low-resolution logits (N, h, w), cropped to the image, upsampled to the crop's size exactly as
        the official code upsamples the full 256x256 logits: (N, H, W)."""
        side = self.predictor.transform.target_length // int(scale)
        full = low.new_zeros(len(low), side, side)
        full[:, : low.shape[1], : low.shape[2]] = low
        assert tuple(im_size) == tuple(self.predictor.original_size)  # the crop is the predictor's image
        return self.predictor.postprocess_masks(full[:, None])[:, 0]

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: float, nms_thresh: float) -> MaskData:
        """Fill small holes and remove small islands of every mask, then re-run box NMS preferring
        masks that needed no change. Edits ``mask_data`` in place."""
        if len(mask_data["rles"]) == 0:
            return mask_data
        new_masks, scores = [], []
        for rle in mask_data["rles"]:
            mask = rle_to_mask(rle)
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(torch.as_tensor(mask))
            scores.append(float(not (changed_holes or changed_islands)))
        masks = torch.stack(new_masks)
        boxes = masks_to_boxes(masks)
        keep = nms(boxes.float(), torch.as_tensor(scores), nms_thresh)
        boxes_np = np.asarray(mask_data["boxes"])
        for i in keep.tolist():
            if scores[i] == 0.0:
                mask_data["rles"][i] = mask_to_rle(masks[i][None])[0]
                boxes_np[i] = boxes[i].numpy()
        mask_data["boxes"] = boxes_np
        mask_data.filter(keep)
        return mask_data
