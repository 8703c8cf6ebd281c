"""Hard synthetic scenes for segment-everything benchmarks: closer to photographs than ``proxy.make_scene``.

The proxy is trained on ``proxy.make_scene`` (flat-ish backgrounds, flat-filled shapes, distinct colours).
These scenes differ from that in the ways real photographs do, so a generator tuned on the easy scenes
can be checked where it is likely to break:

- backgrounds are never flat: a linear gradient, smooth noise, stripes, checkers, or a smooth mixture of
  two of them, always with pixel noise;
- objects have textured fills: a gradient, stripes, a checkerboard or smooth noise, in two colours;
- shapes: ellipses, rotated rectangles, polygons, star polygons and rings whose hole shows what lies
  beneath (a real hole, not a disc painted over);
- heavy occlusion: about half of the objects are dropped onto an earlier one; only the visible part of an
  object is its ground truth;
- sizes: 25% small objects (0.15-1% of the image), 20% large ones (8-30%), the rest 1-8%;
- images of 640-1280 px on the long side, aspect 4:3, 3:2, 16:9 or 1:1, a third of them portrait;
- a slight Gaussian blur at the end (sigma 0.4-1.0 px).

Seeded and split: ``hard_scene(seed)`` for any seed, ``held_out_seeds(n)`` for benchmarks and
``train_seeds(n)`` for anyone who wants to train on this kind of scene; the two seed ranges never meet
(``train_seeds`` refuses to reach the held-out range), and the default proxy never sees either (it is
trained on ``proxy.make_scene``).

    python benchmarks/hard_scenes.py --out /tmp/hard --n 16       # write PNGs + label maps to look at
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import Scene, _distinct_colour, visible_instances  # noqa: E402

ASPECTS = ((4, 3), (3, 2), (16, 9), (1, 1))
LONG_SIDE = (640, 1280)
# Area of a whole object (before occlusion) as a fraction of the image: (share of objects, low, high).
SIZE_CLASSES = ((0.25, 0.0015, 0.01), (0.55, 0.01, 0.08), (0.20, 0.08, 0.30))
SHAPES = ("ellipse", "rectangle", "polygon", "star", "ring")
FILLS = ("gradient", "stripes", "checker", "noise")
BACKGROUNDS = ("gradient", "smooth_noise", "stripes", "checker", "mixture")
HELD_OUT_BASE = 777_000_000
TRAIN_BASE = 0
TRAIN_MAX = 100_000_000  # train seeds stay below this; held-out seeds start far above it


def held_out_seeds(n: int, start: int = 0) -> list[int]:
    """Seeds of the benchmark split (never used for training)."""
    return [HELD_OUT_BASE + start + i for i in range(n)]


def train_seeds(n: int, start: int = 0) -> list[int]:
    """Seeds of the training split; disjoint from ``held_out_seeds``."""
    if start < 0 or start + n > TRAIN_MAX:
        raise ValueError(f"train_seeds: expected start >= 0 and start + n <= {TRAIN_MAX}, got {start} + {n}")
    return [TRAIN_BASE + start + i for i in range(n)]


def image_size(rng: np.random.Generator, long_side: tuple[int, int] = LONG_SIDE) -> tuple[int, int]:
    """(h, w): long side uniform in ``long_side``, one of ``ASPECTS``, a third of the images portrait."""
    portrait = rng.random() < 1 / 3
    aspects = ASPECTS[:3] if portrait else ASPECTS  # a square image is neither; keep the third exact
    a, b = aspects[rng.integers(0, len(aspects))]
    long = int(rng.integers(long_side[0], long_side[1] + 1))
    short = int(round(long * b / a))
    return (long, short) if portrait else (short, long)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 3) -> np.ndarray:
    """Smooth random field, about ``cells`` blobs across the long side, zero mean, unit std: (h, w, c)."""
    gh = max(2, int(round(cells * h / max(h, w))) + 1)
    gw = max(2, int(round(cells * w / max(h, w))) + 1)
    field = cv2.resize(rng.normal(0, 1, (gh, gw, channels)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    field = field.reshape(h, w, channels)
    return (field - field.mean((0, 1))) / np.maximum(field.std((0, 1)), 1e-6)


def _coordinate(rng: np.random.Generator, h: int, w: int, angle: float | None = None) -> np.ndarray:
    """Pixel coordinate along a random direction, in pixels: (h, w)."""
    ang = rng.uniform(0, np.pi) if angle is None else angle
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.cos(ang) * xx + np.sin(ang) * yy


def _two_colour(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _pattern(rng: np.random.Generator, kind: str, h: int, w: int, c1: np.ndarray, c2: np.ndarray,
             period: float) -> np.ndarray:
    """A two-colour pattern over (h, w): gradient, stripes, checker or smooth noise -> (h, w, 3) float."""
    if kind == "gradient":
        t = _coordinate(rng, h, w)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return _two_colour(c1, c2, t)
    if kind == "stripes":
        t = _coordinate(rng, h, w) / period
        soft = rng.random() < 0.5  # sinusoidal or hard-edged stripes
        t = 0.5 + 0.5 * np.sin(2 * np.pi * t) if soft else (np.floor(t) % 2).astype(np.float32)
        return _two_colour(c1, c2, t)
    if kind == "checker":
        ang = rng.uniform(0, np.pi / 2)
        u = _coordinate(rng, h, w, ang) / period
        v = _coordinate(rng, h, w, ang + np.pi / 2) / period
        return _two_colour(c1, c2, ((np.floor(u) + np.floor(v)) % 2).astype(np.float32))
    if kind == "smooth_noise":
        t = _smooth_noise(rng, h, w, int(rng.integers(3, 9)), 1)[..., 0]
        return _two_colour(c1, c2, np.clip(0.5 + 0.3 * t, 0, 1))
    if kind == "noise":  # an object's fill: mid-frequency colour noise around c1, towards c2
        t = _smooth_noise(rng, h, w, max(4, int(max(h, w) / period)), 1)[..., 0]
        return _two_colour(c1, c2, np.clip(0.5 + 0.35 * t, 0, 1))
    raise ValueError(f"kind: unknown pattern {kind!r}")


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    kind = BACKGROUNDS[rng.integers(0, len(BACKGROUNDS))]
    c1 = rng.integers(20, 236, 3).astype(np.float32)
    c2 = np.clip(c1 + rng.normal(0, 55, 3), 0, 255).astype(np.float32)
    period = float(rng.uniform(24, 110))
    if kind == "mixture":
        a, b = rng.choice(["gradient", "smooth_noise", "stripes", "checker"], 2, replace=False)
        c3 = np.clip(c1 + rng.normal(0, 55, 3), 0, 255).astype(np.float32)
        blend = np.clip(0.5 + 0.5 * _smooth_noise(rng, h, w, 3, 1), 0, 1)
        bg = _pattern(rng, a, h, w, c1, c2, period) * (1 - blend) + _pattern(rng, b, h, w, c1, c3, period) * blend
    else:
        bg = _pattern(rng, kind, h, w, c1, c2, period)
    return bg, kind


def _star(cx: float, cy: float, r: float, spikes: int, inner: float, rot: float) -> np.ndarray:
    ang = rot + np.arange(2 * spikes) * np.pi / spikes
    rad = np.where(np.arange(2 * spikes) % 2 == 0, r, r * inner)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)


def _shape(kind: str, params: dict, h: int, w: int, r: float) -> np.ndarray:
    """The shape ``kind`` of size ``r`` (pixels) at the centre and orientation in ``params``: (h, w) bool."""
    m = np.zeros((h, w), np.uint8)
    cx, cy, rot = params["cx"], params["cy"], params["rot"]
    if kind == "ellipse":
        axes = (max(1, int(r)), max(1, int(r * params["aspect"])))
        cv2.ellipse(m, (int(cx), int(cy)), axes, float(np.degrees(rot)), 0, 360, 1, -1)
    elif kind == "rectangle":
        box = ((cx, cy), (2 * r, 2 * r * params["aspect"]), float(np.degrees(rot)))
        cv2.fillPoly(m, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    elif kind == "polygon":
        ang = rot + params["angles"]
        rad = r * params["radii"]
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    elif kind == "star":
        pts = _star(cx, cy, r, params["spikes"], params["inner"], rot)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    elif kind == "ring":
        cv2.ellipse(m, (int(cx), int(cy)), (max(2, int(r)), max(2, int(r * params["aspect"]))),
                    float(np.degrees(rot)), 0, 360, 1, -1)
        hole = params["hole"]
        cv2.ellipse(m, (int(cx), int(cy)), (max(1, int(r * hole)), max(1, int(r * params["aspect"] * hole))),
                    float(np.degrees(rot)), 0, 360, 0, -1)
    else:
        raise ValueError(f"kind: unknown shape {kind!r}")
    return m.astype(bool)


def _object(rng: np.random.Generator, h: int, w: int, centre: tuple[float, float], area_frac: float) -> tuple[np.ndarray, str]:
    """A shape of about ``area_frac`` of the image's area at ``centre``: (mask (h, w) bool, kind)."""
    kind = SHAPES[rng.integers(0, len(SHAPES))]
    n = int(rng.integers(5, 10))
    params = dict(cx=centre[0], cy=centre[1], rot=float(rng.uniform(0, 2 * np.pi)), aspect=float(rng.uniform(0.45, 1.0)),
                  angles=np.sort(rng.uniform(0, 2 * np.pi, n)), radii=rng.uniform(0.55, 1.0, n),
                  spikes=int(rng.integers(5, 10)), inner=float(rng.uniform(0.4, 0.65)), hole=float(rng.uniform(0.35, 0.65)))
    target = area_frac * h * w
    r = float(np.sqrt(target / np.pi))
    for _ in range(3):  # rescale until the drawn shape has about the area asked for (unclipped)
        probe = _shape(kind, dict(params, cx=4 * r, cy=4 * r), int(8 * r) + 2, int(8 * r) + 2, r)
        area = max(int(probe.sum()), 1)
        if abs(area / target - 1) < 0.1:
            break
        r *= float(np.sqrt(target / area))
    return _shape(kind, params, h, w, r), kind


