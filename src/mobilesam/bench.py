"""Latency and memory benchmark of the predictor backends, optionally against the official code: the
engine of ``mobilesam benchmark``.

Every backend runs in its own process (so peak memory is its own, and the official code runs as its
users run it: default environment, torch's default threads), and the processes alternate round by
round so that a machine shared with other work slows each backend alike. Numbers are medians over
all rounds. The worker processes run ``python -m mobilesam.bench SPEC.json RESULT.json``.

Predictors are made through the backend registry (:func:`mobilesam.backends.create_predictor`), so
every registered backend can be timed; ``"official"`` is the official ``mobile_sam`` /
``segment_anything`` code, imported only when asked for.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import bench_brief
from .allocator import tune_allocator

OFFICIAL = "official"
DEFAULT_BACKENDS = ("torch", "onnxruntime")
PEERS = ("sam_b.pt", "sam2_t.pt", "sam2_b.pt", "FastSAM-s.pt", "yolov8n-seg.pt", "yolo11n-seg.pt")
BATCH = 64  # prompts in the batched-decoder measurement (what segment-everything sends per pass)
ONNX_PREFIX = "onnxruntime"  # the built-in ONNX Runtime backends run the export this benchmark makes once


def benchmark_backends() -> list[str]:
    """What ``backends`` accepts: every registered backend, ``"official"`` (the official code) and the plain
    runtime baselines of ``--peers`` (:mod:`mobilesam.bench_peers`)."""
    from .backends import available_backends
    from .bench_peers import PEERS as RUNTIME_PEERS

    return [*available_backends(), OFFICIAL, *RUNTIME_PEERS]


def check_options(backends: Sequence[str], rounds: int, runs: int, prompts: int) -> None:
    """A ValueError when a benchmark option is out of range or unknown; its message starts with the
    parameter's name (the command line's option is ``--`` and that name)."""
    for name, value in (("rounds", rounds), ("runs", runs), ("prompts", prompts)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    known = benchmark_backends()
    bad = [b for b in backends if b not in known]
    if bad or not backends:
        raise ValueError(f"backends: expected some of {','.join(known)}, got {','.join(backends) or 'nothing'}")


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
    """A randomly initialised checkpoint of any family's size in its official layout (flat for SAM,
    ``{"model": sd}`` for SAM 2), with non-trivial BatchNorm statistics."""
    import torch

    from .build import build_sam
    from .hub import family_of

    torch.manual_seed(seed)
    sam = build_sam(model_type=model_type)
    with torch.no_grad():
        for name, t in sam.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn_like(t) * 0.1)
    sd = sam.state_dict()
    torch.save({"model": sd} if family_of(sam).name == "sam2" else sd, path)
    return path


def ensure_onnx(checkpoint: Path, quantize: bool) -> Path:
    """An export of ``checkpoint`` in the cache (keyed by its SHA-256), made once."""
    from .export.manifest import ExportError, read_manifest, sha256_file
    from .export.onnx_export import export_onnx
    from .weights import cache_dir

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


def edge_format(backend: str) -> str | None:
    """The export format (other than ONNX, which :func:`ensure_onnx` makes) whose folder ``backend`` runs:
    "executorch" for executorch / executorch-int8, "tflite" for litert / litert-int8; None otherwise."""
    from .export.registry import available_export_formats, get_export_format

    for name in available_export_formats():
        # ONNX: ensure_onnx; the openvino backends convert a checkpoint themselves (cached).
        if name not in ("onnx", "openvino") and backend in get_export_format(name).backends:
            return name
    return None


def export_job(checkpoint: str, format: str, folder: str, quantize: str | None) -> float:
    """Export ``checkpoint`` as ``format`` into ``folder`` (a worker job: the converters' memory, gigabytes
    for litert-torch, is freed with the process); returns the seconds it took."""
    from .export import export_model

    t = time.perf_counter()
    export_model(checkpoint, folder, format, quantize=quantize, progress=False)
    return time.perf_counter() - t


def ensure_export(checkpoint: Path, format: str, quantize: str | None, tmp: Path) -> tuple[Path, float | None]:
    """An export of ``checkpoint`` as ``format`` in the cache (keyed by its SHA-256), made once in a worker
    process; returns the folder and the seconds the export took (None when it was already there)."""
    from .export.edge_export import file_key, read_edge_manifest
    from .export.manifest import ExportError, sha256_file
    from .weights import cache_dir

    folder = cache_dir() / format / f"bench-{sha256_file(checkpoint)[:16]}"
    try:
        _, manifest = read_edge_manifest(folder, format)
        if not quantize or file_key("encoder", quantize) in manifest["files"]:
            return folder, None
    except (FileNotFoundError, ExportError):
        pass
    print(f"exporting {checkpoint.name} as {format} in {folder} (once; minutes)", file=sys.stderr)
    seconds, failure = _run_in_process("export", {"checkpoint": str(checkpoint), "format": format,
                                                  "folder": str(folder), "quantize": quantize}, tmp)
    if seconds is None:
        raise RuntimeError(f"benchmark: the {format} export failed: {' | '.join(failure)}")
    return folder, seconds


def _edge_size(folder: Path, format: str, backend: str) -> float:
    """Bytes of the encoder and decoder files ``backend`` runs."""
    from .export.edge_export import file_key, read_edge_manifest

    _, manifest = read_edge_manifest(folder, format)
    precision = backend.rsplit("-", 1)[1] if "-" in backend else "fp32"
    files = manifest["files"]
    return float(sum(files.get(file_key(p, precision), files[p])["bytes"] for p in ("encoder", "decoder")))


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


class _OfficialSam2:
    """Meta's ``SAM2ImagePredictor`` with the few names the worker uses that it spells otherwise
    (``transform.apply_coords``, ``predict_torch``)."""

    def __init__(self, predictor: Any) -> None:
        from .hub import SAM2_FAMILY
        from .transforms import transform_for

        self.predictor = predictor
        self.transform = transform_for(SAM2_FAMILY.preprocessing)  # the same square frame as Meta's

    def set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def predict(self, **kwargs: Any) -> Any:
        masks, scores, low_res = self.predictor.predict(**kwargs)
        return masks.astype(bool), scores, low_res  # Meta's masks are 0/1 floats

    def predict_torch(self, point_coords: Any, point_labels: Any, multimask_output: bool = True) -> Any:
        return self.predictor._predict(point_coords, point_labels, multimask_output=multimask_output)


def _official_sam2_predictor(checkpoint: str, model_type: str) -> _OfficialSam2:
    """Meta's SAM 2 predictor, built as its README does (config of the size, checkpoint loaded by Meta's code)."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    release, size = model_type.split("_hiera_")
    short = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}[size]
    model = build_sam2(f"configs/{release}/{release}_hiera_{short}.yaml", checkpoint, device="cpu")
    return _OfficialSam2(SAM2ImagePredictor(model))


