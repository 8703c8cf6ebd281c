"""Training checkpoints: everything a run needs to continue bit for bit, written atomically.

A checkpoint is a dict that ``torch.load(weights_only=True)`` reads (tensors, numbers, strings,
lists, dicts): ``model`` holds the student's image encoder under the official ``image_encoder.*``
names, so :func:`mobilesam.weights.load_state_dict` reads it like any weights file.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write_bytes
from ..weights import CheckpointError
from ..weights import load_checkpoint as load_any_checkpoint

FORMAT = "mobilesam-distill"
VERSION = 1


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any], fmt: str = FORMAT) -> Path:
    """Write ``checkpoint`` (see the module docstring) through a temporary file and ``os.replace``;
    ``fmt`` tells the runs apart (``mobilesam-distill``, ``mobilesam-finetune``)."""
    buf = io.BytesIO()
    torch.save({"format": fmt, "version": VERSION, **checkpoint}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def resolve_resume(path: str | os.PathLike) -> Path:
    """``--resume`` takes a run folder (its last.pt) or a checkpoint file."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"resume: no checkpoint at '{p}' (give a run folder holding last.pt, or a .pt file)")
    return p


def load_checkpoint(path: str | os.PathLike, fmt: str = FORMAT, command: str = "train") -> dict[str, Any]:
    """Read a training checkpoint safely (weights_only) and check its format (``fmt``, written by
    ``mobilesam COMMAND``)."""
    p = Path(path).expanduser()
    obj = load_any_checkpoint(p)
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        other = obj.get("format") if isinstance(obj, dict) else None
        hint = f" (it is a {other} checkpoint)" if isinstance(other, str) and other.startswith("mobilesam-") else ""
        raise CheckpointError(
            f"resume: '{p}' is not a checkpoint of 'mobilesam {command}' (its last.pt){hint}"
        )
    if obj.get("version") != VERSION:
        raise CheckpointError(f"resume: '{p}' has checkpoint version {obj.get('version')}, this code reads {VERSION}")
    return obj
