"""Convert a ``Sam`` to OpenVINO IR for the ``openvino`` backends: f32 image encoder and prompt decoder,
and an int8 image encoder quantized with NNCF.

The route is our ONNX export, not ``ov.convert_model`` on the torch modules. Both gave the same f32
outputs (embedding within 1.3e-6 of its scale, logits within 1.4e-5 of PyTorch's, on a random vit_t) and
graphs whose OpenVINO speeds we could not tell apart, but converting from torch took two to three times longer than
``export_onnx`` and OpenVINO's ONNX reader together (side by side on one busy 2-core machine), and the
ONNX route reuses the one exporter that is already checked against PyTorch (the traced encoder with its
pre-processing inside, the official decoder interface) instead of being a second one. The price:
converting needs ``onnx`` and ``onnxruntime`` as well (``mobilesam[openvino]`` pulls them in), and an
image encoder over ONNX's 2 GB file limit (ViT-H) cannot be converted.

The IR is checked once more after conversion, compiled with f32 inference precision on this machine's
CPU, against PyTorch (same tolerances as the ONNX export), before it is moved into the output folder.
The encoder IR takes a batch of square images: (B, 3, S, S), RGB 0-255 resized to longest side S and
padded bottom/right with the pixel mean (which the graph's normalisation turns into the zero padding
SAM uses), so images of any aspect ratio share one encoder pass.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..modeling import Sam
from .graphs import DecoderGraph, EncoderGraph, pad_square
from ..weights import weights_digest
from .manifest import ExportError, sha256_file, write_json_atomic
from .signal_stack import keeps_signal_stack

logger = logging.getLogger("mobilesam")

INSTALL_HINT = 'pip install "mobilesam[openvino]"'
FORMAT = "mobilesam-openvino"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CALIBRATION_SIZE = 32  # images; NNCF's statistics need a few dozen, each costs one f32 encoder pass
# The int8 encoder is offered only where its masks stay this close to f32's (mean IoU, see _int8_mask_iou):
# NNCF's int8 ranges from 1.0 to unusable depending on the weights and the calibration images (0.49 on the
# benchmark proxy with the synthetic images), so it is measured with the user's weights, never assumed.
INT8_MIN_MASK_IOU = 0.95
INT8_GATE_GRID = 4  # clicks per side of the grid decoded on each gate image
_SYNTHETIC_VERSION = 1  # bump when synthetic_calibration_image changes: the int8 cache key holds it


def import_openvino() -> Any:
    """``openvino``, or an ImportError that says how to install it."""
    try:
        import openvino
    except ImportError:
        raise ImportError(f"the openvino backends need the openvino package: {INSTALL_HINT}") from None
    return openvino


def import_nncf() -> Any:
    """``nncf`` (int8 quantization), or an ImportError that says how to install it."""
    try:
        import nncf
    except ImportError:
        raise ImportError(f"the openvino-int8 backend needs the nncf package: {INSTALL_HINT}") from None
    return nncf


def openvino_release() -> str:
    """The OpenVINO release ("2026.4.1"): converted files are kept per release, as its IR and kernels change."""
    return import_openvino().__version__.split("-")[0]


def require_sam(sam: Any) -> None:
    """Refuse what the ONNX route cannot convert: anything but a SAM-family ``Sam`` (SAM 2 has other graphs)."""
    if not isinstance(sam, Sam):
        raise TypeError(f"sam: expected a SAM / MobileSAM model (mobilesam.modeling.Sam), got {type(sam).__name__}; "
                        "the openvino backends convert the SAM family only")


def default_folder(sam: Sam, cache: str | os.PathLike | None = None) -> Path:
    """Where ``sam``'s IR lives in the cache: ``{cache}/{model_type}-{digest}-ov{release}``."""
    from ..build import detect_model_type

    if cache is None:
        from ..weights import cache_dir

        cache = cache_dir() / "openvino"
    model_type = detect_model_type(sam.state_dict()) or "sam"
    return Path(cache).expanduser() / f"{model_type}-{weights_digest(sam)[:16]}-ov{openvino_release()}"


