"""Small charts drawn with PIL (no plotting library): line charts and histograms, for training logs
(loss, validation mIoU) and validation reports (IoU by clicks, per-object IoU histograms)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .io import atomic_write_bytes

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
Series = tuple[str, Sequence[float], Sequence[float]]  # label, xs, ys (a NaN y leaves a gap)

_LEFT, _RIGHT, _TOP, _BOTTOM = 80, 20, 40, 50


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


class _Frame:
    """A plotting area with axes, grid, ticks and labels; ``px`` maps data to pixels."""

    def __init__(self, size: tuple[int, int], x_range: tuple[float, float], y_range: tuple[float, float],
                 title: str, xlabel: str, ylabel: str = "", y_label_of=None, x_label_of=None,
                 integer_x: bool = False, integer_y: bool = False) -> None:
        self.w, self.h = size
        self.img = Image.new("RGB", size, "white")
        self.d = ImageDraw.Draw(self.img)
        self.font = ImageFont.load_default()
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        d, font = self.d, self.font
        for t in _ticks(self.y0, self.y1, integer_y):
            _, y = self.px(self.x0, t)
            d.line([_LEFT, y, self.w - _RIGHT, y], fill=(225, 225, 225))
            d.text((_LEFT - 6, y), (y_label_of or (lambda v: f"{v:.3g}"))(t), fill="black", font=font, anchor="rm")
        for t in _ticks(self.x0, self.x1, integer_x):
            x, _ = self.px(t, self.y0)
            d.line([x, _TOP, x, self.h - _BOTTOM], fill=(235, 235, 235))
            d.text((x, self.h - _BOTTOM + 6), (x_label_of or _number)(t), fill="black", font=font, anchor="mt")
        d.rectangle([_LEFT, _TOP, self.w - _RIGHT, self.h - _BOTTOM], outline="black")
        d.text((self.w / 2, 12), title, fill="black", font=font, anchor="mt")
        d.text((self.w / 2, self.h - 12), xlabel, fill="black", font=font, anchor="mb")
        if ylabel:
            d.text((_LEFT, _TOP - 6), ylabel, fill="black", font=font, anchor="lb")

    def px(self, x: float, y: float) -> tuple[float, float]:
        return (_LEFT + (x - self.x0) / (self.x1 - self.x0) * (self.w - _LEFT - _RIGHT),
                _TOP + (self.y1 - y) / (self.y1 - self.y0) * (self.h - _TOP - _BOTTOM))

    def legend(self, labels: Sequence[str]) -> None:
        if len(labels) < 2:
            return
        x, y = _LEFT + 10, _TOP + 8
        for k, label in enumerate(labels):
            colour = COLOURS[k % len(COLOURS)]
            self.d.rectangle([x, y + 14 * k - 4, x + 12, y + 14 * k + 4], fill=colour)
            self.d.text((x + 18, y + 14 * k), label, fill="black", font=self.font, anchor="lm")


def _ticks(lo: float, hi: float, integer: bool) -> list[float]:
    ticks = nice_ticks(lo, hi)
    if integer and len(ticks) > 1 and ticks[1] - ticks[0] < 1:
        ticks = [float(t) for t in range(math.ceil(lo), math.floor(hi) + 1)]
    return ticks


def _number(v: float) -> str:
    return str(int(round(v))) if abs(v - round(v)) < 1e-9 else f"{v:.3g}"


def _padded(lo: float, hi: float) -> tuple[float, float]:
    pad = (hi - lo) * 0.05 or 0.5
    return lo - pad, hi + pad


def line_chart(series: Sequence[Series], *, title: str, xlabel: str, ylabel: str = "",
               size: tuple[int, int] = (800, 480), log_y: bool | None = False,
               y_range: tuple[float, float] | None = None, markers: bool = False,
               integer_x: bool = False) -> Image.Image:
    """Lines (one colour each, with a legend when several). ``log_y`` None: log scale when the positive
    values span more than 10x. ``y_range`` fixes the y axis (e.g. (0, 1) for IoU)."""
    pts = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys) if y == y]
    if not pts:
        pts = [(0.0, 0.0), (1.0, 1.0)]
    ys_all = [y for _, y in pts]
    if log_y is None:
        positive = [y for y in ys_all if y > 0]
        log_y = bool(positive) and len(positive) == len(ys_all) and max(positive) / min(positive) > 10
    tf = (lambda v: math.log10(max(v, 1e-12))) if log_y else (lambda v: v)
    xs_all = [x for x, _ in pts]
    x_range = (min(xs_all), max(max(xs_all), min(xs_all) + 1))
    y_range = (tf(y_range[0]), tf(y_range[1])) if y_range else _padded(min(map(tf, ys_all)), max(map(tf, ys_all)))
    frame = _Frame(size, x_range, y_range, title + (" (log scale)" if log_y else ""), xlabel, ylabel,
                   y_label_of=(lambda t: f"{10 ** t:.3g}") if log_y else None, integer_x=integer_x)
    for k, (_, xs, ys) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        run: list[tuple[float, float]] = []
        for x, y in [*zip(xs, ys), (None, None)]:
            if x is not None and y == y:
                run.append(frame.px(x, tf(y)))
                continue
            if len(run) > 1:
                frame.d.line(run, fill=colour, width=2)
            for px, py in run if (markers or len(run) == 1) else ():
                frame.d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
            run = []
    frame.legend([label for label, _, _ in series])
    return frame.img


def histogram(series: Sequence[tuple[str, Sequence[float]]], *, title: str, xlabel: str, bins: int = 20,
              value_range: tuple[float, float] = (0.0, 1.0), size: tuple[int, int] = (800, 480)) -> Image.Image:
    """Side-by-side bars of each series' counts in ``bins`` equal bins over ``value_range`` (values at the
    top edge go in the last bin)."""
    lo, hi = value_range
    counts = []
    for _, values in series:
        c = [0] * bins
        for v in values:
            if v == v and lo <= v <= hi:
                c[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
        counts.append(c)
    top = max([max(c) for c in counts] + [1])
    frame = _Frame(size, (lo, hi), (0, top * 1.08), title, xlabel, "objects", integer_y=True)
    width = (hi - lo) / bins
    n = max(1, len(series))
    for k, c in enumerate(counts):
        colour = COLOURS[k % len(COLOURS)]
        for b, count in enumerate(c):
            if count:
                left = lo + b * width + width * k / n
                x0, y0 = frame.px(left, count)
                x1, y1 = frame.px(left + width / n, 0)
                frame.d.rectangle([x0 + 1, y0, max(x0 + 1, x1 - 1), y1], fill=colour)
    frame.legend([label for label, _ in series])
    return frame.img


def side_by_side(images: Sequence[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width
    return out


def stacked(images: Sequence[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as a PNG, atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


__all__ = ["COLOURS", "histogram", "line_chart", "nice_ticks", "save_png", "side_by_side", "stacked"]
