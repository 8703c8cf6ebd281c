"""``mobilesam export --format web``: a folder that segments images in the browser with no server behind it.

The folder holds the labelling page of ``mobilesam serve`` in its static mode (``index.html``, the JS
modules, the style sheet), onnxruntime-web (its WebAssembly build, MIT, with its licence), the ONNX image
encoder and prompt decoder (``model/``: a complete ``mobilesam export --format onnx`` folder, so
``SAM("OUT/model")`` and ``mobilesam serve --model OUT/model --backend onnxruntime`` run it too) plus the
decoder cut for the browser, and ``manifest.json`` (the page's settings, files with SHA-256, checks).
Any static file server serves it (``python -m http.server -d OUT``); nothing is fetched from elsewhere.
The page encodes an image in WebAssembly (seconds), then decodes each click as ``mobilesam serve`` does,
and writes COCO, YOLO and PNG labels itself.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..backends.registry import is_exported_model
from ..masks import DEFAULT_SIMPLIFY
from ..modeling import Sam
from .manifest import MANIFEST_NAME, ExportError, file_entry, read_manifest, sha256_file, write_json_atomic
from .onnx_export import DEFAULT_OPSET, export_onnx
from .web_decoder import INT8_MIN_MASK_IOU, cut_low_res

WEB_FORMAT = "mobilesam-web"
WEB_FORMAT_VERSION = 1
STATIC_DIR = Path(__file__).resolve().parents[1] / "server" / "static"
ORT_WASM = "ort-wasm-simd-threaded.wasm"
PAGE_FILES = ("app.js", "decoder.js", "masks.js", "labels.js", "style.css")
ORT_FILES = ("ort.wasm.bundle.min.mjs", "LICENSE", "VERSION.json")
MODE_SERVE = '<meta name="mobilesam-mode" content="serve">'
MODE_STATIC = '<meta name="mobilesam-mode" content="static">'


def _entry(path: Path, root: Path, **extra: Any) -> dict[str, Any]:
    return {"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path),
            **extra}


def _write_page(root: Path) -> dict[str, Any]:
    """The page and onnxruntime-web into ``root``; returns their file entries."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    if MODE_SERVE not in html:
        raise ExportError(f"export: {STATIC_DIR / 'index.html'} has no {MODE_SERVE} line to switch to the static mode")
    html = html.replace(MODE_SERVE, MODE_STATIC).replace("<title>mobilesam serve</title>", "<title>mobilesam</title>")
    (root / "index.html").write_text(html, encoding="utf-8")
    (root / "static" / "ort").mkdir(parents=True)
    for name in PAGE_FILES:
        shutil.copyfile(STATIC_DIR / name, root / "static" / name)
    for name in ORT_FILES:
        shutil.copyfile(STATIC_DIR / "ort" / name, root / "static" / "ort" / name)
    # A static server sends files as they are: the runtime is written out uncompressed.
    (root / "static" / "ort" / ORT_WASM).write_bytes(gzip.decompress((STATIC_DIR / "ort" / f"{ORT_WASM}.gz").read_bytes()))
    files = {"index": _entry(root / "index.html", root)}
    files.update({name: _entry(root / "static" / name, root) for name in PAGE_FILES})
    files["onnxruntime_web"] = _entry(root / "static" / "ort" / ORT_FILES[0], root)
    files["onnxruntime_web_wasm"] = _entry(root / "static" / "ort" / ORT_WASM, root)
    return files


def check_web_model(manifest: dict[str, Any], what: str) -> None:
    """An ExportError unless the ONNX export ``manifest`` is one the page runs: SAM / MobileSAM graphs in
    this package's layout (the page feeds the encoder (1, 3, h, w) and runs SAM's decoder interface)."""
    family, layout = manifest.get("family", "sam"), manifest.get("layout", "mobilesam")
    if family != "sam":
        raise ExportError(f"model: {what} is of the {family} family; the web page runs SAM and MobileSAM models "
                          "only (serve it with mobilesam serve, which decodes it on the server)")
    if layout != "mobilesam":
        raise ExportError(f"model: {what} has the {layout} layout; the web page needs a plain "
                          "mobilesam export --format onnx folder (re-export it without --layout)")


def _copy_export(folder: Any, dest: Path, quantize: str | None) -> dict[str, Any]:
    """The files of an ONNX export folder (checksums verified) copied into ``dest``; returns its manifest."""
    src, manifest = read_manifest(folder)
    check_web_model(manifest, f"the export in '{src}'")
    need = ["encoder", "decoder"] + (["encoder_int8"] if quantize == "int8" else [])
    missing = [k for k in need if k not in manifest["files"]]
    if missing:
        raise ExportError(
            f"export: the export in '{src}' has no {', '.join(missing)} file; export the model with both parts"
            + (" and --quantize int8" if "encoder_int8" in missing else "")
        )
    dest.mkdir(parents=True)
    for key in manifest["files"]:
        shutil.copyfile(file_entry(manifest, src, key, verify=True), dest / manifest["files"][key]["path"])
    shutil.copyfile(src / MANIFEST_NAME, dest / MANIFEST_NAME)
    return manifest


