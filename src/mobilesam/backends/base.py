"""The predictor interface every backend implements, and the prompt handling they all share.

A predictor embeds an image once (``set_image``) and then answers many prompts on it (``predict``,
``predict_torch``). What differs between backends is only where the networks run: the image encoder
(``_encode``), the prompt encoder + mask decoder (``decode_low_res``) and the upscaling of low-resolution
logits to the image (``postprocess_masks``). Everything else (the resize to the model's input frame,
prompt validation, splitting large batches, thresholding) is written once, in :class:`PredictorBase`.

Several images are embedded with one encoder call each ``encoder_batch`` images (``set_images``,
``encode_prepared``): a backend whose encoder takes a batch overrides ``_encode_batch``; the others get
one call per image from the default. ``prepare_image`` (read, convert, resize) holds no state, so a
folder run makes the next images ready on another thread while the encoder runs
(:mod:`mobilesam.pipeline`).

The image features are opaque to the callers: an :class:`ImageFeatures` holds whatever tensors the
model family's decoder needs (one ``image_embeddings`` tensor for SAM and MobileSAM; several feature
levels for families such as SAM 2) with the sizes that map prompts into its frame. Caches, the server
and the segment-everything generator move features around without looking inside.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..io import load_image
from ..prompts import LOW_RES_SHAPE, check_inside_image, validate_boxes, validate_mask_input, validate_points



class ImageNotSetError(RuntimeError, ValueError):
    """A prediction was asked for before ``set_image``. (A RuntimeError, like the official code's.)"""


@dataclass(frozen=True)
class ImageFeatures:
    """What the image encoder produced for one image, and the sizes that go with it.

    ``tensors``: name -> tensor, in the layout of the model family (``{"image_embeddings": (1, 256, 64,
    64)}`` for SAM). ``original_size`` (H, W) of the image; ``input_size`` (h, w) after the resize into the
    model's input frame.
    """

    tensors: dict[str, torch.Tensor]
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def embedding(self) -> torch.Tensor:
        """The main image embedding: the first tensor (``image_embeddings`` for SAM)."""
        return next(iter(self.tensors.values()))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass(frozen=True)
class PreparedImage:
    """An image resized into the model's input frame, ready for the image encoder.

    ``tensor`` (1, 3, h, w), 0-255 (uint8 from ``prepare_image``), longest side ``transform.target_length``;
    ``original_size`` (H, W) of the image it was made from.
    """

    tensor: torch.Tensor
    original_size: tuple[int, int]

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])


@runtime_checkable
class Predictor(Protocol):
    """The interface of every backend's predictor (``SamPredictor`` and ``OnnxSamPredictor`` are two).

    :class:`PredictorBase` adds what folder runs use when a predictor has it (:mod:`mobilesam.pipeline`):
    ``prepare_image`` / ``encode_prepared`` (several images per encoder call) and ``feature_identity``
    (the key of the disk cache of embeddings); a predictor without them is run one ``set_image`` at a time.

    Prompts given to ``predict`` are in original-image pixels; those given to ``predict_torch`` and
    ``decode_low_res`` are already in the model's input frame (``transform.apply_coords``).
    """

    backend: str
    transform: Any  # apply_image, apply_coords, apply_boxes, get_preprocess_shape, target_length
    original_size: tuple[int, int] | None
    input_size: tuple[int, int] | None
    is_image_set: bool
    mask_threshold: float
    max_batch: int

    @property
    def device(self) -> torch.device: ...
    def set_image(self, image: Any, image_format: str = "RGB") -> None: ...
    def set_images(
        self, images: Sequence[Any], image_format: str = "RGB", batch: int | None = None
    ) -> list[ImageFeatures]: ...
    def get_features(self) -> ImageFeatures: ...
    def set_features(self, features: ImageFeatures) -> None: ...
    def reset_image(self) -> None: ...
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        strict: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def postprocess_masks(self, low_res: torch.Tensor) -> torch.Tensor: ...