# ----------------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------------
def read_openvino_manifest(folder: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """Load and validate the manifest of a converted folder; returns (folder, manifest)."""
    p = Path(folder).expanduser()
    path = p / MANIFEST_NAME if p.is_dir() else p
    if not path.is_file():
        raise FileNotFoundError(
            f"openvino model: '{folder}' is not a converted folder (no {MANIFEST_NAME}); make one with "
            "mobilesam.export.openvino_export.convert_openvino(sam, DIR)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"openvino model: cannot read manifest '{path}' ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ExportError(f"openvino model: '{path}' is not a mobilesam OpenVINO manifest (expected \"format\": "
                          f"\"{FORMAT}\")")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ExportError(f"openvino model: '{path}' has format_version {data.get('format_version')}, newer than "
                          f"this mobilesam reads ({FORMAT_VERSION}); upgrade mobilesam or convert again")
    if not isinstance(data.get("files"), dict):
        raise ExportError(f"openvino model: manifest '{path}' lists no files")
    return path.parent, data


def ir_file(manifest: dict[str, Any], folder: Path, key: str, verify: bool = True) -> Path:
    """The .xml of the IR ``key`` ("encoder", "decoder", "encoder_int8"), its and its .bin's checksums verified."""
    files = manifest["files"]
    if key not in files:
        raise ExportError(f"openvino model: '{folder}' has no '{key}' model (it has {', '.join(sorted(files))})")
    entry = files[key]
    for part in ("xml", "bin"):
        path = folder / entry[part]
        if not path.is_file():
            raise FileNotFoundError(f"openvino model: '{path}' listed in {MANIFEST_NAME} is missing; convert again")
        if verify and sha256_file(path) != entry[f"{part}_sha256"]:
            raise ExportError(f"openvino model: '{path}' does not match the SHA-256 in {MANIFEST_NAME} (changed or "
                              "truncated); convert again")
    return folder / entry["xml"]


def _save_ir(model: Any, folder: Path, stem: str, precision: str, **extra: Any) -> dict[str, Any]:
    ov = import_openvino()
    xml = folder / f"{stem}.xml"
    # save_model stores weights as fp16 by default; the f32 backends must stay exact.
    ov.save_model(model, str(xml), compress_to_fp16=False)
    bin_ = xml.with_suffix(".bin")
    return {"xml": xml.name, "bin": bin_.name, "xml_sha256": sha256_file(xml), "bin_sha256": sha256_file(bin_),
            "bytes": bin_.stat().st_size, "precision": precision, **extra}


def _copy_conversion(cached: Path, out: Path, checked: bool) -> dict[str, Any] | None:
    """The f32 encoder and decoder of the conversion in ``cached`` copied into ``out`` (hard links where the
    file system allows), or None when there is none usable (missing, damaged, or unchecked when ``checked``)."""
    try:
        _, manifest = read_openvino_manifest(cached)
        for key in ("encoder", "decoder"):
            ir_file(manifest, cached, key)
    except (FileNotFoundError, ExportError):
        return None
    if checked and not manifest.get("checks", {}).get("decoder"):
        return None
    if out.resolve() == cached.resolve():
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=out))
    try:
        files = {k: manifest["files"][k] for k in ("encoder", "decoder")}
        staged = []
        for entry in files.values():
            for part in ("xml", "bin"):
                try:
                    os.link(cached / entry[part], tmp / entry[part])
                except OSError:
                    shutil.copy2(cached / entry[part], tmp / entry[part])
                staged.append(tmp / entry[part])
        manifest = {**manifest, "files": files,
                    "checks": {k: v for k, v in manifest.get("checks", {}).items() if k in files}}
        _publish(staged, out, manifest)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(staged: Sequence[Path], out: Path, manifest: dict[str, Any]) -> None:
    """Move the staged files into ``out``, then write the manifest: a reader never sees half a model."""
    out.mkdir(parents=True, exist_ok=True)
    for path in staged:
        os.replace(path, out / path.name)
    write_json_atomic(out / MANIFEST_NAME, manifest)


