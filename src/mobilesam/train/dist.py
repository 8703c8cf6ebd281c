"""torchrun for ``embed`` and ``train``: which rank this process is, its device, and the process group.

The launcher's environment and starting the group are :mod:`mobilesam.distributed`'s, shared with
``annotate``.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..device import select_device
from ..distributed import destroy_process_group, start_process_group, torchrun_env


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this call started the process group (ended when the process exits)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Read torchrun's environment; start the process group (nccl on GPU, gloo on CPU) when there are several ranks.

    Under torchrun each rank uses ``cuda:LOCAL_RANK`` when CUDA is chosen; ``device`` picks the kind
    (None: cuda if available, else cpu; MPS is not used for distributed runs).
    """
    env = torchrun_env()
    rank, world, local = env.rank, env.world_size, env.local_rank
    dev = select_device(device)
    if world > 1 and dev.type == "mps":
        dev = torch.device("cpu")
    if dev.type == "cuda":
        if world > 1 or dev.index is None:
            index = local if world > 1 else 0
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"device: local rank {local} needs cuda:{index}, but this machine has "
                    f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node"
                )
            dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    owns = world > 1 and start_process_group("nccl" if dev.type == "cuda" else "gloo", world)
    if owns:
        # The group lives as long as the process: destroying and re-creating it in one process (embed,
        # then train) can make ranks connect to the stale addresses of the first group.
        atexit.register(destroy_process_group)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()
