"""Run logs: a CSV of loss, learning rate, throughput (and, for fine-tuning, validation mIoU), and PNG
curves drawn with :mod:`mobilesam.plots`."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..io import atomic_write_bytes
from ..plots import line_chart, save_png, stacked

COLUMNS = ("step", "epoch", "loss", "lr", "images_per_s", "elapsed_s")


def read_log(path: str | os.PathLike, columns: Sequence[str] = COLUMNS) -> list[dict[str, float]]:
    """Rows of a log CSV as floats (an empty cell is NaN); a malformed row (a crash mid-write) is skipped."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    with open(p, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({k: float(row[k]) if row[k] != "" else math.nan for k in columns})
            except (KeyError, TypeError, ValueError):
                continue
    return rows


class CSVLog:
    """Appends rows to ``log.csv``. On resume, rows after the resumed step are dropped first.

    ``columns``: the CSV's columns, ``step`` first; a value not given in :meth:`write` is left empty.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None,
                 columns: Sequence[str] = COLUMNS) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        rows = read_log(self.path, self.columns) if resume_step is not None else []
        rows = [r for r in rows if r["step"] <= (resume_step or 0)]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.columns)
        for r in rows:
            writer.writerow([_fmt(k, r[k]) for k in self.columns])
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def write(self, **row: float) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(k, row.get(k, math.nan)) for k in self.columns])


def _fmt(key: str, value: float) -> str:
    if value != value:  # NaN: not measured at this step
        return ""
    if key in ("step", "epoch"):
        return str(int(value))
    return f"{value:.8g}"


def plot_loss(log_path: str | os.PathLike, out_path: str | os.PathLike, title: str = "distillation loss (MSE)") -> Path | None:
    """Draw loss against step from ``log.csv`` into a PNG (log-scale y when the loss spans > 10x)."""
    rows = read_log(log_path)
    if not rows:
        return None
    chart = line_chart([("loss", [r["step"] for r in rows], [max(r["loss"], 1e-12) for r in rows])],
                       title=title, xlabel="step", log_y=None)
    return save_png(chart, out_path)


def plot_curves(log_path: str | os.PathLike, out_path: str | os.PathLike, columns: Sequence[str],
                panels: Sequence[tuple[str, Sequence[str], tuple[float, float] | None]]) -> Path | None:
    """Several panels of ``log.csv`` columns against step, stacked: each panel is (title, columns,
    y range or None), e.g. ``("validation mIoU", ["val_box_miou", "val_point_miou"], (0, 1))``."""
    rows = read_log(log_path, columns)
    if not rows:
        return None
    charts = []
    for title, names, y_range in panels:
        series = []
        for name in names:
            pts = [(r["step"], r[name]) for r in rows if r[name] == r[name]]
            series.append((name, [p[0] for p in pts], [p[1] for p in pts]))
        if not any(s[1] for s in series):
            continue
        few = max(len(s[1]) for s in series) <= 60
        charts.append(line_chart(series, title=title, xlabel="step", size=(800, 360), y_range=y_range,
                                 log_y=None if y_range is None else False, markers=few))
    return save_png(stacked(charts), out_path) if charts else None
