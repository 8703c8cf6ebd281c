"""``SamPredictor``: embed an image once, then answer many prompts. API-compatible with the official one."""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

import numpy as np
import torch

from .io import load_image
from .modeling import Sam
from .transforms import ResizeLongestSide


class ImageNotSetError(RuntimeError, ValueError):
    """A prediction was asked for before ``set_image``. (A RuntimeError, like the official code's.)"""


def _finite_array(x: Any, name: str, dtype: type = np.float64) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected numbers, got {type(x).__name__} ({e})") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: all values must be finite, got NaN or inf in {arr.tolist()}")
    return arr


def validate_points(point_coords: Any, point_labels: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Check (N, 2) coordinates and (N,) labels in {0, 1}; returns them as arrays (or None)."""
    if point_coords is None and point_labels is None:
        return None
    if point_coords is None:
        raise ValueError("point_coords: point_labels were given without point_coords")
    if point_labels is None:
        raise ValueError("point_labels: point_coords were given without point_labels (1 = foreground, 0 = background)")
    coords = _finite_array(point_coords, "point_coords")
    labels = _finite_array(point_labels, "point_labels")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"point_coords: expected shape (N, 2) as (x, y) pixels, got shape {coords.shape}")
    if labels.ndim != 1 or labels.shape[0] != coords.shape[0]:
        raise ValueError(
            f"point_labels: expected shape ({coords.shape[0]},), one label per point, got shape {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"point_labels: expected 1 (foreground) or 0 (background), got {labels.tolist()}")
    return coords, labels.astype(np.int64)


def validate_boxes(box: Any, name: str = "box") -> np.ndarray:
    """Check XYXY boxes, shape (4,) or (B, 4), with x1 <= x2 and y1 <= y2; returns (B, 4)."""
    arr = _finite_array(box, name)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (4,) or (B, 4) as x1, y1, x2, y2, got shape {np.shape(box)}")
    bad = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if bad.any():
        raise ValueError(f"{name}: expected x1 <= x2 and y1 <= y2 (XYXY), got {arr[bad][0].tolist()}")
    return arr


def validate_mask_input(mask_input: Any, batch: int | None, name: str = "mask_input") -> np.ndarray:
    """Check low-resolution mask logits: (1, 256, 256), or (B, 1, 256, 256) when ``batch`` is set."""
    arr = _finite_array(mask_input, name, np.float32)
    expected = (1, 256, 256) if batch is None else (batch, 1, 256, 256)
    if arr.shape != expected:
        raise ValueError(
            f"{name}: expected low-resolution logits of shape {expected} (the low_res_logits of an earlier "
            f"prediction), got shape {arr.shape}"
        )
    return arr


_MALLOC_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in glibc's heap instead of returning them to the OS.

    By default glibc serves every allocation above 32 MB with a fresh ``mmap``, and every page of it
    is zero-filled by the kernel on first touch: the encoder's 16-64 MB activations are faulted in
    anew on each pass, which costs about as much as the arithmetic. Raising the mmap and trim
    thresholds makes the second and later passes reuse memory. The cost: memory freed after a pass
    stays in the process (up to the encoder's peak, a few hundred MB) for the next one.
    Opt out with ``MOBILESAM_MALLOC_TUNING=0``. Returns True when applied (glibc only; once per process).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("MOBILESAM_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no"):
        return _MALLOC_TUNED
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 512 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    _MALLOC_TUNED = bool(ok)
    return _MALLOC_TUNED


class SamPredictor:
    """Computes an image embedding once and predicts masks for prompts on it.

    Mirrors ``segment_anything.SamPredictor``: same methods, arguments and outputs.
    ``max_batch`` bounds how many prompts ``predict_torch`` decodes at once: a larger batch is split
    into chunks (same results, bounded memory: full-size masks are thresholded chunk by chunk).
    ``encoder_precision="bf16"`` runs the image encoder under bfloat16 autocast (about 2x faster on CPUs
    with AMX or AVX512-BF16, and on GPUs; embeddings within about 2% of fp32); the decoder stays fp32.
    """

    def __init__(self, sam_model: Sam, max_batch: int = 16, encoder_precision: str = "fp32") -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")
        if encoder_precision not in ("fp32", "bf16"):
            raise ValueError(f"encoder_precision: expected 'fp32' or 'bf16', got {encoder_precision!r}")
        self.max_batch = max_batch
        self.encoder_precision = encoder_precision
        if sam_model.device.type == "cpu":
            tune_cpu_allocator()
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @torch.no_grad()
    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Embed an image: HxWx3 uint8 array in ``image_format`` ("RGB" or "BGR"), a PIL image or a path.

        Greyscale, RGBA, 16-bit and float-in-[0, 1] arrays are converted.
        """
        rgb = load_image(image, image_format=image_format)
        resized = self.transform.apply_image(rgb)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(tensor, rgb.shape[:2])

    def _start_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Check a resized image (1, 3, h, w) with longest side ``img_size`` and record its sizes."""
        size = self.transform.target_length
        if (
            transformed_image.ndim != 4
            or transformed_image.shape[0] != 1
            or transformed_image.shape[1] != 3
            or max(transformed_image.shape[2:]) != size
        ):
            raise ValueError(
                f"transformed_image: expected shape (1, 3, h, w) with longest side {size}, "
                f"got {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.orig_h, self.orig_w = self.original_size
        self.input_size = (int(transformed_image.shape[-2]), int(transformed_image.shape[-1]))
        self.input_h, self.input_w = self.input_size

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embed an image already resized to longest side ``img_size``: (1, 3, h, w) in 0-255."""
        self._start_image(transformed_image, original_image_size)
        x = self.model.preprocess(transformed_image.to(self.device, torch.float32))
        if self.encoder_precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                self.features = self.model.image_encoder(x).float()
        else:
            self.features = self.model.image_encoder(x)
        self.is_image_set = True

    def set_embedding(
        self, features: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int] | None = None
    ) -> None:
        """Use a previously computed embedding (1, 256, 64, 64) for an image of ``original_size``."""
        self.reset_image()
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = input_size or self.transform.get_preprocess_shape(
            *self.original_size, self.transform.target_length
        )
        self.orig_h, self.orig_w = self.original_size
        self.input_h, self.input_w = self.input_size
        self.features = features.to(self.device)
        self.is_image_set = True

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise ImageNotSetError("An image must be set with .set_image(...) before mask prediction.")

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one object, prompts in original-image pixels.

        point_coords (N, 2) as (x, y); point_labels (N,) with 1 = foreground, 0 = background;
        box (4,) XYXY; mask_input (1, 256, 256) low-res logits from an earlier call.
        Returns masks (C, H, W) (bool, or float logits with ``return_logits``), scores (C,) and
        low-res logits (C, 256, 256); C is 3 with ``multimask_output`` else 1.
        """
        self._require_image()
        points = validate_points(point_coords, point_labels)
        coords_t = labels_t = box_t = mask_t = None
        if points is not None:
            coords = self.transform.apply_coords(points[0], self.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels_t = torch.as_tensor(points[1], dtype=torch.int, device=self.device)[None]
        if box is not None:
            boxes = validate_boxes(box)
            if boxes.shape[0] != 1:
                raise ValueError(f"box: predict takes one box of shape (4,); use predict_torch for {boxes.shape[0]}")
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
        batch = self._check_torch_prompts(point_coords, point_labels, boxes, mask_input)
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
        low_res, iou = self._decode_low_res(point_coords, point_labels, boxes, mask_input, multimask_output)
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def _decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder and mask decoder on the current embedding, prompts in the input frame, no
        checks: low-resolution logits (B, C, 256, 256) and predicted IoUs (B, C)."""
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.model.mask_decoder(
            image_embeddings=self.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    @staticmethod
    def _check_torch_prompts(
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
    ) -> int:
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
            if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
                raise ValueError("boxes: expected x1 <= x2 and y1 <= y2 (XYXY)")
            batches["boxes"] = boxes.shape[0]
        if mask_input is not None:
            if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != (1, 256, 256):
                raise ValueError(f"mask_input: expected shape (B, 1, 256, 256), got {tuple(mask_input.shape)}")
            batches["mask_input"] = mask_input.shape[0]
        if len(set(batches.values())) > 1:
            raise ValueError(f"prompts: batch sizes differ: {batches}")
        return next(iter(batches.values()), 1)

    def get_image_embedding(self) -> torch.Tensor:
        """The image embedding (1, 256, 64, 64) of the current image."""
        self._require_image()
        assert self.features is not None
        return self.features