class PredictorBase(ABC):
    """Shared prompt handling over three backend-specific steps: ``_encode``, ``decode_low_res`` and
    ``postprocess_masks``. Mirrors ``segment_anything.SamPredictor``: same methods, arguments and outputs.

    ``max_batch`` bounds how many prompts one decoder run takes: ``predict_torch`` splits a larger batch
    into chunks (same results, bounded memory). A runtime that decodes one prompt at a time sets 1.
    ``encoder_batch``: images per encoder call in ``set_images`` / ``encode_prepared`` when no ``batch`` is
    given there.
    """

    backend: str = "?"
    # Low-res logits handed back clipped to +-this (SAM 2's predictor does, so they are safe to feed back as
    # mask_input); the full-size masks are made from the unclipped ones. None: handed back as decoded.
    low_res_limit: float | None = None

    def __init__(self, transform: Any, mask_threshold: float, max_batch: int = 16, encoder_batch: int = 1) -> None:
        self.max_batch = check_batch(max_batch, "max_batch")
        self.encoder_batch = check_batch(encoder_batch, "encoder_batch")
        self.transform = transform
        self.mask_threshold = float(mask_threshold)
        self.reset_image()

    # --- what a backend provides ---------------------------------------------------------------------
    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the prompt tensors of ``predict_torch`` must live."""

    @abstractmethod
    def _encode(self, transformed_image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image features of a resized image (1, 3, h, w), 0-255, longest side ``transform.target_length``."""

    @abstractmethod
    def decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on the current features, prompts in the input frame, no checks:
        low-resolution logits (B, C, 256, 256) and predicted IoUs (B, C); C is 3 with multimask else 1."""

    @abstractmethod
    def postprocess_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits (B, C, 256, 256) -> logits at the current image's size (B, C, H, W)."""

    def decode_low_res_above(
        self, point_coords: torch.Tensor, point_labels: torch.Tensor, multimask_output: bool, min_iou: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``decode_low_res`` of point prompts, where only the prompts with a predicted IoU above
        ``min_iou`` (any output) need their masks: low-resolution logits (B, C, 256, 256), predicted IoUs
        (B, C) and which rows hold masks (B,) bool; the other rows are -inf (an empty mask). Segment
        everything drops those outputs before looking at their masks. This default decodes every mask;
        a backend that can score prompts before upscaling their masks overrides it."""
        low, iou = self.decode_low_res(point_coords, point_labels, None, None, multimask_output)
        return low, iou, torch.ones(len(iou), dtype=torch.bool, device=iou.device)

    def _encode_batch(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Features of several resized images (each (1, 3, h, w) 0-255, sizes may differ), one dict per image
        with batch 1. Here one ``_encode`` call per image; a backend whose encoder takes a batch overrides
        this to embed them in one call. Every encoder pass of the predictor goes through here."""
        return [self._encode(x) for x in images]

    def feature_identity(self) -> str | None:
        """What, besides the image, decides the features: model family and size, a digest of the weights,
        backend and precision (the key of the disk cache of embeddings, :mod:`mobilesam.cache`); None when
        this backend cannot say, and then its features are not stored on disk."""
        return None

    def _check_features(self, features: ImageFeatures) -> None:
        """Refuse features this backend cannot decode (override to check the layout)."""

    # --- state -----------------------------------------------------------------------------------------
    def reset_image(self) -> None:
        self.is_image_set = False
        self._features: ImageFeatures | None = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @property
    def features(self) -> torch.Tensor | None:
        """The current image embedding tensor (None before ``set_image``), as the official predictor has."""
        return None if self._features is None else self._features.embedding

    def _require_image(self) -> ImageFeatures:
        if not self.is_image_set or self._features is None:
            raise ImageNotSetError("An image must be set with .set_image(...) before mask prediction.")
        return self._features

    def get_features(self) -> ImageFeatures:
        """The current image's features (opaque; give them back with ``set_features``)."""
        return self._require_image()

    def set_features(self, features: ImageFeatures) -> None:
        """Make previously computed features the current image."""
        if not isinstance(features, ImageFeatures):
            raise TypeError(f"features: expected an ImageFeatures (from get_features), got {type(features).__name__}")
        self._check_features(features)
        if any(t.device != self.device for t in features.tensors.values()):  # e.g. read from the disk cache
            features = ImageFeatures({k: v.to(self.device) for k, v in features.tensors.items()},
                                     features.original_size, features.input_size)
        self.reset_image()
        self._features = features
        self.original_size = (int(features.original_size[0]), int(features.original_size[1]))
        self.input_size = (int(features.input_size[0]), int(features.input_size[1]))
        self.orig_h, self.orig_w = self.original_size
        self.input_h, self.input_w = self.input_size
        self.is_image_set = True

    # --- images ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Embed an image: HxWx3 uint8 array in ``image_format`` ("RGB" or "BGR"), a PIL image or a path.

        Greyscale, RGBA, 16-bit and float-in-[0, 1] arrays are converted.
        """
        prepared = self.prepare_image(image, image_format)
        self.set_torch_image(prepared.tensor, prepared.original_size)

    def prepare_image(self, image: Any, image_format: str = "RGB") -> PreparedImage:
        """Read and convert ``image`` (as ``set_image`` takes it) and resize it into the input frame; no
        encoder pass, no change to the predictor (safe on another thread)."""
        rgb = load_image(image, image_format=image_format)
        resized = self.transform.apply_image(rgb)
        tensor = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
        return PreparedImage(tensor, (int(rgb.shape[0]), int(rgb.shape[1])))

    @torch.no_grad()
    def encode_prepared(self, prepared: Sequence[PreparedImage], batch: int | None = None) -> list[ImageFeatures]:
        """Features of prepared images, ``batch`` (default ``encoder_batch``) per encoder call, in order; the
        current image is left as it is."""
        batch = self.encoder_batch if batch is None else check_batch(batch, "batch")
        out: list[ImageFeatures] = []
        for start in range(0, len(prepared), batch):
            chunk = list(prepared[start : start + batch])
            for p in chunk:
                self._check_transformed(p.tensor)
            tensors = self._encode_batch([p.tensor for p in chunk])
            out += [ImageFeatures(t, p.original_size, p.input_size) for t, p in zip(tensors, chunk)]
        return out

    def set_images(
        self, images: Sequence[Any], image_format: str = "RGB", batch: int | None = None
    ) -> list[ImageFeatures]:
        """Embed several images, ``batch`` (default ``encoder_batch``) per encoder call; returns their features
        in order and leaves the last one set. The same features as one ``set_image`` each, up to float
        rounding (the runtimes may order sums differently for a batch)."""
        if isinstance(images, (str, np.ndarray)) or not isinstance(images, Sequence):
            raise ValueError(f"images: expected a list of images, got {type(images).__name__}")
        out = self.encode_prepared([self.prepare_image(image, image_format) for image in images], batch)
        if out:
            self.set_features(out[-1])
        return out

    def _check_transformed(self, transformed_image: Any) -> None:
        size = self.transform.target_length
        if (
            not isinstance(transformed_image, torch.Tensor)
            or transformed_image.ndim != 4
            or transformed_image.shape[0] != 1
            or transformed_image.shape[1] != 3
            or max(transformed_image.shape[2:]) != size
        ):
            got = tuple(transformed_image.shape) if isinstance(transformed_image, torch.Tensor) else type(
                transformed_image).__name__
            raise ValueError(f"transformed_image: expected shape (1, 3, h, w) with longest side {size}, got {got}")

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embed an image already resized into the input frame: (1, 3, h, w) in 0-255."""
        self._check_transformed(transformed_image)
        original = (int(original_image_size[0]), int(original_image_size[1]))
        tensors = self._encode_batch([transformed_image])[0]
        input_size = (int(transformed_image.shape[-2]), int(transformed_image.shape[-1]))
        self.set_features(ImageFeatures(tensors, original, input_size))

    # --- legacy names of the official API --------------------------------------------------------------
    def get_image_embedding(self) -> torch.Tensor:
        """The image embedding (1, 256, 64, 64 for SAM) of the current image."""
        return self._require_image().embedding

    def set_embedding(
        self, features: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int] | None = None
    ) -> None:
        """Use a previously computed embedding (1, 256, 64, 64 for SAM) for an image of ``original_size``."""
        original = (int(original_size[0]), int(original_size[1]))
        if input_size is None:
            input_size = self.transform.get_preprocess_shape(*original, self.transform.target_length)
        tensors = self._embedding_tensors(features)
        self.set_features(ImageFeatures(tensors, original, (int(input_size[0]), int(input_size[1]))))

    def _embedding_tensors(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        """The features dict of a family whose features are one embedding tensor."""
        return {"image_embeddings": torch.as_tensor(embedding).to(self.device)}

    # --- prompts ---------------------------------------------------------------------------------------
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        strict: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one object, prompts in original-image pixels.

        point_coords (N, 2) as (x, y); point_labels (N,) with 1 = foreground, 0 = background;
        box (4,) XYXY; mask_input (1, 256, 256) low-res logits from an earlier call.
        Returns masks (C, H, W) (bool, or float logits with ``return_logits``), scores (C,) and
        low-res logits (C, 256, 256); C is 3 with ``multimask_output`` else 1.
        Points or a box outside the image log one warning (logger ``mobilesam``); with ``strict=True``
        they raise a ValueError.
        """
        self._require_image()
        points = validate_points(point_coords, point_labels)
        boxes = validate_boxes(box) if box is not None else None
        if boxes is not None and boxes.shape[0] != 1:
            raise ValueError(f"box: predict takes one box of shape (4,); use predict_torch for {boxes.shape[0]}")
        check_inside_image(self.original_size, points[0] if points is not None else None, boxes, strict)
        coords_t = labels_t = box_t = mask_t = None
        if points is not None:
            coords = self.transform.apply_coords(points[0], self.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels_t = torch.as_tensor(points[1], dtype=torch.int, device=self.device)[None]
        if boxes is not None:
            box_t = torch.as_tensor(self.transform.apply_boxes(boxes, self.original_size), dtype=torch.float,
                                    device=self.device)
        if mask_input is not None:
            mask_t = torch.as_tensor(validate_mask_input(mask_input, None), device=self.device)[None]
        masks, iou, low_res = self.predict_torch(coords_t, labels_t, box_t, mask_t, multimask_output, return_logits)
        return masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction, prompts already in the resized frame (see ``self.transform``).

        point_coords (B, N, 2), point_labels (B, N), boxes (B, 4), mask_input (B, 1, 256, 256).
        Returns masks (B, C, H, W), scores (B, C) and low-res logits (B, C, 256, 256).
        """
        self._require_image()
        batch = check_torch_prompts(point_coords, point_labels, boxes, mask_input)
        if batch <= self.max_batch:
            return self._decode(point_coords, point_labels, boxes, mask_input, multimask_output, return_logits)
        masks_out = None
        ious, lows = [], []
        for i in range(0, batch, self.max_batch):
            sl = slice(i, i + self.max_batch)
            masks, iou, low_res = self._decode(
                *(t[sl] if t is not None else None for t in (point_coords, point_labels, boxes, mask_input)),
                multimask_output,
                return_logits,
            )
            if masks_out is None:
                masks_out = masks.new_empty((batch, *masks.shape[1:]))
            masks_out[sl] = masks
            ious.append(iou)
            lows.append(low_res)
        return masks_out, torch.cat(ious), torch.cat(lows)

    def _decode(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder run for at most ``max_batch`` prompts: full-size masks, IoUs, low-res logits."""
        low_res, iou = self.decode_low_res(point_coords, point_labels, boxes, mask_input, multimask_output)
        masks = self.postprocess_masks(low_res)
        if not return_logits:
            masks = masks > self.mask_threshold
        if self.low_res_limit is not None:
            low_res = low_res.clamp(-self.low_res_limit, self.low_res_limit)
        return masks, iou, low_res


def check_batch(value: Any, name: str) -> int:
    """An int >= 1 (a batch size), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return value


def check_torch_prompts(
    point_coords: torch.Tensor | None,
    point_labels: torch.Tensor | None,
    boxes: torch.Tensor | None,
    mask_input: torch.Tensor | None,
) -> int:
    """Validate batched prompt tensors (shapes, finiteness, XYXY order); returns the batch size."""
    batches = {}
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    if point_coords is not None:
        if point_coords.ndim != 3 or point_coords.shape[-1] != 2:
            raise ValueError(f"point_coords: expected shape (B, N, 2), got {tuple(point_coords.shape)}")
        if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
            raise ValueError(
                f"point_labels: expected shape {tuple(point_coords.shape[:2])}, got {tuple(point_labels.shape)}"
            )
        if not torch.isfinite(point_coords).all():
            raise ValueError("point_coords: all values must be finite, got NaN or inf")
        batches["point_coords"] = point_coords.shape[0]
    if boxes is not None:
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes: expected shape (B, 4) XYXY, got {tuple(boxes.shape)}")
        if not torch.isfinite(boxes).all():
            raise ValueError("boxes: all values must be finite, got NaN or inf")
        validate_boxes(boxes.detach().float().cpu().numpy(), "boxes")
        batches["boxes"] = boxes.shape[0]
    if mask_input is not None:
        if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != LOW_RES_SHAPE:
            raise ValueError(f"mask_input: expected shape (B, 1, 256, 256), got {tuple(mask_input.shape)}")
        batches["mask_input"] = mask_input.shape[0]
    if len(set(batches.values())) > 1:
        raise ValueError(f"prompts: batch sizes differ: {batches}")
    return next(iter(batches.values()), 1)


def check_fill_areas(max_hole_area: Any, max_sprinkle_area: Any) -> tuple[float, float]:
    """SAM 2's ``max_hole_area`` / ``max_sprinkle_area`` (pixels, 0 = off) as floats; a ValueError naming the
    argument otherwise."""
    for name, value in (("max_hole_area", max_hole_area), ("max_sprinkle_area", max_sprinkle_area)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name}: expected a number of pixels >= 0 (0 = off), got {value!r}")
    return float(max_hole_area), float(max_sprinkle_area)


class ExportedPredictor(PredictorBase):
    """A predictor over exported files (ONNX Runtime, OpenVINO, ExecuTorch, LiteRT): its tensors live on the
    CPU, and ``model_dir`` and ``precision`` say what runs (``_repr_extra`` adds a backend's own options)."""

    model_dir: Any
    precision: str

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _repr_extra(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_dir='{self.model_dir}', precision={self.precision!r}{self._repr_extra()})"
