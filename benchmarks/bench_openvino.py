"""CPU runtimes in one run: torch, ONNX Runtime and OpenVINO, f32 and their reduced-precision variants.

On the proxy checkpoint (``benchmarks/proxy.py``; trained when missing) and a held-out synthetic scene:

1. latency, each backend in its own process, alternating over rounds (``mobilesam benchmark``'s engine,
   :func:`mobilesam.bench.run_benchmark`): image encoder, one more prompt (decoder + full-size mask),
   image to first mask, a 64-prompt batch, peak memory, and mask IoU vs torch on its fixed prompts;
2. accuracy of each variant against f32 torch on ``--scenes`` held-out scenes with known instances: one
   point (the instance's interior-most point, best of the multimask outputs) and one box per instance;
   mask IoU against the torch mask of the same prompt (mean / min), and mIoU against the ground truth;
   the same on perturbed random weights (the test suite's oracle vit_t) with the same prompts. The row
   ``torch, fp16 embedding`` is what the disk cache of embeddings stores: f32 torch features rounded to
   float16 and back before decoding.

Conversions (ONNX export, OpenVINO IR, NNCF int8 with the built-in synthetic calibration images) are
made once, in this process, before anything is timed; the workers find them in the cache.

    python benchmarks/bench_openvino.py                       # 3 rounds, each runtime's default threads
    python benchmarks/bench_openvino.py --threads 2 --rounds 5 --scenes 8
    python benchmarks/bench_openvino.py --backends torch,openvino,openvino-bf16,openvino-int8   # bf16 CPUs
    python benchmarks/bench_openvino.py --no-latency --scenes 8    # only the accuracy tables
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))

import proxy  # noqa: E402

DEFAULT_BACKENDS = "torch,onnxruntime,onnxruntime-int8,openvino,openvino-int8"
REFERENCE = "torch"
FP16_EMBEDDING = "torch, fp16 embedding"  # the disk cache's storage, decoded by f32 torch
SCENE_SEED = 777_000_000  # held out: neither the proxy's training nor its evaluation scenes


def prepare(checkpoint: Path, backends: list[str], threads: int | None) -> dict[str, str]:
    """Make every backend's converted files once (a refusal, such as bf16 on a CPU without it, stops here).

    The int8 encoder's own gate (masks within IoU 0.95 of f32, measured when it is made) may refuse it:
    returns {backend: the refusal}; such an encoder is then made without the check, so that the accuracy
    tables can still say how far from f32 it is."""
    from mobilesam.backends import create_predictor, get_backend
    from mobilesam.bench import ONNX_PREFIX, ensure_onnx
    from mobilesam.export.manifest import ExportError

    if any(b.startswith(ONNX_PREFIX) for b in backends):
        ensure_onnx(checkpoint, quantize=f"{ONNX_PREFIX}-int8" in backends)
    refused: dict[str, str] = {}
    for b in backends:
        if b.startswith("openvino"):
            t = time.perf_counter()
            options = {"threads": threads} if threads and not get_backend(b).exported else {}
            try:
                pred = create_predictor(str(checkpoint), b, device="cpu", **options)
            except ExportError as e:
                if b != "openvino-int8":
                    raise
                refused[b] = str(e)
                print(f"{b}: refused by its gate ({e}); made without the check to measure it", file=sys.stderr)
                pred = create_predictor(str(checkpoint), b, device="cpu", check=False, **options)
            print(f"{b}: ready in {time.perf_counter() - t:.0f} s ({pred!r})", file=sys.stderr, flush=True)
    return refused


def _predictor(checkpoint: Path, backend: str, onnx_dir: Path | None, threads: int | None, check: bool = True):
    from mobilesam.backends import create_predictor
    from mobilesam.bench import ONNX_PREFIX

    if backend.startswith(ONNX_PREFIX):
        return create_predictor(str(onnx_dir), backend, **({"threads": threads} if threads else {}))
    return create_predictor(str(checkpoint), backend, device="cpu", **({} if check else {"check": False}))


def _scene_prompts(scenes: list) -> tuple[list[np.ndarray], list[list[dict]], list[np.ndarray]]:
    """Images, one point (interior-most) and one box per instance, and the ground-truth mask of each prompt."""
    images, prompts, truth = [], [], []
    for sc in scenes:
        ps = []
        for m in sc.instance_masks():
            x, y = proxy.interior_point(m)
            ys, xs = np.nonzero(m)
            ps += [{"point_coords": np.array([[x, y]]), "point_labels": np.array([1])},
                   {"box": np.array([xs.min(), ys.min(), xs.max(), ys.max()], float)}]
            truth += [m, m]
        images.append(sc.image)
        prompts.append(ps)
    return images, prompts, truth


def _masks(pred, images: list[np.ndarray], prompts: list[list[dict]], fp16: bool = False) -> list[np.ndarray]:
    """The mask of each prompt: the best of the multimask outputs for a point, the single output for a box."""
    from mobilesam.backends import ImageFeatures

    out = []
    for image, ps in zip(images, prompts):
        pred.set_image(image)
        if fp16:
            f = pred.get_features()
            pred.set_features(ImageFeatures({k: v.half().float() for k, v in f.tensors.items()}, f.original_size,
                                            f.input_size))
        for p in ps:
            multi = "box" not in p
            ms, scores, _ = pred.predict(**p, multimask_output=multi)
            out.append(ms[int(np.argmax(scores))] if multi else ms[0])
    return out  # the scenes differ in size: one mask each, not one array


def accuracy(checkpoint: Path, backends: list[str], images: list[np.ndarray], prompts: list[list[dict]],
             truth: list[np.ndarray] | None, threads: int | None, refused: dict[str, str]) -> list[str]:
    """Markdown rows: each backend's masks vs f32 torch's for the same prompts (and vs the ground truth); a
    backend its gate refused is measured all the same (made without the check) and marked so."""
    import torch

    from mobilesam.bench import ONNX_PREFIX, ensure_onnx
    from mobilesam.masks import mask_iou

    if threads:
        torch.set_num_threads(threads)
    onnx_dir = ensure_onnx(checkpoint, quantize=True) if any(b.startswith(ONNX_PREFIX) for b in backends) else None
    masks: dict[str, list[np.ndarray]] = {}
    for b in dict.fromkeys([REFERENCE, *backends]):
        pred = _predictor(checkpoint, b, onnx_dir, threads, check=b not in refused)
        masks[b] = _masks(pred, images, prompts)
        if b == REFERENCE:
            masks[FP16_EMBEDDING] = _masks(pred, images, prompts, fp16=True)
        print(f"accuracy: {b} done", file=sys.stderr, flush=True)
    rows = ["| backend | mask IoU vs torch f32 (mean / min) | masks with IoU < 0.9 |"
            + (" mIoU vs ground truth |" if truth else ""), "|---|---|---:|" + ("---:|" if truth else "")]
    for b, got in masks.items():
        vs_ref = np.array([float(mask_iou(r, g)) for r, g in zip(masks[REFERENCE], got)])
        low = int((vs_ref < 0.9).sum())
        gt = (f" {np.mean([float(mask_iou(t, g)) for t, g in zip(truth, got)]):.4f} |"
              if truth else "")
        label = f"{b} (refused by its gate: measured without it)" if b in refused else b
        rows.append(f"| {label} | {vs_ref.mean():.4f} / {vs_ref.min():.4f} | {low} of {len(vs_ref)} |{gt}")
    return rows + [f"\n{b} refused: {why}" for b, why in refused.items()]


def perturbed_checkpoint(folder: Path) -> Path:
    """The test suite's oracle: the official vit_t, seeded and perturbed (random weights), as a checkpoint."""
    import torch
    from oracle import reference_model

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "perturbed_vit_t.pt"
    if not path.is_file():
        torch.save(reference_model("vit_t", seed=0).state_dict(), path)
    return path


