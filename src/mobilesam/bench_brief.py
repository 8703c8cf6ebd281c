"""The brief's comparison table in one command: ``mobilesam benchmark --table brief``.

For Meta SAM-b, SAM2-b, SAM2-t and MobileSAM: the checkpoint's file size, the parameters and the CPU
milliseconds per image of ``SAM(file).predict(image)`` with no prompt (segment everything, as the
brief's ``model(ASSETS)`` runs), plus image-to-first-mask (one point) through this package. When the
optional ``ultralytics`` package is installed (AGPL: never a dependency; imported only in the worker
processes that time it), the same files run through Ultralytics in the same run (ratio column), and
FastSAM-s, YOLOv8n-seg and YOLO11n-seg are timed too. Weights that are not at hand (current folder or
the cache; nothing is downloaded) are replaced by random weights of the same architecture, and the
table says which rows used them. The brief's own figures (Apple M4 Pro, torch 2.6.0, ultralytics
8.3.90) stand beside ours for reference only: another machine, and Ultralytics' files of SAM 2 are fp16.

Every model runs in its own process (``python -m mobilesam.bench``), rows alternate round by round, and
times are medians, as in :mod:`mobilesam.bench`.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BriefRow:
    """One row of the brief's table: ``weights`` is the file name both packages know, ``model_type`` our
    size for it (None: an Ultralytics-only model); ``brief`` the brief's (size MB, parameters M, ms/image)."""

    key: str
    label: str
    weights: str
    model_type: str | None
    brief: tuple[float, float, float]
    yaml: str = ""  # Ultralytics-only rows: the architecture built with random weights when the file is absent


# The brief's table (Apple M4 Pro 2025, 24 GB, torch 2.6.0, ultralytics 8.3.90): size MB, params M, CPU ms/im.
BRIEF_ROWS = (
    BriefRow("sam_b", "Meta SAM-b", "sam_b.pt", "vit_b", (375.0, 93.7, 49401.0)),
    BriefRow("sam2_b", "Meta SAM2-b", "sam2_b.pt", "sam2_hiera_base_plus", (162.0, 80.8, 31901.0)),
    BriefRow("sam2_t", "Meta SAM2-t", "sam2_t.pt", "sam2_hiera_tiny", (78.1, 38.9, 25997.0)),
    BriefRow("mobile_sam", "MobileSAM", "mobile_sam.pt", "vit_t", (40.7, 10.1, 25381.0)),
    BriefRow("fastsam_s", "FastSAM-s (YOLOv8 backbone)", "FastSAM-s.pt", None, (23.7, 11.8, 55.9), "yolov8s-seg.yaml"),
    BriefRow("yolov8n_seg", "Ultralytics YOLOv8n-seg", "yolov8n-seg.pt", None, (6.7, 3.4, 24.5), "yolov8n-seg.yaml"),
    BriefRow("yolo11n_seg", "Ultralytics YOLO11n-seg", "yolo11n-seg.pt", None, (5.9, 2.9, 30.1), "yolo11n-seg.yaml"),
)
ROW_KEYS = tuple(r.key for r in BRIEF_ROWS)
ULTRALYTICS_GRID = 32  # Ultralytics' segment-everything grid (points_stride), not settable through predict()


def check_rows(keys: Sequence[str]) -> list[BriefRow]:
    """The rows named by ``keys`` (all of them when empty); a ValueError naming ``table_models`` otherwise."""
    bad = [k for k in keys if k not in ROW_KEYS]
    if bad:
        raise ValueError(f"table_models: expected some of {','.join(ROW_KEYS)}, got {','.join(bad)}")
    return [r for r in BRIEF_ROWS if not keys or r.key in keys]


def _weights_at_hand(name: str) -> Path | None:
    """The file ``name`` (or the known weights it is an alias of) in the current folder or the cache; no download."""
    from .weights import CheckpointError, resolve_weights

    try:
        return Path(resolve_weights(name, offline=True))
    except CheckpointError:
        return None


