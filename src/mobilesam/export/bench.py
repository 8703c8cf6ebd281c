"""Latency and memory benchmark of the predictor backends, optionally against the official code.

Every backend runs in its own process (so peak memory is its own, and the official code runs as its
users run it: default environment, torch's default threads), and the processes alternate round by
round so that a machine shared with other work slows each backend alike. Numbers are medians over
all rounds. ``python -m mobilesam.export.bench --help`` or ``mobilesam benchmark --help``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

BACKENDS = ("torch", "torch-bf16", "onnxruntime", "onnxruntime-int8", "official")
DEFAULT_BACKENDS = ("torch", "onnxruntime")
PEERS = ("sam_b.pt", "sam2_t.pt", "sam2_b.pt", "FastSAM-s.pt", "yolov8n-seg.pt", "yolo11n-seg.pt")
BATCH = 64  # prompts in the batched-decoder measurement (what segment-everything sends per pass)


# --------------------------------------------------------------------------------------------------
# Inputs shared by all workers
# --------------------------------------------------------------------------------------------------
def synthetic_image(h: int = 853, w: int = 1280, seed: int = 0) -> np.ndarray:
    """A deterministic photo-sized RGB image with a few flat objects on a textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack(
        [110 + 50 * np.sin(xx / 41.0), 120 + 40 * np.cos(yy / 29.0), 90 + 30 * np.sin((xx + yy) / 67.0)], -1
    )
    objects = ((0.35, 0.3, 0.15, (220, 40, 40)), (0.6, 0.7, 0.2, (40, 200, 60)), (0.7, 0.25, 0.1, (30, 30, 200)))
    for cy, cx, r, col in objects:
        img[(yy - cy * h) ** 2 + (xx - cx * w) ** 2 < (r * min(h, w)) ** 2] = col
    img[int(0.1 * h) : int(0.3 * h), int(0.55 * w) : int(0.9 * w)] = (240, 220, 90)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def prompt_points(h: int, w: int, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.05, 0.95, (n, 2)) * [w, h]


def iou_prompts(h: int, w: int) -> list[dict[str, Any]]:
    """Fixed prompts whose masks are compared across backends: points on the objects, and boxes."""
    pts = [(0.3, 0.35), (0.7, 0.6), (0.25, 0.7), (0.72, 0.2), (0.5, 0.5), (0.1, 0.9)]
    out: list[dict[str, Any]] = [
        {"point_coords": [[x * w, y * h]], "point_labels": [1]} for x, y in pts
    ]
    out.append({"box": [0.15 * w, 0.2 * h, 0.45 * w, 0.5 * h]})
    out.append(
        {"box": [0.5 * w, 0.05 * h, 0.95 * w, 0.35 * h], "point_coords": [[0.7 * w, 0.2 * h]], "point_labels": [1]}
    )
    return out


def make_random_checkpoint(model_type: str, path: Path, seed: int = 0) -> Path:
    """A randomly initialised checkpoint (official flat format) with non-trivial BatchNorm statistics."""
    import torch

    from ..modeling import build_model

    torch.manual_seed(seed)
    sam = build_model(model_type)
    with torch.no_grad():
        for name, t in sam.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn_like(t) * 0.1)
    torch.save(sam.state_dict(), path)
    return path


def ensure_onnx(checkpoint: Path, quantize: bool) -> Path:
    """An export of ``checkpoint`` in the cache (keyed by its SHA-256), made once."""
    from ..weights import cache_dir
    from .manifest import ExportError, read_manifest, sha256_file
    from .onnx_export import export_onnx

    folder = cache_dir() / "onnx" / f"bench-{sha256_file(checkpoint)[:16]}"
    try:
        _, manifest = read_manifest(folder)
        if not quantize or "encoder_int8" in manifest["files"]:
            return folder
    except (FileNotFoundError, ExportError):
        pass
    print(f"exporting {checkpoint.name} to ONNX in {folder} (once)", file=sys.stderr)
    export_onnx(checkpoint, folder, quantize="int8" if quantize else None)
    return folder


