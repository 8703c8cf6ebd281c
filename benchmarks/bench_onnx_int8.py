"""Which ONNX Runtime int8 image encoder is faster than fp32 on this CPU, and what it costs in masks.

The variants, all made from our fp32 ONNX export of the checkpoint:

- ``dynamic-matmul``: dynamic quantization of MatMul/Gemm weights, per channel (what ``export_onnx(...,
  quantize="int8")`` wrote before this benchmark);
- ``static-qdq``: static quantization (QDQ), per-channel int8 weights, uint8 activations calibrated
  (MinMax) on the built-in synthetic calibration images, every op type ONNX Runtime quantizes;
- ``static-qdq-matmul`` / ``static-qdq-conv`` / ``static-qdq-matmul-conv``: the same on op subsets;
- ``static-qop``: static, QOperator format (QLinearConv / QLinearMatMul kernels) on every op type;
- ``nncf-qdq``: NNCF's post-training quantization of the ONNX graph (QDQ, per-channel weights, SmoothQuant
  and NNCF's transformer rules: what the openvino-int8 backend does to the IR), same calibration images.

ONNX Runtime's MinMax calibration adds ReduceMin/ReduceMax outputs to the graph, so what it keeps per image is
small; its ``CalibMaxIntermediateOutputs`` option is not used: in onnxruntime 1.32 it drops the collected
ranges instead of merging them ("No data is collected").

Each variant's encoder is timed in its own process, variants alternating over rounds (the machine may be
shared: only ratios to fp32 in the same run mean something), and its masks are compared with fp32's for
the same prompts (the fp32 decoder on the variant's embedding) on held-out proxy scenes and on a
perturbed random vit_t (the test suite's oracle). Prints a markdown table.

    python benchmarks/bench_onnx_int8.py --rounds 3 --runs 3 --scenes 4
    python benchmarks/bench_onnx_int8.py --variants fp32,dynamic-matmul,static-qdq --no-proxy
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))

VARIANTS = ("fp32", "dynamic-matmul", "static-qdq", "static-qdq-matmul", "static-qdq-conv", "static-qdq-matmul-conv",
            "static-qop", "nncf-qdq")
SCENE_SEED = 777_000_000  # held out, as bench_openvino.py


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over the synthetic calibration images (resized, unpadded)."""

    def __init__(self, n: int, img_size: int = 1024) -> None:
        from mobilesam.export.openvino_export import synthetic_calibration_image
        from mobilesam.transforms import ResizeLongestSide

        resize = ResizeLongestSide(img_size)
        self._items = iter([{"image": resize.apply_image(synthetic_calibration_image(i)).astype(np.float32)
                            .transpose(2, 0, 1)[None]} for i in range(n)])

    def get_next(self):
        return next(self._items, None)

    def rewind(self) -> None:  # newer ORT calls it
        pass


def make_variant(name: str, fp32: Path, out: Path, calibration: int) -> Path:
    """The encoder file of ``name`` (made once into ``out``)."""
    import onnxruntime.quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mobilesam.export.onnx_export import quantize_int8

    path = out / f"encoder.{name}.onnx"
    if name == "fp32" or path.is_file():
        return fp32 if name == "fp32" else path
    t = time.perf_counter()
    if name == "dynamic-matmul":
        quantize_int8(fp32, path)
    elif name == "nncf-qdq":
        import nncf
        import onnx

        reader = _Calibration(calibration)
        samples = list(iter(reader.get_next, None))
        model = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(samples), fast_bias_correction=True)
        onnx.save(model, str(path))
    else:
        pre = out / "encoder.pre.onnx"
        if not pre.is_file():
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        ops = {"static-qdq-matmul": ["MatMul"], "static-qdq-conv": ["Conv"],
               "static-qdq-matmul-conv": ["MatMul", "Conv"]}.get(name)
        q.quantize_static(
            str(pre), str(path), _Calibration(calibration),
            quant_format=q.QuantFormat.QOperator if name == "static-qop" else q.QuantFormat.QDQ,
            per_channel=True, weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8,
            op_types_to_quantize=ops, calibrate_method=q.CalibrationMethod.MinMax,
        )
    print(f"{name}: made in {time.perf_counter() - t:.0f} s ({path.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return path


def time_worker(path: str, image: str, runs: int, threads: int | None) -> dict:
    """In a fresh process: encoder ms of one file (median of ``runs`` after a warm-up)."""
    import onnxruntime as ort

    from mobilesam.io import read_image
    from mobilesam.transforms import ResizeLongestSide

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = ResizeLongestSide(1024).apply_image(read_image(image)).astype(np.float32).transpose(2, 0, 1)[None]
    session.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {"image": x})
        times.append(time.perf_counter() - t)
    return {"encoder_ms": float(np.median(times)) * 1e3}


def _folder_with_encoder(base: Path, encoder: Path, dest: Path) -> Path:
    """A copy of the fp32 export folder whose manifest names ``encoder`` as its encoder."""
    from mobilesam.export.manifest import sha256_file

    dest.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((base / "manifest.json").read_text())
    for key in ("encoder", "decoder"):
        src = encoder if key == "encoder" else base / manifest["files"][key]["path"]
        if not (dest / src.name).exists():
            os.symlink(src.resolve(), dest / src.name)
        manifest["files"][key].update(path=src.name, sha256=sha256_file(src))
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def mask_ious(folders: dict[str, Path], images: list[np.ndarray], prompts: list[list[dict]]) -> dict[str, list[float]]:
    """Each variant's masks vs fp32's, same prompts (original-image pixels)."""
    from mobilesam.backends.onnx_predictor import OnnxSamPredictor
    from mobilesam.masks import mask_iou

    masks = {}
    for name, folder in folders.items():
        pred = OnnxSamPredictor(folder, verify=False)
        out = []
        for image, ps in zip(images, prompts):
            pred.set_image(image)
            out += [pred.predict(**p, multimask_output=False)[0][0] for p in ps]
        masks[name] = out  # the scenes differ in size: one mask each, not one array
    return {n: [float(mask_iou(r, g)) for r, g in zip(masks["fp32"], m)] for n, m in masks.items()}