def main(argv: list[str] | None = None) -> int:
    from mobilesam.bench import benchmark_backends, run_benchmark

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default=DEFAULT_BACKENDS, help="comma-separated; default: %(default)s")
    ap.add_argument("--rounds", type=int, default=3, help="latency rounds (one process each); default: %(default)s")
    ap.add_argument("--runs", type=int, default=3, help="encoder runs per process; default: %(default)s")
    ap.add_argument("--prompts", type=int, default=10, help="single prompts timed per process; default: %(default)s")
    ap.add_argument("--threads", type=int, default=None, help="threads of every runtime (default: each one's own)")
    ap.add_argument("--scenes", type=int, default=4, help="held-out scenes of the accuracy table; default: %(default)s")
    ap.add_argument("--proxy-dir", default=None, help="folder of the proxy shards (default $MOBILESAM_HOME/proxy)")
    ap.add_argument("--rebuild-minutes", type=float, default=40.0,
                    help="train the proxy this long when missing; default: %(default)s")
    ap.add_argument("--no-latency", action="store_true", help="only the accuracy table")
    ap.add_argument("--no-accuracy", action="store_true", help="only the latency table")
    ap.add_argument("--no-batch", action="store_true",
                    help="skip the 64-prompt batch (the official code's peaks at 3-4 GB) on a shared machine")
    ap.add_argument("--vs-official", action="store_true", help="also the official code, in the same rounds")
    ap.add_argument("--peers", action="store_true",
                    help="also the official graph exported the plain way on ONNX Runtime / OpenVINO (mobilesam.bench_peers)")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    known = benchmark_backends()
    bad = [b for b in backends if b not in known]
    if bad or not backends:
        ap.error(f"--backends: expected some of {','.join(known)}, got {args.backends}")

    ckpt = proxy.proxy_checkpoint(args.proxy_dir, args.rebuild_minutes)
    refused = prepare(ckpt, backends, args.threads)
    from mobilesam.weights import cache_dir

    refused_random = prepare(perturbed_checkpoint(cache_dir() / "bench"),
                             [b for b in backends if b.startswith("openvino")], args.threads)
    scenes = [proxy.make_scene(SCENE_SEED + i) for i in range(args.scenes)]
    command = "python benchmarks/bench_openvino.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# CPU runtimes on the proxy checkpoint ({platform.machine()}, {os.cpu_count()} CPUs)", ""]
    if not args.no_latency:
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            image = Path(tmp) / "scene.png"
            Image.fromarray(scenes[0].image).save(image)
            if refused:  # the workers make predictors the checked way, which the gate refuses
                lines += [f"Not timed, refused by the int8 gate on the proxy: {', '.join(refused)}.", ""]
            timed = [b for b in backends if b not in refused]
            lines += ["## Latency", "", run_benchmark(str(ckpt), timed, image=image, rounds=args.rounds,
                                                      runs=args.runs, prompts=args.prompts, threads=args.threads,
                                                      vs_official=args.vs_official, peers=args.peers,
                                                      batch=not args.no_batch, command=command), ""]
        print("\n".join(lines), flush=True)  # the latency table is kept even if the accuracy part fails
        lines = []
    if args.no_accuracy:
        print("\n".join(lines))
        return 0
    images, prompts, truth = _scene_prompts(scenes)
    lines += ["## Masks of the reduced-precision variants vs f32", "",
              f"{args.scenes} held-out proxy scenes, one point (best multimask output) and one box per instance; "
              "int8 OpenVINO calibrated on the built-in synthetic images.", "",
              *accuracy(ckpt, backends, images, prompts, truth, args.threads, refused), ""]
    from mobilesam.weights import cache_dir

    random_ckpt = perturbed_checkpoint(cache_dir() / "bench")
    lines += ["Perturbed random weights (the test suite's oracle vit_t), the same scenes and prompts:", "",
              *accuracy(random_ckpt, backends, images, prompts, None, args.threads, refused_random), ""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
