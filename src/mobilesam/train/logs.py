"""Run logs: a CSV of loss, learning rate and throughput, and a loss-curve PNG drawn with PIL."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..io import atomic_write_bytes

COLUMNS = ("step", "epoch", "loss", "lr", "images_per_s", "elapsed_s")


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a log CSV as floats; a malformed row (a crash mid-write) is skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    with open(p, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({k: float(row[k]) for k in COLUMNS})
            except (KeyError, TypeError, ValueError):
                continue
    return rows


class CSVLog:
    """Appends rows to ``log.csv``. On resume, rows after the resumed step are dropped first."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        rows = read_log(self.path) if resume_step is not None else []
        rows = [r for r in rows if r["step"] <= (resume_step or 0)]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([_fmt(k, r[k]) for k in COLUMNS])
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def write(self, **row: float) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(k, row[k]) for k in COLUMNS])


def _fmt(key: str, value: float) -> str:
    if key in ("step", "epoch"):
        return str(int(value))
    return f"{value:.8g}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def plot_loss(log_path: str | os.PathLike, out_path: str | os.PathLike, title: str = "distillation loss (MSE)") -> Path | None:
    """Draw loss against step from ``log.csv`` into a PNG (log-scale y when the loss spans > 10x)."""
    rows = read_log(log_path)
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    losses = [max(r["loss"], 1e-12) for r in rows]
    log_y = max(losses) / min(losses) > 10
    ys = [math.log10(v) for v in losses] if log_y else losses
    w, h, left, right, top, bottom = 800, 480, 80, 20, 40, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad

    def px(s: float, v: float) -> tuple[float, float]:
        return (left + (s - x0) / (x1 - x0) * (w - left - right), top + (y1 - v) / (y1 - y0) * (h - top - bottom))

    for t in _nice_ticks(y0, y1):
        _, y = px(x0, t)
        d.line([left, y, w - right, y], fill=(225, 225, 225))
        label = f"{10 ** t:.3g}" if log_y else f"{t:.3g}"
        d.text((left - 6, y), label, fill="black", font=font, anchor="rm")
    for t in _nice_ticks(x0, x1):
        x, _ = px(t, y0)
        d.line([x, top, x, h - bottom], fill=(235, 235, 235))
        d.text((x, h - bottom + 6), f"{int(t)}", fill="black", font=font, anchor="mt")
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    pts = [px(s, v) for s, v in zip(steps, ys)]
    if len(pts) > 1:
        d.line(pts, fill=(31, 119, 180), width=2)
    else:
        x, y = pts[0]
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(31, 119, 180))
    d.text((w / 2, 12), title + (" (log scale)" if log_y else ""), fill="black", font=font, anchor="mt")
    d.text((w / 2, h - 12), "step", fill="black", font=font, anchor="mb")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(out_path, buf.getvalue())
