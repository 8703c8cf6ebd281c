"""Export a SAM 2 / SAM 2.1 model to ONNX: image encoder, prompt decoder, optional int8 variants, manifest.

Reached through the ``onnx`` export format (:func:`mobilesam.export.onnx_export.export_onnx` hands a
SAM 2 model here), so ``mobilesam export --format onnx``, ``SAM.export`` and ``export_model`` work for
both families. The manifest says ``"family": "sam2"`` and describes both graphs' inputs and outputs
(:mod:`.sam2_graphs`); ``OnnxSam2Predictor`` (``mobilesam.backends``) runs them. Every graph is checked
with ``onnx.checker`` and compared with PyTorch under ONNX Runtime before it is moved into place.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm import tqdm

from ..hub import SAM2_FAMILY
from ..modeling.sam2 import FEATURE_NAMES, Sam2
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, ExportError, write_json_atomic
from .onnx_export import EMB_RTOL, LOGIT_ATOL, PARTS, _check_graph, _export, _file_info, _import_onnx, _version, quantize_int8
from .runtime import import_onnxruntime, make_session
from .sam2_graphs import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, Sam2DecoderGraph, Sam2EncoderGraph

FAMILY = "sam2"


def _check_image(size: int) -> np.ndarray:
    """A deterministic test image in the input frame (1, 3, S, S), 0-255: smooth shapes plus noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.stack([128 + 90 * np.sin(xx / 37.0), 128 + 90 * np.cos(yy / 53.0), (xx + yy) % 256], axis=0)
    img[:, size // 4 : size // 2, size // 3 : 2 * size // 3] = 230.0
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.float32)[None]


