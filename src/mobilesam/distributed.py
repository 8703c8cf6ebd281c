"""torchrun plumbing shared by ``annotate``, ``embed`` and ``train``: the launcher's environment and the
process group.

Each command decides its own backend and device: ``annotate`` meets on gloo (it only exchanges small
Python objects), ``embed`` and ``train`` on nccl when they run on CUDA (see :mod:`mobilesam.train.dist`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist


@dataclass(frozen=True)
class TorchrunEnv:
    """What torchrun tells a process about its place in the run (all 0 / 1 when not launched by it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this node

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_int(name: str, default: int) -> int:
    """An integer from the environment (``default`` when unset or empty); a clear error otherwise."""
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}: expected an integer in the environment (set by torchrun), got {raw!r}") from None


def torchrun_env() -> TorchrunEnv:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` as torchrun sets them."""
    return TorchrunEnv(
        rank=env_int("RANK", 0),
        world_size=env_int("WORLD_SIZE", 1),
        local_rank=env_int("LOCAL_RANK", 0),
        local_world_size=env_int("LOCAL_WORLD_SIZE", 1),
    )


def start_process_group(backend: str, world_size: int, timeout: timedelta | None = None) -> bool:
    """Start the default process group of a torchrun launch unless one exists; True if this call started it.

    ``world_size`` is the launch's (for the error message); torchrun's ``MASTER_ADDR``/``MASTER_PORT``
    must be set.
    """
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    if dist.is_initialized():
        return False
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} is set but {'/'.join(missing)} is not: launch with "
            "torchrun --nproc-per-node N -m mobilesam <command> ..."
        )
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend=backend, **kwargs)
    return True


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["TorchrunEnv", "destroy_process_group", "env_int", "start_process_group", "torchrun_env"]
