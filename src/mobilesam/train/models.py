"""Building the image encoders of distillation: the student (trained) and the teacher (frozen)."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..build import build_sam, detect_model_type
from ..modeling import MODEL_CONFIGS, Sam, build_model
from ..modeling.configs import IMAGE_SIZE, build_image_encoder
from ..weights import CheckpointError, load_state_dict

ENCODER_PREFIX = "image_encoder."
PATCH = 16  # input pixels per embedding cell: the embedding grid is img_size / 16


def check_img_size(img_size: int) -> None:
    """``img_size`` must be a positive multiple of 64 (TinyViT downsamples by 16, then windows of 4)."""
    if not isinstance(img_size, int) or img_size < 64 or img_size % 64:
        raise ValueError(f"img_size: expected a multiple of 64 (1024 for real training), got {img_size!r}")


def build_encoder(model_type: str, img_size: int = IMAGE_SIZE) -> nn.Module:
    """A random image encoder of ``model_type`` for square inputs of ``img_size``: (B, 3, S, S) -> (B, 256, S/16, S/16).

    Sizes other than 1024 are for quick experiments and tests only: SAM's prompt encoder and mask
    decoder expect a 64x64 embedding.
    """
    if model_type not in MODEL_CONFIGS:
        raise ValueError(f"model_type: expected one of {sorted(MODEL_CONFIGS)}, got {model_type!r}")
    check_img_size(img_size)
    return build_image_encoder(MODEL_CONFIGS[model_type], img_size)


def encoder_weights(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The ``image_encoder.*`` entries of a full or encoder-only state_dict, prefix removed."""
    enc = {k[len(ENCODER_PREFIX):]: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}
    if not enc:
        sample = ", ".join(list(state_dict)[:5])
        raise CheckpointError(f"checkpoint: '{source}' holds no image_encoder.* weights (first keys: {sample})")
    return enc


def encoder_model_type(state_dict: dict[str, torch.Tensor], source: str) -> str:
    """The model type of the image encoder held by a (full or encoder-only) state_dict."""
    model_type = detect_model_type(state_dict)
    if model_type is None:
        raise CheckpointError(
            f"checkpoint: '{source}' holds no known image encoder; known model types: {', '.join(MODEL_CONFIGS)}"
        )
    return model_type


def load_encoder_weights(encoder: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load encoder weights (no prefix), turning mismatches into a readable CheckpointError."""
    own = encoder.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", wrong))
            if keys
        )
        raise CheckpointError(f"checkpoint: the image encoder in '{source}' does not fit this encoder ({detail})")
    encoder.load_state_dict(weights, strict=True)


def build_distill_sam(
    model_type: str, img_size: int = IMAGE_SIZE, init: str | os.PathLike | None = None
) -> Sam:
    """A ``Sam`` whose image encoder takes ``img_size`` inputs, optionally initialised from ``init``.

    ``init`` is any checkpoint holding ``image_encoder.*`` weights of ``model_type``: an official
    file (mobile_sam.pt), an assembled one, or a training checkpoint (last.pt). Only the image
    encoder matters for distillation; the ``Sam`` around it provides the official ``preprocess``.
    """
    sam = build_model(model_type)
    if img_size != IMAGE_SIZE:
        sam.image_encoder = build_encoder(model_type, img_size)
    if init is not None:
        sd = load_state_dict(init)
        found = encoder_model_type(sd, str(init))
        if found != model_type:
            raise CheckpointError(f"init: '{init}' holds a {found} image encoder, but the student is {model_type}")
        load_encoder_weights(sam.image_encoder, encoder_weights(sd, str(init)), str(init))
    return sam


def load_teacher(teacher: str | os.PathLike | Sam, img_size: int = IMAGE_SIZE, model_type: str | None = None) -> Sam:
    """The teacher ``Sam`` (eval mode) from a checkpoint or an already built model, at ``img_size``."""
    sam = teacher if isinstance(teacher, Sam) else build_sam(teacher, model_type=model_type)
    if sam.image_encoder.img_size != img_size:
        kind = model_type or detect_model_type({ENCODER_PREFIX + k: v for k, v in sam.image_encoder.state_dict().items()})
        if kind is None:
            raise ValueError("teacher: cannot tell the architecture of the teacher's image encoder")
        encoder = build_encoder(kind, img_size)
        load_encoder_weights(encoder, sam.image_encoder.state_dict(), f"teacher at img_size {img_size}")
        sam.image_encoder = encoder
    return sam.eval()