def _checkpoint_keys(checkpoint: str) -> dict[str, Any]:
    """The checkpoint's state dict, memory-mapped where its format allows (only its keys and shapes are
    looked at here)."""
    import torch

    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a checkpoint in torch's legacy (pre-zip) format cannot be memory-mapped
        return torch.load(checkpoint, map_location="cpu", weights_only=True)


def official_model(checkpoint: str) -> tuple[Any, Any]:
    """The official model of a SAM / MobileSAM ``checkpoint``, built as its README does, and its package
    (``mobile_sam`` for vit_t, ``segment_anything`` otherwise); the packages are imported only here."""
    import warnings

    warnings.simplefilter("ignore")
    state_dict = _checkpoint_keys(checkpoint)
    if any(k.startswith("image_encoder.layers.") for k in state_dict):
        import mobile_sam as package

        model_type = "vit_t"
    else:
        import segment_anything as package

        from .build import detect_model_type

        model_type = detect_model_type(state_dict)
    del state_dict
    sam = package.sam_model_registry[model_type](checkpoint=checkpoint)
    sam.eval()  # as its README: after loading (the official TinyViT caches biases in eval())
    return sam, package


def _official_predictor(checkpoint: str) -> Any:
    """The official code's predictor, built as its README does (Meta's SAM 2 one for a SAM 2 checkpoint)."""
    state_dict = _checkpoint_keys(checkpoint)
    if isinstance(state_dict.get("model"), dict):  # Meta's SAM 2 layout
        from .hub import SAM2_FAMILY

        model_type = SAM2_FAMILY.detect(state_dict["model"])
        if model_type is not None:
            del state_dict
            return _official_sam2_predictor(checkpoint, model_type)
    del state_dict
    sam, package = official_model(checkpoint)
    return package.SamPredictor(sam)


