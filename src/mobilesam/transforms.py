"""Resizing to the model's input frame, exactly as the official transforms, and SAM 2's mask clean-up.

- :class:`ResizeLongestSide` (SAM, MobileSAM), as the official one: PIL's bilinear filter, so the
  longest side equals ``target_length`` (``int(x * scale + 0.5)`` rounding), then padding.
- :class:`ResizeSquare` (SAM 2), as ``SAM2Transforms``: the image is stretched to a square with
  antialiased bilinear interpolation of the float image (what torchvision's ``Resize`` does to a
  tensor), without rounding to uint8.

Prompt coordinates are scaled by the same factors as the image.
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


class ResizeSquare:
    """Stretch images to ``target_length`` x ``target_length``; map coordinates and boxes accordingly.

    The same methods as :class:`ResizeLongestSide`. ``apply_image`` returns float32 (0-255 scale): the
    official ``SAM2Transforms`` resizes the float image and never rounds it back to uint8.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(h, w) in the input frame: the square, whatever the image's aspect ratio."""
        return long_side_length, long_side_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWxC uint8 (or float, 0-255) -> S x S x C float32, 0-255."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        return self.apply_image_torch(x)[0].permute(1, 2, 0).numpy()

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 2) pixel coordinates (x, y) in the original image -> the square frame."""
        old_h, old_w = original_size
        coords = np.array(coords, dtype=float, copy=True)
        coords[..., 0] = coords[..., 0] / old_w * self.target_length
        coords[..., 1] = coords[..., 1] / old_h * self.target_length
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 4) boxes XYXY -> the square frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> (B, C, S, S), antialiased bilinear (torchvision ``Resize`` on tensors)."""
        size = (self.target_length, self.target_length)
        if tuple(image.shape[-2:]) == size:
            return image
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        old_h, old_w = original_size
        coords = coords.clone().to(torch.float)
        coords[..., 0] = coords[..., 0] / old_w * self.target_length
        coords[..., 1] = coords[..., 1] / old_h * self.target_length
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)


def _small_components(binary: np.ndarray, max_area: float) -> np.ndarray:
    """Pixels of the 8-connected components of ``binary`` (H, W) whose area is at most ``max_area``."""
    import cv2  # only for this optional clean-up: importing the transforms stays light

    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] <= max_area
    small[0] = False  # label 0: the pixels outside ``binary``
    return small[labels]


def fill_holes_and_sprinkles(
    masks: torch.Tensor, mask_threshold: float = 0.0, max_hole_area: float = 0.0, max_sprinkle_area: float = 0.0
) -> torch.Tensor:
    """SAM 2's clean-up of mask logits (B, M, H, W), as ``SAM2Transforms.postprocess_masks`` does before
    resizing: background components (8-connected, logits <= threshold) of at most ``max_hole_area``
    pixels become foreground (threshold + 10), foreground components of at most ``max_sprinkle_area``
    become background (threshold - 10). Both are found on the masks as given. 0 turns a step off.

    The official code needs its CUDA extension for the connected components (and silently skips the
    step without it); this uses OpenCV, with the same result on every device.
    """
    if max_hole_area <= 0 and max_sprinkle_area <= 0:
        return masks
    masks = masks.float()
    flat = masks.detach().flatten(0, 1).cpu().numpy()
    holes = np.zeros(flat.shape, dtype=bool)
    sprinkles = np.zeros(flat.shape, dtype=bool)
    for i, m in enumerate(flat):
        if max_hole_area > 0:
            holes[i] = _small_components(m <= mask_threshold, max_hole_area)
        if max_sprinkle_area > 0:
            sprinkles[i] = _small_components(m > mask_threshold, max_sprinkle_area)
    holes_t = torch.from_numpy(holes).to(masks.device).view_as(masks)
    sprinkles_t = torch.from_numpy(sprinkles).to(masks.device).view_as(masks)
    masks = torch.where(holes_t, mask_threshold + 10.0, masks)
    return torch.where(sprinkles_t, mask_threshold - 10.0, masks)


def transform_for(preprocessing: Any) -> ResizeLongestSide | ResizeSquare:
    """The transform that maps images and prompts into the input frame of a family's ``Preprocessing``.

    ``preprocessing`` is a :class:`mobilesam.hub.Preprocessing` (read by attribute, so this module
    does not import the registry).
    """
    resize = getattr(preprocessing, "resize", None)
    if resize == "longest_side":
        return ResizeLongestSide(preprocessing.image_size)
    if resize == "square":
        return ResizeSquare(preprocessing.image_size)
    raise ValueError(f"preprocessing: expected resize 'longest_side' or 'square', got {resize!r}")
