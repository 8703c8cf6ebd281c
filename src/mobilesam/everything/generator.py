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
from tqdm import tqdm

from ..backends import ImageFeatures, Predictor, create_predictor
from ..io import ImageLike, load_image
from ..masks import encode_rle, masks_to_boxes
from .amg import (
    area_from_rle,
    box_iou,
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
from .box_bounds import box_iou_bounds, low_res_box_bounds
from .fast_trace import FastTrace
from .grid_refinement import Answers, GridRefinement, lattice_side

logger = logging.getLogger("mobilesam")

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
MODES = ("exact", "fast")
# Fast mode keeps masks whose low-resolution stability is this close below the threshold, then decides
# at full resolution: low- and full-resolution stability scores differ by up to about this much.
FAST_STABILITY_MARGIN = 0.03
# Fast mode skips a grid point only when the points around it gave the same three masks (IoU at 1/4
# resolution of at least this, see grid_refinement.Answers) ...
FAST_AGREE_IOU = 0.9
# ... and it lies inside their smallest mask eroded by this many low-resolution cells (4 pixels each at
# 1024): a point near an edge, where a neighbouring or nested object may start, is decoded.
FAST_COVER_ERODE = 1
# False: fast mode decodes every grid point (to measure what the skipping saves and costs).
FAST_SKIP = True
# True: neighbours agree when their *accepted* masks agree (and a point lies inside their smallest accepted
# mask), so rejected outputs that differ do not force a decode: fewer points decoded, more risk of a
# miss. False (default): all three outputs must agree, so a skipped point would have given the same
# candidates.
FAST_ACCEPTED_ONLY = False
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
    - ``"fast"``: the same filters and the same NMS, on fewer grid points and cheaper masks.

      * Grid points are decoded coarse to fine on nested sub-lattices of the grid (about 5 x 5 points
        first, then every 4th, 2nd and every point): a point is skipped only when the 2 or 4 points
        around it on the coarser lattice gave the same three masks with the same filter decisions and it
        lies inside (one low-resolution cell away from the edge of) their smallest mask; its answer is
        then taken to be theirs (``grid_refinement``). Where answers change from point to point -- object
        edges, textures, nested parts, small objects -- every point is decoded.
      * The decoder scores a point before upscaling its masks: a point whose three predicted IoUs all
        fail ``pred_iou_thresh`` costs the transformer only (about 60% of a decode on CPU), where the
        backend supports it (``decode_low_res_above``; the torch backend does).
      * The stability filter runs on the 256x256 low-resolution logits with a margin
        (``FAST_STABILITY_MARGIN``); the exact filter is applied at full resolution.
      * NMS decides as exact mode's, in its order (predicted IoU, then grid order), on boxes bounded from
        the low-resolution masks (``box_bounds``): a candidate is upsampled to the image size only when it
        would be kept or when the bounds cannot tell whether a kept mask suppresses it, and one that fails
        the full-resolution stability or crop-edge filter suppresses nothing, as in exact mode.

      With skipping off (``generator.FAST_SKIP = False``) fast mode keeps exactly exact mode's masks
      (tested), unless a mask's stability is more than the margin lower at low resolution than at full.
      What skipping may still miss: the answer of a point whose neighbours all agree but which differs
      itself (a detail smaller than the grid spacing inside a region whose mask covers it); where several
      points give near-identical masks, another representative may be kept (other ``point_coords`` and
      scores). ``trace = FastTrace()`` records every decision for one image (``fast_trace``).
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
        # A FastTrace here records fast mode's decisions for the next generate() call (for analysis).
        self.trace: FastTrace | None = None

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
        """Fast mode on one crop: the grid decoded coarse to fine, skipping the points whose neighbours
        all gave the same answer; filters at low resolution; NMS deciding as the official one does, with
        full resolution computed only where the low-resolution bounds leave a decision open."""
        cand = self._fast_candidates(points, im_size, crop_box, bar)
        if cand is None:
            return MaskData()
        return self._fast_nms(cand, points, im_size, crop_box, orig_size)

    def _fast_candidates(
        self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int], bar: tqdm
    ) -> dict[str, Any] | None:
        """Decode the crop's grid points coarse to fine (``GridRefinement``), skipping a point when its
        neighbours agree (``Answers.agreed``); every output that passes the predicted-IoU filter and the
        low-resolution stability filter (less ``FAST_STABILITY_MARGIN``) is a candidate. Returns the
        candidates' low-resolution logits (M, lh + 1, lw + 1), predicted IoUs, low-resolution stability,
        (point, output) sources and the low-resolution frame, or None when no point was decoded."""
        pred = self.predictor
        thr = pred.mask_threshold
        crop_h, crop_w = im_size
        in_h, in_w = pred.input_size
        in_points = pred.transform.apply_coords(points, im_size)
        n = lattice_side(points / np.array([crop_w, crop_h])) if FAST_SKIP else None
        if n is not None:
            refinement = GridRefinement(n)
            levels = refinement.levels()
        else:  # explicit point grids, or skipping switched off: every point, in order
            refinement, levels = None, [list(range(len(points)))]
        trace = self.trace
        if trace is not None:
            trace.start_crop(crop_box, points)
        answers = Answers(len(points), FAST_AGREE_IOU, FAST_COVER_ERODE, FAST_ACCEPTED_ONLY)
        counts = self.counts
        lows, ious, stabs, sources = [], [], [], []
        scale = lh = lw = 0
        cells = None
        for level in levels:
            todo = []
            for i in level:
                src = answers.agreed(i, refinement.corners(i)) if refinement is not None else None
                if src is None:
                    todo.append(i)
                else:
                    answers.source[i] = src
                    if trace is not None:
                        trace.crop.skipped.append(i)
            bar.update(len(level) - len(todo))  # the skipped points are done too
            for start in range(0, len(todo), self.points_per_batch):
                take = todo[start : start + self.points_per_batch]
                counts.points += len(take)
                coords = torch.as_tensor(in_points[take], dtype=torch.float, device=pred.device)[:, None, :]
                low, iou = self._decode_low(coords)
                if cells is None:
                    scale = pred.transform.target_length / low.shape[-1]
                    lh, lw = int(np.ceil(in_h / scale)), int(np.ceil(in_w / scale))
                    cells = np.minimum((in_points[:, ::-1] / scale).astype(np.int64), [lh - 1, lw - 1])
                nb, nm = iou.shape
                # One extra row and column: bilinear upsampling reads them at the image's bottom/right edge.
                low = low[:, :, : lh + 1, : lw + 1]
                # Scored with the extra row and column: upsampled, they reach into the image's last pixels.
                stab = calculate_stability_score(low, thr, self.stability_score_offset)
                keep = torch.ones_like(iou, dtype=torch.bool)
                if self.pred_iou_thresh > 0.0:
                    keep &= iou > self.pred_iou_thresh
                counts.add_iou(iou.flatten(), keep.flatten())
                passed_iou = keep.clone()
                strict = keep.clone()
                if self.stability_score_thresh > 0.0:
                    # A margin at low resolution; the exact threshold is applied at full resolution.
                    unstable = keep & ~(stab >= self.stability_score_thresh - FAST_STABILITY_MARGIN)  # NaN too
                    counts.add_stability(stab[unstable], torch.zeros_like(stab[unstable], dtype=torch.bool))
                    keep &= ~unstable
                    strict &= stab >= self.stability_score_thresh
                answers.record(take, low[:, :, :lh, :lw] > thr, strict, cells)
                if trace is not None:
                    trace.batch(take, iou, stab, passed_iou, keep)
                rows = keep.flatten().nonzero().flatten()
                lows.append(low.flatten(0, 1)[rows])
                ious.append(iou.flatten()[rows])
                stabs.append(stab.flatten()[rows])
                sources += [(take[r // nm], r % nm) for r in rows.tolist()]
                bar.update(len(take))
        if not lows:
            return None
        return dict(low=torch.cat(lows), iou=torch.cat(ious), stability=torch.cat(stabs), sources=sources,
                    scale=scale)

    def _fast_nms(
        self, cand: dict[str, Any], points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int],
        orig_size: tuple[int, ...],
    ) -> MaskData:
        """Exact mode's greedy NMS over the candidates, decided on low-resolution box bounds where they
        settle it.

        Exact mode upsamples every candidate, drops those that fail the stability or crop-edge filter at
        full resolution, and runs NMS on the boxes of the rest. Here each candidate's full-resolution box
        is bounded from its low-resolution mask (``low_res_box_bounds``); candidates are visited in
        exact mode's order (predicted IoU, then grid order), and one is upsampled only when it would be
        kept or when the bounds cannot tell whether a kept mask suppresses it. A candidate that fails at
        full resolution suppresses nothing, as in exact mode."""
        pred = self.predictor
        thr = pred.mask_threshold
        low, iou_preds, sources, scale = cand["low"], cand["iou"], cand["sources"], cand["scale"]
        crop_h, crop_w = im_size
        in_h, in_w = pred.input_size
        orig_h, orig_w = orig_size
        crop_frame = [0, 0, orig_w, orig_h]
        outer, inner = low_res_box_bounds(low > thr, scale * crop_w / in_w, scale * crop_h / in_h, crop_w, crop_h)
        # Exact mode's NMS order: predicted IoU, ties in grid order (its candidates come point by point).
        src = torch.as_tensor(sources, dtype=torch.float64).reshape(-1, 2)
        order = np.lexsort((src[:, 1].numpy(), src[:, 0].numpy(), -iou_preds.double().cpu().numpy()))
        t = self.box_nms_thresh
        counts = self.counts
        kept: list[int] = []
        kept_boxes = torch.zeros(0, 4)
        masks: list[torch.Tensor] = []
        stability: list[float] = []
        fates: dict[int, str] = {}
        by: dict[int, int] = {}
        for j in order.tolist():
            clear = True
            if kept:
                lo, hi = box_iou_bounds(outer[j], inner[j], kept_boxes)
                if bool((lo > t).any()):
                    fates[j], by[j] = "suppressed", kept[int((lo > t).nonzero()[0])]
                    continue
                clear = bool((hi <= t).all())
            logits = self._upsample_low(low[j : j + 1], scale, im_size)
            stab = calculate_stability_score(logits, thr, self.stability_score_offset)
            mask = logits > thr
            box = masks_to_boxes(mask).float().cpu()  # the bounds and kept boxes live on the CPU
            if bool(is_box_near_crop_edge(box, crop_box, crop_frame)[0]):
                counts.near_crop_edge += 1
                fates[j] = "edge_full"
                continue
            if self.stability_score_thresh > 0.0:
                # An empty mask has a NaN stability, which fails ">=" here as in the official filter.
                stable = stab >= self.stability_score_thresh
                counts.add_stability(stab, stable)
                if not bool(stable[0]):
                    fates[j] = "stability_full"
                    continue
            if not clear:
                over = (box_iou(torch.cat([box, kept_boxes]))[0, 1:] > t).nonzero().flatten()
                if len(over):
                    fates[j], by[j] = "suppressed", kept[int(over[0])]
                    continue
            kept.append(j)
            kept_boxes = torch.cat([kept_boxes, box])
            masks.append(mask[0])
            stability.append(float(stab[0]))
        if self.trace is not None:
            self.trace.resolve(sources, fates, {j: sources[i] for j, i in by.items()})
        if not kept:
            return MaskData()
        winners = torch.as_tensor(kept, dtype=torch.long)
        stacked = torch.stack(masks)
        return MaskData(
            iou_preds=iou_preds[winners],
            points=torch.as_tensor(points[[sources[j][0] for j in kept]], dtype=torch.float64),
            stability_score=torch.tensor(stability),
            boxes=masks_to_boxes(stacked),
            rles=mask_to_rle(uncrop_masks(stacked, crop_box, orig_h, orig_w)),
        )

    def _decode_low(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits (N, 3, 256, 256) and predicted IoUs (N, 3) of single positive points
        (N, 1, 2) in the input frame, decoded ``max_batch`` points at a time, as the predictor does: the
        decoder's activations grow with the batch, its work per point does not. The masks of points
        whose three outputs all fail ``pred_iou_thresh`` are not computed where the backend can score
        first (``decode_low_res_above``): they are -inf, an empty mask, never a candidate."""
        pred = self.predictor
        above = getattr(pred, "decode_low_res_above", None) if self.pred_iou_thresh > 0.0 else None
        lows, ious = [], []
        for start in range(0, len(coords), pred.max_batch):
            chunk = coords[start : start + pred.max_batch]
            labels = torch.ones(len(chunk), 1, dtype=torch.int, device=chunk.device)
            if above is not None:
                low, iou, _ = above(chunk, labels, True, self.pred_iou_thresh)
            else:
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
