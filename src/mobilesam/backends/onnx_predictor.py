"""The ONNX Runtime backend: ``OnnxSamPredictor`` over the files written by ``mobilesam export``.

Pre-processing (resize with PIL, coordinates) is the same code as the torch backend's; normalisation,
padding, mask decoding and upscaling run inside the exported graphs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..export.graphs import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PAD, pad_square
from ..export.manifest import ExportError, file_entry, read_manifest
from ..export.runtime import check_io, import_onnxruntime, make_session
from ..transforms import ResizeLongestSide
from .base import ExportedPredictor, ImageFeatures

logger = logging.getLogger("mobilesam")

PRECISIONS = ("fp32", "int8")
_ENCODER_IO = (["image"], ["image_embeddings"])
_HWC_ENCODER_IO = (["input_image"], ["image_embeddings"])
_DECODER_IO = (
    ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"],
    ["masks", "iou_predictions", "low_res_masks"],
)


def _key(part: str, precision: str) -> str:
    return part if precision == "fp32" else f"{part}_{precision}"


def cached_export(
    sam: torch.nn.Module, precision: str, cache: str | os.PathLike | None = None, decoder_precision: str | None = None
) -> Path:
    """The export of ``sam`` (any family: ``export_onnx`` picks its graphs) in a cache folder keyed by
    its weights, made once (again only when int8 files are asked for and missing); returns the folder."""
    from ..export.onnx_export import export_onnx

    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    folder = cache_folder(sam, cache)
    int8 = "int8" in (precision, decoder_precision)
    try:
        _, manifest = read_manifest(folder)
        ready = not int8 or {"encoder_int8", "decoder_int8"} <= set(manifest["files"])
    except (FileNotFoundError, ExportError):
        ready = False
    if not ready:
        logger.info("exporting the model to ONNX in %s (once)", folder)
        export_onnx(sam, folder, quantize="int8" if int8 else None)
    return folder


def open_export(predictor: Any, model_dir: str | os.PathLike, precision: str,
                decoder_precision: str) -> tuple[Path, dict[str, Any]]:
    """The setup every ONNX Runtime predictor shares: checks the precisions, reads the export's manifest and
    sets ``manifest``, ``model_dir``, ``precision``, ``decoder_precision``, ``backend``, ``model`` (None: the
    graphs hold the weights) and ``model_type`` on ``predictor``. Returns the folder and the manifest."""
    import_onnxruntime()
    for name, value in (("precision", precision), ("decoder_precision", decoder_precision)):
        if value not in PRECISIONS:
            raise ValueError(f"{name}: expected one of {list(PRECISIONS)}, got {value!r}")
    folder, manifest = read_manifest(model_dir)
    predictor.manifest, predictor.model_dir = manifest, folder
    predictor.precision, predictor.decoder_precision = precision, decoder_precision
    predictor.backend = "onnxruntime" if precision == "fp32" else f"onnxruntime-{precision}"
    predictor.model = None  # the official attribute; no torch model here
    predictor.model_type = manifest.get("model_type")
    return folder, manifest


def open_sessions(predictor: Any, folder: Path, manifest: dict[str, Any], threads: int | None,
                  providers: Sequence[str] | None, verify: bool, encoder_io: tuple, decoder_io: tuple
                  ) -> tuple[Any, Any]:
    """ONNX Runtime sessions of the export's encoder (None for a decoder-only export, which works from
    embeddings) and decoder, in the precisions :func:`open_export` set on ``predictor``, each checked
    against its expected ``(label, inputs, outputs)``."""
    encoder = None
    if "encoder" in manifest["files"] or "encoder_int8" in manifest["files"]:
        path = file_entry(manifest, folder, _key("encoder", predictor.precision), verify)
        encoder = make_session(path, threads, providers)
        check_io(encoder, path, *encoder_io)
    path = file_entry(manifest, folder, _key("decoder", predictor.decoder_precision), verify)
    decoder = make_session(path, threads, providers)
    check_io(decoder, path, *decoder_io)
    return encoder, decoder


class OnnxSamPredictor(ExportedPredictor):
    """Embeds an image once and predicts masks for prompts on it, with ONNX Runtime.

    ``model_dir`` is a folder written by ``mobilesam export`` (or its ``manifest.json``).
    ``precision`` "fp32" or "int8" picks the image encoder file, ``decoder_precision`` the decoder's (int8
    files need an export with ``--quantize int8``). ``encoder_batch``: images per encoder run in
    ``set_images`` when the encoder graph has a dynamic batch (exports from this version on; older ones
    run one image at a time).
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
        encoder_batch: int = 4,
    ) -> None:
        folder, manifest = open_export(self, model_dir, precision, decoder_precision)
        self.img_size = int(manifest.get("image_size", 1024))
        self.embedding_shape = tuple(manifest.get("embedding_shape", (1, 256, 64, 64)))
        self.single_mask = bool(manifest.get("decoder_return_single_mask", False))
        # The anylabeling layout (samexporter / X-AnyLabeling) takes input_image (h, w, 3).
        self.hwc_input = manifest.get("layout") == "anylabeling"
        encoder_io = ("image encoder", *(_HWC_ENCODER_IO if self.hwc_input else _ENCODER_IO))
        self.encoder, self.decoder = open_sessions(self, folder, manifest, threads, providers, verify, encoder_io,
                                                   ("prompt decoder", *_DECODER_IO))
        self._batched_encoder = (self.encoder is not None and not self.hwc_input
                                 and not isinstance(self.encoder.get_inputs()[0].shape[0], int))
        super().__init__(ResizeLongestSide(self.img_size), float(manifest.get("mask_threshold", 0.0)), max_batch,
                         encoder_batch)

    @classmethod
    def from_sam(
        cls,
        sam: torch.nn.Module,
        precision: str = "fp32",
        cache: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> OnnxSamPredictor:
        """Export ``sam`` once into a cache folder keyed by its weights (reused later), then load it."""
        folder = cached_export(sam, precision, cache, kwargs.get("decoder_precision"))
        return cls(folder, precision=precision, **kwargs)

    def _repr_extra(self) -> str:
        return f", decoder_precision={self.decoder_precision!r}"

    def _require_encoder(self) -> Any:
        if self.encoder is None:
            raise ExportError(
                f"onnx model: the export in '{self.model_dir}' has no image encoder; use set_embedding(...) or "
                "re-export with the encoder"
            )
        return self.encoder

    def _encode(self, transformed_image: torch.Tensor) -> dict[str, torch.Tensor]:
        image = np.ascontiguousarray(transformed_image.detach().cpu().numpy(), dtype=np.float32)
        feeds = {"input_image": np.ascontiguousarray(image[0].transpose(1, 2, 0))} if self.hwc_input else {"image": image}
        return {"image_embeddings": torch.from_numpy(self._require_encoder().run(None, feeds)[0])}

    def _encode_batch(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Several images in one encoder run, padded to the square input with the pixel mean (zero once the
        graph normalises them: the padding one image gets inside the graph)."""
        encoder = self._require_encoder()
        if len(images) == 1 or not self._batched_encoder:
            return super()._encode_batch(images)
        batch = np.concatenate([pad_square(x.detach().cpu().numpy(), self.img_size, self.manifest["pixel_mean"])
                                for x in images])
        embeddings = torch.from_numpy(encoder.run(None, {"image": batch})[0])
        return [{"image_embeddings": embeddings[i : i + 1]} for i in range(len(images))]

    def feature_identity(self) -> str:
        """``sam/size/encoder file digest/backend``: the encoder file's SHA-256 from the manifest names the
        weights and the precision at once."""
        entry = self.manifest["files"][_key("encoder", self.precision)] if self.encoder is not None else {}
        return f"sam/{self.model_type or 'unknown'}/{entry.get('sha256', 'no-encoder')[:32]}/{self.backend}"

    def _embedding_tensors(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.as_tensor(embedding).detach().cpu().float()
        if features.ndim == 3:
            features = features[None]
        return {"image_embeddings": features.contiguous()}

    def _check_features(self, features: ImageFeatures) -> None:
        got = {k: tuple(v.shape) for k, v in features.tensors.items()}
        if list(got) != ["image_embeddings"] or got["image_embeddings"] != self.embedding_shape:
            shown = got.get("image_embeddings") if len(got) == 1 else got
            raise ValueError(f"features: expected an image embedding of shape {self.embedding_shape}, got {shown}")

    def _run_decoder(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder run: full-size logits, IoUs and low-res logits, ``multimask_output`` selected."""
        features = self._require_image()
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
            "image_embeddings": features.embedding.numpy(),
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
        return masks, iou, low_res

    def decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, iou, low_res = self._run_decoder(point_coords, point_labels, boxes, mask_input, multimask_output)
        return low_res, iou

    def postprocess_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        """The decoder graph's upscaling, in torch: to the padded input, crop, to the image size."""
        self._require_image()
        x = F.interpolate(low_res.float(), (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        x = x[..., : self.input_size[0], : self.input_size[1]]
        return F.interpolate(x, self.original_size, mode="bilinear", align_corners=False)

    def _decode(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # The graph upscales to the image size itself: one run gives everything.
        masks, iou, low_res = self._run_decoder(point_coords, point_labels, boxes, mask_input, multimask_output)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low_res


def cache_folder(sam: torch.nn.Module, cache: str | os.PathLike | None = None) -> Path:
    """Where ``from_sam`` exports ``sam``: ``{cache}/{model_type}-{weights digest}`` (default cache:
    ``$MOBILESAM_HOME/onnx``). The openvino backends convert from the export found here."""
    from ..build import detect_model_type
    from ..weights import cache_dir, weights_digest

    model_type = detect_model_type(sam.state_dict()) or "sam"
    root = Path(cache).expanduser() if cache is not None else cache_dir() / "onnx"
    return root / f"{model_type}-{weights_digest(sam)[:16]}"