def _make_predictor(backend: str, checkpoint: str, onnx_dir: str | None, threads: int | None,
                    export_dir: str | None = None, peer_dir: str | None = None) -> Any:
    import torch

    from .bench_peers import PREFIX, PeerPredictor

    if threads:
        torch.set_num_threads(threads)
    if backend == OFFICIAL:
        return _official_predictor(checkpoint)
    if backend.startswith(PREFIX):
        return PeerPredictor(checkpoint, backend[len(PREFIX):], Path(peer_dir), threads)
    from .backends import create_predictor, get_backend

    entry = get_backend(backend)
    model = onnx_dir if backend.startswith(ONNX_PREFIX) and onnx_dir else export_dir or checkpoint
    # Runtimes other than torch take their own thread count; torch's was set above.
    options = {"threads": threads} if threads and entry.exported else {}
    return create_predictor(model, backend, **options)


def run_worker(backend: str, checkpoint: str, image_path: str, onnx_dir: str | None, runs: int, prompts: int,
               batch: bool, masks_out: str | None, threads: int | None = None,
               plugin_modules: Sequence[str] = (), export_dir: str | None = None,
               peer_dir: str | None = None) -> dict[str, Any]:
    """Time one backend in this process: load, ``runs`` encoder passes, ``prompts`` single-point decodes,
    optionally the masks of :func:`iou_prompts` (to ``masks_out``) and one ``BATCH``-prompt batch.

    ``plugin_modules`` are imported first: the modules that register user backends in the parent process.
    """
    import importlib

    import torch

    from .io import read_image

    for module in plugin_modules:
        importlib.import_module(module)
    if backend != OFFICIAL:  # as the mobilesam command line and server run; the official code runs as its users do
        tune_allocator()
    t0 = time.perf_counter()
    pred = _make_predictor(backend, checkpoint, onnx_dir, threads, export_dir, peer_dir)
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
        "precision": str(getattr(pred, "precision", "")),
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


def time_peer(weights: str, image: str | None, runs: int) -> float:
    """Median milliseconds per image of an Ultralytics model (SAM, FastSAM or YOLO, from the file name)."""
    from ultralytics import SAM, YOLO, FastSAM

    stem = Path(weights).stem
    model_class = SAM if stem.startswith(("sam", "mobile")) else FastSAM if stem.startswith("FastSAM") else YOLO
    model = model_class(weights)
    source = image or np.full((853, 1280, 3), 128, np.uint8)
    model(source, verbose=False)  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model(source, verbose=False)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


# The jobs a worker process runs: spec["job"] -> the function that gets the rest of the spec.
_WORKER_JOBS = {"backend": run_worker, "peer": time_peer, "export": export_job}
_WORKER_JOBS.update(bench_brief.WORKER_JOBS)  # mobilesam benchmark --table brief
_WORKER_MODULE = "mobilesam.bench"


def _run_in_process(job: str, params: dict[str, Any], tmp: Path) -> tuple[Any, list[str]]:
    """``_WORKER_JOBS[job](**params)`` run in a fresh ``python -m mobilesam.bench`` (default environment):
    (its result, []) or (None, the last lines it printed)."""
    stamp = f"{job}-{time.monotonic_ns()}"
    spec, result = tmp / f"{stamp}-spec.json", tmp / f"{stamp}-result.json"
    spec.write_text(json.dumps({"job": job, **params}))
    proc = subprocess.run([sys.executable, "-m", _WORKER_MODULE, str(spec), str(result)], capture_output=True,
                          text=True, env=os.environ.copy())
    if proc.returncode == 0 and result.is_file():
        return json.loads(result.read_text()), []
    return None, (proc.stderr or proc.stdout).strip().splitlines()[-3:]


