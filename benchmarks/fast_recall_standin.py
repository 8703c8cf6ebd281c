"""Fast vs exact segment-everything on small hard scenes with the structured stand-in model (seconds, no proxy).

The stand-in is ``tests/test_everything.py``'s colour model (a click returns the connected region of
similar colour; three tolerances, three outputs). For each held-out hard scene (``hard_scenes.py``, 128-192
px): exact mode's masks, fast mode's, how many of exact's no fast mask matches with IoU >= 0.9, and how
many grid points fast mode decoded. ``--src`` runs another tree's package (e.g. ``git archive 8b3495e src``
unpacked), for before/after.

    python benchmarks/fast_recall_standin.py --scenes 8 --points-per-side 16 [--src /tmp/before/src] [--accepted-only]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--src", default=None, help="the src folder of the mobilesam to run (default: this tree's)")
    ap.add_argument("--accepted-only", action="store_true",
                    help="neighbours agree when their accepted masks agree (generator.FAST_ACCEPTED_ONLY)")
    args = ap.parse_args(argv)
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    import mobilesam  # noqa: F401  (before hard_scenes, whose proxy import would put this tree's src first)
    import hard_scenes
    from test_everything import colour_models, mask_iou

    from mobilesam.everything import SamAutomaticMaskGenerator, generator

    generator.FAST_ACCEPTED_ONLY = args.accepted_only
    print(f"mobilesam from {Path(mobilesam.__file__).parent}", flush=True)
    model = colour_models()[1]
    kw = dict(points_per_side=args.points_per_side, progress=False)
    total = missed_all = 0
    for i in range(args.scenes):
        image = hard_scenes.hard_scene(hard_scenes.held_out_seeds(1, i)[0], long_side=(128, 192)).image
        exact = SamAutomaticMaskGenerator(model, **kw).generate(image)
        gen = SamAutomaticMaskGenerator(model, mode="fast", **kw)
        fast = gen.generate(image)
        missed = sum(max((mask_iou(e["segmentation"], f["segmentation"]) for f in fast), default=0.0) < 0.9
                     for e in exact)
        total, missed_all = total + len(exact), missed_all + missed
        print(f"scene {i} {image.shape[1]}x{image.shape[0]}: exact {len(exact)}, fast {len(fast)}, missed {missed}, "
              f"points decoded {gen.counts.points} of {args.points_per_side ** 2}", flush=True)
    print(f"recall {(total - missed_all) / max(total, 1):.3f} ({total - missed_all} of {total})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
