"""Hiera, SAM 2's hierarchical image encoder trunk (https://arxiv.org/abs/2306.00989).

Four stages of transformer blocks on (B, H, W, C) tokens; the first block of stages 2-4 halves the
resolution by max-pooling its queries and doubles the width and the number of heads. Most blocks
attend within windows; a few (``global_att_blocks``) attend over the whole map. The output is one
(B, C, H, W) map per stage, highest resolution first: strides 4, 8, 16, 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import MLP


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWindows, window, window, C), zero-padding H and W up to multiples of
    ``window``; also returns the padded (Hp, Wp)."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nWindows, window, window, C) -> (B, H, W, C)."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.reshape(b, hp // window, wp // window, window, window, -1).transpose(2, 3)
    x = x.reshape(b, hp, wp, -1)
    return x[:, :h, :w] if (hp, wp) != (h, w) else x


def pool_tokens(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """Apply a 2-D pooling to (B, H, W, C) tokens."""
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """A strided convolution: (B, 3, H, W) image -> (B, H / 4, W / 4, C) tokens."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (7, 7),
        stride: tuple[int, int] = (4, 4),
        padding: tuple[int, int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention on (B, H, W, C) tokens; with ``q_pool`` the queries (and so the output)
    are pooled to a lower resolution: (B, H, W, dim) -> (B, H', W', dim_out)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).view(b, h * w, 3, self.num_heads, -1).unbind(2)  # each (B, HW, heads, d)
        if self.q_pool is not None:
            q = pool_tokens(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class MultiScaleBlock(nn.Module):
    """Pre-norm attention (windowed when ``window_size`` > 0) and MLP, each with a residual.

    With ``q_stride`` the block downsamples: its residual branch is projected to ``dim_out`` and
    pooled like the queries.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: tuple[int, int] | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.window_size = window_size
        self.q_stride = q_stride
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=act_layer)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            # The residual is taken after the norm here, projected, and pooled like the queries.
            shortcut = self.proj(x)
            if self.pool is not None:
                shortcut = pool_tokens(shortcut, self.pool)
        window = self.window_size
        if window > 0:
            x, padded = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            h, w = shortcut.shape[1:3]
            if self.q_stride:
                # The pooled queries shrank each window; the grid of windows is the same.
                window //= self.q_stride[0]
                padded = (h + -h % window, w + -w % window)
            x = window_unpartition(x, window, padded, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """(B, 3, S, S) -> a list of four maps (B, C_i, S / 4 / 2**i, S / 4 / 2**i), C_i = embed_dim * 2**i.

    ``stages``: blocks per stage; ``window_spec``: window size per stage (the first block of a stage
    still uses the previous stage's window, as in the official code); ``global_att_blocks``: indices
    of blocks attending globally. The position embedding is a background ``pos_embed`` resized
    (bicubic) to the token grid plus a ``pos_embed_window`` tiled over it.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: tuple[int, ...] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        global_att_blocks: tuple[int, ...] = (12, 16, 20),
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(
                f"window_spec: expected one window size per stage ({len(stages)}), got {list(window_spec)}"
            )
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool: expected 0 to {len(stages) - 1} pooling stages, got {q_pool}")
        self.window_spec = tuple(window_spec)
        self.q_stride = tuple(q_stride)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.global_att_blocks = tuple(global_att_blocks)
        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        self.window_pos_embed_bkg_spatial_size = tuple(window_pos_embed_bkg_spatial_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))

        self.blocks = nn.ModuleList()
        stage = 0
        dim = embed_dim
        for i in range(sum(stages)):
            window = 0 if i in self.global_att_blocks else self.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:  # first block of a new stage
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim,
                    dim_out,
                    num_heads,
                    q_stride=self.q_stride if i in self.q_pool_blocks else None,
                    window_size=window,
                )
            )
            dim = dim_out
        # Widths of the outputs, lowest resolution first (the order the FPN neck lists them in).
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """(1, h, w, C): the background embedding resized to the token grid plus the tiled window one."""
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        win = self.pos_embed_window
        pos = pos + win.tile(1, 1, h // win.shape[-2], w // win.shape[-1])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        return self.forward_tokens(x + self._pos_embed(x.shape[1], x.shape[2]))

    def forward_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The blocks on patch tokens (B, H, W, C) with the position embedding added -> the stage maps.
        (The fixed-size phone export resizes the embedding its own way: Core ML has no bicubic resize.)"""
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