def hard_scene(seed: int, long_side: tuple[int, int] = LONG_SIDE, n_objects: tuple[int, int] = (6, 16),
               min_visible: float = 0.001) -> Scene:
    """One hard scene (see the module doc). ``labels`` holds each object's visible part; an object whose
    visible part is under ``min_visible`` of the image (and under 48 px) is not an instance."""
    rng = np.random.default_rng(seed)
    h, w = image_size(rng, long_side)
    bg, _ = _background(rng, h, w)
    img = bg.astype(np.float32)
    labels = np.zeros((h, w), np.int16)
    used = [bg.reshape(-1, 3).mean(0)]
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    shares = np.array([c[0] for c in SIZE_CLASSES])
    for i in range(1, n + 1):
        _, lo, hi = SIZE_CLASSES[rng.choice(len(SIZE_CLASSES), p=shares)]
        frac = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        if i > 1 and rng.random() < 0.5:  # occlude an earlier object: centre within its box
            ys, xs = np.nonzero(labels == rng.integers(1, i))
            if len(ys) == 0:
                ys, xs = np.array([rng.uniform(0, h)]), np.array([rng.uniform(0, w)])
            centre = (float(rng.uniform(xs.min(), xs.max() + 1)), float(rng.uniform(ys.min(), ys.max() + 1)))
        else:
            centre = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        mask, _ = _object(rng, h, w, centre, frac)
        if not mask.any():
            continue
        c1 = _distinct_colour(rng, used, 60.0)
        used.append(c1)
        c2 = np.clip(c1 + rng.normal(0, 45, 3), 0, 255).astype(np.float32)
        fill = FILLS[rng.integers(0, len(FILLS))]
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        tex = _pattern(rng, fill, y1 - y0, x1 - x0, c1, c2, float(rng.uniform(6, 32)))
        sub = mask[y0:y1, x0:x1]
        img[y0:y1, x0:x1][sub] = tex[sub]
        labels[y0:y1, x0:x1][sub] = i
    img += rng.normal(0, rng.uniform(3, 9), img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.0)))
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return Scene(image, *visible_instances(labels, n, max(48, int(min_visible * h * w))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write hard scenes as PNG images and label maps")
    ap.add_argument("--out", required=True, help="folder to write to (created)")
    ap.add_argument("--n", type=int, default=16, help="held-out scenes to write; default: %(default)s")
    ap.add_argument("--start", type=int, default=0, help="first held-out index; default: %(default)s")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in held_out_seeds(args.n, args.start):
        sc = hard_scene(seed)
        cv2.imwrite(str(out / f"hard_{seed}.png"), cv2.cvtColor(sc.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / f"hard_{seed}_labels.png"), sc.labels.astype(np.uint16))
        print(f"{seed}: {sc.image.shape[1]}x{sc.image.shape[0]}, {sc.n_instances} instances", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
