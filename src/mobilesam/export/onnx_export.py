"""Export a ``Sam`` to ONNX: image encoder, prompt decoder, optional int8 variants, and a manifest.

Every exported graph is checked with ``onnx.checker`` and compared with PyTorch under ONNX Runtime
before it is moved into the output folder; nothing is left half-written if a step fails.
"""

from __future__ import annotations

import copy
import datetime
import inspect
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm import tqdm

from ..masks import mask_iou
from ..modeling import Sam
from .graphs import DecoderGraph, EncoderGraph, HWCEncoderGraph
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, ExportError, sha256_file, write_json_atomic
from .runtime import import_onnxruntime, make_session

logger = logging.getLogger("mobilesam")

DEFAULT_OPSET = 17
PARTS = ("encoder", "decoder")
EMB_RTOL = 1e-4  # embedding: max abs difference relative to its max abs value
LOGIT_ATOL = 1e-3

ENCODER_INPUTS = ["image"]
ENCODER_OUTPUTS = ["image_embeddings"]
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
DECODER_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]
# "mobilesam": image (1, 3, h, w); "anylabeling": samexporter's / X-AnyLabeling's input_image (h, w, 3), their
# file names, the single-mask decoder they read masks[0][0] from, and X-AnyLabeling's custom-model config.
LAYOUTS = ("mobilesam", "anylabeling")
ANYLABELING_INPUTS = ["input_image"]
ANYLABELING_CONFIG = "anylabeling_config.yaml"


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError('ONNX export needs the onnx package: pip install "mobilesam[onnx]"') from None
    return onnx


def _check_image(sam: Sam) -> np.ndarray:
    """A deterministic test image in the resized frame (1, 3, 1024, 683): smooth shapes plus noise."""
    rng = np.random.default_rng(0)
    h, w = sam.img_size, int(sam.img_size * 2 / 3 + 0.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 90 * np.sin(xx / 37.0), 128 + 90 * np.cos(yy / 53.0), (xx + yy) % 256], axis=0)
    img[:, h // 4 : h // 2, w // 3 : 2 * w // 3] = 230.0
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.float32)[None]


def _decoder_cases(h: int, w: int) -> list[dict[str, np.ndarray]]:
    """Prompt sets for the comparison: 1 point, points + box, 5 points with a mask input."""
    def case(points, labels, mask=None):
        coords = np.asarray(points, np.float32)[None]
        return {
            "point_coords": coords,
            "point_labels": np.asarray(labels, np.float32)[None],
            "mask_input": np.zeros((1, 1, 256, 256), np.float32) if mask is None else mask,
            "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
        }

    rng = np.random.default_rng(1)
    mask = rng.normal(0, 4, (1, 1, 256, 256)).astype(np.float32)
    s = 1024 / max(h, w)
    return [
        case([[w * s * 0.5, h * s * 0.4], [0, 0]], [1, -1]),
        case([[w * s * 0.3, h * s * 0.3], [w * s * 0.1, h * s * 0.2], [w * s * 0.8, h * s * 0.9]], [1, 2, 3]),
        case([[w * s * f, h * s * (1 - f)] for f in (0.1, 0.3, 0.5, 0.7, 0.9)], [1, 0, 1, 1, 0], mask),
    ]


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic_axes: dict, opset: int) -> None:
    with warnings.catch_warnings():
        # The TorchScript-based exporter: it traces shape arithmetic (needed for orig_im_size and the
        # dynamic image size); its deprecation and tracer warnings are noise for the user.
        warnings.simplefilter("ignore")
        # torch >= 2.5 defaults to the dynamo exporter (2.9+); older versions have no such switch.
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(
            module,
            args,
            str(path),
            **legacy,
            export_params=True,
            opset_version=opset,
            do_constant_folding=True,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
        )


def _check_graph(path: Path) -> None:
    onnx = _import_onnx()
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - any checker failure is an export failure
        raise ExportError(f"export: onnx.checker rejected {path.name}: {e}") from None


def _compare_encoder(path: Path, image: np.ndarray, ref: np.ndarray, strict: bool) -> dict[str, float]:
    """ORT's embedding of ``image`` (1, 3, h, w) against PyTorch's (``ref``), in the graph's own input layout."""
    session = make_session(path)
    name = session.get_inputs()[0].name
    feed = image[0].transpose(1, 2, 0).copy() if name == ANYLABELING_INPUTS[0] else image
    got = session.run(None, {name: feed})[0]
    scale = float(np.abs(ref).max())
    diff = float(np.abs(ref - got).max())
    if strict and diff > EMB_RTOL * scale:
        raise ExportError(
            f"export: {path.name} differs from PyTorch: embedding max abs diff {diff:.3g} > {EMB_RTOL} x {scale:.3g}"
        )
    return {"embedding_max_abs_diff": diff, "embedding_max_abs": scale}