# ----------------------------------------------------------------------------------------------------
# Inputs of the compiled graphs
# ----------------------------------------------------------------------------------------------------
@keeps_signal_stack
def compile_model(path: str | os.PathLike | Any, precision: str = "f32", threads: int | None = None) -> Any:
    """A CPU ``CompiledModel`` with the inference precision always explicit (OpenVINO picks bf16 on AMX CPUs
    unless told) and ``threads`` inference threads (None: torch's thread count, as the torch backend uses).

    A model file is compiled through OpenVINO's model cache (``$MOBILESAM_HOME/openvino/compiled``, keyed by
    OpenVINO on the file and the settings): a predictor made again (another ``SAM``, a server thread)
    loads the compiled blob instead of compiling again.
    """
    ov = import_openvino()
    core = ov.Core()
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        "PERFORMANCE_HINT": "LATENCY",
    }
    try:
        if isinstance(path, (str, os.PathLike)):
            from ..weights import cache_dir

            compiled = cache_dir() / "openvino" / "compiled"
            try:
                compiled.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(compiled)
            except OSError:  # a read-only cache: compile every time
                pass
            return core.compile_model(str(path), "CPU", config)
        return core.compile_model(path, "CPU", config)
    except RuntimeError as e:
        raise ExportError(f"openvino model: cannot compile '{path}' for the CPU ({str(e).strip()[:300]})") from None


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can run here (``OPTIMIZATION_CAPABILITIES``: "FP32", "INT8", "BF16", ...)."""
    return list(import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class InferRunner:
    """A compiled model behind ONNX Runtime's ``run(None, feeds) -> [arrays]`` call, so the decoder feeding
    of the ONNX backend drives it unchanged."""

    @keeps_signal_stack
    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._outputs = list(compiled.outputs)

    @keeps_signal_stack
    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # share_outputs=False: the next inference reuses the output buffers; the caller keeps the arrays.
        result = self._request.infer(feeds, share_inputs=False, share_outputs=False)
        return [result[o] for o in self._outputs]


# ----------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------
def _check_encoder(run: Callable, image: np.ndarray, ref: np.ndarray, img_size: int, mean: Sequence[float],
                   strict: bool, name: str) -> dict[str, float]:
    from .onnx_export import EMB_RTOL

    got = run(None, {"image": pad_square(image, img_size, mean)})[0]
    scale = float(np.abs(ref).max())
    diff = float(np.abs(ref - got).max())
    if strict and diff > EMB_RTOL * scale:
        raise ExportError(f"export: OpenVINO's {name} differs from PyTorch: embedding max abs diff {diff:.3g} > "
                          f"{EMB_RTOL} x {scale:.3g}")
    return {"embedding_max_abs_diff": diff, "embedding_max_abs": scale}


def _check_decoder(run: Callable, refs: list, name: str) -> dict[str, float]:
    from .onnx_export import LOGIT_ATOL

    worst_logit = worst_iou = 0.0
    bad_pixels = 0
    for feeds, ref in refs:
        got = run(None, feeds)
        if ref[0].shape != got[0].shape:
            raise ExportError(f"export: OpenVINO's {name} gives masks of shape {got[0].shape}, PyTorch {ref[0].shape}")
        worst_logit = max(worst_logit, float(np.abs(ref[2] - got[2]).max()))
        worst_iou = max(worst_iou, float(np.abs(ref[1] - got[1]).max()))
        bad_pixels += int((((ref[0] > 0) != (got[0] > 0)) & (np.abs(ref[0]) > LOGIT_ATOL)).sum())
    if worst_logit > LOGIT_ATOL or worst_iou > LOGIT_ATOL or bad_pixels:
        raise ExportError(f"export: OpenVINO's {name} differs from PyTorch: low-res logits by {worst_logit:.3g}, iou "
                          f"predictions by {worst_iou:.3g}, {bad_pixels} mask pixels away from the threshold")
    return {"low_res_max_abs_diff": worst_logit, "iou_max_abs_diff": worst_iou}


@keeps_signal_stack
def convert_openvino(sam: Sam, out_dir: str | os.PathLike, *, check: bool = True, progress: bool = True,
                     onnx_dir: str | os.PathLike | None = None) -> dict:
    """Convert ``sam`` to f32 OpenVINO IR in ``out_dir``: ``{model_type}_encoder.xml/.bin`` (images (B, 3, S, S),
    see the module doc -> embeddings (B, 256, 64, 64)), ``{model_type}_decoder.xml/.bin`` (the official SAM
    ONNX decoder interface) and ``manifest.json``. With ``check`` (default) both must match PyTorch on this CPU
    (embedding within 1e-4 x max abs, logits within 1e-3) or an :class:`ExportError` is raised. Returns the
    manifest. Needs ``onnx`` and ``onnxruntime`` besides ``openvino`` (the ONNX export is the intermediate).

    ``onnx_dir``: an export of ``sam`` by ``export_onnx`` to convert from (the onnxruntime backend's, in the
    cache: one export serves both runtimes), made there when missing; None exports to a temporary folder.
    """
    from .._version import __version__
    from .manifest import file_entry
    from .onnx_export import _check_image, _decoder_references, _resolve_model

    ov = import_openvino()
    require_sam(sam)
    sam, source = _resolve_model(sam, None)  # a CPU, float32 copy when needed, in eval mode
    name = source["model_type"] or "sam"
    img_size = sam.img_size
    mean = [float(v) for v in sam.pixel_mean.flatten()]
    out = Path(out_dir).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        onnx_folder, onnx_manifest = _onnx_export_of(sam, Path(onnx_dir) if onnx_dir else tmp / "onnx", check,
                                                     progress)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder = ov.convert_model(str(file_entry(onnx_manifest, onnx_folder, "encoder", verify=False)))
            decoder = ov.convert_model(str(file_entry(onnx_manifest, onnx_folder, "decoder", verify=False)))
        encoder.reshape({"image": ov.PartialShape([-1, 3, img_size, img_size])})
        files = {
            "encoder": _save_ir(encoder, tmp, f"{name}_encoder", "f32"),
            "decoder": _save_ir(decoder, tmp, f"{name}_decoder", "f32"),
        }
        checks: dict[str, Any] = {}
        if check:
            image = _check_image(sam)
            with torch.no_grad():
                embedding = EncoderGraph(sam)(torch.from_numpy(image)).numpy()
            refs = _decoder_references(embedding, DecoderGraph(sam).eval())
            checks["encoder"] = _check_encoder(InferRunner(compile_model(tmp / files["encoder"]["xml"])).run, image,
                                               embedding, img_size, mean, True, "encoder")
            checks["decoder"] = _check_decoder(InferRunner(compile_model(tmp / files["decoder"]["xml"])).run, refs,
                                               "decoder")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_type": source["model_type"],
            "weights_sha256": weights_digest(sam),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"mobilesam": __version__, "torch": torch.__version__, "openvino": ov.__version__,
                         **{k: v for k, v in onnx_manifest["versions"].items() if k.startswith("onnx")}},
            "converted_from": "onnx",
            "image_size": img_size,
            "pixel_mean": mean,
            "pixel_std": [float(v) for v in sam.pixel_std.flatten()],
            "embedding_shape": onnx_manifest["embedding_shape"],
            "mask_threshold": float(sam.mask_threshold),
            "decoder_return_single_mask": False,
            "files": files,
            "checks": checks,
        }
        _publish([tmp / e[k] for e in files.values() for k in ("xml", "bin")], out, manifest)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _onnx_export_of(sam: Sam, folder: Path, check: bool, progress: bool) -> tuple[Path, dict[str, Any]]:
    """The fp32 ONNX export of ``sam`` in ``folder``: the one there when it holds these weights' encoder and
    decoder with their checksums, else a new one (checked against PyTorch by ``export_onnx``)."""
    from .manifest import file_entry, read_manifest
    from .onnx_export import export_onnx

    try:
        found, manifest = read_manifest(folder)
        for key in ("encoder", "decoder"):
            file_entry(manifest, found, key)
        return found, manifest
    except (FileNotFoundError, ExportError):
        return folder, export_onnx(sam, folder, check=check, progress=progress)


# ----------------------------------------------------------------------------------------------------
# int8: NNCF post-training quantization of the image encoder
# ----------------------------------------------------------------------------------------------------
def synthetic_calibration_image(index: int) -> np.ndarray:
    """Synthetic calibration image ``index`` (RGB uint8, one of a few sizes): smooth colour fields and
    textures, flat shapes with edges, noise. Deterministic per index.

    A stand-in for photographs when the user gives none: it spans the encoder's input range and has the
    structure (regions, edges, texture) its activations respond to; real images of the user's domain
    calibrate better.
    """
    rng = np.random.default_rng([_SYNTHETIC_VERSION, index])
    h, w = (int(v) for v in rng.choice([(480, 640), (640, 480), (768, 1024), (600, 600), (400, 900)]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(5, 120, 2)
        img[..., c] = rng.uniform(60, 190) + rng.uniform(20, 70) * np.sin(xx / fx + rng.uniform(0, 6)) * np.cos(
            yy / fy + rng.uniform(0, 6))
    for _ in range(int(rng.integers(3, 12))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.03, 0.3) * h, rng.uniform(0.03, 0.3) * w
        if rng.random() < 0.5:
            region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        else:
            region = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        img[region] = rng.uniform(0, 255, 3)
    img += rng.normal(0, rng.uniform(2, 12), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def calibration_set(calibration: str | os.PathLike | None, size: int) -> tuple[list[Any], dict[str, Any]]:
    """What to calibrate on (image paths, or indices of :func:`synthetic_calibration_image`), and a
    description of it with a digest (the int8 cache key); no image is read or made here.

    ``calibration``: a folder of the user's images (``size`` of them, spread evenly over its sorted
    files), or None for ``size`` synthetic images.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"calibration_size: expected an int >= 1, got {size!r}")
    if calibration is None:
        return list(range(size)), {"source": "synthetic", "images": size,
                                   "digest": f"synthetic-v{_SYNTHETIC_VERSION}-{size}"}
    from ..io import walk_images

    root = Path(calibration).expanduser()
    if not root.is_dir():
        raise ValueError(f"calibration: expected a folder of images, got '{calibration}' (not a folder)")
    names = walk_images(root)
    if not names:
        raise ValueError(f"calibration: expected a folder of images, got '{calibration}' with no image files")
    if len(names) > size:
        names = [names[int(i)] for i in np.linspace(0, len(names) - 1, size)]
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode())
        h.update(sha256_file(root / n).encode())
    return [root / n for n in names], {"source": "folder", "folder": str(root.resolve()), "images": len(names),
                                        "digest": h.hexdigest()}


