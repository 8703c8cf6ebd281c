"""The official code as an oracle: seeded, perturbed reference models and their state_dicts."""

from __future__ import annotations

import warnings

import torch


def perturb_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Perturb every floating parameter and buffer of the state_dict so no layer is trivially identity.

    BatchNorm running variances stay positive; integer buffers (num_batches_tracked) are left alone.
    Non-persistent buffers (pixel mean/std, index tables) are constants of the architecture, not
    weights, and are not touched.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(noise * 0.1)
            elif not t.any():
                # Zero-initialised tensors (attention and position biases, LayerNorm biases) get values
                # of a trained model's magnitude, so a stale or ignored one shows in the outputs.
                t.copy_(noise * 0.5)
            else:
                t.add_(noise * scale * (t.abs().mean() + 0.1))


def reference_model(model_type: str, seed: int = 0, package: str | None = None) -> torch.nn.Module:
    """An official model (``mobile_sam`` for vit_t, ``segment_anything`` otherwise), seeded and perturbed,
    in eval mode. ``eval()`` is called again after perturbing: the official TinyViT caches its attention
    biases when switched to eval mode, so without it the reference would run with stale biases."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if package == "mobile_sam" or (package is None and model_type == "vit_t"):
            from mobile_sam import sam_model_registry
        else:
            from segment_anything import sam_model_registry
    torch.manual_seed(seed)
    ref = sam_model_registry[model_type]()
    perturb_(ref, seed + 1)
    ref.train()
    return ref.eval()


# Meta's config file of each SAM 2 size (configs/<release>/<file>.yaml inside the sam2 package).
_SAM2_CONFIG_FILES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def sam2_config_file(model_type: str) -> str:
    """``"sam2.1_hiera_tiny"`` -> ``"configs/sam2.1/sam2.1_hiera_t.yaml"``."""
    release, size = model_type.split("_hiera_")
    return f"configs/{release}/{release}_hiera_{_SAM2_CONFIG_FILES[size]}.yaml"


def sam2_reference_model(model_type: str, seed: int = 0, device: str = "cpu") -> torch.nn.Module:
    """Meta's ``SAM2Base`` of ``model_type`` (``"sam2_hiera_tiny"``, ``"sam2.1_hiera_base_plus"``, ...)
    as ``sam2.build_sam.build_sam2`` makes it (with its default post-processing: dynamic multimask),
    seeded and, unless on the meta device, perturbed; in eval mode.

    Meta's Hiera turns a ``torch.linspace`` into Python floats (drop-path rates), which the meta device
    cannot do: that one tensor is made on the CPU.
    """
    import contextlib
    from unittest import mock

    from sam2.build_sam import build_sam2

    patch = contextlib.nullcontext()
    if device == "meta":
        linspace = torch.linspace
        patch = mock.patch.object(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    torch.manual_seed(seed)
    with warnings.catch_warnings(), patch, torch.device(device):
        warnings.simplefilter("ignore")
        ref = build_sam2(sam2_config_file(model_type), None, device=device)
    if device != "meta":
        perturb_(ref, seed + 1)
    return ref.eval()


def save_sam2_checkpoint(ref: torch.nn.Module, path) -> None:  # noqa: ANN001 - str or Path
    """Save a reference model as Meta's checkpoints are: ``{"model": state_dict}``."""
    torch.save({"model": ref.state_dict()}, path)