def _random_checkpoint(row: BriefRow, folder: Path) -> Path:
    """Random weights of ``row``'s architecture in its official layout, saved under the row's (Ultralytics)
    file name so that both packages read the same file."""
    from .bench import make_random_checkpoint

    return make_random_checkpoint(row.model_type, folder / row.weights)


# --------------------------------------------------------------------------------------------------
# Workers (each in its own process, through mobilesam.bench's job table)
# --------------------------------------------------------------------------------------------------
def time_ours(checkpoint: str, image_path: str, runs: int, points_per_side: int, threads: int | None) -> dict[str, Any]:
    """This package: ``runs`` x segment everything (``SAM(...).predict(image)``) and image-to-first-mask."""
    import torch

    from .allocator import tune_allocator
    from .io import read_image
    from .model import SAM

    if threads:
        torch.set_num_threads(threads)
    tune_allocator()
    model = SAM(checkpoint, device="cpu")
    img = read_image(image_path)
    h, w = img.shape[:2]
    model.predict(img, image_format="RGB", points=[w // 2, h // 2], verbose=False)  # warm-up
    everything, first, masks = [], [], 0
    for _ in range(runs):
        model.clear_cache()
        t = time.perf_counter()
        model.predict(img, image_format="RGB", points=[w // 3, h // 3], verbose=False)
        first.append(time.perf_counter() - t)
        model.clear_cache()
        t = time.perf_counter()
        result = model.predict(img, image_format="RGB", points_per_side=points_per_side, verbose=False)[0]
        everything.append(time.perf_counter() - t)
        masks = len(result)
    return {"everything_s": everything, "first_mask_s": first, "masks": masks,
            "params": sum(p.numel() for p in model.model.parameters()), "threads": torch.get_num_threads()}


def time_ultralytics(weights: str, yaml: str, image_path: str, runs: int, threads: int | None) -> dict[str, Any]:
    """Ultralytics (SAM, FastSAM or YOLO by the file name), as the brief runs it: ``model(image)``; a YOLO
    architecture from ``yaml`` with random weights when ``weights`` is empty."""
    import torch
    from ultralytics import SAM, YOLO, FastSAM  # optional, AGPL: only in this worker

    if threads:
        torch.set_num_threads(threads)
    stem = Path(weights).stem if weights else ""
    if not weights:
        model = YOLO(yaml)
    elif stem.startswith(("sam", "mobile")):
        model = SAM(weights)
    else:
        model = FastSAM(weights) if stem.startswith("FastSAM") else YOLO(weights)
    model(image_path, verbose=False, device="cpu")  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model(image_path, verbose=False, device="cpu")
        times.append(time.perf_counter() - t)
    return {"s": times, "params": sum(p.numel() for p in model.model.parameters())}


# The worker jobs mobilesam.bench runs for this table.
WORKER_JOBS = {"brief-ours": time_ours, "brief-ultralytics": time_ultralytics}


# --------------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------------
def run_brief_table(
    *,
    table_models: Sequence[str] = (),
    image: str | os.PathLike | None = None,
    rounds: int = 1,
    runs: int = 1,
    points_per_side: int = ULTRALYTICS_GRID,
    threads: int | None = None,
    ultralytics: bool | None = None,
    command: str | None = None,
) -> str:
    """Time the rows ``table_models`` (keys of :data:`BRIEF_ROWS`; all by default) and return the markdown
    table. ``ultralytics``: also time through Ultralytics (default: when it is installed).
    ``points_per_side``: our segment-everything grid (Ultralytics' is fixed at 32)."""
    from .bench import _cpu_name, _run_in_process, synthetic_image

    rows = check_rows(table_models)
    for name, value in (("rounds", rounds), ("runs", runs), ("points_per_side", points_per_side)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    if ultralytics is None:
        ultralytics = importlib.util.find_spec("ultralytics") is not None
    with tempfile.TemporaryDirectory(prefix="mobilesam-brief-") as tmp_name:
        tmp = Path(tmp_name)
        if image:
            image_path = Path(image)
        else:
            from PIL import Image

            image_path = tmp / "brief.png"
            Image.fromarray(synthetic_image()).save(image_path)
        files: dict[str, tuple[Path | None, bool]] = {}  # key -> (file, random weights)
        for row in rows:
            found = _weights_at_hand(row.weights) if row.model_type else next(
                (p for p in (Path(row.weights),) if p.is_file()), None)
            if found is None and row.model_type:
                found, random = _random_checkpoint(row, tmp), True
            else:
                random = found is None
            files[row.key] = (found, random)
        jobs = []
        for row in rows:
            path, _ = files[row.key]
            if row.model_type:
                jobs.append((row.key, "ours", "brief-ours", {"checkpoint": str(path), "image_path": str(image_path),
                             "runs": runs, "points_per_side": points_per_side, "threads": threads}))
            if ultralytics:
                jobs.append((row.key, "ultralytics", "brief-ultralytics", {
                    "weights": str(path) if path else "", "yaml": row.yaml, "image_path": str(image_path),
                    "runs": runs, "threads": threads}))
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        failures: dict[tuple[str, str], str] = {}
        for r in range(rounds):
            order = jobs[r % len(jobs):] + jobs[: r % len(jobs)] if jobs else []
            for key, side, job, params in order:
                print(f"round {r + 1}/{rounds}: {key} ({side})", file=sys.stderr)
                result, failure = _run_in_process(job, params, tmp)
                if result is None:
                    failures[(key, side)] = (failure or ["?"])[-1][:100]
                else:
                    results.setdefault((key, side), []).append(result)
        lines = [
            f"{datetime.date.today().isoformat()}, {_cpu_name()}, {os.cpu_count()} CPUs, {platform.system()}, "
            f"python {platform.python_version()}; {rounds} round(s) x {runs} run(s), medians; ours: segment "
            f"everything with a {points_per_side}x{points_per_side} grid (SAM(file).predict(image), fast mode), "
            f"Ultralytics: model(image) ({ULTRALYTICS_GRID}x{ULTRALYTICS_GRID} grid for SAM); "
            f"threads: {threads or 'torch default'}.",
            "",
            "| model | file | weights | size MB | params M | ours ms/image | ours image to first mask ms | "
            "Ultralytics ms/image | ours / Ultralytics | brief size MB | brief params M | brief ms/image (M4 Pro) |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            path, random = files[row.key]
            ours, theirs = results.get((row.key, "ours")), results.get((row.key, "ultralytics"))
            size = f"{path.stat().st_size / 1e6:.1f}" if path else "-"
            params = (ours or theirs or [{}])[0].get("params")
            ms = _median_ms(ours, "everything_s") if ours else failures.get((row.key, "ours"), "-")
            first = _median_ms(ours, "first_mask_s") if ours else "-"
            if theirs:
                ul = _median_ms(theirs, "s")
            else:
                ul = failures.get((row.key, "ultralytics"), "not installed" if not ultralytics else "-")
            ratio = f"{float(ms) / float(ul):.2f}x" if ours and theirs else "-"
            origin = "random" if random else "file"
            if random and not row.model_type:
                origin = f"random ({row.yaml})"
            params_cell = f"{params / 1e6:.1f}" if params else "-"
            b_size, b_params, b_ms = row.brief
            lines.append(f"| {row.label} | {row.weights} | {origin} | {size} | {params_cell} | {ms} | {first} | {ul} | "
                         f"{ratio} | {b_size:g} | {b_params:g} | {b_ms:g} |")
        randoms = [r.label for r in rows if files[r.key][1]]
        lines += ["", "Random weights (files not in the current folder nor the cache): "
                  + (", ".join(randoms) if randoms else "none") + ". Size MB: the file timed (for random weights, "
                  "their fp32 state_dict; Ultralytics' SAM 2 files are fp16, about half). The brief's figures are "
                  "for reference only (another machine)."]
        if command:
            lines.append(f"Command: {command}")
        return "\n".join(lines)


def _median_ms(samples: list[dict[str, Any]], key: str) -> str:
    return f"{float(np.median([x for s in samples for x in s[key]])) * 1e3:.0f}"
