"""Segment everything: the official generator vs ``mode="exact"`` vs ``mode="fast"``, in one run.

On the proxy checkpoint (``benchmarks/proxy.py``; rebuilt when missing) and held-out synthetic scenes
with known instances. Each method runs in its own process (clean peak memory) on the same scenes:
seconds per image, speed-up over the official generator, masks per image, recall of the ground-truth
instances (mask IoU >= 0.5), recall of the exact mode's masks by the fast mode (IoU >= 0.9), and peak
resident memory. Writes a JSON file and the "Segment everything" section of ``benchmarks/RESULTS.md``.

    python benchmarks/bench_everything.py --scenes 4 --threads 2
    python benchmarks/bench_everything.py --from-json results.json    # only rewrite RESULTS.md
    python benchmarks/bench_everything.py --methods fast,fast@openvino-bf16 --results /tmp/ev.md   # fast mode
        on another backend: METHOD@BACKEND (the generator's ``backend=``)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import proxy  # noqa: E402

METHODS = ("official", "exact", "fast", "fast_noskip")
LABELS = {"fast_noskip": "fast, no point skipping"}
SECTION = "## Segment everything"
SCENE_SEED = 555_000_000


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_worker(args: argparse.Namespace) -> None:
    """Time one method on every scene; write times, memory and the masks (COCO RLE) as JSON."""
    import torch

    from mobilesam.masks import encode_rle

    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    kw = dict(points_per_side=args.points_per_side)
    if args.worker == "official":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mobile_sam import SamAutomaticMaskGenerator as Official
            from mobile_sam import sam_model_registry
        model = sam_model_registry["vit_t"](checkpoint=args.checkpoint).to(args.device)
        model.train()  # the official TinyViT caches attention biases on eval()
        model.eval()
        gen = Official(model, **kw)
        small = Official(model, points_per_side=4)
    else:
        from mobilesam import build_sam
        from mobilesam.everything import SamAutomaticMaskGenerator

        model = build_sam(args.checkpoint, device=args.device)
        method, _, backend = args.worker.partition("@")
        mode = "fast" if method == "fast_noskip" else method
        if method == "fast_noskip":
            import mobilesam.everything.generator as generator_module

            generator_module.FAST_CONFIRM_IOU = float("inf")  # no mask is ever confirmed: no point skipped
        gen = SamAutomaticMaskGenerator(model, mode=mode, backend=backend or "torch", **kw)
        small = SamAutomaticMaskGenerator(gen.predictor, mode=mode, points_per_side=4)
    scenes = [proxy.make_scene(SCENE_SEED + i) for i in range(args.scenes)]
    small.generate(scenes[0].image)  # warm-up: first-call allocations and kernel selection
    base = _rss_mb()
    out = {"method": args.worker, "seconds": [], "masks": [], "baseline_rss_mb": round(base, 1)}
    for sc in scenes:
        t = time.perf_counter()
        recs = gen.generate(sc.image)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        out["seconds"].append(time.perf_counter() - t)
        out["masks"].append([encode_rle(r["segmentation"]) for r in recs])
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(args.worker_out).write_text(json.dumps(out))


def _ious(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Mask IoU matrix (len(a), len(b))."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    fa = np.stack(a).reshape(len(a), -1).astype(np.float32)
    fb = np.stack(b).reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    return inter / np.maximum(fa.sum(1)[:, None] + fb.sum(1)[None] - inter, 1)


def _share(pairs: list[tuple[int, int]]) -> float | None:
    total = sum(b for _, b in pairs)
    return round(sum(a for a, _ in pairs) / total, 3) if total else None


def _recall(ref: list[np.ndarray], found: list[np.ndarray], thresh: float) -> tuple[int, int]:
    if not ref:
        return 0, 0
    return int((_ious(ref, found).max(1, initial=0) >= thresh).sum()), len(ref)


def evaluate(results: dict[str, dict], scenes: list) -> dict:
    from mobilesam.masks import decode_rle

    masks = {m: [[decode_rle(r) for r in per] for per in res["masks"]] for m, res in results.items()}
    table = {}
    off_time = float(np.mean(results["official"]["seconds"])) if "official" in results else None
    for m, res in results.items():
        sec = float(np.mean(res["seconds"]))
        gt = [_recall(sc.instance_masks(), ms, 0.5) for sc, ms in zip(scenes, masks[m])]
        row = {
            "seconds_per_image": round(sec, 2),
            "speedup_vs_official": round(off_time / sec, 2) if off_time else None,
            "masks_per_image": round(float(np.mean([len(x) for x in masks[m]])), 1),
            "gt_recall": _share(gt),
            "peak_rss_mb": res["peak_rss_mb"],
            "peak_minus_baseline_mb": round(max(0.0, res["peak_rss_mb"] - res["baseline_rss_mb"]), 1),
        }
        table[m] = row
    for fast in [m for m in masks if m.startswith("fast")]:
        if "exact" in masks:
            hits = [_recall(e, f, 0.9) for e, f in zip(masks["exact"], masks[fast])]
            table[fast]["recall_of_exact_masks"] = _share(hits)
    if "exact" in masks and "official" in masks:
        same = [_recall(o, e, 0.99) for o, e in zip(masks["official"], masks["exact"])]
        table["exact"]["official_masks_reproduced"] = _share(same)
    return table


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        SECTION,
        "",
        (
            f"Proxy checkpoint (`benchmarks/proxy.py`: set colour encoder, trained decoder; point mIoU "
            f"{s.get('proxy_point_miou', '?')}), {s['scenes']} held-out synthetic scenes "
            f"({s['scene_sizes']}), `points_per_side={s['points_per_side']}`, other settings at their defaults, "
            f"device `{s['device']}` with {s['threads']} thread(s) on {s['machine']}. Each method in its own process."
        ),
        "",
        (
            "| method | s / image | speed-up vs official | masks / image | GT recall (IoU>=0.5) "
            "| exact masks found (IoU>=0.9) | peak RSS MB (over baseline) |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in report["table"]:
        r = report["table"].get(m)
        if not r:
            continue
        found = r.get("recall_of_exact_masks")
        lines.append(
            f"| {LABELS.get(m, m)} | {r['seconds_per_image']} | {r['speedup_vs_official'] or '-'}x "
            f"| {r['masks_per_image']} "
            f"| {r['gt_recall']} | {found if found is not None else '-'} | {r['peak_rss_mb']} "
            f"({r['peak_minus_baseline_mb']}) |"
        )
    reproduced = report["table"].get("exact", {}).get("official_masks_reproduced")
    if reproduced is not None:
        lines += ["", f"Exact mode reproduced {reproduced:.1%} of the official masks with IoU >= 0.99."]
    miou = s.get("proxy_point_miou")
    if miou is None or miou < 0.6:
        lines += ["", (f"**Warning:** the proxy's point mIoU ({miou}) is below the 0.6 it needs to behave like "
                       "a trained model; these numbers say little about a real checkpoint.")]
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, leaving the others alone."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[end + 1 :] if end >= 0 else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new.rstrip("\n") + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxy-dir", default=None, help="folder of the proxy shards (default $MOBILESAM_HOME/proxy)")
    ap.add_argument("--rebuild-minutes", type=float, default=40.0,
                    help="train the proxy this long when missing; default: %(default)s")
    ap.add_argument("--scenes", type=int, default=4, help="held-out scenes")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 2)), help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="fast,exact,official,fast_noskip",
                    help="comma-separated subset of official,exact,fast,fast_noskip (fast mode with the point "
                    "skipping switched off, to show what each part of it costs and finds)")
    ap.add_argument("--json", default=None, help="also write the full results here (for --from-json)")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file to update")
    ap.add_argument("--max-minutes", type=float, default=0, help="skip the methods left after this long (0: no limit)")
    ap.add_argument("--from-json", default=None, help="only rewrite the markdown section from an earlier JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        write_section(Path(args.results), markdown(report))
        print(markdown(report))
        return 0

    ckpt = proxy.proxy_checkpoint(args.proxy_dir, args.rebuild_minutes,
                                  "cuda" if _cuda_available() else "cpu")
    meta = json.loads((Path(args.proxy_dir or proxy.default_dir()) / "proxy.json").read_text())
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted({m for m in methods if m.partition("@")[0] not in METHODS})
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    scenes = [proxy.make_scene(SCENE_SEED + i) for i in range(args.scenes)]
    settings = {
        "scenes": args.scenes,
        "scene_sizes": ", ".join(sorted({f"{s.image.shape[1]}x{s.image.shape[0]}" for s in scenes})),
        "points_per_side": args.points_per_side,
        "device": args.device,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "proxy_point_miou": meta.get("point_miou"),
        "proxy_generator_recall": meta.get("generator_recall"),
    }
    command = "python benchmarks/bench_everything.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, dict] = {}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            if args.max_minutes and time.time() - start > 60 * args.max_minutes:
                print(f"{m}: skipped, over --max-minutes {args.max_minutes}", flush=True)
                continue
            out = Path(tmp) / f"{m}.json"
            cmd = [sys.executable, __file__, "--worker", m, "--worker-out", str(out), "--checkpoint", str(ckpt),
                   "--scenes", str(args.scenes), "--points-per-side", str(args.points_per_side),
                   "--threads", str(args.threads), "--device", args.device]
            t = time.time()
            subprocess.run(cmd, check=True)
            results[m] = json.loads(out.read_text())
            print(f"{m}: {np.mean(results[m]['seconds']):.2f} s/image ({time.time() - t:.0f} s in all)", flush=True)
            # Written after every method, so a run stopped by a time limit keeps what it measured.
            report = {
                "settings": settings,
                "table": evaluate(results, scenes),
                "seconds": {k: [round(x, 2) for x in r["seconds"]] for k, r in results.items()},
                "command": command,
            }
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=2))
            write_section(Path(args.results), markdown(report))
    print(markdown(report))
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    raise SystemExit(main())
