"""``OnnxSamPredictor``: ``SamPredictor``'s interface over the exported ONNX files (ONNX Runtime).

Pre-processing (resize with PIL, coordinates) is the same code as ``SamPredictor``'s; normalisation,
padding, mask decoding and post-processing run inside the exported graphs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..modeling import Sam
from ..predictor import SamPredictor
from ..transforms import ResizeLongestSide
from .graphs import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PAD
from .manifest import ExportError, file_entry, read_manifest
from .runtime import check_io, import_onnxruntime, make_session

logger = logging.getLogger("mobilesam")

PRECISIONS = ("fp32", "int8")
_ENCODER_IO = (["image"], ["image_embeddings"])
_DECODER_IO = (
    ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"],
    ["masks", "iou_predictions", "low_res_masks"],
)


def _key(part: str, precision: str) -> str:
    return part if precision == "fp32" else f"{part}_{precision}"


class OnnxSamPredictor(SamPredictor):
    """Embeds an image once and predicts masks for prompts on it, with ONNX Runtime.

    ``model_dir`` is a folder written by ``mobilesam export`` (or its ``manifest.json``).
    ``precision`` "fp32" or "int8" picks the image encoder file, ``decoder_precision`` the decoder's (int8
    files need an export with ``--quantize int8``).
    Same methods and outputs as :class:`~mobilesam.predictor.SamPredictor`; tensors are on the CPU.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        precision: str = "fp32",
        decoder_precision: str = "fp32",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        verify: bool = True,
        max_batch: int = 16,
    ) -> None:
        import_onnxruntime()
        for name, value in (("precision", precision), ("decoder_precision", decoder_precision)):
            if value not in PRECISIONS:
                raise ValueError(f"{name}: expected one of {list(PRECISIONS)}, got {value!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")
        folder, manifest = read_manifest(model_dir)
        self.manifest = manifest
        self.model_dir = folder
        self.precision, self.decoder_precision = precision, decoder_precision
        self.max_batch = max_batch
        self.model = None  # no torch model: everything runs in ONNX Runtime
        self.model_type = manifest.get("model_type")
        self.img_size = int(manifest.get("image_size", 1024))
        self.mask_threshold = float(manifest.get("mask_threshold", 0.0))
        self.single_mask = bool(manifest.get("decoder_return_single_mask", False))
        files = manifest["files"]
        self.encoder = None
        if "encoder" in files or "encoder_int8" in files:  # a decoder-only export works from embeddings
            path = file_entry(manifest, folder, _key("encoder", precision), verify)
            self.encoder = make_session(path, threads, providers)
            check_io(self.encoder, path, "image encoder", *_ENCODER_IO)
        path = file_entry(manifest, folder, _key("decoder", decoder_precision), verify)
        self.decoder = make_session(path, threads, providers)
        check_io(self.decoder, path, "prompt decoder", *_DECODER_IO)
        self.transform = ResizeLongestSide(self.img_size)
        self.reset_image()

    @classmethod
    def from_sam(
        cls,
        sam: Sam,
        precision: str = "fp32",
        cache: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> "OnnxSamPredictor":
        """Export ``sam`` once into a cache folder keyed by its weights (reused later), then load it."""
        from ..build import detect_model_type
        from .onnx_export import export_onnx

        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
        sd = sam.state_dict()
        h = hashlib.sha256()
        for k in sorted(sd):
            h.update(k.encode())
            h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
        model_type = detect_model_type(sd) or "sam"
        if cache is None:
            from ..weights import cache_dir

            cache = cache_dir() / "onnx"
        folder = Path(cache) / f"{model_type}-{h.hexdigest()[:16]}"
        int8 = "int8" in (precision, kwargs.get("decoder_precision"))
        try:
            _, manifest = read_manifest(folder)
            ready = not int8 or {"encoder_int8", "decoder_int8"} <= set(manifest["files"])
        except (FileNotFoundError, ExportError):
            ready = False
        if not ready:
            logger.info("exporting the model to ONNX in %s (once)", folder)
            export_onnx(sam, folder, quantize="int8" if int8 else None)
        return cls(folder, precision=precision, **kwargs)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __repr__(self) -> str:
        return (f"OnnxSamPredictor(model_dir='{self.model_dir}', precision={self.precision!r}, "
                f"decoder_precision={self.decoder_precision!r})")

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embed an image already resized to longest side ``img_size``: (1, 3, h, w) in 0-255."""
        if self.encoder is None:
            raise ExportError(
                f"onnx model: the export in '{self.model_dir}' has no image encoder; use set_embedding(...) or "
                "re-export with the encoder"
            )
        self._start_image(transformed_image, original_image_size)
        image = np.ascontiguousarray(transformed_image.detach().cpu().numpy(), dtype=np.float32)
        self.features = torch.from_numpy(self.encoder.run(None, {"image": image})[0])
        self.is_image_set = True

    def set_embedding(
        self, features: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int] | None = None
    ) -> None:
        """Use a previously computed embedding (1, 256, 64, 64) for an image of ``original_size``."""
        features = torch.as_tensor(features).detach().cpu().float()
        if features.ndim == 3:
            features = features[None]
        expected = tuple(self.manifest.get("embedding_shape", (1, 256, 64, 64)))
        if tuple(features.shape) != expected:
            raise ValueError(f"features: expected an image embedding of shape {expected}, got {tuple(features.shape)}")
        super().set_embedding(features.contiguous(), original_size, input_size)

    def _decode(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder run for a batch of prompts (``predict_torch`` validates and splits large batches)."""
        batch = next((t.shape[0] for t in (point_coords, boxes, mask_input) if t is not None), 1)
        coords = [np.zeros((batch, 0, 2), np.float32)]
        labels = [np.zeros((batch, 0), np.float32)]
        if point_coords is not None:
            coords.append(point_coords.detach().cpu().numpy().astype(np.float32))
            labels.append(point_labels.detach().cpu().numpy().astype(np.float32))
            if boxes is None:
                # SAM's prompt encoder appends a "not a point" token when there is no box.
                coords.append(np.zeros((batch, 1, 2), np.float32))
                labels.append(np.full((batch, 1), LABEL_PAD, np.float32))
        if boxes is not None:
            coords.append(boxes.detach().cpu().numpy().astype(np.float32).reshape(batch, 2, 2))
            labels.append(np.tile(np.array([[LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]], np.float32), (batch, 1)))
        if mask_input is not None:
            mask = mask_input.detach().cpu().numpy().astype(np.float32)
            has_mask = np.ones(1, np.float32)
        else:
            mask = np.zeros((1, 1, 256, 256), np.float32)
            has_mask = np.zeros(1, np.float32)
        feeds = {
            "image_embeddings": self.features.numpy(),
            "point_coords": np.ascontiguousarray(np.concatenate(coords, axis=1)),
            "point_labels": np.ascontiguousarray(np.concatenate(labels, axis=1)),
            "mask_input": np.ascontiguousarray(mask),
            "has_mask_input": has_mask,
            "orig_im_size": np.array(self.original_size, np.float32),
        }
        masks, iou, low_res = (torch.from_numpy(a) for a in self.decoder.run(None, feeds))
        if not self.single_mask:
            sl = slice(1, None) if multimask_output else slice(0, 1)
            masks, iou, low_res = masks[:, sl], iou[:, sl], low_res[:, sl]
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low_res
