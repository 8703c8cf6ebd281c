"""Assembling a trained student encoder and a teacher's prompt encoder and mask decoder into one checkpoint."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from ..build import load_weights_into
from ..io import atomic_write_bytes
from ..modeling import build_model
from ..modeling.configs import IMAGE_SIZE
from ..weights import CheckpointError, load_state_dict, resolve_weights
from .checkpoint import load_checkpoint
from .models import ENCODER_PREFIX, encoder_model_type, encoder_weights

_DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


def assemble(
    encoder: str | os.PathLike, decoder_from: str | os.PathLike, out: str | os.PathLike
) -> dict[str, Any]:
    """Write ``out``: a flat state_dict in the official format (``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*``), loadable by :func:`mobilesam.build_sam` and the official ``mobile_sam`` code.

    ``encoder`` is a training checkpoint (RUN/last.pt) or any checkpoint with ``image_encoder.*``
    weights; ``decoder_from`` is the teacher checkpoint (path or known name, e.g. sam_vit_h_4b8939.pth)
    whose prompt encoder and mask decoder the student was distilled against.
    """
    enc_path = resolve_weights(encoder)
    try:
        ckpt = load_checkpoint(enc_path)
        enc_sd, img_size = ckpt["model"], int(ckpt.get("img_size", IMAGE_SIZE))
    except CheckpointError:  # not a training checkpoint: any weights file with image_encoder.* keys
        enc_sd, img_size = load_state_dict(enc_path), IMAGE_SIZE
    student = encoder_model_type(enc_sd, str(enc_path))
    enc = encoder_weights(enc_sd, str(enc_path))

    dec_path = resolve_weights(decoder_from)
    dec_sd = load_state_dict(dec_path)
    parts = {k: v for k, v in dec_sd.items() if k.startswith(_DECODER_PREFIXES)}
    if not parts:
        raise CheckpointError(
            f"decoder_from: '{dec_path}' holds no prompt_encoder.* / mask_decoder.* weights; give the teacher's "
            "full checkpoint (e.g. sam_vit_h_4b8939.pth)"
        )
    flat = {ENCODER_PREFIX + k: v for k, v in enc.items()} | parts
    sam = build_model(student)
    load_weights_into(sam, flat, f"{enc_path} + {dec_path}", student)
    state = {k: v.detach().cpu().contiguous() for k, v in sam.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    path = atomic_write_bytes(Path(out).expanduser(), buf.getvalue())
    return {
        "out": str(path),
        "model_type": student,
        "keys": len(state),
        "parameters": sum(p.numel() for p in sam.parameters()),
        "encoder_from": str(enc_path),
        "decoder_from": str(dec_path),
        "trained_img_size": img_size,
        "size_bytes": path.stat().st_size,
    }