def proxy_case(n_scenes: int) -> tuple[Path, list[np.ndarray], list[list[dict]]]:
    import proxy
    from bench_openvino import _scene_prompts

    ckpt = proxy.proxy_checkpoint(None, 0.0)
    images, prompts, _ = _scene_prompts([proxy.make_scene(SCENE_SEED + i) for i in range(n_scenes)])
    return ckpt, images, prompts


def random_case(tmp: Path) -> tuple[Path, list[np.ndarray], list[list[dict]]]:
    """The test suite's perturbed official vit_t (random weights) on the benchmark image, fixed prompts."""
    import torch
    from oracle import reference_model

    from mobilesam.bench import iou_prompts, synthetic_image

    path = tmp / "perturbed_vit_t.pt"
    torch.save(reference_model("vit_t", seed=0).state_dict(), path)
    image = synthetic_image()
    h, w = image.shape[:2]
    prompts = [{k: np.asarray(v, float) for k, v in p.items()} for p in iou_prompts(h, w)]
    return path, [image], [prompts]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--calibration", type=int, default=8, help="synthetic calibration images (static variants)")
    ap.add_argument("--no-proxy", action="store_true", help="random weights only (no proxy checkpoint needed)")
    ap.add_argument("--work", default=None, help="folder for the variants (default: a temporary one)")
    ap.add_argument("--worker", nargs=4, metavar=("PATH", "IMAGE", "RUNS", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        path, image, runs, threads = args.worker
        print(json.dumps(time_worker(path, image, int(runs), int(threads) or None)))
        return 0
    from PIL import Image

    from mobilesam.bench import ensure_onnx, synthetic_image

    variants = [v for v in args.variants.split(",") if v]
    tmp = Path(tempfile.mkdtemp(prefix="bench-onnx-int8-"))
    work = Path(args.work) if args.work else tmp
    try:
        cases = {"random weights (perturbed vit_t)": random_case(tmp)}
        if not args.no_proxy:
            cases["proxy"] = proxy_case(args.scenes)
        image = tmp / "bench.png"
        Image.fromarray(synthetic_image()).save(image)
        rows: dict[str, dict] = {v: {} for v in variants}
        failed: dict[str, str] = {}
        for label, (ckpt, images, prompts) in cases.items():
            export = ensure_onnx(ckpt, quantize=False)
            fp32 = export / json.loads((export / "manifest.json").read_text())["files"]["encoder"]["path"]
            out = work / f"{label.split()[0]}-{ckpt.stem}"
            out.mkdir(parents=True, exist_ok=True)
            files = {}
            for v in list(variants):
                try:
                    files[v] = make_variant(v, fp32, out, args.calibration)
                except Exception as e:  # noqa: BLE001 - a quantizer failing on this graph is a result to report
                    failed[v] = f"{type(e).__name__}: {str(e)[:200]}"
                    print(f"{v}: could not be made ({failed[v]})", file=sys.stderr, flush=True)
                    variants.remove(v)
                    rows.pop(v, None)
            folders = {v: _folder_with_encoder(export, f, out / f"folder-{v}") for v, f in files.items()}
            ious = mask_ious(folders, images, prompts)
            for v in variants:
                rows[v][label] = ious[v]
                rows[v]["MB"] = files[v].stat().st_size / 1e6
            if label.startswith("random"):  # speed does not depend on the weights: timed once
                for r in range(args.rounds):
                    for v in variants[r % len(variants):] + variants[: r % len(variants)]:
                        proc = subprocess.run([sys.executable, __file__, "--worker", str(files[v]), str(image),
                                               str(args.runs), str(args.threads or 0)], capture_output=True, text=True)
                        if proc.returncode:
                            raise RuntimeError(f"{v}: {proc.stderr.strip().splitlines()[-1:]}")
                        rows[v].setdefault("ms", []).append(json.loads(proc.stdout)["encoder_ms"])
                        print(f"round {r + 1}: {v} {rows[v]['ms'][-1]:.0f} ms", file=sys.stderr, flush=True)
        base = float(np.median(rows["fp32"]["ms"])) if "fp32" in rows else None
        head = "| variant | MB | encoder ms (median) | vs fp32 |" + "".join(
            f" mask IoU vs fp32, {label} (mean / min) |" for label in cases)
        lines = [head, "|---|---:|---:|---:|" + "---|" * len(cases)]
        for v in variants:
            ms = float(np.median(rows[v]["ms"]))
            cells = "".join(f" {np.mean(rows[v][label]):.4f} / {np.min(rows[v][label]):.4f} |" for label in cases)
            lines.append(f"| {v} | {rows[v]['MB']:.1f} | {ms:.0f} | {ms / base:.2f}x |{cells}" if base else "")
        print("\n".join(lines + [f"\n{v}: could not be made: {why}" for v, why in failed.items()]))
        print(f"\nCommand: python benchmarks/bench_onnx_int8.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
