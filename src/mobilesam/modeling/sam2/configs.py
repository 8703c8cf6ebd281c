"""The SAM 2 and SAM 2.1 configurations (Meta's ``configs/sam2*/sam2*_hiera_{t,s,b+,l}.yaml``), and
the builder that turns one into a :class:`Sam2`.

Only the Hiera trunk differs between sizes; SAM 2.1 adds two video weights (``no_obj_embed_spatial``,
``obj_ptr_tpos_proj``). Everything else is the same for all eight and written out in :func:`build_sam2`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .hiera import Hiera
from .image_encoder import FpnNeck, ImageEncoder
from .mask_decoder import Sam2MaskDecoder
from .memory_attention import MemoryAttention, MemoryAttentionLayer
from .memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from .position_encoding import PositionEmbeddingSine
from .prompt_encoder import Sam2PromptEncoder
from .sam2_base import Sam2
from .transformer import RoPEAttention, two_way_transformer

IMAGE_SIZE = 1024
BACKBONE_STRIDE = 16
D_MODEL = 256  # FPN, prompt and decoder width
MEM_DIM = 64  # memory channels
# ImageNet statistics on the 0-255 scale (SAM2Transforms normalises 0-1 images by 0.485/0.229, ...).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Sam2Config:
    """One SAM 2 size: the Hiera trunk hyper-parameters and the SAM 2 release (``"2"`` or ``"2.1"``)."""

    version: str
    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_pos_embed_bkg_spatial_size: tuple[int, int]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    description: str = ""

    @property
    def backbone_channel_list(self) -> list[int]:
        """Trunk output widths, lowest resolution first (each stage doubles the width)."""
        return [self.embed_dim * 2**i for i in range(len(self.stages))][::-1]

    @property
    def is_2_1(self) -> bool:
        return self.version == "2.1"


_TRUNKS = {
    "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                 window_pos_embed_bkg_spatial_size=(7, 7)),
    "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                  window_pos_embed_bkg_spatial_size=(7, 7)),
    "base_plus": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                      window_pos_embed_bkg_spatial_size=(14, 14)),
    "large": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                  window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
}
_TITLES = {"tiny": "Hiera-T", "small": "Hiera-S", "base_plus": "Hiera-B+", "large": "Hiera-L"}

# Keys are the stems of Meta's checkpoint files (sam2_hiera_tiny.pt, sam2.1_hiera_large.pt, ...).
SAM2_CONFIGS: dict[str, Sam2Config] = {
    f"sam{version}_hiera_{size}": Sam2Config(
        version=version, description=f"SAM {version}, {_TITLES[size]} image encoder", **trunk
    )
    for version in ("2", "2.1")
    for size, trunk in _TRUNKS.items()
}


def _memory_attention() -> MemoryAttention:
    def rope(**extra: object) -> RoPEAttention:
        return RoPEAttention(D_MODEL, num_heads=1, downsample_rate=1, dropout=0.1, rope_theta=10000.0,
                             feat_sizes=(64, 64), **extra)

    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=rope(rope_k_repeat=True, kv_in_dim=MEM_DIM),
        d_model=D_MODEL,
        dim_feedforward=2048,
        dropout=0.1,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=rope(),
    )
    return MemoryAttention(d_model=D_MODEL, pos_enc_at_input=True, layer=layer, num_layers=4)


def _memory_encoder() -> MemoryEncoder:
    return MemoryEncoder(
        out_dim=MEM_DIM,
        mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(dim=D_MODEL, kernel_size=7, padding=3, layer_scale_init_value=1e-6), num_layers=2),
        position_encoding=PositionEmbeddingSine(MEM_DIM),
    )


def build_sam2(model_type: str, device: torch.device | str | None = None) -> Sam2:
    """A randomly initialised :class:`Sam2` of ``model_type`` (a key of :data:`SAM2_CONFIGS`), in eval
    mode, as the official ``build_sam2`` (with its default post-processing: dynamic multimask)."""
    if model_type not in SAM2_CONFIGS:
        raise ValueError(f"model_type: expected one of {sorted(SAM2_CONFIGS)}, got {model_type!r}")
    cfg = SAM2_CONFIGS[model_type]
    embedding = IMAGE_SIZE // BACKBONE_STRIDE
    with torch.device(device) if device is not None else contextlib.nullcontext():
        trunk = Hiera(
            embed_dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
            stages=cfg.stages,
            global_att_blocks=cfg.global_att_blocks,
            window_pos_embed_bkg_spatial_size=cfg.window_pos_embed_bkg_spatial_size,
            window_spec=cfg.window_spec,
        )
        neck = FpnNeck(
            position_encoding=PositionEmbeddingSine(D_MODEL),
            d_model=D_MODEL,
            backbone_channel_list=cfg.backbone_channel_list,
            fpn_top_down_levels=[2, 3],  # levels 0 and 1 are the trunk's own (lateral) features
            fpn_interp_model="nearest",
        )
        model = Sam2(
            image_encoder=ImageEncoder(trunk, neck, scalp=1),
            memory_attention=_memory_attention(),
            memory_encoder=_memory_encoder(),
            sam_prompt_encoder=Sam2PromptEncoder(
                embed_dim=D_MODEL,
                image_embedding_size=(embedding, embedding),
                input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
                mask_in_chans=16,
            ),
            sam_mask_decoder=Sam2MaskDecoder(
                transformer_dim=D_MODEL,
                transformer=two_way_transformer(depth=2, embedding_dim=D_MODEL, num_heads=8, mlp_dim=2048),
                num_multimask_outputs=3,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
                use_high_res_features=True,
                iou_prediction_use_sigmoid=True,
                dynamic_multimask_via_stability=True,
                dynamic_multimask_stability_delta=0.05,
                dynamic_multimask_stability_thresh=0.98,
                pred_obj_scores=True,
                pred_obj_scores_mlp=True,
                use_multimask_token_for_obj_ptr=True,
            ),
            num_maskmem=7,
            image_size=IMAGE_SIZE,
            backbone_stride=BACKBONE_STRIDE,
            directly_add_no_mem_embed=True,
            no_obj_embed_spatial=cfg.is_2_1,
            proj_tpos_enc_in_obj_ptrs=cfg.is_2_1,
        )
    return model.eval()
