"""Segment everything: the official generator vs ``mode="exact"`` vs ``mode="fast"``, in one run.

On the proxy checkpoint (``benchmarks/proxy.py``; rebuilt when missing) and held-out synthetic scenes
with known instances: the proxy's own kind (``--scene-set proxy``) or the hard ones of
``benchmarks/hard_scenes.py`` (``--scene-set hard``: textured backgrounds and fills, rings, stars,
occlusion, small and large objects, 640-1280 px). Each method runs in its own process (clean peak
memory) on the same scenes: seconds per image, speed-up over the official generator, masks per image,
recall of the ground-truth instances (mask IoU >= 0.5), recall of the official generator's masks by the
fast mode (IoU >= 0.9; of exact mode's when the official generator is not run), and peak resident
memory, then the same per scene. Writes a JSON file and this scene set's section of
``benchmarks/RESULTS.md``.

``fast_before`` runs fast mode from another source tree (``--before-src``, e.g. a ``git worktree`` of an
earlier commit), in the same run, for before/after tables.

    python benchmarks/bench_everything.py --scenes 4 --threads 2
    python benchmarks/bench_everything.py --scene-set hard --scenes 16 --methods official,fast,fast_before \
        --before-src /tmp/before/src
    python benchmarks/bench_everything.py --from-json results.json    # only rewrite RESULTS.md

Each worker records wall and CPU seconds per scene (CPU seconds of a one-thread worker measure its work
whatever else a shared machine runs) and writes its output after every scene; ``--workers-dir`` keeps
those outputs and ``--reuse`` evaluates them without re-running (the table then covers the scenes every
method finished). ``--long-side 320,480`` makes the hard scenes smaller, for a quick run.

Fast mode on another backend: METHOD@BACKEND (the generator's ``backend=``)::

    python benchmarks/bench_everything.py --methods fast,fast@openvino-bf16 --results /tmp/ev.md
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
if os.environ.get("MOBILESAM_BENCH_SRC"):  # the ``fast_before`` worker: another tree's package, ahead of ours
    sys.path.insert(0, os.environ["MOBILESAM_BENCH_SRC"])

import hard_scenes  # noqa: E402
import proxy  # noqa: E402

METHODS = ("official", "exact", "fast", "fast_accepted", "fast_noskip", "fast_before")
LABELS = {"fast_noskip": "fast, no point skipping", "fast_before": "fast, before (--before-src)",
          "fast_accepted": "fast, neighbours agree on accepted masks only (FAST_ACCEPTED_ONLY)"}
FAST_METHODS = ("fast", "fast_accepted", "fast_noskip", "fast_before")
SECTIONS = {"proxy": "## Segment everything", "hard": "## Segment everything on hard scenes"}
SCENE_SEED = 555_000_000


def make_scene(scene_set: str, k: int, long_side: tuple[int, int] = hard_scenes.LONG_SIDE):
    """Held-out scene ``k`` of ``scene_set``: the proxy's own kind, or a hard one (``long_side`` px)."""
    if scene_set == "hard":
        return hard_scenes.hard_scene(hard_scenes.held_out_seeds(1, k)[0], long_side=long_side)
    return proxy.make_scene(SCENE_SEED + k)


def make_scenes(scene_set: str, n: int, long_side: tuple[int, int] = hard_scenes.LONG_SIDE) -> list:
    """The first ``n`` held-out scenes of ``scene_set``."""
    return [make_scene(scene_set, k, long_side) for k in range(n)]


