"""Attention for SAM 2: SAM's two-way transformer with SAM 2's MLP names, and the rotary-position
attention of the memory attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import transformer as sam_transformer
from .mlp import MLP
from .position_encoding import axial_rope_angles, rotate_pairs


def two_way_transformer(depth: int, embedding_dim: int, num_heads: int, mlp_dim: int) -> sam_transformer.TwoWayTransformer:
    """SAM's :class:`~mobilesam.modeling.transformer.TwoWayTransformer`, the same computation; only its
    blocks' MLP is SAM 2's :class:`MLP` (weights under ``mlp.layers.<i>`` instead of ``mlp.lin1/2``).

    The blocks stay SAM's classes, so the inference fast paths of SAM's decoder apply unchanged.
    """
    transformer = sam_transformer.TwoWayTransformer(depth, embedding_dim, num_heads, mlp_dim)
    for block in transformer.layers:
        block.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=nn.ReLU)
    return transformer


class RoPEAttention(sam_transformer.Attention):
    """Attention with axial rotary position encoding of queries and keys, for square token grids.

    q (B, Nq, C) with Nq a square number of positions; k, v (B, Nk, kv_in_dim). With ``rope_k_repeat``
    the keys may be several grids in a row (memories of several frames), each rotated like the
    queries; the last ``num_k_exclude_rope`` keys (object pointers) are not rotated.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: tuple[int, int] = (64, 64),
    ) -> None:
        super().__init__(embedding_dim, num_heads, downsample_rate)
        self.kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        if self.kv_in_dim != embedding_dim:
            self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
            self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.dropout_p = dropout
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.feat_sizes = tuple(feat_sizes)
        self._angles: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _cos_sin(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotation angles of an n-position square grid: (n, head_dim / 2) each."""
        key = (n, device)
        if key not in self._angles:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"q: rotary attention expects a square grid of queries, got {n} positions")
            angles = axial_rope_angles(self.internal_dim // self.num_heads, side, side, self.rope_theta).to(device)
            self._angles[key] = (angles.cos(), angles.sin())
        return self._angles[key]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        nq = q.shape[-2]
        cos, sin = self._cos_sin(nq, q.device)
        q = rotate_pairs(q, cos, sin)
        n_rope = k.shape[-2] - num_k_exclude_rope
        if n_rope > 0:
            if n_rope != nq and not self.rope_k_repeat:
                raise ValueError(
                    f"k: {n_rope} rotated keys for {nq} queries; set rope_k_repeat=True for several grids of keys"
                )
            repeat = n_rope // nq
            k_rope = rotate_pairs(k[:, :, :n_rope], cos.repeat(repeat, 1), sin.repeat(repeat, 1))
            k = torch.cat([k_rope, k[:, :, n_rope:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p if self.training else 0.0)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))
