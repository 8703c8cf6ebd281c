"""The SAM 2 family: SAM 2 and SAM 2.1 with Hiera-T / S / B+ / L image encoders (Meta AI).

The only place that knows SAM 2's parameter names: detection reads the trunk's width (from its
background position embedding) and depth (its number of blocks), which tells the four sizes apart,
and SAM 2.1's two additions (``no_obj_embed_spatial``, ``obj_ptr_tpos_proj``), which tell the release.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..modeling.sam2 import FEATURE_NAMES, SAM2_CONFIGS, Sam2, build_sam2
from ..modeling.sam2.configs import BACKBONE_STRIDE, D_MODEL, IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD
from .family import ModelFamily, Preprocessing

_TRUNK = "image_encoder.trunk."
_POS_EMBED = _TRUNK + "pos_embed"  # (1, embed_dim, h, w)
_BLOCKS = _TRUNK + "blocks."
# Present in SAM 2.1 checkpoints only (SAM 2 has neither weight).
_SAM2_1_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")


def detect_sam2_size(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The key of :data:`SAM2_CONFIGS` whose architecture the state_dict holds, or None."""
    pos = state_dict.get(_POS_EMBED)
    if pos is None or getattr(pos, "ndim", 0) != 4:
        return None
    width = pos.shape[1]
    depth = len({k[len(_BLOCKS):].split(".", 1)[0] for k in state_dict if k.startswith(_BLOCKS)})
    version = "2.1" if any(k in state_dict for k in _SAM2_1_KEYS) else "2"
    return next(
        (
            name
            for name, cfg in SAM2_CONFIGS.items()
            if cfg.version == version and cfg.embed_dim == width and sum(cfg.stages) == depth
        ),
        None,
    )


_EMBED = IMAGE_SIZE // BACKBONE_STRIDE

SAM2_FAMILY = ModelFamily(
    name="sam2",
    title="SAM 2",
    model_class=Sam2,
    sizes=SAM2_CONFIGS,
    build=build_sam2,
    detect=detect_sam2_size,
    preprocessing=Preprocessing(resize="square", image_size=IMAGE_SIZE, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD),
    feature_layout=dict(
        zip(
            FEATURE_NAMES,
            ((D_MODEL, _EMBED, _EMBED), (D_MODEL // 8, 4 * _EMBED, 4 * _EMBED), (D_MODEL // 4, 2 * _EMBED, 2 * _EMBED)),
        )
    ),
    size_titles={name: f"SAM {cfg.version}" for name, cfg in SAM2_CONFIGS.items()},
)
