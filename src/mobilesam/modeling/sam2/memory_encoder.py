"""SAM 2's memory encoder (video): a predicted mask is downsampled and fused with the frame's
features into a compact memory (``out_dim`` channels) for later frames to attend to."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..common import LayerNorm2d
from .position_encoding import PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """(B, 1, H, W) mask -> (B, embed_dim, H / total_stride, W / total_stride): strided convolutions,
    each multiplying the channels by ``stride**2``, with LayerNorm2d + activation, then a 1x1 projection.
    Weights under ``encoder.<i>`` (conv, norm, activation per step, then the projection)."""

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 4,
        stride: int = 4,
        padding: int = 0,
        total_stride: int = 16,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        steps = round(math.log(total_stride, stride))
        if stride**steps != total_stride:
            raise ValueError(f"total_stride: expected a power of stride ({stride}), got {total_stride}")
        self.encoder = nn.Sequential()
        channels = 1
        for _ in range(steps):
            out = channels * stride**2
            self.encoder.append(nn.Conv2d(channels, out, kernel_size=kernel_size, stride=stride, padding=padding))
            self.encoder.append(LayerNorm2d(out))
            self.encoder.append(activation())
            channels = out
        self.encoder.append(nn.Conv2d(channels, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """A ConvNeXt block on (B, C, H, W): depthwise convolution, LayerNorm, two pointwise linear layers
    with GELU between, a learned per-channel scale ``gamma``, and the residual."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(layer_scale_init_value * torch.ones(dim)) if layer_scale_init_value > 0 else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """An optional 1x1 input projection, then ``num_layers`` copies of ``layer``."""

    def __init__(self, layer: nn.Module, num_layers: int, dim: int | None = None, input_projection: bool = False) -> None:
        super().__init__()
        if input_projection and dim is None:
            raise ValueError("dim: expected the channel count with input_projection=True, got None")
        self.proj = nn.Conv2d(dim, dim, kernel_size=1) if input_projection else nn.Identity()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """pix_feat (B, in_dim, H, W) and mask logits (B, 1, 16H, 16W) -> memory (B, out_dim, H, W) and its
    position encoding, as the official dict ``{"vision_features", "vision_pos_enc": [pos]}``."""

    def __init__(
        self,
        out_dim: int,
        mask_downsampler: MaskDownSampler,
        fuser: Fuser,
        position_encoding: PositionEmbeddingSine,
        in_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser
        self.position_encoding = position_encoding
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        # Probabilities rather than logits: closer to the binary masks the model was trained with.
        masks = self.mask_downsampler(masks if skip_mask_sigmoid else torch.sigmoid(masks))
        x = self.pix_feat_proj(pix_feat.to(masks.device)) + masks
        x = self.out_proj(self.fuser(x))
        return {"vision_features": x, "vision_pos_enc": [self.position_encoding(x).to(x.dtype)]}
