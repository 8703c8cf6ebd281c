"""The prompt decoder the page runs in the browser with onnxruntime-web.

It is SAM's official ONNX decoder (what ``mobilesam export`` writes), cut before its upscaling to the
image size: the page gets the low-resolution logits (B, M, 256, 256) and the predicted IoUs, picks the
mask the server would pick, and upscales that one mask itself (the same two bilinear resizes, in
``mobilesam/server/static/decoder.js``). Used by ``mobilesam serve`` and ``mobilesam export --format web``. Upscaling all four candidates to a full-size image inside the graph is the
part of the decoder that grows with the image; in WebAssembly it cost about a quarter of the decode.

Where the decoder comes from:

- a folder written by ``mobilesam export`` (``--backend onnxruntime``): its decoder file;
- a ``Sam`` (SAM / MobileSAM, any size): exported once, decoder only, into the cache
  (``$MOBILESAM_HOME/web-decoders/<model type>-<weights digest>``), or taken from the onnxruntime
  backend's cache folder of the same weights when that exists;
- any other model family (SAM 2 until it has an exported decoder): none, and the server decodes.

The cut graph is checked against the full one (same low-resolution logits and IoUs) before it is used.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("mobilesam")

PRECISIONS = ("fp32", "int8")
# The int8 decoder is offered only where its masks stay this close to fp32 (minimum mask IoU measured at
# export time against PyTorch, over the export's check prompts).
INT8_MIN_MASK_IOU = 0.99
CUT_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
CUT_OUTPUTS = ["iou_predictions", "low_res_masks"]
CUT_ATOL = 1e-5


class NoWebDecoder(RuntimeError):
    """No decoder can be given to the page for this model; the message says why."""


@dataclass(frozen=True)
class WebDecoder:
    """A decoder graph for the page, with what the page needs to run it.

    ``path``: ONNX with inputs :data:`CUT_INPUTS` and outputs :data:`CUT_OUTPUTS`. ``single_mask``: the
    export returns one mask (``--return-single-mask``) instead of token 0 plus three candidates.
    """

    path: Path
    sha256: str
    nbytes: int
    precision: str
    single_mask: bool
    mask_threshold: float
    image_size: int
    embedding_shape: tuple[int, ...]
    model_type: str | None
    source: str  # the decoder file it was cut from
    checks: dict[str, Any] = field(default_factory=dict)

    def describe(self, url: str) -> dict[str, Any]:
        """What /api/info tells the page (and the web export writes to its config)."""
        return {
            "url": url,
            "bytes": self.nbytes,
            "sha256": self.sha256,
            "precision": self.precision,
            "single_mask": self.single_mask,
            "mask_threshold": self.mask_threshold,
            "image_size": self.image_size,
            "embedding_shape": list(self.embedding_shape),
            "model_type": self.model_type,
        }


def _import_onnx() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise NoWebDecoder(
            f"decoding in the browser needs the ONNX export ({e.name} is missing): pip install 'mobilesam[serve]'"
        ) from None
    import onnx

    return onnx


def cut_low_res(src: Path, dst: Path) -> None:
    """Write the decoder ``src`` without its upscaling to the image size (outputs :data:`CUT_OUTPUTS`) to
    ``dst`` atomically, after checking that it gives the same low-resolution logits and IoUs as ``src``."""
    onnx = _import_onnx()
    from .runtime import make_session
    from ..io import atomic_write_bytes

    with tempfile.TemporaryDirectory(prefix=".cut-", dir=dst.parent) as tmp:
        staged = Path(tmp) / dst.name
        onnx.utils.extract_model(str(src), str(staged), CUT_INPUTS, CUT_OUTPUTS, check_model=True)
        full, cut = make_session(src, threads=1), make_session(staged, threads=1)
        shape = [d if isinstance(d, int) else 1 for d in full.get_inputs()[0].shape]
        rng = np.random.default_rng(0)
        feeds = {
            "image_embeddings": rng.normal(0, 1, shape).astype(np.float32),
            "point_coords": np.array([[[400.0, 300.0], [100.0, 80.0], [0.0, 0.0]]], np.float32),
            "point_labels": np.array([[1.0, 0.0, -1.0]], np.float32),
            "mask_input": np.zeros((1, 1, 4 * shape[2], 4 * shape[3]), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        }
        want = dict(zip([o.name for o in full.get_outputs()], full.run(None, {**feeds, "orig_im_size": np.array(
            [480.0, 640.0], np.float32)})))
        got = dict(zip(CUT_OUTPUTS, cut.run(CUT_OUTPUTS, feeds)))
        for name in CUT_OUTPUTS:
            diff = float(np.abs(want[name] - got[name]).max())
            if diff > CUT_ATOL:
                raise NoWebDecoder(f"decoder: the cut of {src.name} differs from it ({name} by {diff:.3g})")
        atomic_write_bytes(dst, staged.read_bytes())


def _from_export(folder: Path, manifest: dict[str, Any], precision: str, cache: Path) -> WebDecoder:
    from .manifest import file_entry, sha256_file

    family = manifest.get("family", "sam")
    if family != "sam":  # SAM 2's decoder takes the encoder's high-resolution features too: not this page's
        raise NoWebDecoder(f"decoder: the export in '{folder}' is of the {family} family, whose prompt decoder the "
                           "page does not run; the server decodes")
    key = "decoder" if precision == "fp32" else f"decoder_{precision}"
    if key not in manifest.get("files", {}):
        if precision != "fp32":  # asked for by name: an error, not a quiet fall back to the server
            raise ValueError(f"decoder_precision: the export in '{folder}' has no {key} file; re-export it with "
                             f"--quantize {precision}")
        raise NoWebDecoder(f"decoder: the export in '{folder}' has no decoder file")
    checks = manifest.get("checks", {}).get(key, {})
    if precision == "int8":
        iou = checks.get("mask_iou_min")
        if iou is None or iou < INT8_MIN_MASK_IOU:
            shown = "not measured" if iou is None else f"{iou:.4f}"
            raise ValueError(
                f"decoder_precision: the int8 decoder's masks are not within IoU {INT8_MIN_MASK_IOU} of fp32 for "
                f"this model (minimum mask IoU measured at export: {shown}); use the fp32 decoder"
            )
    src = file_entry(manifest, folder, key, verify=True)
    digest = manifest["files"][key].get("sha256") or sha256_file(src)
    cache.mkdir(parents=True, exist_ok=True)
    dst = cache / f"decoder-{digest[:16]}.lowres.onnx"
    if not dst.is_file():
        logger.info("cutting %s for the browser into %s (once)", src.name, dst)
        cut_low_res(src, dst)
    return WebDecoder(
        path=dst,
        sha256=sha256_file(dst),
        nbytes=dst.stat().st_size,
        precision=precision,
        single_mask=bool(manifest.get("decoder_return_single_mask", False)),
        mask_threshold=float(manifest.get("mask_threshold", 0.0)),
        image_size=int(manifest.get("image_size", 1024)),
        embedding_shape=tuple(manifest.get("embedding_shape", (1, 256, 64, 64))),
        model_type=manifest.get("model_type"),
        source=str(src),
        checks=dict(checks),
    )


def web_decoder_for(model: Any, precision: str = "fp32", cache: str | os.PathLike | None = None) -> WebDecoder:
    """The page's decoder for ``model`` (a ``Sam`` or a folder written by ``mobilesam export``), exported
    and cut once into ``cache`` (default ``$MOBILESAM_HOME/web-decoders``); :class:`NoWebDecoder` says why
    there is none (another model family, no ONNX packages). ``precision="int8"`` raises a ValueError when
    the int8 decoder's masks are further than IoU :data:`INT8_MIN_MASK_IOU` from fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"decoder_precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    from ..backends import is_exported_model
    from ..weights import cache_dir

    root = Path(cache) if cache is not None else cache_dir() / "web-decoders"
    if is_exported_model(model):
        from .manifest import ExportError, read_manifest

        try:
            folder, manifest = read_manifest(model)
        except (FileNotFoundError, ExportError) as e:
            raise NoWebDecoder(str(e)) from None
        return _from_export(folder, manifest, precision, root)
    from ..modeling import Sam

    if not isinstance(model, Sam):
        raise NoWebDecoder(
            f"decoder: the {type(model).__name__} model family has no exported prompt decoder; the server decodes"
        )
    _import_onnx()
    from ..build import detect_model_type
    from .manifest import ExportError, read_manifest
    from .onnx_export import export_onnx
    from ..weights import weights_digest

    name = f"{detect_model_type(model.state_dict()) or 'sam'}-{weights_digest(model)[:16]}"
    # The onnxruntime backend's export of the same weights has the decoder already.
    for folder in (cache_dir() / "onnx" / name, root / name):
        try:
            _, manifest = read_manifest(folder)
        except (FileNotFoundError, ExportError):
            continue
        key = "decoder" if precision == "fp32" else "decoder_int8"
        if key in manifest["files"]:
            return _from_export(folder, manifest, precision, root)
    folder = root / name
    logger.info("exporting the prompt decoder to ONNX for the browser in %s (once)", folder)
    manifest = export_onnx(
        model, folder, parts=("decoder",), quantize="int8" if precision == "int8" else None, progress=False
    )
    return _from_export(folder, manifest, precision, root)
