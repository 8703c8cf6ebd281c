"""``Sam2AutomaticMaskGenerator``: segment everything with a SAM 2 model, decision for decision as Meta's
``SAM2AutomaticMaskGenerator``; and :func:`automatic_mask_generator`, which picks the generator of a
model's family.

SAM 2's generator is SAM's with four differences, and only those are written here (the grid, crops,
NMS, records and fast mode are :class:`SamAutomaticMaskGenerator`'s):

- its own defaults (``pred_iou_thresh=0.8``) and a ``mask_threshold`` option for the stability score
  and the binary masks;
- ``multimask_output``: one mask per point (SAM 2's dynamic multimask choice) instead of three;
- ``use_m2m``: each mask is decoded once more from its own clamped low-resolution logits as the mask
  prompt (one output), and that refined mask is filtered;
- ``min_mask_region_area`` fills holes and removes sprinkles of the low-resolution logits before
  upscaling, instead of SAM's clean-up of the final masks (Meta builds its predictor with ``max_hole_area = max_sprinkle_area = min_mask_region_area``;
  its CUDA extension does it, and on CPU Meta's code skips it with a warning: here OpenCV does it on
  every device, see :func:`mobilesam.transforms.fill_holes_and_sprinkles`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..backends import Predictor, create_predictor
from ..masks import masks_to_boxes
from ..transforms import fill_holes_and_sprinkles
from .amg import calculate_stability_score, is_box_near_crop_edge, mask_to_rle, uncrop_masks
from .generator import MaskData, SamAutomaticMaskGenerator

class Sam2AutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """A drop-in for Meta's ``SAM2AutomaticMaskGenerator``: same arguments, defaults and records, plus
    ``mode``, ``backend`` and ``progress`` as :class:`SamAutomaticMaskGenerator` (see there).

    ``mode="fast"`` takes the default decoding only (``use_m2m=False``, ``multimask_output=True`` and
    the predictor's ``mask_threshold``): any other value of those raises a ValueError naming it.
    """

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        mode: str = "exact",
        backend: str = "torch",
        progress: bool = True,
    ) -> None:
        for name, value in (("use_m2m", use_m2m), ("multimask_output", multimask_output)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected True or False, got {value!r}")
        if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, (int, float)) or not np.isfinite(
            mask_threshold
        ):
            raise ValueError(f"mask_threshold: expected a finite number (a logit), got {mask_threshold!r}")
        super().__init__(
            model,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            point_grids=point_grids,
            min_mask_region_area=min_mask_region_area,
            output_mode=output_mode,
            mode=mode,
            backend=backend,
            progress=progress,
        )
        self.mask_threshold = float(mask_threshold)
        self.use_m2m = use_m2m
        self.multimask_output = multimask_output
        if self.mode == "fast":
            changed = [name for name, value, default in (
                ("use_m2m", use_m2m, False), ("multimask_output", multimask_output, True),
                ("mask_threshold", self.mask_threshold, self.predictor.mask_threshold)) if value != default]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)}: mode='fast' decodes with the defaults (use_m2m=False, "
                    f"multimask_output=True, the predictor's mask_threshold); use mode='exact' for other values"
                )

    # --- Meta's decoding step ---------------------------------------------------------------------
    def _decode(
        self, coords: torch.Tensor, mask_input: torch.Tensor | None, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Single positive points (N, 1, 2) in the input frame, optional mask prompts (N, 1, 256, 256) ->
        full-size logits (N, C, H, W) (holes and sprinkles cleaned), IoUs (N, C) and clamped low-res
        logits (N, C, 256, 256); ``max_batch`` prompts per decoder run, as the predictor does."""
        pred = self.predictor
        area = float(self.min_mask_region_area)
        masks, ious, lows = [], [], []
        for start in range(0, len(coords), pred.max_batch):
            sl = slice(start, start + pred.max_batch)
            chunk = coords[sl]
            labels = torch.ones(chunk.shape[:2], dtype=torch.int, device=chunk.device)
            low, iou = pred.decode_low_res(chunk, labels, None, None if mask_input is None else mask_input[sl],
                                           multimask_output=multimask)
            masks.append(pred.postprocess_masks(fill_holes_and_sprinkles(low, pred.mask_threshold, area, area)))
            ious.append(iou)
            # SAM 2's predictor hands its low-res logits back clipped (the predictor's low_res_limit);
            # refinement (use_m2m) feeds them as the mask prompt.
            limit = pred.low_res_limit
            lows.append(low if limit is None else low.clamp(-limit, limit))
        return torch.cat(masks), torch.cat(ious), torch.cat(lows)

    def _input_points(self, points: torch.Tensor, im_size: tuple[int, ...]) -> torch.Tensor:
        """(N, 2) float32 pixel points of the crop -> the input frame, in float32 and in the order of
        Meta's ``transform_coords(normalize=True)`` (divide by the size, then scale)."""
        h, w = im_size
        coords = points / torch.tensor([w, h], dtype=torch.float32)
        return (coords * self.predictor.transform.target_length).to(self.predictor.device)

    def _process_batch(
        self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int], orig_size: tuple[int, ...]
    ) -> MaskData:
        """Meta's per-batch step: decode (one or three masks per point), optionally refine each mask with
        itself as the mask prompt, filter by predicted IoU and stability, box, drop crop-edge masks, RLE."""
        orig_h, orig_w = orig_size
        pts = torch.as_tensor(points, dtype=torch.float32)
        masks, iou_preds, low_res = self._decode(self._input_points(pts, im_size)[:, None], None, self.multimask_output)
        data = MaskData(
            masks=masks.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=pts.repeat_interleave(masks.shape[1], dim=0),
            low_res_masks=low_res.flatten(0, 1),
        )
        del masks
        self.counts.points += len(points)
        if self.use_m2m:
            refined, ious = [], []
            for start in range(0, len(data), self.points_per_batch):
                sl = slice(start, start + self.points_per_batch)
                coords = self._input_points(data["points"][sl], im_size)[:, None]
                m, s, _ = self._decode(coords, data["low_res_masks"][sl][:, None], multimask=False)
                refined.append(m[:, 0])
                ious.append(s[:, 0])
            data["masks"], data["iou_preds"] = torch.cat(refined), torch.cat(ious)
        del data["low_res_masks"]
        iou = data["iou_preds"]
        keep = iou > self.pred_iou_thresh
        self.counts.add_iou(iou, keep if self.pred_iou_thresh > 0.0 else torch.ones_like(keep))
        if self.pred_iou_thresh > 0.0:
            data.filter(keep)
        thr = self.mask_threshold
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

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: float, nms_thresh: float) -> MaskData:
        """Unchanged: Meta's SAM 2 generator has no such step after generation; ``min_mask_region_area``
        acts through the hole and sprinkle filling of the low-resolution logits instead."""
        return mask_data

    def _upsample_low(self, low: torch.Tensor, scale: float, im_size: tuple[int, ...]) -> torch.Tensor:
        """Fast mode's upscaling of the NMS survivors, after the same hole and sprinkle clean-up as exact
        mode (SAM 2's input frame has no padding: ``low`` is the whole low-resolution grid)."""
        area = float(self.min_mask_region_area)
        low = fill_holes_and_sprinkles(low[:, None], self.predictor.mask_threshold, area, area)[:, 0]
        return super()._upsample_low(low, scale, im_size)


def is_sam2_predictor(predictor: Any) -> bool:
    """True for a predictor of the SAM 2 family (any backend)."""
    family = getattr(predictor, "family", None)
    return getattr(family, "name", family) == "sam2"


def automatic_mask_generator(model: Any, backend: str = "torch", **options: Any) -> SamAutomaticMaskGenerator:
    """The segment-everything generator of ``model``'s family, with that family's official defaults:
    :class:`Sam2AutomaticMaskGenerator` for SAM 2 / SAM 2.1, :class:`SamAutomaticMaskGenerator` otherwise.

    ``model`` is anything :class:`SamAutomaticMaskGenerator` takes (a model, checkpoint, exported folder
    or predictor); ``options`` are the generator's arguments.
    """
    predictor = model if isinstance(model, Predictor) else create_predictor(model, backend)
    cls = Sam2AutomaticMaskGenerator if is_sam2_predictor(predictor) else SamAutomaticMaskGenerator
    return cls(predictor, **options)
