"""Building a model from a checkpoint: resolve the file, load it safely, detect family and size (mobilesam.hub)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

from .device import select_device
from .hub import SAM_FAMILY, ModelFamily, closest_architecture, detect_family, families, family_for_size, known_sizes
from .modeling import Sam
from .weights import WEIGHTS, CheckpointError, load_state_dict, resolve_weights

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def detect_model_type(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The size (e.g. ``"vit_t"``, a key of :data:`MODEL_CONFIGS`) whose architecture the state_dict holds, or None.

    Any registered family's sizes count; :func:`mobilesam.hub.detect_family` also says which family.
    """
    found = detect_family(state_dict)
    return found[1] if found is not None else None


def _describe_mismatch(path: str, model_type: str, missing: list[str], unexpected: list[str]) -> str:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = [f"checkpoint: '{path}' does not match the {model_type} architecture"]
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    parts.append(f"known model types: {', '.join(known_sizes())}; pass model_type=... only if detection fails")
    return "; ".join(parts)


def _not_a_checkpoint(path: Path, state_dict: Mapping[str, torch.Tensor]) -> CheckpointError:
    kinds = " / ".join(f.title for f in families())
    sample = ", ".join(list(state_dict)[:5])
    return CheckpointError(
        f"checkpoint: '{path}' is not a {kinds} checkpoint (its keys match no known architecture, "
        f"not even half of one; first keys: {sample}); known model types: {', '.join(known_sizes())}"
    )


def _architecture_of(path: Path, state_dict: Mapping[str, torch.Tensor]) -> tuple[ModelFamily, str]:
    """(family, size) of a checkpoint: by its key signature, else the nearest one by common keys.

    A checkpoint that lacks a key the signature reads (one encoder key, say) is still close to its
    architecture; loading it then reports exactly which keys differ.
    """
    found = detect_family(state_dict)
    if found is not None:
        return found
    nearest = closest_architecture(state_dict)
    if nearest is None:
        raise _not_a_checkpoint(path, state_dict)
    return nearest.family, nearest.size


def load_weights_into(sam: ModuleT, state_dict: Mapping[str, torch.Tensor], source: str, model_type: str) -> ModuleT:
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
) -> nn.Module:
    """Build a model of any registered family (a ``Sam`` for MobileSAM and SAM, a ``Sam2`` for SAM 2 and
    SAM 2.1) in eval mode.

    ``checkpoint`` is a file path (any name) or a known weights name (``mobile_sam.pt``,
    ``sam_vit_b_01ec64.pth``, ...; downloaded on first use). Flat state_dicts and Meta's
    ``{"model": state_dict}`` files are both read. The family and size are detected from the
    checkpoint; ``model_type`` forces a size. Without a checkpoint, ``model_type`` gives random weights.
    """
    if device is not None:
        device = select_device(device)  # an unusable device (meta, CUDA on a CPU machine) fails first
    # Looked up first so that an unknown size is rejected before any file is read.
    forced = family_for_size(model_type) if model_type is not None else None
    if checkpoint is None:
        if forced is None:
            raise ValueError("build_sam: give a checkpoint (path or name) or a model_type for random weights")
        return forced.build(model_type).to(device)
    path = resolve_weights(checkpoint)
    state_dict = load_state_dict(path)
    if model_type is None:
        family, model_type = _architecture_of(path, state_dict)
    else:
        found = detect_family(state_dict)
        family = family_for_size(model_type, prefer=found[0] if found is not None else None)
    sam = family.build(model_type)
    load_weights_into(sam, state_dict, str(path), model_type)
    return sam.to(device).eval()


def _registry_builder(model_type: str) -> Callable[..., Sam]:
    def builder(checkpoint: str | os.PathLike | None = None) -> Sam:
        return build_sam(checkpoint, model_type=model_type)

    builder.__name__ = f"build_sam_{model_type}"
    return builder


# Drop-in for the official ``sam_model_registry["vit_t"](checkpoint=...)``.
sam_model_registry: dict[str, Callable[..., Sam]] = {name: _registry_builder(name) for name in SAM_FAMILY.sizes}
sam_model_registry["default"] = sam_model_registry["vit_h"]

__all__ = ["WEIGHTS", "build_sam", "detect_model_type", "load_weights_into", "sam_model_registry"]
