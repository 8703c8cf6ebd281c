"""Fine-tuning shown on synthetic scenes with the benchmark proxy (no pretrained weights can be had here).

The proxy (``benchmarks/proxy.py``) is a ``vit_t`` whose image encoder is *set* to hold the colour of every
4x4-pixel cell and whose prompt encoder and mask decoder were trained on synthetic scenes. Here:

1. synthetic scenes (``proxy.make_scene``) are written as a COCO dataset: training scenes, and held-out
   scenes for validation (the proxy's own held-out evaluation seeds, never trained on);
2. the starting model: ``--start reinit``, the proxy with its whole mask decoder re-initialised (the
   official random initialisation, then the proxy's own warm start of the cross-attention projections,
   the start the proxy was trained from; ``--no-warm-start`` for the official initialisation alone);
   ``--start heads``, the proxy with the decoder's output heads re-initialised (the output tokens, the
   upscaling, the hypernetwork MLPs and the IoU head; the two-way transformer kept); ``--start proxy``,
   the trained proxy itself, to see whether fine-tuning at the default learning rate keeps or breaks a
   trained decoder (and what the corrective-click rounds add: the proxy was trained on single prompts);
3. ``mobilesam val`` (box, 1/3/5 clicks) on the held-out scenes before; ``mobilesam finetune`` with its
   defaults except where flagged below; ``mobilesam val`` on ``best.pt`` after;
4. numbers into ``--json`` and the training curves (loss, validation mIoU every epoch) into ``--plot``.

Never evidence of accuracy on real images: the proxy only behaves like a trained model on these scenes.

Usage (CPU; the numbers in RESULTS.md)::

    OMP_NUM_THREADS=1 python benchmarks/finetune_proxy.py --start reinit
    OMP_NUM_THREADS=1 python benchmarks/finetune_proxy.py --start proxy
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import proxy  # noqa: E402

from mobilesam.io import atomic_write_text  # noqa: E402
from mobilesam.masks import encode_rle  # noqa: E402
from mobilesam.modeling import build_model  # noqa: E402

TRAIN_SEED0 = 500_000  # the proxy trained on seeds from 1_000_000 and evaluates on 987_000_000 + i


def write_scenes(folder: Path, seeds: list[int]) -> Path:
    """Scenes as PNG images and a COCO instances JSON (one category, RLE masks); returns the JSON."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for k, seed in enumerate(seeds):
        scene = proxy.make_scene(seed)
        name = f"images/scene_{seed}.png"  # file_name is relative to the JSON's folder
        Image.fromarray(scene.image).save(folder / name)
        h, w = scene.labels.shape
        images.append({"id": k + 1, "file_name": name, "width": w, "height": h})
        for m in scene.instance_masks():
            ys, xs = np.nonzero(m)
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 1, "segmentation": encode_rle(m),
                         "area": int(m.sum()), "iscrowd": 0,
                         "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]})
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "shape"}]}))
    return path


