"""The paper's measure: mIoU between student and teacher masks for the same seeded prompts.

For each image, prompts are drawn from a generator seeded by (seed, image index), so every model
sees the same ones, whatever the order or subset of images:

* ``point``: one foreground point, uniform over the image;
* ``two_points``: two foreground points 100 to 500 px apart (original pixels; uniform distance and
  direction, redrawn until both fall inside the image; skipped for images too small to hold them);
* ``box``: a box with sides uniform in [10%, 90%] of the image's width and height, placed uniformly.

Each prompt gives one mask per model (the single-mask output, or with ``multimask`` the mask of
highest predicted IoU); IoU is computed on the full-resolution binary masks (two empty masks count
as 1.0). The embedding MSE is the mean squared difference of the two image embeddings.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..backends import Predictor, create_predictor, get_backend
from ..build import build_sam
from ..device import select_device
from ..io import read_image
from ..masks import mask_iou
from ..modeling import Sam
from .store import EmbeddingStore, list_images

PROMPT_KINDS = ("point", "two_points", "box")
MIN_DIST, MAX_DIST = 100.0, 500.0


def sample_prompts(height: int, width: int, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` prompts of each kind for an image of (height, width) pixels.

    Returns ``point`` (n, 1, 2), ``two_points`` (m, 2, 2) with m <= n, ``box`` (n, 4) XYXY, all in
    original-image pixel coordinates (x, y).
    """
    size = np.array([width, height], dtype=np.float64)
    points = rng.random((n, 1, 2)) * size
    pairs = []
    if math.hypot(width, height) > MIN_DIST:
        for _ in range(n):
            for _try in range(1000):
                p1 = rng.random(2) * size
                d = rng.uniform(MIN_DIST, MAX_DIST)
                a = rng.uniform(0.0, 2.0 * math.pi)
                p2 = p1 + d * np.array([math.cos(a), math.sin(a)])
                if (p2 >= 0).all() and (p2 < size).all():
                    pairs.append(np.stack([p1, p2]))
                    break
    two = np.array(pairs, dtype=np.float64).reshape(-1, 2, 2)
    side = rng.uniform(0.1, 0.9, (n, 2)) * size
    corner = rng.random((n, 2)) * (size - side)
    boxes = np.concatenate([corner, corner + side], axis=1)
    return {"point": points, "two_points": two, "box": boxes}


def _predict(pred: Predictor, kind: str, prompts: np.ndarray, original_size: tuple[int, int], multimask: bool) -> torch.Tensor:
    """Masks (B, H, W) for B prompts of one kind, in one decoder pass."""
    dev = pred.device
    if kind == "box":
        boxes = torch.as_tensor(pred.transform.apply_boxes(prompts, original_size), dtype=torch.float, device=dev)
        masks, scores, _ = pred.predict_torch(None, None, boxes=boxes, multimask_output=multimask)
    else:
        coords = torch.as_tensor(pred.transform.apply_coords(prompts, original_size), dtype=torch.float, device=dev)
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=dev)
        masks, scores, _ = pred.predict_torch(coords, labels, multimask_output=multimask)
    best = scores.argmax(dim=1)  # the only mask without multimask
    return masks[torch.arange(masks.shape[0], device=dev), best]


def _load(model: str | os.PathLike | Sam, device: torch.device) -> Sam:
    sam = model if isinstance(model, Sam) else build_sam(model)
    return sam.to(device).eval()


