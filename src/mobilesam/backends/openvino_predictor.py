"""The OpenVINO backends: ``OpenVinoSamPredictor`` over the IR that ``convert_openvino`` writes.

They run the graphs of the ONNX backend (converted by OpenVINO: see :mod:`mobilesam.export.openvino_export`
for why that route), so the prompt feeding and the mask post-processing are the ONNX backend's own code;
only the runtime and the encoder input (a batch of square padded images) differ.

Precisions: ``fp32`` (exact: OpenVINO's inference precision is set to f32 explicitly, since it runs bf16 on
AMX CPUs unless told), ``bf16`` (bfloat16 image encoder on CPUs that have it, f32 decoder) and ``int8``
(NNCF-quantized image encoder, f32 decoder).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from ..export.manifest import ExportError
from ..export.openvino_export import (
    CALIBRATION_SIZE,
    InferRunner,
    calibration_set,
    compile_model,
    convert_openvino,
    cpu_capabilities,
    default_folder,
    describe_calibration,
    import_openvino,
    ir_file,
    quantize_openvino_int8,
    read_openvino_manifest,
    require_sam,
)
from ..export.graphs import pad_square
from ..transforms import ResizeLongestSide
from .base import PredictorBase, check_batch
from .onnx_predictor import OnnxSamPredictor, cache_folder

logger = logging.getLogger("mobilesam")

PRECISIONS = ("fp32", "bf16", "int8")
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: what is not quantized runs in f32, everywhere


def check_bf16() -> None:
    """Refuse bf16 where the CPU cannot run it (OpenVINO would fall back to f32 and call it bf16)."""
    caps = cpu_capabilities()
    if "BF16" not in caps:
        raise ValueError(
            f"precision: 'bf16' needs a CPU with bfloat16 support (AVX512-BF16 or AMX); OpenVINO reports this CPU's "
            f"capabilities as {', '.join(caps)}; use the 'openvino' backend (f32, exact) or 'openvino-int8'"
        )


class OpenVinoSamPredictor(OnnxSamPredictor):
    """Embeds images and predicts masks for prompts on them, with OpenVINO on the CPU.

    ``model_dir``: a folder written by :func:`~mobilesam.export.openvino_export.convert_openvino` (the
    ``openvino`` backends convert into the cache themselves: :meth:`from_sam`). ``precision``: the image
    encoder's, "fp32", "bf16" or "int8" (the decoder is always f32). ``threads``: inference threads (None:
    ``torch.get_num_threads()``). ``encoder_batch``: images per encoder pass in ``set_images``.
    Same methods and outputs as :class:`~mobilesam.predictor.SamPredictor`; tensors are on the CPU.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        precision: str = "fp32",
        threads: int | None = None,
        max_batch: int = 16,
        encoder_batch: int = 4,
        verify: bool = True,
    ) -> None:
        # The ONNX backend's __init__ opens ONNX Runtime sessions: its attributes are set here instead.
        import_openvino()
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads: expected an int >= 1 or None (torch's thread count), got {threads!r}")
        check_batch(encoder_batch, "encoder_batch")
        if precision == "bf16":
            check_bf16()
        folder, manifest = read_openvino_manifest(model_dir)
        self.manifest, self.model_dir = manifest, folder
        self.precision, self.decoder_precision = precision, "fp32"
        self.backend = "openvino" if precision == "fp32" else f"openvino-{precision}"
        self.model = None  # the official attribute; the IR holds the weights
        self.model_type = manifest.get("model_type")
        self.img_size = int(manifest["image_size"])
        self.embedding_shape = tuple(manifest["embedding_shape"])
        self.single_mask = bool(manifest.get("decoder_return_single_mask", False))
        self.pixel_mean = manifest["pixel_mean"]
        self.threads = int(threads or torch.get_num_threads())
        key = "encoder_int8" if precision == "int8" else "encoder"
        self.calibration = manifest["files"][key].get("calibration") if key in manifest["files"] else None
        if precision == "int8" and "mask_iou_vs_f32_mean" not in manifest.get("checks", {}).get("encoder_int8", {}):
            # The gate of quantize_openvino_int8 did not run (check=False, --no-check): nothing says these
            # masks are close to f32's (on the benchmark proxy with the synthetic images they were not: IoU 0.49).
            logger.warning("openvino-int8: this int8 encoder was made without the check, so its masks were never "
                           "compared with f32's; make it with the check on to have them measured")
        self.encoder = InferRunner(compile_model(ir_file(manifest, folder, key, verify), _HINTS[precision],
                                                 self.threads))
        self.decoder = InferRunner(compile_model(ir_file(manifest, folder, "decoder", verify), "f32", self.threads))
        PredictorBase.__init__(self, ResizeLongestSide(self.img_size), float(manifest["mask_threshold"]), max_batch,
                               encoder_batch)

    @classmethod
    def from_sam(
        cls,
        sam: torch.nn.Module,
        precision: str = "fp32",
        cache: str | os.PathLike | None = None,
        calibration: str | os.PathLike | None = None,
        calibration_size: int = CALIBRATION_SIZE,
        check: bool = True,
        **kwargs: Any,
    ) -> OpenVinoSamPredictor:
        """Convert ``sam`` once into a cache folder keyed by its weights and the OpenVINO release (reused
        later), then load it. ``int8`` quantizes the encoder once per calibration set: ``calibration``, a
        folder of images (``calibration_size`` of them are used), or None for built-in synthetic images.
        ``check``: compare the converted graphs with PyTorch before they are used (as ``mobilesam export``).
        """
        import_openvino()
        require_sam(sam)
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
        if precision == "bf16":
            check_bf16()  # before converting: the refusal should not cost a conversion
        if precision != "int8" and calibration is not None:
            raise ValueError(f"calibration: only the int8 encoder is calibrated, but precision is {precision!r}")
        folder = default_folder(sam, cache)
        try:
            _, manifest = read_openvino_manifest(folder)
            for key in ("encoder", "decoder"):
                ir_file(manifest, folder, key)
        except (FileNotFoundError, ExportError):
            logger.info("converting the model to OpenVINO in %s (once)", folder)
            # From the onnxruntime backend's export in the default cache (made there when missing): one
            # export serves both runtimes.
            manifest = convert_openvino(sam, folder, check=check,
                                        onnx_dir=None if cache is not None else cache_folder(sam))
        if precision == "int8":
            _, info = calibration_set(calibration, calibration_size)
            have = manifest["files"].get("encoder_int8", {}).get("calibration", {})
            # One made without the check is made again (and measured) when the check is asked for.
            gated = "mask_iou_vs_f32_mean" in manifest.get("checks", {}).get("encoder_int8", {})
            try:
                ok = (have.get("digest") == info["digest"] and (gated or not check)
                      and bool(ir_file(manifest, folder, "encoder_int8")))
            except (FileNotFoundError, ExportError):
                ok = False
            if not ok:
                logger.info("quantizing the image encoder to int8 in %s (once per calibration set: %s)", folder,
                            describe_calibration(info))
                quantize_openvino_int8(folder, calibration, calibration_size, sam=sam if check else None)
        kwargs.setdefault("verify", False)  # the checksums were verified above (a mismatch converts again)
        return cls(folder, precision=precision, **kwargs)

    def _repr_extra(self) -> str:
        calibrated = f", calibration={describe_calibration(self.calibration)!r}" if self.precision == "int8" else ""
        return f", threads={self.threads}{calibrated}"

    def info(self) -> dict[str, Any]:
        """What runs: backend, precision, threads, the calibration of an int8 encoder, and the conversion's checks."""
        return {
            "backend": self.backend,
            "precision": self.precision,
            "decoder_precision": "fp32",
            "threads": self.threads,
            "calibration": describe_calibration(self.calibration) if self.precision == "int8" else None,
            "model_dir": str(self.model_dir),
            "openvino": self.manifest["versions"]["openvino"],
            "checks": self.manifest.get("checks", {}),
        }

    def _encode(self, transformed_image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._encode_batch([transformed_image])[0]

    def _encode_batch(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Resized images (1, 3, h, w) 0-255 -> one encoder pass over them all (the encoder IR takes a batch
        of square images: each is padded with the pixel mean, see the module doc of the conversion)."""
        batch = np.concatenate([pad_square(x.detach().cpu().numpy(), self.img_size, self.pixel_mean) for x in images])
        embeddings = torch.from_numpy(self.encoder.run(None, {"image": batch})[0])
        return [{"image_embeddings": embeddings[i : i + 1]} for i in range(len(images))]

    def feature_identity(self) -> str:
        """``sam/size/weights digest/backend``, and the calibration set's digest for int8."""
        calibrated = f"/{self.calibration['digest'][:32]}" if self.precision == "int8" and self.calibration else ""
        return (f"sam/{self.model_type or 'unknown'}/{self.manifest['weights_sha256'][:32]}/{self.backend}"
                f"{calibrated}")