def _previous_format(folder: Path) -> str | None:
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def export_web(
    model: Any,
    out_dir: str | os.PathLike,
    *,
    model_type: str | None = None,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the static labelling page for ``model`` (a ``Sam``, a checkpoint path or a weights name, or a
    folder written by ``mobilesam export --format onnx``, whose files are then used as they are) into
    ``out_dir``; returns the manifest it wrote as ``manifest.json``.

    ``quantize="int8"``: the page runs the int8 image encoder (about 2.4x smaller), and the int8 decoder
    where its masks stay within IoU 0.99 of fp32 (measured here), else the fp32 one. ``check``: the ONNX
    graphs are compared with PyTorch (see :func:`export_onnx`); the decoder cut for the browser is always
    compared with the full decoder.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir: expected a folder, got the file '{out}'")
    if out.is_dir() and any(out.iterdir()) and _previous_format(out) != WEB_FORMAT:
        # Writing index.html, static/ and model/ into someone's folder could replace their files.
        raise ExportError(
            f"export: '{out}' is not empty and holds no earlier web export; give a new or empty folder (--out)"
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        models = tmp / "model"
        if is_exported_model(model):
            if model_type is not None or opset != DEFAULT_OPSET:
                raise ValueError("model_type, opset: not options of a web export from an exported folder (its graphs "
                                 "are used as they are)")
            onnx_manifest = _copy_export(model, models, quantize)
        else:
            if isinstance(model, torch.nn.Module) and not isinstance(model, Sam):  # before a slow export
                raise ExportError(f"model: a {type(model).__name__} model; the web page runs SAM and MobileSAM "
                                  "models only (serve it with mobilesam serve, which decodes it on the server)")
            onnx_manifest = export_onnx(
                model, models, model_type=model_type, quantize=quantize, opset=opset, check=check, progress=progress
            )
        check_web_model(onnx_manifest, "the model")  # a SAM 2 checkpoint is known once loaded
        ofiles, checks = onnx_manifest["files"], onnx_manifest["checks"]
        int8_iou = checks.get("decoder_int8", {}).get("mask_iou_min")
        dec_key = "decoder_int8" if int8_iou is not None and int8_iou >= INT8_MIN_MASK_IOU else "decoder"
        enc_key = "encoder_int8" if quantize == "int8" else "encoder"
        decoder = models / ofiles[dec_key]["path"]
        cut = decoder.with_name(decoder.name.replace(".onnx", ".lowres.onnx"))
        cut_low_res(decoder, cut)
        files = _write_page(tmp)
        files["encoder"] = _entry(models / ofiles[enc_key]["path"], tmp, precision=ofiles[enc_key]["precision"])
        files["decoder"] = _entry(cut, tmp, precision=ofiles[dec_key]["precision"], cut_from=ofiles[dec_key]["path"])
        files["onnx_manifest"] = _entry(models / "manifest.json", tmp)
        ort_version = json.loads((STATIC_DIR / "ort" / "VERSION.json").read_text())["version"]
        manifest = {
            "format": WEB_FORMAT,
            "format_version": WEB_FORMAT_VERSION,
            "model_type": onnx_manifest["model_type"],
            "source": onnx_manifest["source"],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "version": onnx_manifest["versions"]["mobilesam"],
            "onnxruntime_web": ort_version,
            # What the page needs (decoder.js): the decoder's and encoder's inputs and sizes.
            "decoder": {
                "url": files["decoder"]["path"],
                "bytes": files["decoder"]["bytes"],
                "sha256": files["decoder"]["sha256"],
                "precision": files["decoder"]["precision"],
                "single_mask": bool(onnx_manifest["decoder_return_single_mask"]),
                "mask_threshold": onnx_manifest["mask_threshold"],
                "image_size": onnx_manifest["image_size"],
                "embedding_shape": onnx_manifest["embedding_shape"],
                "model_type": onnx_manifest["model_type"],
            },
            "encoder": {
                "url": files["encoder"]["path"],
                "bytes": files["encoder"]["bytes"],
                "precision": files["encoder"]["precision"],
                "image_size": onnx_manifest["image_size"],
            },
            "simplify": DEFAULT_SIMPLIFY,  # the YOLO polygons the page writes, as the server's
            "files": files,
            "checks": {**checks, "decoder_cut": {"of": ofiles[dec_key]["path"], "low_res_max_abs_diff_limit": 1e-5}},
        }
        write_json_atomic(tmp / "manifest.json", manifest)
        for item in sorted(tmp.iterdir()):
            dest = out / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