def describe_calibration(info: dict[str, Any] | None) -> str:
    """"synthetic (32 images)" or "folder '/data/cal' (32 images)"."""
    if not info:
        return "none"
    where = "synthetic" if info["source"] == "synthetic" else f"folder '{info['folder']}'"
    return f"{where} ({info['images']} images)"


def _int8_gate_images(calibration: str | os.PathLike | None, used: list[Any]) -> list[Any]:
    """What the int8 gate decodes on besides the check image: an image the calibration did not use (the
    next synthetic image; a file of the user's folder left out of the calibration subset, or its first file
    when the subset is the whole folder)."""
    if calibration is None:
        return [len(used)]
    from ..io import walk_images

    root = Path(calibration).expanduser()
    chosen = set(used)
    unused = [root / n for n in walk_images(root) if root / n not in chosen]
    return [unused[len(unused) // 2] if unused else used[0]]


def _int8_mask_iou(sam: Sam, f32_run: Callable, int8_run: Callable, images: list[np.ndarray],
                   img_size: int, mean: Sequence[float]) -> dict[str, Any]:
    """Masks of the int8 encoder against the f32 encoder's: each image (1, 3, h, w) in the resized frame is
    encoded by both IRs, then PyTorch's decoder answers the same :data:`INT8_GATE_GRID` x ``INT8_GATE_GRID``
    grid of single clicks from each embedding (all four outputs, masks at h x w). Returns the mean and
    least IoU over every (click, output) pair (1.0 where both masks are empty) and how many were compared."""
    from ..masks import mask_iou

    graph = DecoderGraph(sam).eval()
    ious: list[float] = []
    for image in images:
        h, w = image.shape[2:]
        square = pad_square(image, img_size, mean)
        f32, int8 = (run(None, {"image": square})[0] for run in (f32_run, int8_run))
        frac = (np.arange(INT8_GATE_GRID) + 0.5) / INT8_GATE_GRID
        clicks = np.array([[x * w, y * h] for y in frac for x in frac], np.float32)
        n = len(clicks)
        coords = np.stack([clicks, np.zeros_like(clicks)], axis=1)  # each click with SAM's padding point
        labels = np.tile(np.array([[1.0, -1.0]], np.float32), (n, 1))
        rest = (torch.from_numpy(coords), torch.from_numpy(labels), torch.zeros(1, 1, 256, 256), torch.zeros(1),
                torch.tensor([float(h), float(w)]))
        with torch.no_grad():
            ref, got = (graph(torch.from_numpy(np.ascontiguousarray(e)), *rest)[0].numpy() for e in (f32, int8))
        ious += mask_iou(ref > 0, got > 0).flatten().tolist()
    return {"mask_iou_vs_f32_mean": float(np.mean(ious)), "mask_iou_vs_f32_min": float(np.min(ious)),
            "masks_compared": len(ious), "images": len(images), "min_mean_needed": INT8_MIN_MASK_IOU}


@keeps_signal_stack
def quantize_openvino_int8(
    folder: str | os.PathLike,
    calibration: str | os.PathLike | None = None,
    calibration_size: int = CALIBRATION_SIZE,
    *,
    sam: Sam | None = None,
) -> dict[str, Any]:
    """Add an int8 image encoder to a converted folder: NNCF post-training quantization of the f32 encoder
    IR, calibrated on ``calibration`` (see :func:`calibration_set`). The decoder stays f32. Returns the
    updated manifest.

    When ``sam`` is given (the check, on by default in the backend and the export), the int8 embedding's
    difference from PyTorch is recorded, and the int8 encoder's masks are compared with the f32 encoder's
    (:func:`_int8_mask_iou`, on the conversion's check image and one image the calibration did not use):
    below a mean IoU of :data:`INT8_MIN_MASK_IOU` nothing is added, the refusal is recorded in the manifest
    (so the same weights and calibration are refused at once next time) and an :class:`ExportError` says
    what to do instead.
    """
    from ..io import load_image
    from ..transforms import ResizeLongestSide

    nncf = import_nncf()
    ov = import_openvino()
    images, info = calibration_set(calibration, calibration_size)
    out, manifest = read_openvino_manifest(folder)
    refused = manifest.get("int8_refused", {}).get(info["digest"])
    if refused is not None and sam is not None:
        raise ExportError(_int8_refusal(refused, info))
    img_size, mean = int(manifest["image_size"]), manifest["pixel_mean"]
    resize = ResizeLongestSide(img_size)

    def resized(item: Any) -> np.ndarray:
        rgb = synthetic_calibration_image(item) if isinstance(item, int) else load_image(item)
        return resize.apply_image(rgb).astype(np.float32).transpose(2, 0, 1)[None]

    def sample(item: Any) -> np.ndarray:
        return pad_square(resized(item), img_size, mean)

    model = ov.Core().read_model(str(ir_file(manifest, out, "encoder")))
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)  # its INFO lines (statistics, algorithm steps) are noise here
    try:
        # TRANSFORMER: SmoothQuant for TinyViT's attention blocks, and NNCF's transformer rules keep the
        # operations that lose most in int8 (softmax, normalisation) in float.
        quantized = nncf.quantize(model, nncf.Dataset(images, sample), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(images), fast_bias_correction=True)
    finally:
        nncf_logger.setLevel(level)
    tmp = Path(tempfile.mkdtemp(prefix=".quantize-", dir=out))
    try:
        name = manifest["model_type"] or "sam"
        entry = _save_ir(quantized, tmp, f"{name}_encoder.int8", "int8", calibration=info)
        checks = dict(manifest.get("checks", {}))
        if sam is not None:
            from .onnx_export import _check_image, _resolve_model

            ref_sam, _ = _resolve_model(sam, None)
            image = _check_image(ref_sam)
            with torch.no_grad():
                embedding = EncoderGraph(ref_sam)(torch.from_numpy(image)).numpy()
            runner = InferRunner(compile_model(tmp / entry["xml"]))
            checks["encoder_int8"] = _check_encoder(runner.run, image, embedding, img_size, mean, False, "int8 encoder")
            f32 = InferRunner(compile_model(ir_file(manifest, out, "encoder")))
            gate = [image] + [resized(item) for item in _int8_gate_images(calibration, images)]
            checks["encoder_int8"].update(_int8_mask_iou(ref_sam, f32.run, runner.run, gate, img_size, mean))
            measured = checks["encoder_int8"]
            if not measured["mask_iou_vs_f32_mean"] >= INT8_MIN_MASK_IOU:  # "not >=": NaN is refused too
                verdict = {k: measured[k] for k in ("mask_iou_vs_f32_mean", "mask_iou_vs_f32_min", "images")}
                manifest = {**manifest, "int8_refused": {**manifest.get("int8_refused", {}), info["digest"]: verdict}}
                write_json_atomic(out / MANIFEST_NAME, manifest)
                raise ExportError(_int8_refusal(verdict, info))
        manifest = {**manifest, "files": {**manifest["files"], "encoder_int8": entry}, "checks": checks}
        _publish([tmp / entry["xml"], tmp / entry["bin"]], out, manifest)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _int8_refusal(verdict: dict[str, Any], info: dict[str, Any]) -> str:
    return (f"openvino-int8: the int8 image encoder calibrated on {describe_calibration(info)} gives masks at "
            f"IoU {verdict['mask_iou_vs_f32_mean']:.3f} of the f32 encoder's (mean; least "
            f"{verdict['mask_iou_vs_f32_min']:.3f}; at least {INT8_MIN_MASK_IOU} needed), so it is not offered for "
            "these weights: calibrate on images of your own domain (calibration=DIR, --calibration DIR), or use "
            "'openvino' (f32, exact)")


# ----------------------------------------------------------------------------------------------------
# The export format (mobilesam export --format openvino)
# ----------------------------------------------------------------------------------------------------
def export_openvino(
    model: Sam | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    check: bool = True,
    progress: bool = True,
    quantize: str | None = None,
    calibration: str | os.PathLike | None = None,
    calibration_size: int = CALIBRATION_SIZE,
) -> dict[str, Any]:
    """``mobilesam export --format openvino``: :func:`convert_openvino` of ``model`` (a ``Sam``, a checkpoint
    path or a weights name) into ``out_dir`` (a copy of the openvino backends' conversion in the cache when
    it holds these weights for this OpenVINO release, and, with ``check``, was checked against PyTorch),
    and with ``quantize="int8"`` the NNCF int8 image encoder
    (:func:`quantize_openvino_int8`, calibrated on the folder ``calibration`` or on built-in synthetic
    images; the manifest says which). The backends ``openvino``, ``openvino-bf16`` and ``openvino-int8``
    run the folder. Returns the manifest."""
    from .onnx_export import _resolve_model

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize: expected None or 'int8', got {quantize!r}")
    if quantize is None and calibration is not None:
        raise ValueError("calibration: only the int8 encoder is calibrated; add quantize='int8' (--quantize int8)")
    calibration_set(calibration, calibration_size)  # a bad folder fails before the conversion
    sam, _ = _resolve_model(model, None)
    from ..backends.onnx_predictor import cache_folder

    manifest = _copy_conversion(default_folder(sam), Path(out_dir).expanduser(), check)
    if manifest is None:
        # From the onnxruntime backend's export in the cache when it holds these weights (made there otherwise).
        manifest = convert_openvino(sam, out_dir, check=check, progress=progress, onnx_dir=cache_folder(sam))
    if quantize == "int8":
        manifest = quantize_openvino_int8(out_dir, calibration, calibration_size, sam=sam if check else None)
    return manifest
