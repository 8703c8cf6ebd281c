"""What Ultralytics' ``imgsz`` (the encoder at another input size, ``mobilesam.input_size``) costs: mask IoU of
``SAM.predict(..., imgsz=S)`` against the native 1024 on the same prompts, and the encoder time.

    python benchmarks/imgsz.py                 # the proxy model when built (benchmarks/proxy.py), else
    python benchmarks/imgsz.py --random        # perturbed random weights (no accuracy meaning: a smoke number)

Prints a markdown table and a JSON line. Times are one run each on a shared machine: ratios only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mobilesam import SAM  # noqa: E402
from mobilesam.masks import mask_iou  # noqa: E402

SIZES = (512, 768, 1024)


def load(random: bool) -> tuple[SAM, str]:
    if not random:
        try:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from proxy import proxy_checkpoint

            return SAM(str(proxy_checkpoint()), device="cpu"), "proxy"
        except Exception as e:  # noqa: BLE001 - fall back, and say so
            print(f"(no proxy model: {e}; using perturbed random weights)", file=sys.stderr)
    sys.path.insert(0, str(ROOT / "tests"))
    from oracle import reference_model

    from mobilesam.modeling import build_model

    sam = build_model("vit_t")
    sam.load_state_dict(reference_model("vit_t", seed=0).state_dict())
    return SAM(sam, device="cpu"), "random (perturbed, seed 0)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", action="store_true", help="perturbed random weights instead of the proxy")
    args = parser.parse_args(argv)
    from skimage import data

    model, weights = load(args.random)
    images = {"astronaut": data.astronaut(), "chelsea": data.chelsea()}
    rows = {}
    for name, img in images.items():
        h, w = img.shape[:2]
        points = [[[w * fx, h * fy]] for fx in (0.3, 0.5, 0.7) for fy in (0.35, 0.65)]
        ref = None
        for size in sorted(SIZES, reverse=True):
            t0 = time.perf_counter()
            r = model.predict(img, points=points, image_format="RGB", imgsz=size, verbose=False)[0]
            dt = time.perf_counter() - t0
            masks = r.masks.data.numpy()
            if ref is None:
                ref = masks
            ious = mask_iou(masks, ref)
            rows.setdefault(size, {"iou": [], "seconds": []})
            rows[size]["iou"] += ious.tolist()
            rows[size]["seconds"].append(dt)
    base = np.mean(rows[1024]["seconds"])
    print(f"weights: {weights}; {len(images)} images x 6 point prompts; machine shared")
    print("| imgsz | mask IoU vs 1024: mean | min | time vs 1024 |")
    print("|---|---|---|---|")
    out = {}
    for size in SIZES:
        iou, sec = np.asarray(rows[size]["iou"]), np.mean(rows[size]["seconds"])
        out[size] = {"iou_mean": float(iou.mean()), "iou_min": float(iou.min()), "time_ratio": float(sec / base)}
        print(f"| {size} | {iou.mean():.4f} | {iou.min():.4f} | {sec / base:.2f} |")
    print(json.dumps({"weights": weights, "results": out}))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    raise SystemExit(main())
