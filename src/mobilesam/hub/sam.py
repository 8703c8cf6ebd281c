"""The SAM family: MobileSAM (TinyViT encoder, ``vit_t``) and Meta's SAM ViT-B/L/H.

The only place that knows SAM's parameter names: detection reads the image encoder's stem and
stage widths, which is enough to tell the sizes apart and also works on encoder-only state_dicts.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..modeling.configs import (
    EMBEDDING_SIZE,
    IMAGE_SIZE,
    MODEL_CONFIGS,
    PIXEL_MEAN,
    PIXEL_STD,
    PROMPT_EMBED_DIM,
    build_model,
)
from ..modeling.sam import Sam
from .family import ModelFamily, Preprocessing, WeightsEntry

_ENCODER = "image_encoder."
_TINY_VIT_STEM = _ENCODER + "patch_embed.seq.0.c.weight"  # TinyViT's first convolution
_TINY_VIT_STAGES = _ENCODER + "layers."
_VIT_POS_EMBED = _ENCODER + "pos_embed"  # ViT's absolute positional embedding (1, H, W, width)
_VIT_BLOCKS = _ENCODER + "blocks."
_SAM_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


def _indices_under(state_dict: Mapping[str, torch.Tensor], prefix: str) -> set[str]:
    """The block indices under ``prefix`` (``image_encoder.blocks.<i>.…``)."""
    return {k[len(prefix):].split(".", 1)[0] for k in state_dict if k.startswith(prefix)}


def _tiny_vit_stage_width(state_dict: Mapping[str, torch.Tensor], stage: int) -> int:
    # Stage 0 is convolutional (its width is conv1's input channels); later stages have attention.
    if stage == 0:
        return state_dict[f"{_TINY_VIT_STAGES}0.blocks.0.conv1.c.weight"].shape[1]
    return state_dict[f"{_TINY_VIT_STAGES}{stage}.blocks.0.attn.norm.weight"].shape[0]


def _tiny_vit_size(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The size whose TinyViT stage widths the state_dict holds."""
    stages = sorted({int(i) for i in _indices_under(state_dict, _TINY_VIT_STAGES) if i.isdigit()})
    try:
        dims = tuple(_tiny_vit_stage_width(state_dict, i) for i in stages)
    except (KeyError, IndexError):
        return None
    return next((n for n, c in MODEL_CONFIGS.items() if c.encoder == "tiny_vit" and c.embed_dims == dims), None)


def _vit_size(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The size whose ViT width and depth the state_dict holds."""
    shape = state_dict[_VIT_POS_EMBED].shape
    width = shape[-1] if len(shape) else None
    depth = len(_indices_under(state_dict, _VIT_BLOCKS))
    return next(
        (n for n, c in MODEL_CONFIGS.items() if c.encoder == "vit" and c.embed_dims[0] == width and c.depths[0] == depth),
        None,
    )


def detect_sam_size(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The key of :data:`MODEL_CONFIGS` whose image encoder the state_dict holds, or None."""
    if _TINY_VIT_STEM in state_dict:
        return _tiny_vit_size(state_dict)
    if _VIT_POS_EMBED in state_dict:
        return _vit_size(state_dict)
    return None


def _meta_weights(size: str, file_name: str, sha256: str, size_mb: float, ultralytics_name: str) -> WeightsEntry:
    """One of Meta's SAM checkpoints, also known by its size and by the Ultralytics file name."""
    return WeightsEntry(
        name=file_name,
        model_type=size,
        url=_SAM_BASE_URL + file_name,
        sha256=sha256,
        size_mb=size_mb,
        description=f"Segment Anything, ViT-{size[-1].upper()} image encoder (Meta AI)",
        aliases=(ultralytics_name, size),
    )


SAM_WEIGHTS = (
    WeightsEntry(
        name="mobile_sam.pt",
        model_type="vit_t",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size_mb=40.7,  # 38.8 MiB
        description="MobileSAM: TinyViT-5M image encoder distilled from SAM ViT-H",
        aliases=("mobile_sam", "vit_t"),
    ),
    _meta_weights("vit_b", "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375.0, "sam_b.pt"),
    _meta_weights("vit_l", "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1250.0, "sam_l.pt"),
    _meta_weights("vit_h", "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2560.0, "sam_h.pt"),
)

SAM_FAMILY = ModelFamily(
    name="sam",
    title="SAM / MobileSAM",
    model_class=Sam,
    sizes=MODEL_CONFIGS,
    build=build_model,
    detect=detect_sam_size,
    preprocessing=Preprocessing(
        resize="longest_side", image_size=IMAGE_SIZE, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD
    ),
    feature_layout={"image_embeddings": (PROMPT_EMBED_DIM, EMBEDDING_SIZE, EMBEDDING_SIZE)},
    weights=SAM_WEIGHTS,
    size_titles={"vit_t": "MobileSAM", "vit_b": "SAM", "vit_l": "SAM", "vit_h": "SAM"},
)
