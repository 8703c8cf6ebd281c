"""Trace every mask that exact segment-everything finds and fast mode misses to the decision that lost it.

Exact mode is run with its per-batch step wrapped, which gives every candidate mask that passed the
official filters (before NMS) and the NMS result; fast mode is run with a ``FastTrace``
(``mobilesam.everything.fast_trace``). A mask of exact mode is *missed* when no fast mask overlaps it
with IoU >= 0.9. For each one, every exact candidate that gives the same mask (IoU >= 0.9: the grid points
that return it) is looked up in fast mode's trace, and the miss is put down to:

- ``skipped``: fast mode decoded none of those points (point skipping);
- ``stability_low`` / ``edge_low``: decoded, but the low-resolution stability (or crop-edge) filter
  removed every candidate;
- ``nms_low_res_box``: suppressed in fast mode's NMS by a mask whose full-resolution box overlaps it at
  most ``box_nms_thresh``: only the 4x coarser low-resolution box made them overlap;
- ``nms_chain``: suppressed by a mask that exact mode had itself suppressed (or never had): an upstream
  difference changed the greedy NMS;
- ``nms_order``: suppressed by a mask that exact mode also keeps, with a full-resolution box overlap above
  the threshold: NMS visited them in another order (ties or near-ties in predicted IoU);
- ``stability_full`` / ``edge_full``: rejected at full resolution (should not happen: same logits).

    python benchmarks/trace_fast_misses.py --scenes 16 --points-per-side 32 --json /tmp/trace.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from hard_scenes import hard_scene, held_out_seeds  # noqa: E402

from mobilesam.everything import SamAutomaticMaskGenerator  # noqa: E402
from mobilesam.everything.amg import area_from_rle, box_iou, nms, rle_to_mask  # noqa: E402
from mobilesam.everything.fast_trace import FastTrace  # noqa: E402

MATCH_IOU = 0.9


def exact_candidates(gen: SamAutomaticMaskGenerator, image: np.ndarray) -> tuple[list[dict], dict]:
    """Exact mode's output and every candidate that passed its filters (crop 0 only), with the NMS result:
    (records, {"points", "iou", "boxes", "rles", "keep", "by"}) where ``by[j]`` is the candidate that
    suppressed candidate j (-1 if kept)."""
    cands: list = []
    original = gen._process_batch

    def wrapped(*a, **k):
        data = original(*a, **k)
        cands.append(data)
        return data

    gen._process_batch = wrapped
    try:
        records = gen.generate(image)
    finally:
        del gen._process_batch
    pts = torch.cat([c["points"] for c in cands]).numpy()
    iou = torch.cat([c["iou_preds"] for c in cands])
    boxes = torch.cat([c["boxes"] for c in cands]).float()
    rles = [r for c in cands for r in c["rles"]]
    keep = nms(boxes, iou, gen.box_nms_thresh).tolist()
    by = np.full(len(rles), -1)
    if keep:
        order = sorted(keep, key=lambda i: -float(iou[i]))
        overlap = box_iou(boxes)[:, order] > gen.box_nms_thresh
        for j in set(range(len(rles))) - set(keep):
            hit = overlap[j].nonzero().flatten()
            by[j] = order[int(hit[0])] if len(hit) else -2
    return records, {"points": pts, "iou": iou.numpy(), "boxes": boxes.numpy(), "rles": rles, "keep": keep, "by": by}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(box_iou(torch.as_tensor(np.stack([a, b]), dtype=torch.float))[0, 1])


def trace_scene(gen_exact: SamAutomaticMaskGenerator, gen_fast: SamAutomaticMaskGenerator, image: np.ndarray) -> dict:
    """Exact and fast mode on ``image`` (no crops); every missed exact mask with its cause."""
    t = time.perf_counter()
    exact, cand = exact_candidates(gen_exact, image)
    t_exact = time.perf_counter() - t
    gen_fast.trace = trace = FastTrace()
    t = time.perf_counter()
    fast = gen_fast.generate(image)
    t_fast = time.perf_counter() - t
    gen_fast.trace = None
    ct = trace.crops[0]
    grid = {tuple(np.round(p, 3)): i for i, p in enumerate(ct.points)}
    decoded, skipped = set(ct.decoded), set(ct.skipped)
    areas = np.array([area_from_rle(r) for r in cand["rles"]])
    fast_masks = [r["segmentation"] for r in fast]
    misses = []
    for e in exact:
        m = e["segmentation"]
        if max((_iou(m, f) for f in fast_masks), default=0.0) >= MATCH_IOU:
            continue
        area = int(m.sum())
        ys, xs = np.nonzero(m)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        # Exact candidates giving this mask: area within the IoU bound, then the IoU itself.
        near = np.nonzero((areas >= MATCH_IOU * area) & (areas <= area / MATCH_IOU))[0]
        same = [j for j in near if _iou(m, rle_to_mask(cand["rles"][j])) >= MATCH_IOU]
        sources = []
        for j in same:
            p = grid.get(tuple(np.round(cand["points"][j], 3)))
            if p is None or p in skipped or p not in decoded:
                sources.append({"point": p, "fate": "skipped"})
                continue
            outs = [(abs(v["iou"] - float(cand["iou"][j])), k) for (q, k), v in ct.candidates.items() if q == p]
            k = min(outs)[1]
            rec = dict(ct.candidates[(p, k)], point=p, output=k)
            if rec["fate"] == "suppressed" and rec["by"] is not None:
                rec["cause"] = _suppression_cause(rec["by"], ct, grid, cand, box, gen_exact.box_nms_thresh)
            sources.append(rec)
        fates = Counter(s["fate"] for s in sources)
        if not sources or fates["skipped"] == len(sources):
            cause = "skipped"
        elif fates["suppressed"]:
            cause = Counter(s.get("cause", "nms_chain") for s in sources if s["fate"] == "suppressed").most_common(1)[0][0]
        else:
            cause = next(f for f in ("stability_low", "edge_low", "stability_full", "edge_full", "pred_iou", "kept")
                         if fates[f])
        misses.append({
            "area": area, "box": box.tolist(), "predicted_iou": e["predicted_iou"],
            "stability_score": e["stability_score"], "point": e["point_coords"][0], "cause": cause,
            "sources": len(same), "decoded_sources": len(same) - fates["skipped"], "fates": dict(fates),
        })
    return {
        "exact_masks": len(exact), "fast_masks": len(fast), "missed": len(misses), "misses": misses,
        "exact_seconds": round(t_exact, 2), "fast_seconds": round(t_fast, 2),
        "decoded_points": len(ct.decoded), "grid_points": len(ct.points),
    }


def _suppression_cause(by: tuple[int, int], ct, grid: dict, cand: dict, box: np.ndarray, thresh: float) -> str:
    """Why the suppressor ``by`` (point, output) of fast mode suppressed a mask exact mode keeps."""
    p, _ = by
    xy = ct.points[p]
    iou_by = ct.candidates[by]["iou"]
    # The same candidate in exact mode: same point, nearest predicted IoU.
    js = [j for j in range(len(cand["rles"]))
          if abs(cand["points"][j][0] - xy[0]) < 1e-3 and abs(cand["points"][j][1] - xy[1]) < 1e-3]
    if not js:
        return "nms_chain"  # exact mode filtered it out at full resolution: not among its candidates
    j = min(js, key=lambda j: abs(cand["iou"][j] - iou_by))
    if abs(cand["iou"][j] - iou_by) > 1e-3:
        return "nms_chain"
    if _box_iou(cand["boxes"][j], box) <= thresh:
        return "nms_low_res_box"
    return "nms_order" if j in cand["keep"] else "nms_chain"


def load_model(checkpoint: str | None, device: str):
    from mobilesam import build_sam

    if checkpoint is None:
        import proxy

        checkpoint = str(proxy.proxy_checkpoint())
    return build_sam(checkpoint, device=device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="model (default: the proxy, benchmarks/proxy.py)")
    ap.add_argument("--scenes", type=int, default=16, help="held-out hard scenes; default: %(default)s")
    ap.add_argument("--start", type=int, default=0, help="first held-out scene index; default: %(default)s")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--long-side", default="640,1280", help="scene long side range in pixels; default: %(default)s")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write every miss here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, args.device)
    kw = dict(points_per_side=args.points_per_side, progress=False)
    gen_exact = SamAutomaticMaskGenerator(model, **kw)
    gen_fast = SamAutomaticMaskGenerator(model, mode="fast", **kw)
    long_side = tuple(int(x) for x in args.long_side.split(","))
    out, causes, total, missed = [], Counter(), 0, 0
    for seed in held_out_seeds(args.scenes, args.start):
        sc = hard_scene(seed, long_side=long_side)
        res = dict(trace_scene(gen_exact, gen_fast, sc.image), seed=seed, size=list(sc.image.shape[:2]))
        out.append(res)
        total += res["exact_masks"]
        missed += res["missed"]
        causes.update(m["cause"] for m in res["misses"])
        print(f"{seed} {sc.image.shape[1]}x{sc.image.shape[0]}: exact {res['exact_masks']}, fast {res['fast_masks']}, "
              f"missed {res['missed']} {dict(Counter(m['cause'] for m in res['misses']))}; decoded "
              f"{res['decoded_points']}/{res['grid_points']}; {res['exact_seconds']} s vs {res['fast_seconds']} s",
              flush=True)
    summary = {"exact_masks": total, "missed": missed, "recall": round(1 - missed / max(total, 1), 4),
               "causes": dict(causes)}
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "scenes": out, "argv": sys.argv[1:]}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
