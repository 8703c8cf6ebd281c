"""GPU latency of the image encoder and the prompt decoder at several precisions, with mask agreement.

For each model (random weights: no download needed) and precision, on one synthetic photo-sized image:
encoder latency, decoder latency for one point prompt (to a thresholded full-size mask), a 64-prompt
batch, peak GPU memory, the embedding's relative error and the mask IoU against fp32 (strict fp32,
TF32 off). Precisions: fp32, tf32 (TF32 matmuls and convolutions), bf16 and fp16 autocast, and fp16
weights (``image_encoder.half()``: the encoder in fp16 end to end, the setting known to break this encoder
in TensorRT; the decoder stays fp32).

    python benchmarks/gpu_latency.py --out benchmarks/gpu_latency.md          # ~1 minute on an H100
    python benchmarks/gpu_latency.py --device cpu --models vit_t --iters 2    # a dry run without a GPU

Random weights make speckled masks, so the IoU here is a stress test of numerical agreement, not of
segmentation quality.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mobilesam.bench import make_random_checkpoint, prompt_points, synthetic_image  # noqa: F401
from mobilesam.modeling import build_model
from mobilesam.predictor import SamPredictor

PRECISIONS = ("fp32", "tf32", "bf16-autocast", "fp16-autocast", "fp16-weights")


def _random_model(model_type: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    sam = build_model(model_type, device=device)
    with torch.no_grad():
        for name, t in sam.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif name.endswith("running_mean") or name.endswith("attention_biases"):
                t.copy_(torch.randn_like(t) * 0.1)
    return sam.eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def _context(precision: str, device: str):
    dev = "cuda" if device.startswith("cuda") else "cpu"
    if precision == "bf16-autocast":
        return torch.autocast(dev, dtype=torch.bfloat16)
    if precision == "fp16-autocast":
        return torch.autocast(dev, dtype=torch.float16)
    return contextlib.nullcontext()


def _set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def run(args: argparse.Namespace) -> str:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_latency: CUDA is not available here; use --device cpu for a dry run")
    img = synthetic_image()
    h, w = img.shape[:2]
    pts = prompt_points(h, w, 8, seed=3)
    batch_pts = prompt_points(h, w, 64, seed=4)
    rows = []
    for model_type in args.models:
        base = _random_model(model_type, device)
        ref_masks = ref_emb = None
        for precision in args.precisions:
            _set_tf32(precision == "tf32")
            sam = base
            if precision == "fp16-weights":  # the image encoder in fp16 end to end; the decoder stays fp32
                import copy

                sam = copy.deepcopy(base)
                sam.image_encoder.half()
            pred = SamPredictor(sam)
            ctx = lambda: _context(precision, device)  # noqa: E731
            resized = pred.transform.apply_image(img)
            x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None].float()
            x_in = sam.preprocess(x).to(next(sam.image_encoder.parameters()).dtype)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            note = ""
            try:
                with torch.no_grad():

                    def encode() -> torch.Tensor:
                        with ctx():
                            return sam.image_encoder(x_in)

                    enc_ms = _time(encode, device, args.iters)
                    emb = encode().float()
                    pred.set_embedding(emb, (h, w))
                    coords = torch.as_tensor(pred.transform.apply_coords(pts, (h, w)), dtype=torch.float,
                                             device=device)[:, None]
                    labels = torch.ones(len(pts), 1, dtype=torch.int, device=device)

                    def decode_one() -> None:
                        with ctx():
                            pred.predict_torch(coords[:1], labels[:1], multimask_output=True)

                    dec_ms = _time(decode_one, device, args.iters * 2)
                    bc = torch.as_tensor(pred.transform.apply_coords(batch_pts, (h, w)), dtype=torch.float,
                                         device=device)[:, None]
                    bl = torch.ones(64, 1, dtype=torch.int, device=device)

                    def decode_batch() -> None:
                        with ctx():
                            pred.predict_torch(bc, bl, multimask_output=True)

                    batch_ms = _time(decode_batch, device, max(2, args.iters // 2), warmup=1)
                    with ctx():
                        masks = pred.predict_torch(coords, labels, multimask_output=False)[0][:, 0]
                finite = bool(torch.isfinite(emb).all())
                if not finite:
                    note = "non-finite embedding"
            except Exception as e:  # noqa: BLE001 - a precision that fails is a result to report
                note = f"failed: {type(e).__name__}: {str(e)[:80]}"
                rows.append((model_type, precision, None, None, None, None, None, None, note))
                continue
            peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
            if precision == "fp32":
                ref_masks, ref_emb = masks, emb
                err = iou_s = None
            else:
                err = ((emb - ref_emb).abs().max() / ref_emb.abs().max()).item() if ref_emb is not None else None
                ious = [_iou(a, b) for a, b in zip(ref_masks, masks)] if ref_masks is not None else None
                iou_s = f"{np.mean(ious):.4f} / {np.min(ious):.4f}" if ious else None
            rows.append((model_type, precision, enc_ms, dec_ms, batch_ms, err, iou_s, peak, note))
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        _set_tf32(False)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "CPU"
    lines = [
        f"{datetime.date.today().isoformat()}, {name}, torch {torch.__version__}, random weights, image {w}x{h}, "
        f"medians of {args.iters} runs. Command: python benchmarks/gpu_latency.py {' '.join(args.argv)}",
        "",
        "| model | precision | encoder ms | decoder ms (1 point, full-size mask) | 64-prompt batch ms | embedding max "
        "rel. err vs fp32 | mask IoU vs fp32 (mean / min, 8 points) | peak GPU MB | note |",
        "|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for m, p, e, d, b, err, iou, peak, note in rows:
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)

        lines.append(f"| {m} | {p} | {f(e, '.2f')} | {f(d, '.2f')} | {f(b, '.1f')} | {f(err, '.2e')} | "
                     f"{iou or '-'} | {f(peak, '.0f')} | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu for a dry run")
    p.add_argument("--models", default="vit_t,vit_b", help="comma-separated model types (default: %(default)s)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated (default: all)")
    p.add_argument("--iters", type=int, default=20, help="timed runs per measurement (default: %(default)s)")
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.precisions = [q for q in args.precisions.split(",") if q]
    bad = [q for q in args.precisions if q not in PRECISIONS]
    if bad:
        p.error(f"--precisions: unknown {bad}; expected some of {list(PRECISIONS)}")
    if "fp32" in args.precisions:  # the reference for the error columns comes first
        args.precisions = ["fp32"] + [q for q in args.precisions if q != "fp32"]
    args.argv = argv
    report = run(args)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
