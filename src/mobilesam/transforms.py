"""Resizing to the model's input frame, exactly as the official ``ResizeLongestSide``.

Images are resized with PIL's bilinear filter so the longest side equals ``target_length``
(``int(x * scale + 0.5)`` rounding); prompt coordinates are scaled by the same factors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
    """(h, w) after scaling so the longest side is ``long_side_length``.

    Each side is at least 1 pixel: a very thin image (1 x 3000, say) would otherwise round its short
    side to 0, which no resize accepts. (The official code rounds the same way and fails there.)
    """
    scale = long_side_length * 1.0 / max(oldh, oldw)
    return max(1, int(oldh * scale + 0.5)), max(1, int(oldw * scale + 0.5))


class ResizeLongestSide:
    """Resize images to longest side ``target_length``; map coordinates and boxes accordingly."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    # Kept under the official name for drop-in compatibility.
    get_preprocess_shape = staticmethod(preprocess_shape)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWxC uint8 -> h x w x C uint8 with the longest side ``target_length``."""
        h, w = preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 2) pixel coordinates (x, y) in the original image -> the resized frame."""
        old_h, old_w = original_size
        new_h, new_w = preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=float, copy=True)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 4) boxes XYXY -> the resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> resized with antialiased bilinear interpolation."""
        h, w = preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        old_h, old_w = original_size
        new_h, new_w = preprocess_shape(old_h, old_w, self.target_length)
        coords = coords.clone().to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)


def transform_for(preprocessing: Any) -> ResizeLongestSide:
    """The transform that maps images and prompts into the input frame of a family's ``Preprocessing``.

    ``preprocessing`` is a :class:`mobilesam.hub.Preprocessing` (read by attribute, so this module
    does not import the registry).
    """
    resize = getattr(preprocessing, "resize", None)
    if resize == "longest_side":
        return ResizeLongestSide(preprocessing.image_size)
    if resize == "square":
        # SAM 2's square resize must match the official SAM2Transforms pixel for pixel; it comes
        # with the SAM 2 family rather than as an approximation here.
        raise NotImplementedError(
            "preprocessing: resize='square' (SAM 2) has no transform yet; only 'longest_side' is implemented"
        )
    raise ValueError(f"preprocessing: expected resize 'longest_side' or 'square', got {resize!r}")