def validate(
    student: str | os.PathLike | Sam,
    teacher: str | os.PathLike | Sam,
    data: str | os.PathLike,
    *,
    embeddings: str | os.PathLike | None = None,
    prompts: int = 5,
    max_images: int | None = None,
    seed: int = 0,
    multimask: bool = False,
    device: str | torch.device | None = None,
    backend: str = "torch",
    progress: bool = True,
) -> dict[str, Any]:
    """mIoU of student vs teacher masks (overall and per prompt kind) and the embedding MSE.

    ``backend``: where the student runs (a name from ``mobilesam.backends.available_backends()``); the
    teacher runs on torch.
    ``embeddings``: the teacher's stored embeddings (from ``embed``) instead of running its encoder.
    ``prompts``: prompts of each kind per image. ``max_images``: a seeded random subset of the images.
    """
    if not isinstance(prompts, int) or prompts < 1:
        raise ValueError(f"prompts: expected a positive number of prompts per kind and image, got {prompts!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images: expected a positive integer, got {max_images}")
    get_backend(backend)  # an unknown name fails before the models load
    dev = select_device(device)
    s_model, t_model = _load(student, dev), _load(teacher, dev)
    store = EmbeddingStore.open(embeddings) if embeddings is not None else None
    if store is not None and int(store.meta["img_size"]) != t_model.image_encoder.img_size:
        raise ValueError(
            f"embeddings: '{embeddings}' holds embeddings at {store.meta['img_size']} px, the teacher takes "
            f"{t_model.image_encoder.img_size} px"
        )
    rels = list_images(data)
    indices = list(range(len(rels)))
    if max_images is not None and max_images < len(rels):
        indices = sorted(np.random.default_rng(seed).choice(len(rels), max_images, replace=False).tolist())
    s_pred, t_pred = create_predictor(s_model, backend), create_predictor(t_model, "torch")
    ious: dict[str, list[float]] = {k: [] for k in PROMPT_KINDS}
    mses: list[float] = []
    per_image = []
    root = Path(data).expanduser()
    for i in tqdm(indices, desc="val", unit="img", disable=not progress):
        rel = rels[i]
        rgb = read_image(root / rel)
        size = (rgb.shape[0], rgb.shape[1])
        s_pred.set_image(rgb)
        if store is not None:
            t_pred.set_embedding(torch.from_numpy(store.read(rel)).float()[None], size)
        else:
            t_pred.set_image(rgb)
        mse = float(torch.mean((s_pred.get_image_embedding().float() - t_pred.get_image_embedding().float()) ** 2))
        mses.append(mse)
        drawn = sample_prompts(size[0], size[1], prompts, np.random.default_rng([seed, i]))
        record: dict[str, Any] = {"image": rel, "embedding_mse": mse}
        with torch.inference_mode():
            for kind in PROMPT_KINDS:
                if len(drawn[kind]) == 0:
                    record[kind] = []
                    continue
                s_masks = _predict(s_pred, kind, drawn[kind], size, multimask)
                t_masks = _predict(t_pred, kind, drawn[kind], size, multimask)
                values = mask_iou(s_masks, t_masks).cpu().tolist()
                ious[kind].extend(values)
                record[kind] = values
        per_image.append(record)
    everything = [v for k in PROMPT_KINDS for v in ious[k]]
    summary = {  # None where there is nothing to average (JSON has no NaN)
        "miou": float(np.mean(everything)) if everything else None,
        **{f"miou_{k}": float(np.mean(ious[k])) if ious[k] else None for k in PROMPT_KINDS},
        "embedding_mse": float(np.mean(mses)) if mses else None,
        "images": len(indices),
        "prompts": {k: len(ious[k]) for k in PROMPT_KINDS},
    }
    return {
        "summary": summary,
        "settings": {
            "student": str(student) if not isinstance(student, Sam) else "in-memory model",
            "teacher": str(teacher) if not isinstance(teacher, Sam) else "in-memory model",
            "data": str(data),
            "embeddings": str(embeddings) if embeddings is not None else None,
            "prompts_per_kind": prompts,
            "seed": seed,
            "multimask": multimask,
            "backend": backend,
        },
        "images": per_image,
    }


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a small aligned text table."""
    def num(v: float | None, fmt: str = ".4f") -> str:
        return "n/a" if v is None else format(v, fmt)

    rows = [("prompt", "mIoU", "prompts")]
    for k in PROMPT_KINDS:
        rows.append((k, num(summary[f"miou_{k}"]), str(summary["prompts"][k])))
    rows.append(("all", num(summary["miou"]), str(sum(summary["prompts"].values()))))
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    lines = ["  ".join(r[c].ljust(widths[c]) if c == 0 else r[c].rjust(widths[c]) for c in range(3)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"embedding MSE {num(summary['embedding_mse'], '.6g')} over {summary['images']} image(s)")
    return "\n".join(lines)
