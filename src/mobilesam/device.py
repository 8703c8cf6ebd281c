"""Choosing a torch device."""

from __future__ import annotations

import torch


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"" picks cuda, then mps, then cpu; anything else is validated and returned."""
    if device is None or device == "":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r} ({e})") from None
    if dev.type == "meta":
        # Meta tensors hold no values: a model there cannot compute anything (it failed later with
        # "Tensor.item() cannot be called on meta tensors").
        raise ValueError(
            f"device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got {str(device)!r} "
            "(the meta device holds no values, so a model cannot run there)"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but CUDA is not available on this machine; use 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device: {device!r} was asked for but MPS is not available on this machine; use 'cpu'")
    return dev