def _long_side(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH pixels (e.g. 640,1280), got {text!r}") from None
    if not 64 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 64 <= LOW <= HIGH, got {text!r}")
    return lo, hi


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
        import mobilesam
        from mobilesam import build_sam
        from mobilesam.everything import SamAutomaticMaskGenerator

        print(f"{args.worker}: mobilesam from {Path(mobilesam.__file__).parent}", flush=True)
        model = build_sam(args.checkpoint, device=args.device)
        method, _, backend = args.worker.partition("@")
        mode = "exact" if method == "exact" else "fast"
        if method == "fast_noskip":
            import mobilesam.everything.generator as generator_module

            if hasattr(generator_module, "FAST_SKIP"):
                generator_module.FAST_SKIP = False
            else:  # the fast mode before issue 20: no mask is ever confirmed, so no point is skipped
                generator_module.FAST_CONFIRM_IOU = float("inf")
        if method == "fast_accepted":
            import mobilesam.everything.generator as generator_module

            generator_module.FAST_ACCEPTED_ONLY = True
        gen = SamAutomaticMaskGenerator(model, mode=mode, backend=backend or "torch", progress=False, **kw)
        small = SamAutomaticMaskGenerator(gen.predictor, mode=mode, points_per_side=4, progress=False)
    # Scenes made one at a time (a 1280 px hard scene takes a while): a worker stopped early keeps its first ones.
    small.generate(make_scene(args.scene_set, 0, args.long_side).image)  # warm-up: first-call allocations and kernel selection
    base = _rss_mb()
    out = {"method": args.worker, "seconds": [], "cpu_seconds": [], "masks": [], "baseline_rss_mb": round(base, 1)}
    for k in range(args.scenes):
        sc = make_scene(args.scene_set, k, args.long_side)
        t, c = time.perf_counter(), time.process_time()
        recs = gen.generate(sc.image)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        out["seconds"].append(time.perf_counter() - t)
        # CPU seconds of this process: what a method costs, whatever else the (shared) machine runs.
        out["cpu_seconds"].append(time.process_time() - c)
        out["masks"].append([encode_rle(r["segmentation"]) for r in recs])
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        # After every scene, atomically: a run stopped by a deadline keeps the scenes it finished.
        tmp = Path(args.worker_out + ".tmp")
        tmp.write_text(json.dumps(out))
        os.replace(tmp, args.worker_out)


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

    # Only the scenes every method finished (a worker stopped by a deadline keeps its first scenes).
    n = min([len(scenes)] + [len(r["seconds"]) for r in results.values()])
    scenes = scenes[:n]
    results = {m: {k: (v[:n] if isinstance(v, list) else v) for k, v in r.items()} for m, r in results.items()}
    masks = {m: [[decode_rle(r) for r in per] for per in res["masks"]] for m, res in results.items()}
    table = {}
    # Speed-ups against the official generator; against exact mode (its masks, tested) when it was not run.
    speed_ref = "official" if "official" in results else "exact" if "exact" in results else None
    off_time = float(np.mean(results[speed_ref]["seconds"])) if speed_ref else None
    off_cpu = (float(np.mean(results[speed_ref]["cpu_seconds"]))
               if speed_ref and results[speed_ref].get("cpu_seconds") else None)
    for m, res in results.items():
        sec = float(np.mean(res["seconds"]))
        cpu = float(np.mean(res["cpu_seconds"])) if res.get("cpu_seconds") else None
        gt = [_recall(sc.instance_masks(), ms, 0.5) for sc, ms in zip(scenes, masks[m])]
        row = {
            "seconds_per_image": round(sec, 2),
            "speedup_vs_official": round(off_time / sec, 2) if off_time else None,
            "cpu_seconds_per_image": round(cpu, 2) if cpu is not None else None,
            "cpu_speedup_vs_official": round(off_cpu / cpu, 2) if off_cpu and cpu else None,
            "masks_per_image": round(float(np.mean([len(x) for x in masks[m]])), 1),
            "gt_recall": _share(gt),
            "peak_rss_mb": res["peak_rss_mb"],
            "peak_minus_baseline_mb": round(max(0.0, res["peak_rss_mb"] - res["baseline_rss_mb"]), 1),
        }
        table[m] = row
    ref = "official" if "official" in masks else "exact" if "exact" in masks else None
    per_scene = []
    for k in range(len(scenes)):
        row = {m: {"masks": len(masks[m][k]), "seconds": round(results[m]["seconds"][k], 2)} for m in results}
        for m in results:
            if results[m].get("cpu_seconds"):
                row[m]["cpu_seconds"] = round(results[m]["cpu_seconds"][k], 2)
        per_scene.append(row)
    for fast in [m for m in masks if m.partition("@")[0] in FAST_METHODS]:
        if ref and fast in masks:
            hits = [_recall(e, f, 0.9) for e, f in zip(masks[ref], masks[fast])]
            table[fast]["recall_of_exact_masks"] = _share(hits)
            table[fast]["recall_reference"] = ref
            for row, (a, b) in zip(per_scene, hits):
                row[fast]["found"] = a
    if "exact" in masks and "official" in masks:
        same = [_recall(o, e, 0.99) for o, e in zip(masks["official"], masks["exact"])]
        table["exact"]["official_masks_reproduced"] = _share(same)
    return {"table": table, "per_scene": per_scene, "scenes_evaluated": n, "speed_reference": speed_ref}


def markdown(report: dict) -> str:
    s = report["settings"]
    scene_set = s.get("scene_set", "proxy")
    kind = ("held-out hard scenes (`benchmarks/hard_scenes.py`)" if scene_set == "hard"
            else "held-out synthetic scenes")
    ref = next((r.get("recall_reference") for r in report["table"].values() if r.get("recall_reference")), "exact")
    vs = report.get("speed_reference") or "official"
    lines = [
        SECTIONS[scene_set],
        "",
        (
            f"Proxy checkpoint (`benchmarks/proxy.py`: set colour encoder, trained decoder; point mIoU "
            f"{s.get('proxy_point_miou', '?')}), {report.get('scenes_evaluated', s['scenes'])} {kind} "
            f"({s['scene_sizes']}), `points_per_side={s['points_per_side']}`, other settings at their defaults, "
            f"device `{s['device']}` with {s['threads']} thread(s) on {s['machine']}. Each method in its own process."
        ),
        "",
        (
            f"| method | s / image | speed-up vs {vs} | CPU s / image | CPU speed-up vs {vs} | masks / image "
            f"| GT recall (IoU>=0.5) | {ref} masks found (IoU>=0.9) | peak RSS MB (over baseline) |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in report["table"]:
        r = report["table"].get(m)
        if not r:
            continue
        found = r.get("recall_of_exact_masks")
        lines.append(
            f"| {LABELS.get(m, m)} | {r['seconds_per_image']} | {r['speedup_vs_official'] or '-'}x "
            f"| {r.get('cpu_seconds_per_image') or '-'} | {r.get('cpu_speedup_vs_official') or '-'}x "
            f"| {r['masks_per_image']} "
            f"| {r['gt_recall']} | {found if found is not None else '-'} | {r['peak_rss_mb']} "
            f"({r['peak_minus_baseline_mb']}) |"
        )
    if s.get("reused"):
        lines += ["", f"Reused from an earlier run of the same command on the same scenes: {', '.join(s['reused'])} "
                  "(their times, hence the speed-ups, come from that run)."]
    reproduced = report["table"].get("exact", {}).get("official_masks_reproduced")
    if reproduced is not None:
        lines += ["", f"Exact mode reproduced {reproduced:.1%} of the official masks with IoU >= 0.99."]
    miou = s.get("proxy_point_miou")
    if miou is None or miou < 0.6:
        lines += ["", (f"**Warning:** the proxy's point mIoU ({miou}) is below the 0.6 it needs to behave like "
                       "a trained model; these numbers say little about a real checkpoint.")]
    per_scene = report.get("per_scene")
    if per_scene and scene_set == "hard":
        methods = [m for m in per_scene[0]]
        head = ["scene", "size"]
        for m in methods:
            head += [f"{m} masks"] + ([f"{m} found"] if "found" in per_scene[0][m] else [])
            head += [f"{m} CPU s" if "cpu_seconds" in per_scene[0][m] else f"{m} s"]
        lines += ["", f"Per scene (found: {ref} masks with a mask of the method at IoU >= 0.9):", "",
                  "| " + " | ".join(head) + " |", "|" + " --- |" * 2 + " ---: |" * (len(head) - 2)]
        for k, row in enumerate(per_scene):
            cells = [str(k), s.get("sizes", [""] * len(per_scene))[k]]
            for m in methods:
                cells += [str(row[m]["masks"])] + ([str(row[m]["found"])] if "found" in row[m] else [])
                cells += [str(row[m].get("cpu_seconds", row[m]["seconds"]))]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md (its first line), leaving the others alone."""
    section = text.split("\n", 1)[0]
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(section + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(section))
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
    ap.add_argument("--scene-set", choices=("proxy", "hard"), default="proxy",
                    help="the proxy's own kind of scene, or the hard ones (benchmarks/hard_scenes.py)")
    ap.add_argument("--before-src", default=None,
                    help="the src folder of another tree (e.g. a git worktree of an earlier commit), for fast_before")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--long-side", type=_long_side, default=hard_scenes.LONG_SIDE,
                    help="hard scenes' long side range in px, LOW,HIGH; default: %(default)s (smaller: a quick run "
                    "on a busy machine; the official generator's upsampling, hence fast mode's gain, shrinks with it)")
    ap.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 2)), help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="fast,exact,official,fast_noskip",
                    help="comma-separated subset of official,exact,fast,fast_accepted (fast mode skipping a point "
                    "when its neighbours' accepted masks agree),fast_noskip (fast mode with the point "
                    "skipping switched off, to show what each part of it costs and finds),fast_before (fast mode "
                    "of --before-src)")
    ap.add_argument("--json", default=None, help="also write the full results here (for --from-json)")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file to update")
    ap.add_argument("--max-minutes", type=float, default=0, help="skip the methods left after this long (0: no limit)")
    ap.add_argument("--from-json", default=None, help="only rewrite the markdown section from an earlier JSON")
    ap.add_argument("--workers-dir", default=None,
                    help="keep each method's raw output (times and masks) here as METHOD.json, to reuse")
    ap.add_argument("--reuse", default="",
                    help="comma-separated methods to load from --workers-dir instead of running (e.g. the slow "
                    "official generator, measured once); their times come from that earlier run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # METHOD or METHOD@BACKEND
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
    if "fast_before" in methods and not (args.before_src and (Path(args.before_src) / "mobilesam").is_dir()):
        ap.error(f"--before-src: fast_before needs the src folder of another tree (holding mobilesam/), "
                 f"got {args.before_src!r}")
    scenes = make_scenes(args.scene_set, args.scenes, args.long_side)
    settings = {
        "scene_set": args.scene_set,
        "sizes": [f"{s.image.shape[1]}x{s.image.shape[0]}" for s in scenes],
        "scenes": args.scenes,
        "scene_sizes": (", ".join(sorted({f"{s.image.shape[1]}x{s.image.shape[0]}" for s in scenes}))
                        if args.scene_set == "proxy" else
                        f"{min(max(s.image.shape[:2]) for s in scenes)}-{max(max(s.image.shape[:2]) for s in scenes)} px "
                        f"long side, {sum(s.image.shape[0] > s.image.shape[1] for s in scenes)} portrait"),
        "points_per_side": args.points_per_side,
        "device": args.device,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "proxy_point_miou": meta.get("point_miou"),
        "proxy_generator_recall": meta.get("generator_recall"),
    }
    command = "python benchmarks/bench_everything.py " + " ".join(argv if argv is not None else sys.argv[1:])
    reuse = [m for m in args.reuse.split(",") if m]
    if reuse and not args.workers_dir:
        ap.error("--reuse: needs --workers-dir, the folder an earlier run kept its methods' outputs in")
    results: dict[str, dict] = {}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        keep = Path(args.workers_dir) if args.workers_dir else Path(tmp)
        keep.mkdir(parents=True, exist_ok=True)
        for m in methods:
            out = keep / f"{m}.json"
            if m in reuse:
                if not out.is_file():
                    ap.error(f"--reuse: no earlier output {out} for {m}")
                results[m] = json.loads(out.read_text())
                if len(results[m]["seconds"]) < args.scenes:
                    print(f"{m}: {out} holds only {len(results[m]['seconds'])} of --scenes {args.scenes}: the "
                          "table covers the scenes every method finished", flush=True)
                settings.setdefault("reused", []).append(m)
                print(f"{m}: reused {out} ({np.mean(results[m]['seconds']):.2f} s/image then)", flush=True)
                if m != methods[-1]:
                    continue
            if args.max_minutes and time.time() - start > 60 * args.max_minutes:
                print(f"{m}: skipped, over --max-minutes {args.max_minutes}", flush=True)
                continue
            cmd = [sys.executable, __file__, "--worker", m, "--worker-out", str(out), "--checkpoint", str(ckpt),
                   "--scenes", str(args.scenes), "--points-per-side", str(args.points_per_side),
                   "--threads", str(args.threads), "--device", args.device, "--scene-set", args.scene_set,
                   "--long-side", ",".join(map(str, args.long_side))]
            env = dict(os.environ)
            if m == "fast_before":
                env["MOBILESAM_BENCH_SRC"] = str(Path(args.before_src).resolve())
            if m not in reuse:
                t = time.time()
                subprocess.run(cmd, check=True, env=env)
                results[m] = json.loads(out.read_text())
                print(f"{m}: {np.mean(results[m]['seconds']):.2f} s/image ({time.time() - t:.0f} s in all)", flush=True)
            # Written after every method, so a run stopped by a time limit keeps what it measured.
            report = {
                "settings": settings,
                **evaluate(results, scenes),
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
