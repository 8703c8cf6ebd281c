"""Images per second of the image encoder with N images per encoder call (N = 1, 2, 4, 8), per backend.

Each backend runs in its own process (``mobilesam.bench``'s worker pattern); inside it the batch sizes
alternate, ``--repeats`` times each, over the same ``--images`` distinct synthetic photos (1280x853 and
853x1280, so a batch mixes aspect ratios), already read and resized: what is timed is
``predictor.encode_prepared(prepared, batch=N)``, the call every folder run makes. A second figure times
the whole folder path, ``mobilesam.pipeline.embed_stream`` over PNG files (read and resized on its
background thread), for N = 1 and the largest N, against a plain loop of ``set_image`` on each file.

    python benchmarks/bench_batch.py --backends torch,onnxruntime,openvino --images 8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

SIZES = (1, 2, 4, 8)


def worker(backend: str, checkpoint: str, folder: str, sizes: list[int], repeats: int, threads: int | None) -> dict:
    import torch

    from mobilesam.backends import create_predictor, get_backend
    from mobilesam.io import read_image
    from mobilesam.pipeline import embed_stream

    if threads:
        torch.set_num_threads(threads)
    options = {"threads": threads} if threads and get_backend(backend).exported else {}
    pred = create_predictor(checkpoint, backend, device="cpu", **options)
    files = sorted(Path(folder).glob("*.png"))
    prepared = [pred.prepare_image(read_image(f)) for f in files]
    pred.encode_prepared(prepared[: max(sizes)], batch=max(sizes))  # warm-up, every shape once
    pred.encode_prepared(prepared[:1], batch=1)
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            t = time.perf_counter()
            pred.encode_prepared(prepared, batch=n)
            times[n].append(time.perf_counter() - t)
    out = {"images_per_s": {n: len(files) / float(np.median(ts)) for n, ts in times.items()}}
    # The folder path, end to end: plain set_image loop vs embed_stream (background reading) at N = 1 and max.
    folder_times: dict[str, list[float]] = {"set_image loop": [], "pipeline N=1": [], f"pipeline N={max(sizes)}": []}
    for _ in range(repeats):
        t = time.perf_counter()
        for f in files:
            pred.set_image(read_image(f))
        folder_times["set_image loop"].append(time.perf_counter() - t)
        for n in (1, max(sizes)):
            t = time.perf_counter()
            for _ in embed_stream(pred, files, read_image, batch=n):
                pass
            folder_times[f"pipeline N={n}"].append(time.perf_counter() - t)
    out["folder_images_per_s"] = {k: len(files) / float(np.median(v)) for k, v in folder_times.items()}
    out["threads"] = torch.get_num_threads()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="torch,onnxruntime,openvino")
    ap.add_argument("--model", default=None, help="checkpoint (default: a random vit_t; speed does not depend on it)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        print(json.dumps(worker(**spec)))
        return 0
    from PIL import Image

    from mobilesam.bench import _cpu_name, make_random_checkpoint, synthetic_image

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp_name:
        tmp = Path(tmp_name)
        ckpt = Path(args.model) if args.model else make_random_checkpoint("vit_t", tmp / "random_vit_t.pt")
        (tmp / "images").mkdir()
        for i in range(args.images):
            img = synthetic_image(seed=i)
            Image.fromarray(img if i % 2 == 0 else np.ascontiguousarray(img.transpose(1, 0, 2))).save(
                tmp / "images" / f"{i:03d}.png")
        rows = []
        for backend in [b for b in args.backends.split(",") if b]:
            spec = tmp / f"{backend}.json"
            spec.write_text(json.dumps({"backend": backend, "checkpoint": str(ckpt), "folder": str(tmp / "images"),
                                        "sizes": list(SIZES), "repeats": args.repeats, "threads": args.threads}))
            print(f"{backend} ...", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, __file__, "--worker", str(spec)], capture_output=True, text=True,
                                  env=os.environ.copy())
            if proc.returncode:
                raise RuntimeError(f"{backend}: {proc.stderr.strip().splitlines()[-3:]}")
            rows.append((backend, json.loads(proc.stdout.strip().splitlines()[-1])))
    lines = [f"{time.strftime('%Y-%m-%d')}, {_cpu_name()}, {os.cpu_count()} CPUs, {platform.system()}; "
             f"{args.images} images of 1280x853 / 853x1280, {args.repeats} repeats, medians; threads: "
             f"{rows[0][1]['threads'] if rows else '-'}.", "",
             "| backend | " + " | ".join(f"N={n} images/s" for n in SIZES) + f" | N={SIZES[-1]} vs N=1 | "
             "folder: set_image loop | folder: pipeline N=1 | folder: pipeline N=8 |",
             "|---|" + "---:|" * (len(SIZES) + 4)]
    for backend, r in rows:
        ips = r["images_per_s"]
        f = r["folder_images_per_s"]
        lines.append(f"| {backend} | " + " | ".join(f"{ips[str(n)]:.2f}" for n in SIZES)
                     + f" | {ips[str(SIZES[-1])] / ips['1']:.2f}x | " + " | ".join(f"{v:.2f}" for v in f.values()) + " |")
    lines.append(f"\nCommand: python benchmarks/bench_batch.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
