"""The one table of model configurations, and the builder that turns an entry into a ``Sam``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

IMAGE_SIZE = 1024
PROMPT_EMBED_DIM = 256
EMBEDDING_SIZE = 64  # image embedding grid: IMAGE_SIZE / 16
# Input normalisation per RGB channel on the 0-255 scale (ImageNet statistics), as the official Sam.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelConfig:
    """Image-encoder hyper-parameters; prompt encoder and mask decoder are the same for every model."""

    encoder: str  # "tiny_vit" or "vit"
    embed_dims: tuple[int, ...] = ()  # tiny_vit: one per stage; vit: a single width
    depths: tuple[int, ...] = ()
    num_heads: tuple[int, ...] = ()
    window_sizes: tuple[int, ...] = ()  # tiny_vit: one per attention stage; vit: one
    global_attn_indexes: tuple[int, ...] = field(default=())
    description: str = ""


MODEL_CONFIGS: dict[str, ModelConfig] = {
    "vit_t": ModelConfig(
        encoder="tiny_vit",
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
        description="MobileSAM: TinyViT-5M image encoder",
    ),
    "vit_b": ModelConfig(
        encoder="vit",
        embed_dims=(768,),
        depths=(12,),
        num_heads=(12,),
        window_sizes=(14,),
        global_attn_indexes=(2, 5, 8, 11),
        description="SAM ViT-B",
    ),
    "vit_l": ModelConfig(
        encoder="vit",
        embed_dims=(1024,),
        depths=(24,),
        num_heads=(16,),
        window_sizes=(14,),
        global_attn_indexes=(5, 11, 17, 23),
        description="SAM ViT-L",
    ),
    "vit_h": ModelConfig(
        encoder="vit",
        embed_dims=(1280,),
        depths=(32,),
        num_heads=(16,),
        window_sizes=(14,),
        global_attn_indexes=(7, 15, 23, 31),
        description="SAM ViT-H",
    ),
}


def build_image_encoder(cfg: ModelConfig, img_size: int = IMAGE_SIZE) -> nn.Module:
    """The image encoder of ``cfg`` for square inputs of ``img_size`` (SAM's decoder expects 1024)."""
    if cfg.encoder == "tiny_vit":
        return TinyViT(
            img_size=img_size,
            embed_dims=cfg.embed_dims,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            window_sizes=cfg.window_sizes,
            out_chans=PROMPT_EMBED_DIM,
        )
    if cfg.encoder == "vit":
        return ImageEncoderViT(
            img_size=img_size,
            embed_dim=cfg.embed_dims[0],
            depth=cfg.depths[0],
            num_heads=cfg.num_heads[0],
            window_size=cfg.window_sizes[0],
            global_attn_indexes=cfg.global_attn_indexes,
            out_chans=PROMPT_EMBED_DIM,
        )
    raise ValueError(f"unknown encoder kind {cfg.encoder!r}; expected 'tiny_vit' or 'vit'")


def build_model(model_type: str, device: torch.device | str | None = None) -> Sam:
    """A randomly initialised ``Sam`` of ``model_type`` (a key of :data:`MODEL_CONFIGS`), in eval mode."""
    if model_type not in MODEL_CONFIGS:
        raise ValueError(f"model_type: expected one of {sorted(MODEL_CONFIGS)}, got {model_type!r}")
    cfg = MODEL_CONFIGS[model_type]
    with torch.device(device) if device is not None else contextlib.nullcontext():
        sam = Sam(
            image_encoder=build_image_encoder(cfg),
            prompt_encoder=PromptEncoder(
                embed_dim=PROMPT_EMBED_DIM,
                image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
                input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                transformer_dim=PROMPT_EMBED_DIM,
                transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, num_heads=8, mlp_dim=2048),
                num_multimask_outputs=3,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
            pixel_mean=PIXEL_MEAN,
            pixel_std=PIXEL_STD,
        )
    return sam.eval()

