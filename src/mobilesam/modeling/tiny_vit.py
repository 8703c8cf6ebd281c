"""TinyViT image encoder in MobileSAM's configuration.

Parameter names follow the official ``mobile_sam`` TinyViT so that ``mobile_sam.pt`` loads with
``strict=True``. Unlike the official module, attention biases are never cached: weights loaded at any
time (before or after ``eval()``) take effect. This is the reference computation, used for training
and export; the CPU fast paths (folded BatchNorm, fused convolutions) are applied on top of it by
:func:`mobilesam.backends.torch_fast.optimize_for_inference`.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


class Conv2d_BN(nn.Sequential):  # noqa: N801 - the official name, kept for checkpoint keys
    """Convolution without bias followed by BatchNorm: (B, C_in, H, W) -> (B, C_out, H', W').

    Children are named ``c`` and ``bn``, as in the official code. (The inference model of
    :func:`mobilesam.backends.torch_fast.optimize_for_inference` folds the BatchNorm into the convolution.)
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))


class PatchEmbed(nn.Module):
    """Two stride-2 convolutions: (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            Conv2d_BN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last from here on (the values are the same in any layout): oneDNN's convolutions
        # (depthwise above all) run several times faster in NHWC, in training as at inference, and the
        # token layout (B, H*W, C) of the later stages is then a free view.
        return self.seq(x.contiguous(memory_format=torch.channels_last))


class MBConv(nn.Module):
    """Inverted residual block (expand, depthwise, project): (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2d_BN(chans, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, chans, 1)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsampling between stages: (B, C, H, W) or (B, H*W, C) -> (B, H'*W', C_out).

    MobileSAM keeps the last stage at 64x64, so the depthwise stride is 1 when ``out_dim`` is 320
    (and 448/576 for the larger TinyViTs), as in the official code.
    """

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = Conv2d_BN(dim, out_dim, 1)
        self.act = nn.GELU()
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = _tokens_to_nchw(x, h, w)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return _nchw_to_tokens(self.conv3(x))


class ConvLayer(nn.Module):
    """First stage: MBConv blocks, then optional downsampling."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        out_dim: int,
        downsample: bool,
        conv_expand_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, conv_expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(input_resolution, dim, out_dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class Mlp(nn.Module):
    """Pre-norm MLP: (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def _tokens_to_nchw(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) as a channels-last view (no copy)."""
    b, _, c = x.shape
    return x.view(b, h, w, c).permute(0, 3, 1, 2)


def _nchw_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a view when ``x`` is channels-last."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def _relative_offset_index(resolution: tuple[int, int]) -> tuple[int, torch.Tensor]:
    """Index of the bias shared by every pair of window positions with the same |dy|, |dx|.

    Offsets are numbered in the order the official code first meets them, so checkpoints line up.
    """
    points = list(itertools.product(range(resolution[0]), range(resolution[1])))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    return len(offsets), torch.tensor(idxs, dtype=torch.long).view(n, n)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with learned relative-position biases: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * key_dim * num_heads)
        self.proj = nn.Linear(key_dim * num_heads, dim)
        num_offsets, idxs = _relative_offset_index(resolution)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets))
        self.register_buffer("attention_bias_idxs", idxs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.key_dim).transpose(1, 2)
        q, k, v = qkv.split(self.key_dim, dim=-1)
        # Indexed on every call (not cached at eval()) so newly loaded weights always take effect.
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        # A 4-D mask lets CPU SDPA use its fused kernel; a 3-D one falls back to the slow math path.
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class TinyViTBlock(nn.Module):
    """Window attention, a depthwise 3x3 convolution and an MLP: (B, H*W, C) -> (B, H*W, C)."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, (window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        ws = self.window_size
        b, _, c = x.shape
        if h == ws and w == ws:
            return self.attn(x)
        x = x.view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        return x[:, :h, :w].reshape(b, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        x = x + self._window_attention(x)
        x = _nchw_to_tokens(self.local_conv(_tokens_to_nchw(x, h, w)))
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """A stage of TinyViT blocks, then optional downsampling."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        out_dim: int,
        downsample: bool,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, input_resolution, num_heads, window_size, mlp_ratio, local_conv_size)
            for _ in range(depth)
        )
        self.downsample = PatchMerging(input_resolution, dim, out_dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT backbone with SAM's neck: (B, 3, 1024, 1024) -> (B, 256, 64, 64).

    ``norm_head`` and ``head`` (ImageNet classifier) are unused but kept: the checkpoint carries them.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        res = img_size // 4
        self.layers = nn.ModuleList()
        num_layers = len(depths)
        for i in range(num_layers):
            # Stage resolutions halve at each merge, except the last merge (stride 1) in MobileSAM.
            stage_res = res // (2 ** (i - 1 if i == num_layers - 1 else i))
            common = dict(
                dim=embed_dims[i],
                input_resolution=(stage_res, stage_res),
                depth=depths[i],
                out_dim=embed_dims[min(i + 1, num_layers - 1)],
                downsample=i < num_layers - 1,
            )
            if i == 0:
                layer: nn.Module = ConvLayer(conv_expand_ratio=mbconv_expand_ratio, **common)
            else:
                layer = BasicLayer(
                    num_heads=num_heads[i],
                    window_size=window_sizes[i],
                    mlp_ratio=mlp_ratio,
                    local_conv_size=local_conv_size,
                    **common,
                )
            self.layers.append(layer)
        self.out_resolution = res // (2 ** (num_layers - 2))
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        r = self.out_resolution
        return self.neck(_tokens_to_nchw(x, r, r)).contiguous()