# --------------------------------------------------------------------------------------------------
# Parent: alternate the workers, aggregate, print the table
# --------------------------------------------------------------------------------------------------
def _plugin_modules(backends: Sequence[str]) -> list[str]:
    """The modules a worker must import for the user-registered backends among ``backends``."""
    from .backends import get_backend

    modules = []
    for name in backends:
        if name == OFFICIAL or name.startswith("peer:"):
            continue
        module = get_backend(name).factory.__module__
        if module == "__main__":
            raise ValueError(
                f"backends: {name!r} is registered by __main__, which the benchmark's worker processes cannot "
                "import; register it in an importable module"
            )
        if module != __package__ and not module.startswith(f"{__package__}.") and module not in modules:
            modules.append(module)
    return modules


def _load_masks(path: Path) -> np.ndarray:
    data = np.load(path)
    shape = tuple(data["shape"])
    return np.unpackbits(data["masks"], axis=-1)[..., : shape[1]].astype(bool)


def compare_masks(ref: np.ndarray, got: np.ndarray, ref_name: str, name: str) -> tuple[list[float] | None, str | None]:
    """Per-mask IoU of ``got`` against ``ref`` (N, H, W), or None and a note where the shapes differ: a wrong
    answer reported as such, not a crash of the whole run (plain OpenVINO in bf16 on the official decoder graph
    rounds the image height 853 to 852)."""
    from .masks import mask_iou

    if ref.shape != got.shape:
        return None, f"{name} gives masks of shape {tuple(got.shape)} where {ref_name} gives {tuple(ref.shape)}: no IoU"
    return mask_iou(ref, got).tolist(), None


