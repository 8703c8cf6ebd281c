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
from .family import ModelFamily, Preprocessing, WeightsEntry

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

# Meta's release folders: SAM 2 (2024-07-28) and SAM 2.1 (2024-09-28).
_RELEASES = {"2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/",
             "2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"}
_ULTRALYTICS_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b", "large": "l"}
# Approximate file sizes in 10**6 bytes (fp32 weights of the whole model, video modules included).
_SIZES_MB = {"tiny": 156.0, "small": 185.0, "base_plus": 324.0, "large": 898.0}


def _meta_weights(model_type: str) -> WeightsEntry:
    """One of Meta's checkpoints (``{"model": state_dict}``), also known by Ultralytics' file name.

    No SHA-256 is given: Meta publishes none for these files, and no independent source that pins
    them could be found when this entry was written. ``sha256=None`` makes the download explicit about
    it (see :func:`mobilesam.weights.download_file`): the file is checked for completeness, its SHA-256
    is logged as unverified, and loading stays ``torch.load(weights_only=True)``, so a wrong file can
    fail to load but cannot run code. Ultralytics' ``sam2*_?.pt`` files hold the same keys (its loader
    reads Meta's layout; their sizes, 78.1 MB for ``sam2_t.pt``, say fp16 copies): their names resolve to
    Meta's original fp32 file here, and an Ultralytics file at hand loads as any file does.
    """
    cfg = SAM2_CONFIGS[model_type]
    size = model_type.split("_hiera_", 1)[1]
    return WeightsEntry(
        name=f"{model_type}.pt",
        model_type=model_type,
        url=f"{_RELEASES[cfg.version]}{model_type}.pt",
        sha256=None,
        size_mb=_SIZES_MB[size],
        description=f"{cfg.description} (Meta AI)",
        aliases=(f"sam{cfg.version}_{_ULTRALYTICS_SUFFIX[size]}.pt", model_type),
    )


SAM2_WEIGHTS = tuple(_meta_weights(name) for name in SAM2_CONFIGS)

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
    weights=SAM2_WEIGHTS,
    size_titles={name: f"SAM {cfg.version}" for name, cfg in SAM2_CONFIGS.items()},
)
