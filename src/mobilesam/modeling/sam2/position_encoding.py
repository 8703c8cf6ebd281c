"""SAM 2's position encodings: 2-D sine features of a grid (FPN levels, memories) and the axial
rotary encoding (RoPE) of the memory attention. Neither holds weights."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Sine / cosine features of the (row, column) index of every cell: (B, C, H, W) -> (B, C, H, W).

    The first C/2 channels encode the row, the last C/2 the column; within each half, channel j holds
    sin (j even) or cos (j odd) of ``position / temperature ** (2 * (j // 2) / (C / 2))``, with
    positions 1..n scaled to (0, ``scale``] when ``normalize``.
    """

    def __init__(
        self, num_pos_feats: int, temperature: int = 10000, normalize: bool = True, scale: float | None = None
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats: expected an even number of channels, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("scale: only used with normalize=True, got normalize=False and a scale")
        self.num_pos_feats = num_pos_feats // 2  # per axis
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        # Depends only on (H, W, device): one grid per FPN level, computed once.
        self._cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def _axis(self, n: int, device: torch.device) -> torch.Tensor:
        """The features of positions 1..n along one axis: (n, num_pos_feats)."""
        pos = torch.arange(1, n + 1, dtype=torch.float32, device=device)
        if self.normalize:
            pos = pos / (n + 1e-6) * self.scale
        j = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        angles = pos[:, None] / self.temperature ** (2 * (j // 2) / self.num_pos_feats)
        out = torch.empty_like(angles)
        out[:, 0::2] = angles[:, 0::2].sin()
        out[:, 1::2] = angles[:, 1::2].cos()
        return out

    def grid(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """The encoding of an (h, w) grid: (2 * num_pos_feats, h, w)."""
        key = (h, w, device)
        if key not in self._cache:
            rows = self._axis(h, device)[:, None, :].expand(h, w, -1)
            cols = self._axis(w, device)[None, :, :].expand(h, w, -1)
            self._cache[key] = torch.cat([rows, cols], dim=-1).permute(2, 0, 1).contiguous()
        return self._cache[key]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grid(x.shape[-2], x.shape[-1], x.device)[None].expand(x.shape[0], -1, -1, -1)


def axial_rope_angles(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles of the axial RoPE for an (end_y, end_x) grid flattened row by row: (N, dim / 2).

    Channel pairs 0 .. dim/4 - 1 rotate with the column index, the next dim/4 pairs with the row index,
    each at frequencies ``theta ** (-4k / dim)``.
    """
    if dim % 4:
        raise ValueError(f"dim: expected a multiple of 4 (two axes, pairs of channels), got {dim}")
    freqs = 1.0 / theta ** (torch.arange(0, dim, 4, dtype=torch.float32)[: dim // 4] / dim)
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    cols, rows = t % end_x, torch.div(t, end_x, rounding_mode="floor")
    return torch.cat([torch.outer(cols, freqs), torch.outer(rows, freqs)], dim=-1)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs (x[2i], x[2i+1]) of x (..., N, D) by angles given as cos / sin (N, D/2).

    Real arithmetic (no complex tensors), so the graph also traces for ONNX.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.flatten(-2).type_as(x)