def run_benchmark(
    model: str = "mobile_sam.pt",
    backends: Sequence[str] = DEFAULT_BACKENDS,
    *,
    vs_official: bool = False,
    image: str | os.PathLike | None = None,
    rounds: int = 3,
    runs: int = 3,
    prompts: int = 10,
    batch: bool = True,
    random_weights: bool = False,
    peers: bool = False,
    threads: int | None = None,
    command: str | None = None,
) -> str:
    """Run every backend ``rounds`` times, alternating, and return the markdown report.

    ``model``: checkpoint file or known weights name; with ``random_weights``, a random vit_t stands in
    when it is not available. ``backends``: registered backend names, and ``"official"``; ``vs_official``
    adds the official code. ``image``: an image file (default: :func:`synthetic_image`). Each process
    times ``runs`` encoder passes and ``prompts`` single-point prompts, and a ``BATCH``-prompt batch
    unless ``batch`` is False. ``peers``: also time Ultralytics models whose weights are at hand.
    ``threads``: intra-op threads of every backend (default: each runtime's own). ``command``: the
    command line quoted at the end of the report.
    """
    from .build import detect_model_type
    from .io import read_image
    from .weights import CheckpointError, load_state_dict, resolve_weights

    from .bench_peers import PEERS as RUNTIME_PEERS
    from .bench_peers import PREFIX, describe, ensure_peer_exports

    backends = list(dict.fromkeys([*backends, *([OFFICIAL] if vs_official else []), *(RUNTIME_PEERS if peers else [])]))
    check_options(backends, rounds, runs, prompts)
    plugin_modules = _plugin_modules(backends)
    # Removed on every way out: success, a failed backend, Ctrl-C.
    with tempfile.TemporaryDirectory(prefix="mobilesam-bench-") as tmp_name:
        tmp = Path(tmp_name)
        note = ""
        try:
            ckpt = Path(resolve_weights(model))
        except CheckpointError:
            if not random_weights:
                raise
            from .weights import get_weights_entry

            known = get_weights_entry(str(model))  # a known name: random weights of its size
            random_type = known.model_type if known is not None else "vit_t"
            ckpt = make_random_checkpoint(random_type, tmp / f"random_{random_type}.pt")
            note = f"weights: '{model}' not available; a randomly initialised {random_type} checkpoint was used"
        sd = load_state_dict(ckpt)
        model_type = detect_model_type(sd)
        params = sum(v.numel() for k, v in sd.items() if v.is_floating_point())
        if image:
            image_path = Path(image)
            img_shape = read_image(image_path).shape
        else:
            from PIL import Image

            image_path = tmp / "bench.png"
            img = synthetic_image()
            Image.fromarray(img).save(image_path)
            img_shape = img.shape
        onnx_dir = None
        if any(b.startswith(ONNX_PREFIX) for b in backends):
            onnx_dir = ensure_onnx(ckpt, quantize=f"{ONNX_PREFIX}-int8" in backends)
        peer_dir = ensure_peer_exports(ckpt) if any(b.startswith(PREFIX) for b in backends) else None
        # The edge formats (executorch, tflite) are exported once here, timed: minutes for a full-size model.
        export_dirs: dict[str, Path] = {}
        export_s: dict[str, float | None] = {}
        for fmt in dict.fromkeys(f for f in map(edge_format, backends) if f):
            mine = [b for b in backends if edge_format(b) == fmt]
            reduced = next((b.rsplit("-", 1)[1] for b in mine if "-" in b), None)
            folder, seconds = ensure_export(ckpt, fmt, reduced, tmp)
            for b in mine:
                export_dirs[b], export_s[b] = folder, seconds
        samples: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
        masks: dict[str, Path] = {}
        for r in range(rounds):
            order = backends[r % len(backends):] + backends[: r % len(backends)]  # rotate who goes first
            for b in order:
                m = tmp / f"masks-{b}.npz" if r == 0 else None
                print(f"round {r + 1}/{rounds}: {b}", file=sys.stderr)
                result, failure = _run_in_process("backend", {
                    "backend": b, "checkpoint": str(ckpt), "image_path": str(image_path),
                    "onnx_dir": str(onnx_dir) if onnx_dir else None, "runs": runs, "prompts": prompts,
                    "batch": batch and not b.startswith(PREFIX), "masks_out": str(m) if m else None, "threads": threads,
                    "plugin_modules": plugin_modules, "peer_dir": str(peer_dir) if peer_dir else None,
                    "export_dir": str(export_dirs[b]) if b in export_dirs else None,
                }, tmp)
                if result is None:
                    raise RuntimeError(f"benchmark: backend {b!r} failed: {' | '.join(failure)}")
                samples[b].append(result)
                if m is not None:
                    masks[b] = m
        ref_iou = "torch" if "torch" in masks else (OFFICIAL if OFFICIAL in masks else None)
        rows = []
        size_notes = []
        for b in backends:
            enc = float(np.median([x for s in samples[b] for x in s["encoder_s"]])) * 1e3
            dec = float(np.median([x for s in samples[b] for x in s["decoder_s"]])) * 1e3
            if b.startswith(ONNX_PREFIX):
                size = sum(Path(onnx_dir, f).stat().st_size for f in _onnx_files(onnx_dir, b)) / 1e6
            elif b.startswith(PREFIX):
                suffixes = (".onnx",) if b == f"{PREFIX}onnxruntime" else (".bin",)
                size = sum(f.stat().st_size for f in Path(peer_dir).iterdir() if f.suffix in suffixes) / 1e6
            elif b in export_dirs:
                size = _edge_size(export_dirs[b], edge_format(b), b) / 1e6
            else:
                size = ckpt.stat().st_size / 1e6
            iou = None
            if ref_iou and b != ref_iou and b in masks:
                iou, size_note = compare_masks(_load_masks(masks[ref_iou]), _load_masks(masks[b]), ref_iou, b)
                if size_note:
                    size_notes.append(size_note)
            rows.append({
                "backend": b, "size_mb": size, "enc": enc, "dec": dec, "total": enc + dec,
                "peak_enc": max(s["peak_encoder_mb"] for s in samples[b]),
                "peak_batch": max((s.get("peak_batch_mb", float("nan")) for s in samples[b])),
                "batch": float(np.median([s.get("batch_s", float("nan")) for s in samples[b]])) * 1e3,
                "iou": iou, "threads": samples[b][0]["threads"], "precision": samples[b][0].get("precision", ""),
                "export_s": export_s.get(b), "exported": b in export_dirs,
            })
        lines = _report(rows, model_type, params, img_shape, note, ref_iou, rounds, runs, prompts, threads)
        lines += [f"Mask sizes: {n}." for n in size_notes]
        if peer_dir is not None:
            how = describe(peer_dir)
            picked = {r["backend"]: r["precision"] for r in rows if r["backend"].startswith(PREFIX)}
            lines.append(f"Peers ({PREFIX}*): the official graph exported the plain way: encoder by "
                         f"{how['encoder_exporter']}; OpenVINO: {how['openvino']}; inference precision OpenVINO "
                         f"chose: {picked}.")
        if command:
            lines.append(f"Command: {command}")
        if peers:
            lines += ["", *_peers(str(image) if image else None, runs, tmp)]
        return "\n".join(lines)


