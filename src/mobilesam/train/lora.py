"""Low-rank adapters (LoRA, arXiv 2106.09685) on the image encoder's attention and MLP layers.

Each adapted ``nn.Linear`` computes ``W x + b + (alpha / r) B A x`` with A (r, in) random and B (out, r)
zero, so training starts from the original model; only A and B are trained. The layer keeps its
``weight`` and ``bias`` under their own names (``...qkv.weight``), so the state_dict holds the original
keys plus ``lora_a`` / ``lora_b``, and :func:`merged_state_dict` folds the adapters back into the
weights: the official flat checkpoint, which any SAM code loads.

Adapted layers: attention ``qkv`` and ``proj`` and the MLP's two layers (TinyViT ``fc1``/``fc2``, ViT
``lin1``/``lin2``) of every transformer block of the image encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ADAPTED = ("qkv", "proj", "fc1", "fc2", "lin1", "lin2")
LORA_KEYS = ("lora_a", "lora_b")


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a trainable low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(base.weight)
            if base.bias is not None:
                self.bias.copy_(base.bias)
        self.weight.requires_grad_(False)  # the original weights stay; only A and B train
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear's own weights, and LoRA's code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale

    def merged_weight(self) -> torch.Tensor:
        return self.weight + (self.lora_b @ self.lora_a) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale:g}"


def add_lora(encoder: nn.Module, rank: int, alpha: float | None = None) -> list[str]:
    """Replace the adapted linear layers of ``encoder`` (in place) by :class:`LoRALinear`, whose A and B
    alone are trainable: the rest of the encoder is frozen. Returns the names of the adapted layers.
    ``alpha`` None: equal to ``rank``."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora_rank: expected a positive integer, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    encoder.requires_grad_(False)
    names = []
    for parent_name, parent in list(encoder.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in ADAPTED and type(child) is nn.Linear:
                setattr(parent, child_name, LoRALinear(child, rank, alpha))
                names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not names:
        raise ValueError("encoder: no attention or MLP linear layer to adapt (qkv, proj, fc1/fc2, lin1/lin2)")
    return names


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every :class:`LoRALinear` folded into its weight and the adapter keys
    left out: the keys and shapes of the model without adapters."""
    sd = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            sd[f"{name}.weight"] = module.merged_weight().detach().clone()
            for key in LORA_KEYS:
                sd.pop(f"{name}.{key}", None)
    return sd


__all__ = ["ADAPTED", "LoRALinear", "add_lora", "merged_state_dict"]
