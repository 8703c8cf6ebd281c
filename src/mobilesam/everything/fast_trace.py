"""``FastTrace``: what fast segment-everything decided, point by point and mask by mask, for one image.

Set ``generator.trace = FastTrace()`` before ``generate``: fast mode then records every grid point it
decoded or skipped and, for each candidate mask (a decoded point's multimask output), the first decision
that removed it. ``benchmarks/trace_fast_misses.py`` uses it to trace each mask that exact mode finds and
fast mode does not to the decision that lost it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# A candidate's fate: the first filter it failed, in the order fast mode applies them, or "kept".
FATES = ("pred_iou", "stability_low", "edge_low", "suppressed", "edge_full", "stability_full", "kept")


@dataclass
class CropTrace:
    crop_box: list[int]
    points: list[tuple[float, float]]  # the crop's grid points (x, y) in crop pixels, grid order
    decoded: list[int] = field(default_factory=list)  # grid indices, in decoding order
    skipped: list[int] = field(default_factory=list)  # grid indices whose neighbours' answer was taken
    # (point, output) -> {"iou", "stability_low", "fate", "by" (the suppressing (point, output) or None)}
    candidates: dict[tuple[int, int], dict] = field(default_factory=dict)


class FastTrace:
    """Fast mode's decisions for the last ``generate`` call, one ``CropTrace`` per crop."""

    def __init__(self) -> None:
        self.crops: list[CropTrace] = []

    def start_crop(self, crop_box: list[int], points) -> None:
        self.crops.append(CropTrace(list(crop_box), [tuple(map(float, p)) for p in points]))

    @property
    def crop(self) -> CropTrace:
        return self.crops[-1]

    def batch(self, take: list[int], iou: torch.Tensor, stability: torch.Tensor, passed_iou: torch.Tensor,
              passed_stability: torch.Tensor) -> None:
        """One decoded batch of grid points ``take``: per-output tensors (len(take), 3)."""
        crop = self.crop
        crop.decoded.extend(take)
        iou, stability = iou.flatten(), stability.flatten()
        passed_iou, passed_stability = passed_iou.flatten(), passed_stability.flatten()
        nm = len(iou) // max(len(take), 1)
        for r in range(len(iou)):
            fate = "kept" if passed_stability[r] else ("stability_low" if passed_iou[r] else "pred_iou")
            crop.candidates[(take[r // nm], r % nm)] = {
                "iou": float(iou[r]), "stability_low": float(stability[r]), "fate": fate, "by": None,
            }

    def resolve(self, sources: list[tuple[int, int]], fates: dict[int, str], by: dict[int, tuple[int, int]]) -> None:
        """Final fates of the candidates that reached NMS (``sources[j]`` = (point, output) of row j):
        ``fates[j]`` for those removed there ("edge_low", "suppressed", "edge_full", "stability_full";
        the others are kept), ``by[j]`` the (point, output) that suppressed row j."""
        crop = self.crop
        for j, fate in fates.items():
            rec = crop.candidates[sources[j]]
            rec["fate"] = fate
            rec["by"] = by.get(j)
