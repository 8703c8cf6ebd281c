"""How much polygon simplification (``simplify``, OpenCV approxPolyDP tolerance in pixels) costs in mask IoU,
and how many points it saves: the measurement behind ``mobilesam.masks.DEFAULT_SIMPLIFY``.

Masks that look real: object silhouettes from scikit-image's sample photographs (horse, coins, the camera
man, the astronaut's helmet region), the proxy benchmark's synthetic scene shapes, each also passed through
SAM's output path (a 256 x 256 logit grid upsampled bilinearly to full size, as SAM's masks are made), and,
apart, random speckle (the noisy masks of random weights). For each tolerance: the polygon of every mask
(all parts joined, as the YOLO writers do) is rasterised and compared with the mask.

    python benchmarks/polygon_simplify.py            # prints a markdown table and a JSON line
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mobilesam.masks import mask_iou, mask_to_polygons, polygons_to_mask  # noqa: E402

TOLERANCES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


def sam_like(mask: np.ndarray) -> np.ndarray:
    """The mask as SAM would draw it: logits on a 256-long grid, upsampled bilinearly, thresholded at 0."""
    h, w = mask.shape
    s = 256 / max(h, w)
    small = cv2.resize(mask.astype(np.float32) * 2 - 1, (max(1, round(w * s)), max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > 0


def real_masks() -> list[np.ndarray]:
    from skimage import data, filters, measure, transform

    out = [~data.horse().astype(bool)]
    coins = data.coins()
    labels = measure.label(coins > filters.threshold_otsu(coins))
    out += [labels == r.label for r in measure.regionprops(labels) if r.area > 400]
    cam = data.camera()
    lab = measure.label(cam < filters.threshold_otsu(cam))
    out.append(lab == max(measure.regionprops(lab), key=lambda r: r.area).label)
    astro = data.astronaut()[..., 0]
    lab = measure.label(astro > 200)
    out.append(lab == max(measure.regionprops(lab), key=lambda r: r.area).label)
    # Upscaled to the sizes users label (1024-2048 px): the outline keeps its shape, with more contour points.
    out += [transform.resize(m, (m.shape[0] * 3, m.shape[1] * 3), order=0).astype(bool) for m in out[:3]]
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        from proxy import make_scene

        for seed in range(6):
            scene = make_scene(seed, (768, 1024))
            out += [np.asarray(m, bool) for m in scene.instance_masks()[:5]]
    except Exception as e:  # noqa: BLE001 - the proxy module is optional here
        print(f"(proxy scenes left out: {e})", file=sys.stderr)
    return [m for m in out if m.sum() > 100]


def speckle(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        noise = cv2.GaussianBlur(rng.normal(size=(720, 1280)).astype(np.float32), (0, 0), 1.2)
        out.append(noise > 0.05)
    return out


def measure_set(masks: list[np.ndarray]) -> dict[float, dict[str, float]]:
    """Per tolerance: IoU of the polygon's raster with the mask, and with the exact polygon's raster (what the
    simplification itself costs: the exact outline already loses holes and one-pixel details)."""
    res = {}
    exact = [polygons_to_mask(mask_to_polygons(m, "all"), m.shape) for m in masks]
    for tol in TOLERANCES:
        ious, rel, points = [], [], []
        for m, e in zip(masks, exact):
            polys = mask_to_polygons(m, "all", simplify=tol)
            r = polygons_to_mask(polys, m.shape)
            ious.append(float(mask_iou(r, m)))
            rel.append(float(mask_iou(r, e)))
            points.append(sum(len(p) for p in polys))
        res[tol] = {"iou_min": min(ious), "iou_mean": float(np.mean(ious)), "vs_exact_min": min(rel),
                    "vs_exact_mean": float(np.mean(rel)), "points_mean": float(np.mean(points))}
    return res


def main() -> int:
    sets = {"real": real_masks()}
    sets["real, SAM-drawn"] = [sam_like(m) for m in sets["real"]]
    sets["random speckle"] = speckle()
    out = {}
    print("| masks | n | tolerance (px) | IoU with mask: min | mean | IoU with exact polygon: min | mean | points |")
    print("|---|---|---|---|---|---|---|---|")
    for name, masks in sets.items():
        res = measure_set(masks)
        out[name] = res
        for tol, r in res.items():
            print(f"| {name} | {len(masks)} | {tol} | {r['iou_min']:.4f} | {r['iou_mean']:.4f} | "
                  f"{r['vs_exact_min']:.4f} | {r['vs_exact_mean']:.4f} | {r['points_mean']:.0f} |")
    print(json.dumps({k: {str(t): v for t, v in r.items()} for k, r in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
