"""SAM's two-way transformer: prompt tokens attend to the image and the image attends back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock, is_exporting


def _softmax_short(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (a few prompt tokens); torch's kernel is slow for those sizes.

    The in-place version is for inference only: autograd (training) and export take torch's own.
    """
    if is_exporting() or torch.is_grad_enabled():
        return x.softmax(dim=-1)
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the inner dimension.

    q (B, Nq, C), k and v (B, Nk, C) -> (B, Nq, C).
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must divide embedding_dim // downsample_rate ({self.internal_dim})"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        nq, nk = q.shape[1], k.shape[1]
        # The decoder's cross attentions pair a handful of prompt tokens with 4096 image tokens. With
        # fewer than internal_dim / num_heads tokens on one side, re-associating the products moves the
        # large projections onto that small side (2-3x fewer operations); the result is the same.
        if nk > nq and nq * self.num_heads < self.internal_dim:
            return self._few_queries(q, k, v)
        if nq > nk and nk * self.num_heads < self.internal_dim:
            return self._few_keys(q, k, v)
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q_h (k W_k,h + b_k,h)^T) (v W_v,h + b_v,h) computed as softmax((q_h W_k,h) k^T + q_h b_k,h)
        ((P_h v) W_v,h + b_v,h): the image tokens are never projected."""
        b, t, _ = q.shape
        h, dh = self.num_heads, self.internal_dim // self.num_heads
        qh = self._heads(self.q_proj(q))  # (B, h, T, dh)
        a = qh @ self.k_proj.weight.view(h, dh, -1)  # (B, h, T, C)
        scores = a.reshape(b, h * t, -1) @ k.transpose(1, 2)  # (B, h*T, N)
        bias = (qh * self.k_proj.bias.view(h, 1, dh)).sum(-1, keepdim=True)  # (B, h, T, 1)
        p = ((scores.view(b, h, t, -1) + bias) * dh**-0.5).softmax(dim=-1)
        pv = (p.reshape(b, h * t, -1) @ v).view(b, h, t, -1)  # (B, h, T, C)
        out = pv @ self.v_proj.weight.view(h, dh, -1).transpose(1, 2) + self.v_proj.bias.view(h, 1, dh)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.internal_dim))

    def _few_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax((q W_q,h + b_q,h) k_h^T) v_h W_o,h summed over heads, computed as
        softmax(q (W_q,h k_h^T) + b_q,h k_h^T) (v_h W_o,h): the image tokens are never projected."""
        b, n, _ = q.shape
        t = k.shape[1]
        h, dh = self.num_heads, self.internal_dim // self.num_heads
        kh = self._heads(self.k_proj(k))  # (B, h, T, dh)
        vh = self._heads(self.v_proj(v))
        g = self.q_proj.weight.view(h, dh, -1).transpose(1, 2) @ kh.transpose(2, 3)  # (B, h, C, T)
        g = g.permute(0, 2, 1, 3).reshape(b, -1, h * t)  # (B, C, h*T)
        bias = (kh * self.q_proj.bias.view(h, 1, dh)).sum(-1).reshape(b, 1, h * t)
        p = _softmax_short(((q @ g + bias) * dh**-0.5).view(b, n, h, t))
        u = vh @ self.out_proj.weight.view(-1, h, dh).permute(1, 2, 0)  # (B, h, T, C_out)
        return p.view(b, n, h * t) @ u.reshape(b, h * t, -1) + self.out_proj.bias


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, token-to-image, MLP, image-to-token; each followed by LayerNorm."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """image_embedding (B, C, H, W), image_pe (B, C, H, W), point_embedding (B, N, C)
    -> processed tokens (B, N, C) and image (B, H*W, C)."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                activation,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn_out = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn_out), keys
