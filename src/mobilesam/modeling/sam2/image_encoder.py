"""SAM 2's image encoder: the Hiera trunk and an FPN neck that brings every level to ``d_model`` channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .position_encoding import PositionEmbeddingSine


class FpnNeck(nn.Module):
    """A feature pyramid without output convolutions: a 1x1 lateral convolution per trunk level, plus
    the upsampled (``fpn_interp_model``) coarser result on the levels in ``fpn_top_down_levels``.

    ``backbone_channel_list`` lists the trunk widths lowest resolution first; ``convs[j]`` is the
    lateral convolution of that j-th entry. Input and output lists are highest resolution first.
    """

    def __init__(
        self,
        position_encoding: PositionEmbeddingSine,
        d_model: int,
        backbone_channel_list: list[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: list[int] | None = None,
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type: expected 'sum' or 'avg', got {fuse_type!r}")
        self.position_encoding = position_encoding
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size, stride=stride, padding=padding))
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Trunk maps (highest resolution first) -> ``d_model``-channel maps of the same sizes."""
        n = len(self.convs)
        if len(xs) != n:
            raise ValueError(f"xs: expected {n} feature maps (one per trunk stage), got {len(xs)}")
        out: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
        coarser = None
        for i in range(n - 1, -1, -1):  # coarsest level first, so each finer one can add it
            lateral = self.convs[n - 1 - i](xs[i])
            if i in self.fpn_top_down_levels and coarser is not None:
                up = F.interpolate(
                    coarser.float(),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                )
                lateral = lateral + up
                if self.fuse_type == "avg":
                    lateral = lateral / 2
            out[i] = coarser = lateral
        return out

    def position_encodings(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The sine position encoding of each level, in the dtype of the level."""
        return [self.position_encoding(f).to(f.dtype) for f in features]


class ImageEncoder(nn.Module):
    """Trunk + neck; ``scalp`` drops that many of the coarsest levels.

    ``forward`` returns the official dict: ``backbone_fpn`` (levels, highest resolution first),
    ``vision_features`` (the coarsest kept level) and ``vision_pos_enc`` (their position encodings).
    """

    def __init__(self, trunk: nn.Module, neck: FpnNeck, scalp: int = 0) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(
                f"neck: backbone_channel_list {neck.backbone_channel_list} does not match the trunk's "
                f"output widths {trunk.channel_list}"
            )
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def fpn(self, sample: torch.Tensor) -> list[torch.Tensor]:
        """The kept FPN levels of (B, 3, S, S) images, highest resolution first."""
        return self.fpn_of_trunk(self.trunk(sample))

    def fpn_of_trunk(self, trunk_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The kept FPN levels of the trunk's stage maps."""
        features = self.neck(trunk_maps)
        return features[: len(features) - self.scalp]

    def forward(self, sample: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        features = self.fpn(sample)
        return {
            "vision_features": features[-1],
            "vision_pos_enc": self.neck.position_encodings(features),
            "backbone_fpn": features,
        }