def _decoder_cases(size: int) -> list[dict[str, np.ndarray]]:
    """Prompt sets in SAM 2's layout (box corners, clicks, one padding point): a click; a box and two
    clicks; a batch of three clicks with a mask input."""
    s = float(size)
    pad = ([0.0, 0.0], -1.0)
    rng = np.random.default_rng(1)

    def case(points: list, labels: list, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        coords = np.asarray(points, np.float32)
        labels_a = np.asarray(labels, np.float32)
        if coords.ndim == 2:
            coords, labels_a = coords[None], labels_a[None]
        return {
            "point_coords": coords,
            "point_labels": labels_a,
            "mask_input": np.zeros((1, 1, size // 4, size // 4), np.float32) if mask is None else mask,
            "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
        }

    mask = rng.normal(0, 4, (3, 1, size // 4, size // 4)).astype(np.float32)
    return [
        case([[s * 0.5, s * 0.4], pad[0]], [1, pad[1]]),
        case([[s * 0.1, s * 0.2], [s * 0.8, s * 0.9], [s * 0.3, s * 0.3], [s * 0.6, s * 0.5], pad[0]], [2, 3, 1, 0, pad[1]]),
        case([[[s * f, s * (1 - f)], pad[0]] for f in (0.2, 0.5, 0.8)], [[1, pad[1]]] * 3, mask),
    ]


def _compare_encoder(path: Path, image: np.ndarray, refs: list[np.ndarray], strict: bool) -> dict[str, float]:
    got = make_session(path).run(None, {"image": image})
    checks: dict[str, float] = {}
    for name, r, g in zip(ENCODER_OUTPUTS, refs, got):
        scale = float(np.abs(r).max())
        diff = float(np.abs(r - g).max())
        checks[f"{name}_max_abs_diff"], checks[f"{name}_max_abs"] = diff, scale
        if strict and diff > EMB_RTOL * scale:
            raise ExportError(f"export: {path.name} differs from PyTorch: {name} max abs diff {diff:.3g} > "
                              f"{EMB_RTOL} x {scale:.3g}")
    return checks


def _compare_decoder(path: Path, refs: list[tuple[dict, list[np.ndarray]]], strict: bool) -> dict[str, float]:
    session = make_session(path)
    worst = {"low_res_max_abs_diff": 0.0, "iou_max_abs_diff": 0.0, "object_score_max_abs_diff": 0.0}
    for feeds, ref in refs:
        got = session.run(None, feeds)
        if ref[0].shape != got[0].shape:
            raise ExportError(f"export: {path.name} gives masks of shape {got[0].shape}, PyTorch {ref[0].shape}")
        for key, r, g in zip(worst, ref, got):
            worst[key] = max(worst[key], float(np.abs(r - g).max()))
    if strict and max(worst.values()) > LOGIT_ATOL:
        raise ExportError(f"export: {path.name} differs from PyTorch: " +
                          ", ".join(f"{k} {v:.3g}" for k, v in worst.items()) + f" (limit {LOGIT_ATOL})")
    return worst


def export_sam2_onnx(
    sam: Sam2,
    source: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    quantize: str | None = None,
    parts: Iterable[str] = PARTS,
    opset: int = 17,
    check: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``{model_type}_encoder.onnx`` and ``{model_type}_decoder.onnx`` (see :mod:`.sam2_graphs`),
    their ``.int8.onnx`` variants with ``quantize="int8"``, and ``manifest.json`` into ``out_dir``.
    ``sam`` is a CPU fp32 :class:`Sam2` in eval mode and ``source`` what the manifest says of it
    (``model_type``, ``checkpoint``, ``sha256``); arguments checked by ``export_onnx``. Returns the manifest.
    """
    onnx = _import_onnx()
    ort = import_onnxruntime()
    parts = tuple(parts)
    name = source["model_type"] or "sam2"
    pre = SAM2_FAMILY.preprocessing
    size = int(sam.image_size)
    layout = {k: [1, *v] for k, v in SAM2_FAMILY.feature_layout.items()}
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    steps = [f"export {p}" for p in parts] + ([f"quantize {p}" for p in parts] if quantize else [])
    bar = tqdm(steps, desc="export", disable=not progress, unit="step")
    files: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    staged: list[Path] = []
    encoder = Sam2EncoderGraph(sam, pre.pixel_mean, pre.pixel_std).eval()
    decoder = Sam2DecoderGraph(sam).eval()
    low = size // 4
    enc_io = (
        {"image": {"shape": [1, 3, size, size], "dtype": "float32",
                   "description": f"RGB, 0-255, the whole image stretched to {size}x{size} (bilinear, no padding)"}},
        {k: {"shape": v, "dtype": "float32"} for k, v in layout.items()},
    )
    dec_io = (
        {
            **{k: {"shape": v, "dtype": "float32", "description": "from the encoder"} for k, v in layout.items()},
            "point_coords": {"shape": ["batch", "num_points", 2], "dtype": "float32",
                             "description": f"(x, y) in the {size}x{size} input frame: box corners first, then "
                                            "clicks, then one padding point (0, 0)"},
            "point_labels": {"shape": ["batch", "num_points"], "dtype": "float32",
                             "description": "-1 padding point (always one, last), 0 negative, 1 positive, "
                                            "2/3 box top-left/bottom-right"},
            "mask_input": {"shape": ["mask_batch", 1, low, low], "dtype": "float32",
                           "description": "low-res logits of an earlier answer (clamped to +-32), or zeros"},
            "has_mask_input": {"shape": [1], "dtype": "float32", "description": "1 when mask_input is used, else 0"},
        },
        {
            "low_res_masks": {"shape": ["batch", 4, low, low], "dtype": "float32",
                              "description": "logits; index 0 single-mask answer (SAM 2's dynamic choice), "
                                             "1-3 multimask answers; upscale bilinearly to the image size"},
            "iou_predictions": {"shape": ["batch", 4], "dtype": "float32"},
            "object_score_logits": {"shape": ["batch", 1], "dtype": "float32"},
        },
    )
    try:
        image = _check_image(size)
        if "encoder" in parts:
            with torch.no_grad():
                features = [t.numpy() for t in encoder(torch.from_numpy(image))]
        else:  # a decoder-only export is checked on random features (a Hiera pass is the slow part)
            rng = np.random.default_rng(0)
            features = [rng.normal(0.0, 1.0, shape).astype(np.float32) for shape in layout.values()]
        refs: list[tuple[dict, list[np.ndarray]]] = []
        for case in _decoder_cases(size):
            feeds = {**dict(zip(FEATURE_NAMES, features)), **case}
            with torch.no_grad():
                ref = [t.numpy() for t in decoder(*(torch.from_numpy(feeds[k]) for k in DECODER_INPUTS))]
            refs.append((feeds, ref))
        for part in parts:
            path = tmp / f"{name}_{part}.onnx"
            bar.set_postfix_str(path.name)
            if part == "encoder":
                _export(encoder, (torch.from_numpy(image),), path, ENCODER_INPUTS, ENCODER_OUTPUTS, {}, opset)
                _check_graph(path)
                checks["encoder"] = _compare_encoder(path, image, features, strict=check)
                files["encoder"] = _file_info(path, "fp32", *enc_io)
            else:
                feeds = refs[1][0]
                _export(decoder, tuple(torch.from_numpy(feeds[k]) for k in DECODER_INPUTS), path, DECODER_INPUTS,
                        DECODER_OUTPUTS, {
                            "point_coords": {0: "batch", 1: "num_points"},
                            "point_labels": {0: "batch", 1: "num_points"},
                            "mask_input": {0: "mask_batch"},
                            "low_res_masks": {0: "batch"},
                            "iou_predictions": {0: "batch"},
                            "object_score_logits": {0: "batch"},
                        }, opset)
                _check_graph(path)
                checks["decoder"] = _compare_decoder(path, refs, strict=check)
                files["decoder"] = _file_info(path, "fp32", *dec_io)
            staged.append(path)
            bar.update()
        if quantize:
            for part in parts:
                src, dst = tmp / f"{name}_{part}.onnx", tmp / f"{name}_{part}.int8.onnx"
                bar.set_postfix_str(dst.name)
                quantize_int8(src, dst)
                _check_graph(dst)
                # Quantization changes outputs by design: record how much, never fail on it.
                checks[f"{part}_int8"] = (_compare_encoder(dst, image, features, strict=False) if part == "encoder"
                                          else _compare_decoder(dst, refs, strict=False))
                files[f"{part}_int8"] = _file_info(dst, "int8", *(enc_io if part == "encoder" else dec_io))
                staged.append(dst)
                bar.update()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": FAMILY,
            "model_type": source["model_type"],
            "source": {k: v for k, v in source.items() if k != "model_type"},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"mobilesam": _version(), "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": ort.__version__},
            "opset": opset,
            "image_size": size,
            "resize": pre.resize,
            "pixel_mean": list(pre.pixel_mean),
            "pixel_std": list(pre.pixel_std),
            "normalisation": "inside the encoder graph: (image - pixel_mean) / pixel_std; no padding (the image "
                             f"is stretched to {size}x{size})",
            "feature_layout": layout,
            "mask_threshold": float(sam.mask_threshold),
            "low_res_logit_limit": float(sam.low_res_logit_limit),
            "decoder_interface": "sam2: three feature maps in; box corners (labels 2, 3), clicks and one padding "
                                 "point (label -1); four low-res logits out (0 = single-mask answer), IoUs and "
                                 "object scores; the caller upscales to the image size",
            "files": files,
            "checks": checks,
        }
        for path in staged:
            os.replace(path, out / path.name)
        write_json_atomic(out / MANIFEST_NAME, manifest)
        return manifest
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
