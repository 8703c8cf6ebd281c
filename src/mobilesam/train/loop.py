"""What every training run here shares (distillation and fine-tuning): the optimizer and its schedule,
precision, seeding, resumable settings, and the optimizer-step loop with gradient accumulation, DDP
synchronisation, clipping, logging, checkpoints and a progress bar.

A run's settings are a dataclass; :func:`resumed_settings` rebuilds them from a checkpoint for
``--resume`` (only the options of one call may be given again, any other must equal the run's), and
:func:`check_resume` refuses a checkpoint trained with other settings.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .checkpoint import rng_state, set_rng_state
from .dist import DistInfo
from .logs import CSVLog

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warmup, then decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: no weight decay on biases, norms and position/attention biases
    (1-D or position tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("attention_biases", "pos_embed", "rel_pos_h", "rel_pos_w"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (adamw, adam, sgd) over the trainable parameters of ``model``."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.total_steps, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio)
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(f"precision: bf16 autocast needs a CUDA device, this run uses {device}; use fp32 or auto")
    return precision


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


def check_optim(cfg: Any) -> None:
    """The settings every run has: step counts, optimizer, schedule, precision."""
    for name in ("epochs", "batch_size", "accumulate", "save_every", "log_every", "lr"):
        check_positive(name, getattr(cfg, name))
    for name in ("weight_decay", "clip_grad", "workers", "min_lr_ratio", "seed"):
        check_positive(name, getattr(cfg, name), allow_zero=True)
    for name in ("steps", "stop_after"):
        if getattr(cfg, name) is not None:
            check_positive(name, getattr(cfg, name))
    if cfg.warmup_steps is not None:
        check_positive("warmup_steps", cfg.warmup_steps, allow_zero=True)
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.min_lr_ratio > 1:
        raise ValueError(f"min_lr_ratio: expected a fraction of --lr in [0, 1], got {cfg.min_lr_ratio}")


def config_dict(cfg: Any) -> dict[str, Any]:
    d = asdict(cfg)
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
    return d


def resumed_settings(cls: type, saved: dict[str, Any], path: Path, given: dict[str, Any],
                     inherited: Sequence[str], own: Sequence[str]) -> Any:
    """``cls`` with the run's ``saved`` settings and the options in ``given``.

    ``inherited``: options of one call taken from the run when not given (data folders, workers, ...);
    ``own``: options of one call never taken from the run (out, stop_after, progress). Any other option
    given must equal the run's: one that would change the run is refused, naming it.
    """
    names = [f.name for f in fields(cls) if f.init]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TypeError(f"{cls.__name__}.resumed: unknown option {unknown[0]!r} (options: {', '.join(names)})")
    kept = {k: saved[k] for k in names if k in saved and k not in own}
    tuples = {f.name for f in fields(cls) if f.init and isinstance(getattr(cls, f.name, None), tuple)}
    for k in tuples & set(kept):
        kept[k] = tuple(kept[k])
    for name, value in given.items():
        if name in inherited or name in own or name not in kept:
            continue
        if (tuple(value) if isinstance(value, list) else value) != kept[name]:
            raise ValueError(
                f"{name}: {value!r} differs from the run's {kept[name]!r} (saved in '{path}'); drop it to resume "
                "the run with its own settings, or start a new run with another --out"
            )
    return cls(**{**kept, **given})


def check_resume(cfg: Any, saved: dict[str, Any], path: Path, defining: Sequence[str], new_run: str = "--init") -> None:
    """Refuse to continue a run whose run-defining settings differ from ``cfg``'s, naming them."""
    now = config_dict(cfg)
    diff = [f"{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now" for k in defining if saved.get(k) != now[k]]
    if diff:
        raise ValueError(
            f"resume: '{path}' was trained with other settings ({'; '.join(diff)}); a resumed run continues the "
            f"same run, so pass the options it was started with (or start a new run with {new_run})"
        )


def restore(ckpt: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any, info: DistInfo,
            seed: int) -> int:
    """Load a checkpoint's optimizer, scheduler and this rank's RNG states; returns its step. A run resumed
    on another number of processes reseeds from (seed, rank, step) instead."""
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    step = int(ckpt["step"])
    states = ckpt.get("rng") or []
    if len(states) == info.world_size:
        set_rng_state(states[info.rank])
    else:
        seed_all(seed + info.rank + step)
    return step


