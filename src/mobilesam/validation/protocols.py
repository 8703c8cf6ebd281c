"""The prompt protocols of ``mobilesam val --data``, on one image whose features are set in a predictor.

- **box**: the object's box (the tight box of its mask, right and bottom edges exclusive, as COCO's
  ``[x, y, x + w, y + h]``), single-mask output;
- **clicks**: click 1 at the object's deepest pixel, multimask output, the mask of highest predicted
  IoU kept; each next click (see :mod:`.clicks`) is added to the earlier ones, with the previous
  low-resolution logits as ``mask_input`` and single-mask output (SAM's interactive evaluation).

Every object of the image is prompted in one batched decoder pass per round, through any backend's
``predict_torch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..backends import Predictor
from ..masks import mask_iou
from .clicks import first_click, next_click

NOC_THRESHOLDS = (0.85, 0.90)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """XYXY box of a non-empty boolean (H, W) mask, right/bottom exclusive: float64 (4,)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


@torch.inference_mode()
def box_ious(predictor: Predictor, gt: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
    """IoU (N,) of the single-mask prediction for each box (N, 4) XYXY pixels against gt (N, H, W)."""
    size = predictor.original_size
    b = torch.as_tensor(predictor.transform.apply_boxes(boxes, size), dtype=torch.float, device=predictor.device)
    masks, _, _ = predictor.predict_torch(None, None, b, multimask_output=False)
    return mask_iou(masks[:, 0].cpu(), gt).numpy()


@dataclass
class ClickRun:
    """Per object: IoU after each click (``ious[i][k-1]`` after k clicks) and the clicks (x, y, label)."""

    ious: list[list[float]]
    clicks: list[list[tuple[int, int, int]]]

    def iou_after(self, k: int) -> np.ndarray:
        """IoU after k clicks, (N,); an object stopped earlier keeps its last IoU (see :func:`click_ious`)."""
        return np.array([r[min(k, len(r)) - 1] for r in self.ious])

    def noc(self, threshold: float, max_clicks: int) -> np.ndarray:
        """Clicks needed to reach ``threshold`` (N,), ``max_clicks`` when never reached."""
        return np.array([next((k + 1 for k, v in enumerate(r) if v >= threshold), max_clicks) for r in self.ious])


@torch.inference_mode()
def click_ious(
    predictor: Predictor,
    gt: torch.Tensor,
    max_clicks: int = 20,
    min_clicks: int = 5,
    stop_iou: float | None = 0.90,
    multimask_first: bool = True,
) -> ClickRun:
    """Run the interactive protocol on objects gt (N, H, W) bool: at least ``min_clicks`` clicks for
    every object, then more until its IoU reaches ``stop_iou`` (None: always ``max_clicks``).

    An object whose mask already equals the ground truth gets no further click (there is no error to
    click on); its IoU is carried to the clicks it did not need.
    """
    n = gt.shape[0]
    gt_np = gt.cpu().numpy()
    size = predictor.original_size
    dev = predictor.device
    clicks: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    ious: list[list[float]] = [[] for _ in range(n)]
    low_res = None  # (N, 1, 256, 256) logits of each object's current mask
    pred = np.zeros_like(gt_np)
    active = list(range(n))
    for k in range(1, max_clicks + 1):
        stepping = []
        for i in active:
            c = (*first_click(gt_np[i]), 1) if k == 1 else next_click(pred[i], gt_np[i])
            if c is None:
                continue
            clicks[i].append(c)
            stepping.append(i)
        if not stepping:
            break
        pts = np.array([[c[:2] for c in clicks[i]] for i in stepping], np.float64)  # (B, k, 2)
        lab = np.array([[c[2] for c in clicks[i]] for i in stepping])
        coords = torch.as_tensor(predictor.transform.apply_coords(pts, size), dtype=torch.float, device=dev)
        labels = torch.as_tensor(lab, dtype=torch.int, device=dev)
        multimask = k == 1 and multimask_first
        mask_input = None if k == 1 else low_res[stepping].to(dev)
        masks, scores, lows = predictor.predict_torch(coords, labels, None, mask_input, multimask_output=multimask)
        best = scores.float().argmax(1)
        rows = torch.arange(len(stepping), device=masks.device)
        chosen = masks[rows, best.to(masks.device)].cpu()
        chosen_low = lows[torch.arange(len(stepping), device=lows.device), best.to(lows.device)][:, None].float().cpu()
        if low_res is None:
            low_res = torch.zeros((n, *chosen_low.shape[1:]))
        low_res[stepping] = chosen_low
        values = mask_iou(chosen, gt[stepping].cpu()).tolist()
        for j, i in enumerate(stepping):
            pred[i] = chosen[j].numpy()
            ious[i].append(values[j])
        active = [i for i in stepping if k < min_clicks or stop_iou is None or ious[i][-1] < stop_iou]
        if not active:
            break
    for r in ious:  # an exact mask needs no more clicks: its IoU holds for the clicks not taken
        while r and len(r) < min_clicks:
            r.append(r[-1])
    return ClickRun(ious, clicks)


__all__ = ["NOC_THRESHOLDS", "ClickRun", "box_ious", "click_ious", "mask_box"]