def starting_checkpoint(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """(the proxy as a flat checkpoint, the starting checkpoint of the run)."""
    sam = proxy.load_proxy(args.proxy)
    ref = work / "proxy.pt"
    torch.save(sam.state_dict(), ref)
    if args.start == "proxy":
        return ref, ref
    torch.manual_seed(args.seed)
    fresh = build_model("vit_t")  # the official random initialisation of every module
    if args.start == "heads":
        heads = ("iou_token", "mask_tokens", "output_upscaling", "output_hypernetworks_mlps", "iou_prediction_head")
        for name in heads:
            getattr(sam.mask_decoder, name).load_state_dict(getattr(fresh.mask_decoder, name).state_dict())
        start = work / "heads.pt"
        torch.save(sam.state_dict(), start)
        return ref, start
    sam.mask_decoder.load_state_dict(fresh.mask_decoder.state_dict())
    if args.warm_start:
        official = proxy.to_official(sam)
        proxy.warm_start_attention(official, args.warm_start, args.seed)
        sam.load_state_dict(official.state_dict())
    start = work / "reinit.pt"
    torch.save(sam.state_dict(), start)
    return ref, start


def reinitialised(start: str) -> int:
    """How many parameters of the mask decoder ``--start`` re-initialises."""
    dec = build_model("vit_t").mask_decoder
    if start == "proxy":
        return 0
    if start == "reinit":
        return sum(p.numel() for p in dec.parameters())
    return sum(p.numel() for n, p in dec.named_parameters() if not n.startswith("transformer."))


def measure(model: Path, val_json: Path, out: Path) -> dict:
    from mobilesam.validation import val

    r = val(str(model), str(val_json), max_clicks=5, device="cpu", out=out, progress=False)
    s = r["summary"]
    return {"box_miou": s["box_miou"]["all"], **{f"{k}_click_miou": s["point_miou"][k]["all"] for k in s["point_miou"]},
            "objects": s["objects"]["all"], "seconds": r["settings"]["seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxy", default=None, help="folder of the trained proxy (default $MOBILESAM_HOME/proxy)")
    ap.add_argument("--work", default="/tmp/mobilesam_finetune_proxy", help="scratch folder (datasets, runs)")
    ap.add_argument("--start", choices=("reinit", "heads", "proxy"), default="reinit")
    ap.add_argument("--warm-start", type=float, default=1.5, help="0: the official initialisation alone")
    ap.add_argument("--no-warm-start", dest="warm_start", action="store_const", const=0.0)
    ap.add_argument("--train-scenes", type=int, default=32)
    ap.add_argument("--val-scenes", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--objects-per-image", type=int, default=4, help="finetune's default is 8; fewer for CPU time")
    ap.add_argument("--click-rounds", type=int, default=1, help="finetune's default is 2; fewer for CPU time")
    ap.add_argument("--lr", type=float, default=None, help="default: finetune's default (1e-4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="results file (default benchmarks/finetune_proxy_START.json)")
    ap.add_argument("--plot", default=None, help="curves (default benchmarks/finetune_proxy_START.png)")
    args = ap.parse_args(argv)

    from mobilesam.train import finetune

    work = Path(args.work) / args.start
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    train_json = write_scenes(work / "train", list(range(TRAIN_SEED0, TRAIN_SEED0 + args.train_scenes)))
    val_json = write_scenes(work / "val", proxy.eval_scene_seeds(args.val_scenes))
    reference, start = starting_checkpoint(args, work)
    print(f"scenes and checkpoints in {time.perf_counter() - t0:.0f} s", flush=True)

    before = measure(start, val_json, work / "val_before.json")
    proxy_numbers = before if args.start == "proxy" else measure(reference, val_json, work / "val_proxy.json")
    print(json.dumps({"before": before, "proxy": proxy_numbers}), flush=True)

    options = dict(data=str(train_json), val_data=str(val_json), model=str(start), out=str(work / "run"),
                   epochs=args.epochs, batch_size=args.batch_size, objects_per_image=args.objects_per_image,
                   click_rounds=args.click_rounds, seed=args.seed, workers=1, log_every=1)
    if args.lr is not None:
        options["lr"] = args.lr
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = finetune(**options)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    after = measure(work / "run" / "best.pt", val_json, work / "val_after.json")
    last = measure(work / "run" / "last.pt", val_json, work / "val_last.json")

    name = f"finetune_proxy_{args.start}"
    plot = Path(args.plot or ROOT / "benchmarks" / f"{name}.png")
    shutil.copyfile(work / "run" / "curves.png", plot)
    result = {
        "start": args.start, "warm_start": args.warm_start if args.start == "reinit" else None,
        "reinitialised_parameters": reinitialised(args.start),
        "train_scenes": args.train_scenes, "val_scenes": args.val_scenes, "val_objects": before["objects"],
        "settings": {k: v for k, v in options.items() if k not in ("data", "val_data", "model", "out")},
        "lr": args.lr or 1e-4, "proxy": proxy_numbers, "before": before, "after_best": after, "after_last": last,
        "validation_curve": summary["validation"], "best": summary["best"], "steps": summary["step"],
        "finetune_wall_minutes": round(wall / 60, 2), "finetune_cpu_minutes": round(cpu / 60, 2),
        "threads": torch.get_num_threads(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared with other jobs)", "date": time.strftime("%Y-%m-%d"),
        "command": "OMP_NUM_THREADS=1 python benchmarks/finetune_proxy.py " + " ".join(argv or sys.argv[1:]),
    }
    atomic_write_text(args.json or ROOT / "benchmarks" / f"{name}.json", json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("before", "after_best", "after_last", "proxy", "finetune_cpu_minutes",
                                              "finetune_wall_minutes")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
