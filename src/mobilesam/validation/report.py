"""Summaries of per-object results: means overall and by COCO size, the terminal table and the plot."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import SIZE_NAMES
from ..plots import histogram, line_chart, save_png, side_by_side

GROUPS = ("all", *SIZE_NAMES)
REPORTED_CLICKS = (1, 3, 5)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None  # JSON has no NaN: None where nothing is averaged


def by_size(objects: Sequence[dict[str, Any]], value) -> dict[str, float | None]:
    """Mean of ``value(object)`` overall and per size class."""
    return {g: _mean([value(o) for o in objects if g == "all" or o["size"] == g]) for g in GROUPS}


def summarize(objects: Sequence[dict[str, Any]], max_clicks: int, curve_clicks: int) -> dict[str, Any]:
    """Box mIoU, k-click mIoU (k = 1, 3, 5), NoC@85/90 (mean, and the share of objects that never reach
    the threshold within ``max_clicks``), and the mIoU-by-clicks curve up to ``curve_clicks``."""
    def after(k: int):
        return lambda o: o["click_ious"][min(k, len(o["click_ious"])) - 1]

    summary: dict[str, Any] = {
        "objects": {g: sum(1 for o in objects if g == "all" or o["size"] == g) for g in GROUPS},
        "box_miou": by_size(objects, lambda o: o["box_iou"]),
        "point_miou": {str(k): by_size(objects, after(k)) for k in REPORTED_CLICKS if k <= max_clicks},
    }
    for t in ("85", "90"):
        summary[f"noc{t}"] = by_size(objects, lambda o, t=t: o[f"noc{t}"])
        summary[f"noc{t}_failed"] = by_size(objects, lambda o, t=t: float(o[f"noc{t}"] >= max_clicks
                                                                         and max(o["click_ious"]) < int(t) / 100))
    summary["curve"] = {g: [by_size(objects, after(k))[g] for k in range(1, curve_clicks + 1)] for g in GROUPS}
    return summary


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def format_table(result: dict[str, Any]) -> str:
    """The summary of :func:`mobilesam.val` as an aligned text table, then the counts and AP."""
    s = result["summary"]
    rows = [("protocol", *GROUPS)]
    rows.append(("box mIoU", *(_num(s["box_miou"][g]) for g in GROUPS)))
    for k, values in s["point_miou"].items():
        rows.append((f"{k}-click mIoU", *(_num(values[g]) for g in GROUPS)))
    for t in ("85", "90"):
        rows.append((f"NoC@{t}", *(_num(s[f"noc{t}"][g], ".2f") for g in GROUPS)))
    rows.append(("objects", *(str(s["objects"][g]) for g in GROUPS)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(GROUPS) + 1)]
    lines = ["  ".join(r[c].ljust(widths[c]) if c == 0 else r[c].rjust(widths[c]) for c in range(len(r))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ap = result.get("mask_ap")
    if ap:
        lines.append("mask AP (COCOeval segm): " + ", ".join(f"{k} {_num(ap[k], '.4f')}" for k in
                                                             ("AP", "AP50", "AP75", "APs", "APm", "APl"))
                     + f" over {ap['detections']} detections")
    c = result["counts"]
    lines.append(
        f"{c['images_evaluated']} of {c['images']} images; {c['objects']} objects prompted; set aside: "
        f"{c['crowd']} crowd, {c['empty_masks']} empty masks, {c['box_only']} box-only labels, "
        f"{c['images_without_objects']} images without objects, {c['failed_images']} unreadable images"
    )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """``path``: IoU by clicks (overall and by size, box mIoU as a reference line) beside histograms of
    per-object box and 1-click IoU."""
    s = result["summary"]
    curve = s["curve"]
    ks = list(range(1, len(curve["all"]) + 1))
    series = [(f"{g} ({s['objects'][g]})", ks, [v if v is not None else float("nan") for v in curve[g]])
              for g in GROUPS if s["objects"][g]]
    if s["box_miou"]["all"] is not None:
        series.append(("box prompt (all)", [1, ks[-1]], [s["box_miou"]["all"]] * 2))
    left = line_chart(series, title="mIoU after k clicks", xlabel="clicks", y_range=(0.0, 1.0), markers=True,
                      size=(640, 480), integer_x=True)
    objects = result["objects"]
    right = histogram([("box", [o["box_iou"] for o in objects]), ("1 click", [o["click_ious"][0] for o in objects])],
                      title="per-object IoU", xlabel="IoU", size=(640, 480))
    return save_png(side_by_side([left, right]), path)


__all__ = ["GROUPS", "REPORTED_CLICKS", "by_size", "format_table", "plot", "summarize"]
