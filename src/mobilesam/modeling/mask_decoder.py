"""SAM's mask decoder: a two-way transformer over prompt tokens and the image embedding, then
hypernetwork heads that turn mask tokens into masks, and an IoU head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, is_exporting


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
        """All ``num_mask_tokens`` masks (B, M, 256, 256) and scores (B, M)."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(b, -1, -1), sparse_prompt_embeddings], dim=1)

        # Token layout (B, H*W, C) throughout: the image embedding (shared by all prompts) and the dense
        # prompt embedding are summed straight into a channels-last buffer, so the transformer's
        # flatten/transpose is a free view and no (B, C, H, W) copy is made on the way out.
        _, c, h, w = dense_prompt_embeddings.shape
        if is_exporting() or torch.is_grad_enabled():  # out= does not support autograd
            src = image_embeddings + dense_prompt_embeddings
        else:
            # In the prompt tokens' dtype: an embedding computed under autocast (bf16) decodes in fp32.
            src = torch.empty((b, h, w, c), dtype=tokens.dtype, device=tokens.device).permute(0, 3, 1, 2)
            torch.add(image_embeddings.expand(b, -1, -1, -1), dense_prompt_embeddings.expand(b, -1, -1, -1), out=src)
        src = src.expand(b, -1, -1, -1)
        pos_src = image_pe.expand(b, -1, -1, -1)

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        return self._masks(src, hyper_in, h, w), self.iou_prediction_head(iou_token_out)

    def _masks(self, src: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Upscale the image tokens (B, H*W, C) 4x and take the dot product with each mask token's
        hypernetwork output (B, M, C'): masks (B, M, 4H, 4W).

        ``output_upscaling`` is two ConvTranspose2d(kernel 2, stride 2), which never overlap: each
        input pixel maps to its own 2x2 block, so each is a matrix product in token layout, and the
        LayerNorm2d over channels is a LayerNorm over the last dimension. The pixels are put back in
        raster order only for the M masks, not for the C' channels.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        b = src.shape[0]
        x = src @ up1.weight.permute(0, 2, 3, 1).flatten(1)  # (B, H*W, 2*2*C1): (kh, kw, c1)
        c1 = up1.weight.shape[1]
        x = x.view(b, -1, c1) + up1.bias
        x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        c2 = up2.weight.shape[1]
        x = x @ up2.weight.permute(0, 2, 3, 1).flatten(1)  # (B, H*W*4, 2*2*C2)
        x = act2(x.view(b, -1, c2) + up2.bias)  # (B, H*W*16, C2) in (h, w, kh, kw, kh2, kw2) order
        m = hyper_in.shape[1]
        masks = (x @ hyper_in.transpose(1, 2)).view(b, h, w, 2, 2, 2, 2, m)
        # Output row 4h + 2kh + kh2, column 4w + 2kw + kw2.
        return masks.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, m, 4 * h, 4 * w)
