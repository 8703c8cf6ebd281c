"""SAM at another encoder input size (Ultralytics' ``imgsz``): a view of the model that encodes
``imgsz`` x ``imgsz`` inputs, sharing every weight with the original.

SAM is trained at 1024 x 1024 (embedding 64 x 64). At another size S (a multiple of 16) the image
encoder runs on an S x S input and gives an (S/16) x (S/16) embedding, and the prompt encoder's
frames follow, as Ultralytics' ``SAMModel.set_imgsz`` does:

- TinyViT (MobileSAM) has no absolute position embedding: its stage resolutions become S/4, S/8,
  S/16, S/16 (window attention pads as at 1024);
- ViT (SAM) interpolates its absolute position embedding to the new patch grid (bicubic; Ultralytics
  uses nearest) and its relative position tables, as the reference attention already does for any grid;
- the prompt encoder's input frame is S x S, its embedding grid S/16 and its mask input 4 x S/16.

Accuracy is the model's, not guaranteed: fewer pixels see less detail. ``benchmarks/imgsz.py``
measures the mask IoU against 1024 (the numbers are in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .modeling import Sam
from .modeling.image_encoder import ImageEncoderViT
from .modeling.tiny_vit import TinyViT

PATCH = 16  # every SAM image encoder's output stride
STRIDE = 32  # sizes are rounded up to this multiple, as Ultralytics' check_imgsz does for SAM


def check_imgsz(imgsz: Any) -> int:
    """``imgsz`` (an int or a square ``[S, S]``) as one int, rounded up to a multiple of 32 as Ultralytics does;
    a ValueError naming ``imgsz`` otherwise."""
    value = imgsz
    if isinstance(imgsz, (list, tuple)):
        if len(imgsz) == 1:
            value = imgsz[0]
        elif len(imgsz) == 2 and imgsz[0] == imgsz[1]:
            value = imgsz[0]
        else:
            raise ValueError(f"imgsz: SAM takes a square input size, an int or [S, S], got {list(imgsz)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 64:
        raise ValueError(f"imgsz: expected the encoder input size in pixels, an int >= 64 (e.g. 1024), got {imgsz!r}")
    if value > 4096:
        raise ValueError(f"imgsz: {value} is larger than 4096; the encoder's memory grows with its square")
    return int(math.ceil(value / STRIDE) * STRIDE)


def resized_model(sam: Sam, imgsz: int) -> Sam:
    """A ``Sam`` computing ``sam`` at input size ``imgsz`` (see the module doc); ``sam`` itself is unchanged.

    The result shares parameters and buffers with ``sam`` (only ViT's interpolated position embedding is
    new), so it costs no second copy of the weights.
    """
    imgsz = check_imgsz(imgsz)
    encoder = sam.image_encoder
    if not isinstance(encoder, (TinyViT, ImageEncoderViT)):
        raise ValueError(
            f"imgsz: another input size is supported for the MobileSAM (TinyViT) and SAM (ViT) image encoders, "
            f"not {type(encoder).__name__}; leave imgsz out"
        )
    # Deep-copy the module tree, but not the tensors: every parameter and buffer stays shared.
    memo: dict[int, Any] = {id(t): t for t in (*sam.parameters(), *sam.buffers())}
    view = copy.deepcopy(sam, memo)
    if isinstance(view.image_encoder, TinyViT):
        _resize_tiny_vit(view.image_encoder, imgsz)
    else:
        _resize_vit(view.image_encoder, imgsz)
    grid = imgsz // PATCH
    pe = view.prompt_encoder
    pe.input_image_size = (imgsz, imgsz)
    pe.image_embedding_size = (grid, grid)
    pe.mask_input_size = (4 * grid, 4 * grid)
    return view


def _resize_tiny_vit(encoder: TinyViT, imgsz: int) -> None:
    res = imgsz // 4
    n = len(encoder.layers)
    for i, layer in enumerate(encoder.layers):
        stage = res // (2 ** (i - 1 if i == n - 1 else i))
        for block in getattr(layer, "blocks", []):
            if hasattr(block, "input_resolution"):
                block.input_resolution = (stage, stage)
        if getattr(layer, "downsample", None) is not None:
            layer.downsample.input_resolution = (stage, stage)
    encoder.out_resolution = res // (2 ** (n - 2))
    encoder.img_size = imgsz


def _resize_vit(encoder: ImageEncoderViT, imgsz: int) -> None:
    grid = imgsz // PATCH
    if encoder.pos_embed is not None and tuple(encoder.pos_embed.shape[1:3]) != (grid, grid):
        with torch.no_grad():
            pos = encoder.pos_embed.permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False)
        encoder.pos_embed = nn.Parameter(pos.permute(0, 2, 3, 1).contiguous(), requires_grad=False)
    encoder.img_size = imgsz


__all__ = ["check_imgsz", "resized_model"]