def _onnx_files(folder: Path, backend: str) -> list[str]:
    from .export.manifest import read_manifest

    _, man = read_manifest(folder)
    enc = "encoder_int8" if backend.endswith("int8") else "encoder"
    return [man["files"][enc]["path"], man["files"]["decoder"]["path"]]


def _report(rows: list[dict[str, Any]], model_type: str | None, params: int, img_shape: tuple, note: str,
            ref_iou: str | None, rounds: int, runs: int, prompts: int, threads: int | None) -> list[str]:
    off = next((r for r in rows if r["backend"] == OFFICIAL), None)

    def ratio(r: dict, key: str) -> str:
        return f"{r[key] / off[key]:.2f}x" if off and off[key] > 0 else "-"

    lines = [
        f"{datetime.date.today().isoformat()}, {_cpu_name()}, {os.cpu_count()} CPUs, {platform.system()}, "
        f"python {platform.python_version()}, image {img_shape[1]}x{img_shape[0]}, model {model_type} "
        f"({params / 1e6:.2f} M parameters), {rounds} rounds x {runs} encoder runs x {prompts} "
        f"prompts, medians; threads: {rows[0]['threads'] if threads else 'each runtime default'} "
        f"(torch: {rows[0]['threads']}).",
    ]
    if note:
        lines.append(note + ".")
    lines += [
        "",
        "| backend | size MB | encoder ms | decoder ms / prompt | image to first mask ms | vs official: encoder "
        "| decoder | first mask | peak MB after encoder | 64-prompt batch ms | peak MB after batch | mask IoU vs "
        f"{ref_iou or '-'} (mean / min) | export s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        iou = f"{np.mean(r['iou']):.4f} / {np.min(r['iou']):.4f}" if r["iou"] else "-"
        lines.append(
            f"| {r['backend']} | {r['size_mb']:.1f} | {r['enc']:.0f} | {r['dec']:.1f} | {r['total']:.0f} | "
            f"{ratio(r, 'enc')} | {ratio(r, 'dec')} | {ratio(r, 'total')} | {r['peak_enc']:.0f} | "
            f"{r['batch']:.0f} | {r['peak_batch']:.0f} | {iou} | {_export_cell(r)} |"
        )
    lines.append("")
    return lines


def _export_cell(row: dict[str, Any]) -> str:
    """Seconds the edge export took in this run, "cached" when it was already there, "-" for the others."""
    if not row.get("exported"):
        return "-"
    return "cached" if row.get("export_s") is None else f"{row['export_s']:.0f}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _peers(image: str | None, runs: int, tmp: Path) -> list[str]:
    """The brief's other models through Ultralytics, when installed and their weights are present."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:  # optional (AGPL): only when the user asks for peers
        return ["Peers: skipped (ultralytics is not installed: pip install ultralytics)."]
    from .weights import cache_dir

    lines = ["| peer model (Ultralytics) | size MB | ms / image (median) |", "|---|---:|---:|"]
    for name in PEERS:
        path = next((p for p in (Path(name), cache_dir() / name) if p.is_file()), None)
        if path is None:
            lines.append(f"| {name} | - | skipped: weights not found in . or {cache_dir()} |")
            continue
        ms, failure = _run_in_process("peer", {"weights": str(path), "image": image, "runs": runs}, tmp)
        cell = f"{ms:.0f}" if ms is not None else "failed: " + (failure or ["?"])[-1][:80]
        lines.append(f"| {name} | {path.stat().st_size / 1e6:.1f} | {cell} |")
    return lines


def _worker_main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python -m {_WORKER_MODULE} SPEC.json RESULT.json (the benchmark's worker; run 'mobilesam "
              "benchmark' instead)", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    result = _WORKER_JOBS[spec.pop("job")](**spec)
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
