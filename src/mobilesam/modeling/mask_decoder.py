"""SAM's mask decoder: a two-way transformer over prompt tokens and the image embedding, then
hypernetwork heads that turn mask tokens into masks, and an IoU head.

The reference computation (training, export); the inference model of
:func:`mobilesam.backends.torch_fast.optimize_for_inference` computes the same in token layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MaskDecoder(nn.Module):
    """Predicts masks (B, M, 256, 256) and their IoU scores (B, M) from image and prompt embeddings."""

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings (1 or B, C, 64, 64); sparse (B, N, C); dense (B, C, 64, 64).

        Returns masks (B, 3 or 1, 256, 256) and iou predictions (B, 3 or 1).
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks (B, M, 4H, 4W) and scores (B, M).

        image_embeddings (1 or B, C, H, W), image_pe (1, C, H, W), sparse_prompt_embeddings (B, N, C),
        dense_prompt_embeddings (1 or B, C, H, W).
        """
        hs, src, size = self.run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return self.masks_from_tokens(hs, src, size), self.iou_prediction_head(hs[:, 0, :])

    def run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The two-way transformer: output tokens (B, T, C), image tokens (B, H*W, C) and (H, W).

        The IoU head reads output token 0 and ``masks_from_tokens`` the others, so a caller can score
        prompts first and upscale masks only for those it keeps (the upscaling is most of the work).
        """
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        src = self._image_source(image_embeddings, dense_prompt_embeddings, b)
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, _, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        return hs, src, (h, w)

    def masks_from_tokens(self, hs: torch.Tensor, src: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """All ``num_mask_tokens`` masks (B, M, 4H, 4W) from ``run_transformer``'s outputs."""
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        return self._masks(src, hyper_in, *size)

    def _image_source(
        self, image_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """The transformer's image input: embedding + dense prompt embedding, (B, C, H, W).

        One image embedding serves every prompt of the batch: broadcast, not copied B times.
        """
        return (image_embeddings + dense_prompt_embeddings).expand(batch, -1, -1, -1)

    def _masks(self, src: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Image tokens (B, H*W, C) upscaled 4x by ``output_upscaling`` to (B, C', 4H, 4W), then the dot
        product with each mask token's hypernetwork output (B, M, C'): masks (B, M, 4H, 4W)."""
        b, _, c = src.shape
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        _, c2, h2, w2 = upscaled.shape
        return (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
