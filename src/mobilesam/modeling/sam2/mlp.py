"""SAM 2's MLP: SAM's (``layers.<i>``) with a choice of activation between the layers."""

from __future__ import annotations

import torch
from torch import nn

from .. import mask_decoder


class MLP(mask_decoder.MLP):
    """``num_layers`` linear layers with ``activation`` between them; optional sigmoid on the output.

    The activation is a module holding no weights, so the state_dict is SAM's ``layers.<i>``; SAM 2
    uses GELU inside the Hiera blocks and ReLU everywhere else.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__(input_dim, hidden_dim, output_dim, num_layers, sigmoid_output)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x