# --------------------------------------------------------------------------------------------------
# Worker: one backend, one process
# --------------------------------------------------------------------------------------------------
def _peak_mb() -> float:
    """Peak resident memory of this process, MB (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 if sys.platform != "darwin" else 2**20)


def _make_predictor(backend: str, checkpoint: str, onnx_dir: str | None, threads: int | None) -> Any:
    import torch

    if threads:
        torch.set_num_threads(threads)

    if backend == "official":
        import warnings

        warnings.simplefilter("ignore")
        sd_keys = torch.load(checkpoint, map_location="cpu", weights_only=True).keys()
        if any(k.startswith("image_encoder.layers.") for k in sd_keys):
            from mobile_sam import SamPredictor, sam_model_registry

            model_type = "vit_t"
        else:
            from segment_anything import SamPredictor, sam_model_registry

            from ..build import detect_model_type

            model_type = detect_model_type(torch.load(checkpoint, map_location="cpu", weights_only=True))
        sam = sam_model_registry[model_type](checkpoint=checkpoint)
        sam.eval()  # as its README: after loading (the official TinyViT caches biases in eval())
        return SamPredictor(sam)
    if backend.startswith("onnxruntime"):
        from .predictor import OnnxSamPredictor

        precision = "int8" if backend.endswith("int8") else "fp32"
        return OnnxSamPredictor(onnx_dir, precision=precision, threads=threads)
    from ..build import build_sam
    from ..predictor import SamPredictor

    return SamPredictor(build_sam(checkpoint), encoder_precision="bf16" if backend == "torch-bf16" else "fp32")


def run_worker(backend: str, checkpoint: str, image_path: str, onnx_dir: str | None, runs: int, prompts: int,
               batch: bool, masks_out: str | None, threads: int | None = None) -> dict[str, Any]:
    import torch

    from ..io import read_image

    t0 = time.perf_counter()
    pred = _make_predictor(backend, checkpoint, onnx_dir, threads)
    load_s = time.perf_counter() - t0
    img = read_image(image_path)
    h, w = img.shape[:2]
    pred.set_image(img)  # warm-up (first-call allocations, oneDNN primitive creation)
    pts = prompt_points(h, w, prompts + 1)
    pred.predict(point_coords=pts[-1:], point_labels=[1])
    enc = []
    for _ in range(runs):
        t = time.perf_counter()
        pred.set_image(img)
        enc.append(time.perf_counter() - t)
    peak_encoder = _peak_mb()
    dec = []
    for p in pts[:prompts]:
        t = time.perf_counter()
        pred.predict(point_coords=p[None], point_labels=[1])
        dec.append(time.perf_counter() - t)
    result: dict[str, Any] = {
        "backend": backend,
        "load_s": load_s,
        "encoder_s": enc,
        "decoder_s": dec,
        "peak_encoder_mb": peak_encoder,
        "threads": torch.get_num_threads(),
    }
    if masks_out:
        masks = [pred.predict(**{k: np.asarray(v) for k, v in p.items()}, multimask_output=False)[0][0]
                 for p in iou_prompts(h, w)]
        np.savez_compressed(masks_out, masks=np.packbits(np.stack(masks), axis=-1), shape=np.array(masks[0].shape))
    if batch:
        coords = torch.as_tensor(pred.transform.apply_coords(prompt_points(h, w, BATCH, seed=2), (h, w)),
                                 dtype=torch.float)[:, None]
        labels = torch.ones(BATCH, 1, dtype=torch.int)
        t = time.perf_counter()
        with torch.no_grad():
            out = pred.predict_torch(coords, labels, multimask_output=True)
        result["batch_s"] = time.perf_counter() - t
        del out
        result["peak_batch_mb"] = _peak_mb()
    return result


# --------------------------------------------------------------------------------------------------
# Parent: alternate the workers, aggregate, print the table
# --------------------------------------------------------------------------------------------------
def _spawn(backend: str, args: argparse.Namespace, ckpt: Path, image: Path, onnx_dir: Path | None,
           masks_out: Path | None, tmp: Path) -> dict[str, Any]:
    out = tmp / f"{backend}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "mobilesam.export.bench", "--worker", backend, "--model", str(ckpt),
           "--image", str(image), "--runs", str(args.runs), "--prompts", str(args.prompts), "--json", str(out)]
    if onnx_dir:
        cmd += ["--onnx-dir", str(onnx_dir)]
    if masks_out:
        cmd += ["--masks", str(masks_out)]
    if not args.no_batch:
        cmd += ["--batch"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"benchmark: backend {backend!r} failed: {' | '.join(tail)}")
    return json.loads(out.read_text())


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _load_masks(path: Path) -> np.ndarray:
    data = np.load(path)
    shape = tuple(data["shape"])
    return np.unpackbits(data["masks"], axis=-1)[..., : shape[1]].astype(bool)


def run_benchmark(args: argparse.Namespace) -> str:
    """Run every backend ``args.rounds`` times, alternating; returns the markdown report."""
    from ..build import detect_model_type
    from ..io import read_image
    from ..weights import CheckpointError, load_state_dict, resolve_weights

    backends = list(dict.fromkeys(args.backends + (["official"] if args.vs_official else [])))
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise ValueError(f"--backends: unknown {bad}; expected some of {list(BACKENDS)}")
    tmp = Path(tempfile.mkdtemp(prefix="mobilesam-bench-"))
    note = ""
    try:
        ckpt = resolve_weights(args.model)
    except CheckpointError:
        if not args.random_weights:
            raise
        ckpt = make_random_checkpoint("vit_t", tmp / "random_vit_t.pt")
        note = f"weights: '{args.model}' not available; a randomly initialised vit_t checkpoint was used"
    sd = load_state_dict(ckpt)
    model_type = detect_model_type(sd)
    params = sum(v.numel() for k, v in sd.items() if v.is_floating_point())
    if args.image:
        image = Path(args.image)
        img_shape = read_image(image).shape
    else:
        from PIL import Image

        image = tmp / "bench.png"
        img = synthetic_image()
        Image.fromarray(img).save(image)
        img_shape = img.shape
    onnx_dir = None
    if any(b.startswith("onnxruntime") for b in backends):
        onnx_dir = ensure_onnx(Path(ckpt), quantize="onnxruntime-int8" in backends)
    samples: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    masks: dict[str, Path] = {}
    for r in range(args.rounds):
        order = backends[r % len(backends):] + backends[: r % len(backends)]  # rotate who goes first
        for b in order:
            m = tmp / f"masks-{b}.npz" if r == 0 else None
            print(f"round {r + 1}/{args.rounds}: {b}", file=sys.stderr)
            samples[b].append(_spawn(b, args, Path(ckpt), image, onnx_dir, m, tmp))
            if m is not None:
                masks[b] = m
    ref_iou = "torch" if "torch" in masks else ("official" if "official" in masks else None)
    rows = []
    for b in backends:
        enc = float(np.median([x for s in samples[b] for x in s["encoder_s"]])) * 1e3
        dec = float(np.median([x for s in samples[b] for x in s["decoder_s"]])) * 1e3
        size = (sum(Path(onnx_dir, f).stat().st_size for f in _onnx_files(onnx_dir, b)) if b.startswith("onnx")
                else Path(ckpt).stat().st_size) / 1e6
        iou = None
        if ref_iou and b != ref_iou and b in masks:
            a, c = _load_masks(masks[ref_iou]), _load_masks(masks[b])
            iou = [_mask_iou(x, y) for x, y in zip(a, c)]
        rows.append({
            "backend": b, "size_mb": size, "enc": enc, "dec": dec, "total": enc + dec,
            "peak_enc": max(s["peak_encoder_mb"] for s in samples[b]),
            "peak_batch": max((s.get("peak_batch_mb", float("nan")) for s in samples[b])),
            "batch": float(np.median([s.get("batch_s", float("nan")) for s in samples[b]])) * 1e3,
            "iou": iou, "threads": samples[b][0]["threads"],
        })
    return _report(rows, args, model_type, params, img_shape, note, ref_iou)


def _onnx_files(folder: Path, backend: str) -> list[str]:
    from .manifest import read_manifest

    _, man = read_manifest(folder)
    enc = "encoder_int8" if backend.endswith("int8") else "encoder"
    return [man["files"][enc]["path"], man["files"]["decoder"]["path"]]


def _report(rows: list[dict[str, Any]], args: argparse.Namespace, model_type: str | None, params: int,
            img_shape: tuple, note: str, ref_iou: str | None) -> str:
    off = next((r for r in rows if r["backend"] == "official"), None)

    def ratio(r: dict, key: str) -> str:
        return f"{r[key] / off[key]:.2f}x" if off and off[key] > 0 else "-"

    cpu = _cpu_name()
    lines = [
        f"{datetime.date.today().isoformat()}, {cpu}, {os.cpu_count()} CPUs, {platform.system()}, "
        f"python {platform.python_version()}, image {img_shape[1]}x{img_shape[0]}, model {model_type} "
        f"({params / 1e6:.2f} M parameters), {args.rounds} rounds x {args.runs} encoder runs x {args.prompts} "
        f"prompts, medians; threads: {rows[0]['threads'] if args.threads else 'each runtime default'} "
        f"(torch: {rows[0]['threads']}).",
    ]
    if note:
        lines.append(note + ".")
    lines += [
        "",
        "| backend | size MB | encoder ms | decoder ms / prompt | image to first mask ms | vs official: encoder "
        "| decoder | first mask | peak MB after encoder | 64-prompt batch ms | peak MB after batch | mask IoU vs "
        f"{ref_iou or '-'} (mean / min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        iou = f"{np.mean(r['iou']):.4f} / {np.min(r['iou']):.4f}" if r["iou"] else "-"
        lines.append(
            f"| {r['backend']} | {r['size_mb']:.1f} | {r['enc']:.0f} | {r['dec']:.1f} | {r['total']:.0f} | "
            f"{ratio(r, 'enc')} | {ratio(r, 'dec')} | {ratio(r, 'total')} | {r['peak_enc']:.0f} | "
            f"{r['batch']:.0f} | {r['peak_batch']:.0f} | {iou} |"
        )
    lines.append("")
    lines.append("Command: " + " ".join(["mobilesam benchmark"] + (args.argv or [])))
    if args.peers:
        lines += ["", *_peers(args)]
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _peers(args: argparse.Namespace) -> list[str]:
    """The brief's other models through Ultralytics, when installed and their weights are present."""
    try:
        import ultralytics  # noqa: F401 - optional (AGPL), only when the user asks for --peers
    except ImportError:
        return ["Peers: skipped (ultralytics is not installed: pip install ultralytics)."]
    from ..weights import cache_dir

    lines = ["| peer model (Ultralytics) | size MB | ms / image (median) |", "|---|---:|---:|"]
    image = args.image or None
    for name in PEERS:
        path = next((p for p in (Path(name), cache_dir() / name) if p.is_file()), None)
        if path is None:
            lines.append(f"| {name} | - | skipped: weights not found in . or {cache_dir()} |")
            continue
        code = (
            "import time,sys,numpy as np\n"
            "from ultralytics import SAM, FastSAM, YOLO\n"
            f"p={str(path)!r}; n={Path(name).stem!r}\n"
            "M = SAM if n.startswith(('sam', 'mobile')) else FastSAM if n.startswith('FastSAM') else YOLO\n"
            "m = M(p)\n"
            f"src = {image!r} or np.full((853, 1280, 3), 128, np.uint8)\n"
            "m(src, verbose=False)\n"
            "ts=[]\n"
            f"for _ in range({args.runs}):\n"
            "    t=time.perf_counter(); m(src, verbose=False); ts.append(time.perf_counter()-t)\n"
            "print(sorted(ts)[len(ts)//2]*1e3)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        ms = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None
        cell = f"{float(ms):.0f}" if ms else "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:80]
        lines.append(f"| {name} | {path.stat().st_size / 1e6:.1f} | {cell} |")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mobile_sam.pt",
                   help="checkpoint file or known weights name (default: %(default)s); e.g. --model my_sam.pt")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help=f"comma-separated, from {','.join(BACKENDS)} (default: %(default)s); "
                        "e.g. --backends torch,torch-bf16,onnxruntime-int8")
    p.add_argument("--vs-official", action="store_true",
                   help="also time the official code (mobile_sam / segment_anything) in its own process; "
                        "e.g. --vs-official")
    p.add_argument("--image", default=None,
                   help="image file to time on (default: a synthetic 1280x853 image); e.g. --image bus.jpg")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds, one process per backend per round (default: %(default)s); e.g. --rounds 5")
    p.add_argument("--runs", type=int, default=3,
                   help="encoder passes per process (default: %(default)s); e.g. --runs 5")
    p.add_argument("--prompts", type=int, default=10,
                   help="single-point prompts timed per process (default: %(default)s); e.g. --prompts 20")
    p.add_argument("--no-batch", action="store_true",
                   help=f"skip the {BATCH}-prompt batch (time and peak memory); e.g. --no-batch")
    p.add_argument("--random-weights", action="store_true",
                   help="if the checkpoint is not available, time a randomly initialised vit_t; e.g. --random-weights")
    p.add_argument("--peers", action="store_true",
                   help="also time SAM-b, SAM2-t/b, FastSAM-s, YOLOv8n-seg, YOLO11n-seg through Ultralytics "
                        "when installed and their weights are present; e.g. --peers")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for every backend, the official code included (default: each "
                        "runtime's own default); on a busy machine 1 gives steadier ratios; e.g. --threads 1")
    p.add_argument("--out", default=None, help="also write the markdown report to this file; e.g. --out bench.md")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m mobilesam.export.bench", description=__doc__)
    add_arguments(p)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--onnx-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--masks", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        res = run_worker(args.worker, args.model, args.image, args.onnx_dir, args.runs, args.prompts, args.batch,
                         args.masks, args.threads)
        Path(args.json).write_text(json.dumps(res))
        return 0
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.argv = argv
    report = run_benchmark(args)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