def rng_states(info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG states (gathered to all ranks), for the checkpoint."""
    if not info.distributed:
        return [rng_state()]
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, rng_state())
    return states


def step_loader(dataset: torch.utils.data.Dataset, num_items: int, cfg: Any, info: DistInfo, start: int, end: int,
                collate_fn: Callable[[list], Any]) -> torch.utils.data.DataLoader:
    """This rank's micro-batches of optimizer steps ``start`` -> ``end`` (see :class:`.data.StepSampler`)."""
    from .data import StepSampler

    sampler = StepSampler(num_items, cfg.batch_size, cfg.accumulate, info.world_size, info.rank, cfg.seed, start, end)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate_fn,
        pin_memory=info.device.type == "cuda", persistent_workers=False,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel, or the module itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class LoopResult:
    step: int
    last_loss: float
    first_loss: float | None
    images_seen: int
    seconds: float


def optimize(
    *,
    info: DistInfo,
    model: nn.Module,
    clip_params: Callable[[], Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterator[Any],
    micro_loss: Callable[[Any, int], torch.Tensor],
    step: int,
    end: int,
    total_steps: int,
    accumulate: int,
    clip_grad: float,
    batch_size: int,
    steps_per_epoch: int,
    log_every: int,
    save_every: int,
    log: CSVLog | None,
    save: Callable[[int, float], None],
    after_step: Callable[[int], dict[str, float] | None] | None = None,
    last_loss: float = float("nan"),
    desc: str = "train",
    progress: bool = True,
) -> LoopResult:
    """Optimizer steps ``step`` -> ``end``.

    Each step runs ``accumulate`` micro-batches: ``micro_loss(batch, k)`` returns the micro-batch's loss
    (its forward under the run's autocast), divided here by ``accumulate`` and back-propagated, DDP
    all-reducing gradients on the last micro-step only. Then clipping (``clip_grad`` > 0, over
    ``clip_params()``), the optimizer and scheduler steps. ``after_step(step)`` may return values to log
    at that step (validation), which also makes it a log step. Every ``log_every`` steps the mean loss
    since the last log (over ranks) goes to ``log`` and the bar; every ``save_every`` steps and at ``end``,
    ``save(step, loss)``.
    """
    device = info.device
    bar = tqdm(total=total_steps, initial=step, desc=desc, unit="step", disable=not (progress and info.is_main))
    interval_loss = torch.zeros((), device=device)
    interval_steps, interval_start, run_start = 0, time.perf_counter(), time.perf_counter()
    first_loss = None
    images_seen = 0
    try:
        while step < end:
            step_loss = torch.zeros((), device=device)
            for k in range(accumulate):
                batch = next(batches)
                if isinstance(batch, dict) and "error" in batch:
                    raise ValueError(batch["error"])
                # DDP all-reduces gradients only on the last micro-step of an accumulation.
                sync = k == accumulate - 1 or not info.distributed
                with contextlib.nullcontext() if sync else model.no_sync():
                    loss = micro_loss(batch, k) / accumulate
                    loss.backward()
                step_loss += loss.detach()
            if clip_grad > 0:
                nn.utils.clip_grad_norm_(clip_params(), clip_grad)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            interval_loss += step_loss
            interval_steps += 1
            images_seen += batch_size
            extra = after_step(step) if after_step is not None else None
            if step % log_every == 0 or step == end or extra:
                if info.distributed:
                    dist.all_reduce(interval_loss)
                    interval_loss /= info.world_size
                last_loss = float(interval_loss) / interval_steps
                first_loss = last_loss if first_loss is None else first_loss
                now = time.perf_counter()
                speed = interval_steps * batch_size / max(now - interval_start, 1e-9)
                lr = scheduler.get_last_lr()[0]
                if log is not None:
                    log.write(step=step, epoch=(step - 1) // steps_per_epoch, loss=last_loss, lr=lr,
                              images_per_s=speed, elapsed_s=now - run_start, **(extra or {}))
                bar.set_postfix(loss=f"{last_loss:.4g}", lr=f"{lr:.2e}", img_s=f"{speed:.3g}",
                                **{k: f"{v:.4f}" for k, v in (extra or {}).items()})
                interval_loss.zero_()
                interval_steps, interval_start = 0, now
            bar.update(1)
            if step % save_every == 0 or step == end:
                save(step, last_loss)
    finally:
        bar.close()  # before an error's line, so that it does not land inside the bar
    return LoopResult(step, last_loss, first_loss, images_seen, time.perf_counter() - run_start)


__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "LoopResult",
    "autocast",
    "build_optimizer",
    "build_scheduler",
    "check_optim",
    "check_positive",
    "check_resume",
    "config_dict",
    "lr_factor",
    "optimize",
    "param_groups",
    "resolve_precision",
    "restore",
    "resumed_settings",
    "rng_states",
    "seed_all",
    "step_loader",
    "unwrap",
]
