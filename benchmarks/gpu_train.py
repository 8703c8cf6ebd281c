"""Distillation throughput on one GPU: teacher embedding and student training, images per second.

Self-contained (random-weight teacher, synthetic images), about 2 minutes on an H100::

    python benchmarks/gpu_train.py --out $OUT/gpu_train

Stages (each timed separately; a failing stage is reported and the others still run):
1. write --images synthetic JPEGs (2250x1500 and 1500x2250, like SA-1B) to a scratch folder (not under --out);
2. ``embed_folder`` with a random --teacher (vit_b by default) in bf16: end-to-end img/s
   (JPEG decode, resize, teacher, fp16 .npy writes);
3. ``train`` of a vit_t student for --steps steps in bf16: end-to-end img/s from the run's log;
4. GPU-only speeds on tensors already on the device: student forward+backward (bf16 and fp32)
   and teacher forward (vit_h, bf16 and fp32), the numbers a full-size estimate needs.

Writes result.json, log.csv and loss.png under --out; prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _one_image(args: tuple[Path, int, int, int]) -> None:
    path, i, h, w = args
    rng = np.random.default_rng(i)
    base = rng.random((h // 64 + 1, w // 64 + 1, 3))
    img = np.asarray(Image.fromarray((base * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)).copy()
    for _ in range(6):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        y1, x1 = y0 + rng.integers(8, max(9, h // 3)), x0 + rng.integers(8, max(9, w // 3))
        img[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    Image.fromarray(img).save(path, quality=90)


def make_images(folder: Path, n: int, long_side: int) -> float:
    """Smooth random colour fields with a few rectangles; landscape and portrait, 3:2 like SA-1B."""
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    short = long_side * 2 // 3
    jobs = [(folder / f"img_{i:05d}.jpg", i, *((short, long_side) if i % 2 == 0 else (long_side, short)))
            for i in range(n)]
    start = time.perf_counter()
    with ProcessPoolExecutor() as pool:
        list(pool.map(_one_image, jobs, chunksize=8))
    return time.perf_counter() - start


def gpu_speed(fn, warmup: int, iters: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for result.json, log.csv and loss.png")
    ap.add_argument("--work", default=None, help="scratch folder for images and embeddings (default: a temp dir, removed)")
    ap.add_argument("--images", type=int, default=256, help="synthetic images to write and embed")
    ap.add_argument("--teacher", default="vit_b", help="random teacher for the embed stage (vit_b, vit_l, vit_h)")
    ap.add_argument("--steps", type=int, default=150, help="student training steps")
    ap.add_argument("--batch-size", type=int, default=16, help="student batch size")
    ap.add_argument("--workers", type=int, default=8, help="data-loading workers")
    ap.add_argument("--image-long-side", type=int, default=2250,
                    help="long side of the synthetic JPEGs (2250: SA-1B's 1500x2250, so decoding costs what it will)")
    ap.add_argument("--img-size", type=int, default=1024, help="model input size (1024; smaller only for a CPU smoke test)")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--skip-vit-h", action="store_true", help="skip the GPU-only vit_h teacher timing")
    args = ap.parse_args()

    from mobilesam.modeling import build_model
    from mobilesam.train import TrainConfig, build_encoder, embed_folder, train
    from mobilesam.train.logs import read_log

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mobilesam_gpu_train_"))
    res: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "images": args.images,
        "img_size": args.img_size,
        "teacher": args.teacher,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "errors": {},
    }
    bf16 = device.type == "cuda"

    def stage(name: str, fn) -> None:
        start = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report and go on with the other stages
            res["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        res[f"{name}_wall_s"] = round(time.perf_counter() - start, 2)
        print(f"[{name}] {res[f'{name}_wall_s']} s", flush=True)

    def images() -> None:
        res["make_images_s"] = round(make_images(work / "images", args.images, args.image_long_side), 2)

    def embed() -> None:
        torch.manual_seed(0)
        teacher = build_model(args.teacher, device=device)
        if args.img_size != 1024:
            teacher.image_encoder = build_encoder(args.teacher, args.img_size).to(device)
        r = embed_folder(teacher, work / "images", work / "emb", img_size=args.img_size, batch_size=8,
                         workers=args.workers, device=device, precision="bf16" if bf16 else "fp32", progress=False)
        res["embed_images_per_s"] = round(r["images_per_s"], 2)
        res["embed_bytes_per_image"] = (work / "emb" / "img_00000.jpg.npy").stat().st_size
        del teacher
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def train_stage() -> None:
        cfg = TrainConfig(data=str(work / "images"), embeddings=str(work / "emb"), out=str(work / "run"),
                          steps=args.steps, batch_size=args.batch_size, workers=args.workers, log_every=10,
                          save_every=10**9, device=str(device), progress=False)
        r = train(cfg)
        rows = read_log(work / "run" / "log.csv")
        steady = [row["images_per_s"] for row in rows[2:]] or [row["images_per_s"] for row in rows]
        res["train_images_per_s_end_to_end"] = round(float(np.median(steady)), 2)
        res["train_images_per_s_overall"] = round(r["images_per_s"], 2)
        res["train_loss_first_last"] = [rows[0]["loss"], rows[-1]["loss"]] if rows else None
        res["train_precision"] = "bf16" if bf16 else "fp32"
        for name in ("log.csv", "loss.png"):
            if (work / "run" / name).is_file():
                shutil.copy(work / "run" / name, out / name)
        if device.type == "cuda":
            res["train_peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)

    def student_only() -> None:
        enc = build_encoder("vit_t", args.img_size).to(device).train()
        opt = torch.optim.AdamW(enc.parameters(), lr=1e-4)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
        y = torch.randn(args.batch_size, 256, args.img_size // 16, args.img_size // 16, device=device)

        def step(dtype):
            def run():
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    p = enc(x)
                torch.nn.functional.mse_loss(p.float(), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return run

        for label, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
            if label == "bf16" and not bf16:
                continue
            s = gpu_speed(step(dtype), 3, 10, device)
            res[f"student_step_images_per_s_{label}"] = round(args.batch_size / s, 1)

    def teacher_only() -> None:
        if args.skip_vit_h:
            return
        torch.manual_seed(0)
        if args.img_size == 1024:  # built on the device: initialising 636M parameters on the CPU is slow
            enc = build_model("vit_h", device=device).image_encoder.eval()
        else:
            enc = build_encoder("vit_h", args.img_size).to(device).eval()
        x = torch.randn(4, 3, args.img_size, args.img_size, device=device)
        for label, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
            if label == "bf16" and not bf16:
                continue

            def run(dtype=dtype):
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    enc(x)

            s = gpu_speed(run, 1, 3, device)
            res[f"vit_h_teacher_images_per_s_{label}"] = round(4 / s, 2)

    try:
        stage("make_images", images)
        stage("embed", embed)
        stage("train", train_stage)
        stage("student_gpu_only", student_only)
        stage("vit_h_gpu_only", teacher_only)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    (out / "result.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    print(
        f"\n| stage | {res['device']} |\n|---|---|\n"
        f"| teacher {args.teacher} embed, {'bf16' if bf16 else 'fp32'}, end to end | {res.get('embed_images_per_s')} img/s |\n"
        f"| student vit_t train, {'bf16' if bf16 else 'fp32'}, batch {args.batch_size}, end to end | {res.get('train_images_per_s_end_to_end')} img/s |\n"
        f"| student vit_t step only, bf16 / fp32 | {res.get('student_step_images_per_s_bf16')} / "
        f"{res.get('student_step_images_per_s_fp32')} img/s |\n"
        f"| teacher vit_h forward only, bf16 / fp32 | {res.get('vit_h_teacher_images_per_s_bf16')} / "
        f"{res.get('vit_h_teacher_images_per_s_fp32')} img/s |"
    )
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