def _decoder_references(embedding: np.ndarray, graph: DecoderGraph) -> list[tuple[dict, list[np.ndarray]]]:
    """PyTorch outputs for prompt sets of other sizes than the traced ones (checks the dynamic axes)."""
    refs = []
    for orig in ((1500, 1000), (333, 1200)):
        for case in _decoder_cases(*orig):
            feeds = {"image_embeddings": embedding, **case, "orig_im_size": np.array(orig, np.float32)}
            with torch.no_grad():
                ref = [t.numpy() for t in graph(*(torch.from_numpy(feeds[k]) for k in DECODER_INPUTS))]
            refs.append((feeds, ref))
    return refs


def _compare_decoder(path: Path, refs: list[tuple[dict, list[np.ndarray]]], strict: bool) -> dict[str, float]:
    session = make_session(path)
    worst_logit = worst_iou = 0.0
    min_mask_iou = 1.0
    bad_pixels = 0
    for feeds, ref in refs:
        got = session.run(None, feeds)
        if ref[0].shape != got[0].shape:
            raise ExportError(f"export: {path.name} gives masks of shape {got[0].shape}, PyTorch {ref[0].shape}")
        worst_logit = max(worst_logit, float(np.abs(ref[2] - got[2]).max()))
        worst_iou = max(worst_iou, float(np.abs(ref[1] - got[1]).max()))
        differ = (ref[0] > 0) != (got[0] > 0)
        bad_pixels += int((differ & (np.abs(ref[0]) > LOGIT_ATOL)).sum())
        min_mask_iou = min(min_mask_iou, float(mask_iou(ref[0] > 0, got[0] > 0).min()))
    if strict and (worst_logit > LOGIT_ATOL or worst_iou > LOGIT_ATOL or bad_pixels):
        raise ExportError(
            f"export: {path.name} differs from PyTorch: low-res logits by {worst_logit:.3g}, iou predictions by "
            f"{worst_iou:.3g}, {bad_pixels} mask pixels away from the threshold"
        )
    return {"low_res_max_abs_diff": worst_logit, "iou_max_abs_diff": worst_iou, "mask_iou_min": min_mask_iou}


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of MatMul/Gemm weights (ONNX Runtime's quantizer).

    Convolutions stay fp32: ONNX Runtime's dynamic ConvInteger is slower than its fp32 convolution.
    """
    import_onnxruntime()
    onnx = _import_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel quantization supports 2-D weights only; the decoder's re-associated attention
    # multiplies by 3-D views of its projection weights: those MatMuls stay fp32.
    model = onnx.load(str(src), load_external_data=False)
    ranks = {init.name: len(init.dims) for init in model.graph.initializer}
    exclude = [n.name for n in model.graph.node
               if n.op_type in ("MatMul", "Gemm") and any(ranks.get(i, 2) != 2 for i in n.input[:2] if i in ranks)]

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True, nodes_to_exclude=exclude,
            )
    finally:
        root.setLevel(level)


def _file_info(path: Path, precision: str, inputs: dict, outputs: dict) -> dict[str, Any]:
    return {
        "path": path.name,
        "precision": precision,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "inputs": inputs,
        "outputs": outputs,
    }


def _resolve_model(model: Sam | str | os.PathLike, model_type: str | None) -> tuple[Sam, dict[str, Any]]:
    from ..build import build_sam, detect_model_type
    from ..weights import resolve_weights

    if isinstance(model, torch.nn.Module):  # a Sam, or another family's module (SAM 2)
        sam, source = model, {"checkpoint": None}
    else:
        path = resolve_weights(model)
        sam = build_sam(path, model_type=model_type)
        source = {"checkpoint": Path(path).name, "sha256": sha256_file(path)}
    if model_type is None:
        model_type = detect_model_type(sam.state_dict())
    source["model_type"] = model_type
    if next(sam.parameters()).device.type != "cpu" or next(sam.parameters()).dtype != torch.float32:
        sam = copy.deepcopy(sam).cpu().float()
    return sam.eval(), source


def export_onnx(
    model: Sam | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_type: str | None = None,
    quantize: str | None = None,
    parts: Iterable[str] = PARTS,
    opset: int = DEFAULT_OPSET,
    return_single_mask: bool = False,
    layout: str = "mobilesam",
    check: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Export ``model`` (a ``Sam``, a checkpoint path or a weights name) to ONNX files in ``out_dir``.

    Writes ``{model_type}_encoder.onnx`` (image (1, 3, h, w) RGB 0-255 resized to longest side 1024 ->
    embedding (1, 256, 64, 64)), ``{model_type}_decoder.onnx`` (the official SAM ONNX decoder
    interface), their ``.int8.onnx`` variants with ``quantize="int8"``, and ``manifest.json``.
    With ``check`` (default), fp32 graphs must match PyTorch (embedding within 1e-4 x max abs,
    logits within 1e-3) or an :class:`ExportError` is raised. Returns the manifest.

    ``layout="anylabeling"`` writes what samexporter and X-AnyLabeling load: the encoder takes
    ``input_image`` (h, w, 3) float32 RGB 0-255 resized to longest side 1024 (their pre-processing), the
    decoder returns the official single mask (``return_single_mask``), the files are named
    ``{model_type}.encoder.onnx`` / ``{model_type}.decoder.onnx``, and ``anylabeling_config.yaml`` is
    X-AnyLabeling's custom-model config (Load Custom Model -> that file).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {list(LAYOUTS)}, got {layout!r}")
    anylabeling = layout == "anylabeling"
    if anylabeling:
        return_single_mask = True
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts: expected some of {list(PARTS)}, got {list(parts)}")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize: expected None or 'int8', got {quantize!r}")
    if not isinstance(opset, int) or not 17 <= opset <= 21:
        raise ValueError(f"opset: expected an int from 17 to 21, got {opset!r}")
    onnx = _import_onnx()
    ort = import_onnxruntime()

    sam, source = _resolve_model(model, model_type)
    if not isinstance(sam, Sam):  # SAM 2 / SAM 2.1: its own graphs and decoder interface
        from .sam2_onnx_export import export_sam2_onnx

        if return_single_mask:
            raise ValueError("return_single_mask: not available for SAM 2 (its decoder always returns the "
                             "single-mask answer as output 0 and the multimask answers as 1-3)")
        return export_sam2_onnx(sam, source, out_dir, quantize=quantize, parts=parts, opset=opset, check=check,
                                progress=progress)
    name = source["model_type"] or "sam"
    encoder_bytes = sum(p.numel() * p.element_size() for p in sam.image_encoder.parameters())
    if "encoder" in parts and encoder_bytes > 1.9e9:
        raise ExportError(
            f"export: the {name} image encoder ({encoder_bytes / 1e9:.1f} GB of weights) exceeds ONNX's 2 GB "
            "single-file limit, which this exporter does not split; export the decoder with --parts decoder"
        )
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    img_size = sam.img_size
    emb_shape = [1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size]
    steps = [f"export {p}" for p in parts] + ([f"quantize {p}" for p in parts] if quantize else [])
    bar = tqdm(steps, desc="export", disable=not progress, unit="step")
    files: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    staged: list[Path] = []
    try:
        image = _check_image(sam)
        if "encoder" in parts:
            with torch.no_grad():
                embedding = EncoderGraph(sam)(torch.from_numpy(image)).numpy()
        else:  # a decoder-only export is checked on a random embedding (an encoder pass of ViT-H is slow)
            embedding = np.random.default_rng(0).normal(0.0, 1.0, emb_shape).astype(np.float32)
        enc_io = (
            {"image": {"shape": ["batch", 3, "height", "width"], "dtype": "float32",
                       "description": f"RGB, 0-255, resized so the longest side is {img_size} (not padded); "
                                      f"a batch of several: each padded to {img_size}x{img_size} with pixel_mean"}},
            {"image_embeddings": {"shape": ["batch", *emb_shape[1:]], "dtype": "float32"}},
        )
        if anylabeling:
            enc_io = ({"input_image": {"shape": ["height", "width", 3], "dtype": "float32",
                                       "description": f"RGB, 0-255, resized so the longest side is {img_size}"}},
                      enc_io[1])
        dec_io = (
            {
                "image_embeddings": {"shape": emb_shape, "dtype": "float32"},
                "point_coords": {"shape": ["batch", "num_points", 2], "dtype": "float32",
                                 "description": f"(x, y) in the resized frame (longest side {img_size})"},
                "point_labels": {"shape": ["batch", "num_points"], "dtype": "float32",
                                 "description": "-1 padding point, 0 negative, 1 positive, 2/3 box corners"},
                "mask_input": {"shape": ["mask_batch", 1, 256, 256], "dtype": "float32"},
                "has_mask_input": {"shape": [1], "dtype": "float32"},
                "orig_im_size": {"shape": [2], "dtype": "float32", "description": "(H, W) of the original image"},
            },
            {
                "masks": {"shape": ["batch", 1 if return_single_mask else 4, "H", "W"], "dtype": "float32"},
                "iou_predictions": {"shape": ["batch", 1 if return_single_mask else 4], "dtype": "float32"},
                "low_res_masks": {"shape": ["batch", 1 if return_single_mask else 4, 256, 256], "dtype": "float32"},
            },
        )
        decoder = DecoderGraph(sam, return_single_mask=return_single_mask).eval()
        refs: list = []
        for part in parts:
            path = tmp / (f"{name}.{part}.onnx" if anylabeling else f"{name}_{part}.onnx")
            bar.set_postfix_str(path.name)
            if part == "encoder" and anylabeling:
                hwc = torch.from_numpy(image[0, :, :, :700].transpose(1, 2, 0).copy())
                _export(HWCEncoderGraph(sam).eval(), (hwc,), path, ANYLABELING_INPUTS, ENCODER_OUTPUTS,
                        {"input_image": {0: "height", 1: "width"}}, opset)
                _check_graph(path)
                checks["encoder"] = _compare_encoder(path, image, embedding, strict=check)
                files["encoder"] = _file_info(path, "fp32", *enc_io)
            elif part == "encoder":
                # A dynamic batch too: set_images pads several images to the square input for one run.
                _export(EncoderGraph(sam).eval(), (torch.from_numpy(image[..., :700]),), path, ENCODER_INPUTS,
                        ENCODER_OUTPUTS, {"image": {0: "batch", 2: "height", 3: "width"},
                                          "image_embeddings": {0: "batch"}}, opset)
                _check_graph(path)
                checks["encoder"] = _compare_encoder(path, image, embedding, strict=check)
                files["encoder"] = _file_info(path, "fp32", *enc_io)
            else:
                dummy = _decoder_cases(900, 1200)[1]
                args = (torch.from_numpy(embedding), *(torch.from_numpy(dummy[k]) for k in DECODER_INPUTS[1:5]),
                        torch.tensor([900.0, 1200.0]))
                _export(decoder, args, path, DECODER_INPUTS, DECODER_OUTPUTS, {
                    "point_coords": {0: "batch", 1: "num_points"},
                    "point_labels": {0: "batch", 1: "num_points"},
                    "mask_input": {0: "mask_batch"},
                    "masks": {0: "batch", 2: "H", 3: "W"},
                    "iou_predictions": {0: "batch"},
                    "low_res_masks": {0: "batch"},
                }, opset)
                _check_graph(path)
                refs = refs or _decoder_references(embedding, decoder)
                checks["decoder"] = _compare_decoder(path, refs, strict=check)
                files["decoder"] = _file_info(path, "fp32", *dec_io)
            staged.append(path)
            bar.update()
        if quantize:
            for part in parts:
                src = tmp / (f"{name}.{part}.onnx" if anylabeling else f"{name}_{part}.onnx")
                dst = src.with_name(src.name.replace(".onnx", ".int8.onnx"))
                bar.set_postfix_str(dst.name)
                quantize_int8(src, dst)
                _check_graph(dst)
                # Quantization changes outputs by design: record how much, never fail on it.
                if part == "encoder":
                    checks["encoder_int8"] = _compare_encoder(dst, image, embedding, strict=False)
                else:
                    refs = refs or _decoder_references(embedding, decoder)
                    checks["decoder_int8"] = _compare_decoder(dst, refs, strict=False)
                files[f"{part}_int8"] = _file_info(dst, "int8", *(enc_io if part == "encoder" else dec_io))
                staged.append(dst)
                bar.update()
        bar.close()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": "sam",
            "model_type": source["model_type"],
            "source": {k: v for k, v in source.items() if k != "model_type"},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"mobilesam": _version(), "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": ort.__version__},
            "opset": opset,
            "image_size": img_size,
            "pixel_mean": [float(v) for v in sam.pixel_mean.flatten()],
            "pixel_std": [float(v) for v in sam.pixel_std.flatten()],
            "normalisation": "inside the encoder graph: (image - pixel_mean) / pixel_std, then zero padding "
                             f"bottom/right to {img_size}x{img_size}",
            "embedding_shape": emb_shape,
            "mask_threshold": float(sam.mask_threshold),
            "decoder_return_single_mask": return_single_mask,
            "layout": layout,
            "files": files,
            "checks": checks,
        }
        if anylabeling:
            staged.append(_anylabeling_config(tmp, name, files))
        for path in staged:
            os.replace(path, out / path.name)
        write_json_atomic(out / MANIFEST_NAME, manifest)
        return manifest
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _anylabeling_config(folder: Path, name: str, files: dict[str, Any]) -> Path:
    """X-AnyLabeling's config for a custom Segment Anything model (model paths relative to the config)."""
    enc = files.get("encoder", {}).get("path", f"{name}.encoder.onnx")
    dec = files.get("decoder", {}).get("path", f"{name}.decoder.onnx")
    text = (
        "type: segment_anything\n"
        f"name: mobilesam_{name}-custom\n"
        f"display_name: MobileSAM {name} (mobilesam export)\n"
        f"encoder_model_path: {enc}\n"
        f"decoder_model_path: {dec}\n"
        "input_size: 1024\n"
        "max_width: 1024\n"
        "max_height: 682\n"
    )
    path = folder / ANYLABELING_CONFIG
    path.write_text(text, encoding="utf-8")
    return path


def _version() -> str:
    from .._version import __version__

    return __version__
