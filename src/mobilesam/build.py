"""Building a ``Sam`` from a checkpoint: resolve the file, load it safely, detect the architecture."""

from __future__ import annotations

import os
from typing import Callable

import torch

from .modeling import MODEL_CONFIGS, Sam, build_model
from .weights import WEIGHTS, CheckpointError, load_state_dict, resolve_weights


def detect_model_type(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The key of :data:`MODEL_CONFIGS` whose architecture the state_dict holds, or None."""
    if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:
        stages = sorted({int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.layers.")})
        try:
            dims = tuple(
                state_dict[
                    f"image_encoder.layers.{i}.blocks.0.conv1.c.weight"
                    if i == 0
                    else f"image_encoder.layers.{i}.blocks.0.attn.norm.weight"
                ].shape[1 if i == 0 else 0]
                for i in stages
            )
        except KeyError:
            return None
        return next((n for n, c in MODEL_CONFIGS.items() if c.encoder == "tiny_vit" and c.embed_dims == dims), None)
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is not None:
        depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
        for name, cfg in MODEL_CONFIGS.items():
            if cfg.encoder == "vit" and cfg.embed_dims[0] == pos.shape[-1] and cfg.depths[0] == depth:
                return name
    return None


def _describe_mismatch(path: str, model_type: str, missing: list[str], unexpected: list[str]) -> str:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = [f"checkpoint: '{path}' does not match the {model_type} architecture"]
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    parts.append(f"known model types: {', '.join(MODEL_CONFIGS)}; pass model_type=... only if detection fails")
    return "; ".join(parts)


def load_weights_into(sam: Sam, state_dict: dict[str, torch.Tensor], source: str, model_type: str) -> Sam:
    """Strictly load ``state_dict`` into ``sam``, turning mismatches into a readable CheckpointError."""
    own = sam.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise CheckpointError(_describe_mismatch(source, model_type, missing, unexpected))
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state_dict[k].shape != v.shape]
    if wrong:
        raise CheckpointError(
            f"checkpoint: '{source}' has tensors of other shapes than the {model_type} architecture: "
            + ", ".join(wrong[:5])
        )
    sam.load_state_dict(state_dict, strict=True)
    return sam


def build_sam(
    checkpoint: str | os.PathLike | None = None,
    model_type: str | None = None,
    device: str | torch.device | None = "cpu",
) -> Sam:
    """Build a ``Sam`` in eval mode.

    ``checkpoint`` is a file path (any name) or a known weights name (``mobile_sam.pt``,
    ``sam_vit_b_01ec64.pth``, ...; downloaded on first use). The architecture is detected from the
    checkpoint; ``model_type`` forces one. Without a checkpoint, ``model_type`` gives random weights.
    """
    if model_type is not None and model_type not in MODEL_CONFIGS:
        raise ValueError(f"model_type: expected one of {sorted(MODEL_CONFIGS)}, got {model_type!r}")
    if checkpoint is None:
        if model_type is None:
            raise ValueError("build_sam: give a checkpoint (path or name) or a model_type for random weights")
        return build_model(model_type).to(device)
    path = resolve_weights(checkpoint)
    state_dict = load_state_dict(path)
    detected = detect_model_type(state_dict)
    if model_type is None:
        if detected is None:
            sample = ", ".join(list(state_dict)[:5])
            raise CheckpointError(
                f"checkpoint: '{path}' is not a SAM / MobileSAM checkpoint (no known image encoder keys; "
                f"first keys: {sample}); known model types: {', '.join(MODEL_CONFIGS)}"
            )
        model_type = detected
    sam = build_model(model_type)
    load_weights_into(sam, state_dict, str(path), model_type)
    return sam.to(device).eval()


def _registry_builder(model_type: str) -> Callable[..., Sam]:
    def builder(checkpoint: str | os.PathLike | None = None) -> Sam:
        return build_sam(checkpoint, model_type=model_type)

    builder.__name__ = f"build_sam_{model_type}"
    return builder


# Drop-in for the official ``sam_model_registry["vit_t"](checkpoint=...)``.
sam_model_registry: dict[str, Callable[..., Sam]] = {name: _registry_builder(name) for name in MODEL_CONFIGS}
sam_model_registry["default"] = sam_model_registry["vit_h"]

__all__ = ["WEIGHTS", "build_sam", "detect_model_type", "load_weights_into", "sam_model_registry"]
