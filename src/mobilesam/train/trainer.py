"""The distillation loop: the student's image encoder learns the stored teacher embeddings (MSE).

One process or many (torchrun: nccl on GPU, gloo on CPU). ``batch_size`` is the global batch of
one optimizer step, shared by ranks and gradient-accumulation steps, so a run's samples and loss
curve do not depend on how many processes run it. Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..io import atomic_write_bytes
from . import dist as _dist
from .checkpoint import load_checkpoint, resolve_resume, rng_state, save_checkpoint, set_rng_state
from .data import DistillDataset, StepSampler, apply_flips, collate
from .logs import CSVLog, plot_loss
from .models import ENCODER_PREFIX, build_distill_sam
from .store import DamagedEmbeddingError, EmbeddingStore, list_images, preprocess_batch

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")

# Settings that define the optimisation: a resumed run must keep them to continue the same run.
_RUN_DEFINING = (
    "student", "batch_size", "accumulate", "lr", "weight_decay", "optimizer", "momentum", "betas",
    "schedule", "warmup_steps", "min_lr_ratio", "clip_grad", "hflip", "vflip", "seed", "total_steps",
    "precision", "sync_bn",
)
# Options of one call, free to differ between a run's calls: they change where and how fast it runs,
# not its result. The first group is taken from the run when not given; the second never is.
_PER_CALL_INHERITED = ("data", "embeddings", "workers", "save_every", "log_every", "device", "allow_missing")
_PER_CALL_OWN = ("out", "stop_after", "progress")


@dataclass
class TrainConfig:
    """Options of ``mobilesam train`` (see its --help for each)."""

    data: str
    embeddings: str
    out: str | None = None  # None: the resumed run's folder, else runs/train
    student: str = "vit_t"
    init: str | None = None
    epochs: int = 8
    steps: int | None = None  # total optimizer steps; overrides epochs
    batch_size: int = 8  # global: images per optimizer step over all ranks and accumulation steps
    accumulate: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    momentum: float = 0.9  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    warmup_steps: int | None = None  # None: 5% of the steps, at most 1000
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0  # max gradient norm; 0 turns clipping off
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 elsewhere
    hflip: float = 0.0
    vflip: float = 0.0
    workers: int = 4
    seed: int = 0
    save_every: int = 1000
    log_every: int = 10
    device: str | None = None
    sync_bn: bool = False
    allow_missing: bool = False
    stop_after: int | None = None  # stop (checkpointed) after this many steps in this call
    progress: bool = True
    total_steps: int = field(default=0, init=False)  # resolved at start

    @classmethod
    def resumed(cls, resume: str | os.PathLike, **given: Any) -> TrainConfig:
        """The settings of the run at ``resume`` (its folder or checkpoint), with the options in ``given``.

        ``given`` may hold the options of one call (data, embeddings, out, workers, save_every,
        log_every, device, allow_missing, stop_after, progress) and any setting equal to the run's;
        a setting that would change the run (lr, batch_size, steps, ...) is refused, naming it. Not
        given: out is the run's folder, stop_after and progress their defaults, the rest the run's.
        """
        path = resolve_resume(resume)
        saved = load_checkpoint(path)["config"]
        names = [f.name for f in fields(cls) if f.init]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise TypeError(f"TrainConfig.resumed: unknown option {unknown[0]!r} (options: {', '.join(names)})")
        kept = {k: saved[k] for k in names if k in saved and k not in _PER_CALL_OWN}
        if "betas" in kept:
            kept["betas"] = tuple(kept["betas"])
        for name, value in given.items():
            if name in _PER_CALL_INHERITED or name in _PER_CALL_OWN or name not in kept:
                continue
            if (tuple(value) if name == "betas" else value) != kept[name]:
                raise ValueError(
                    f"{name}: {value!r} differs from the run's {kept[name]!r} (saved in '{path}'); drop it to resume "
                    "the run with its own settings, or start a new run with another --out"
                )
        return cls(**{**kept, **given})


def _check(cfg: TrainConfig) -> None:
    def positive(name: str, value: Any, allow_zero: bool = False) -> None:
        ok = isinstance(value, (int, float)) and (value >= 0 if allow_zero else value > 0)
        if not ok:
            raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")

    for name in ("epochs", "batch_size", "accumulate", "save_every", "log_every", "lr"):
        positive(name, getattr(cfg, name))
    for name in ("weight_decay", "clip_grad", "workers", "min_lr_ratio", "seed", "hflip", "vflip"):
        positive(name, getattr(cfg, name), allow_zero=True)
    if cfg.steps is not None:
        positive("steps", cfg.steps)
    if cfg.stop_after is not None:
        positive("stop_after", cfg.stop_after)
    if cfg.warmup_steps is not None:
        positive("warmup_steps", cfg.warmup_steps, allow_zero=True)
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.min_lr_ratio > 1:
        raise ValueError(f"min_lr_ratio: expected a fraction of --lr in [0, 1], got {cfg.min_lr_ratio}")


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warmup, then decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and position/attention biases (1-D or position tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("attention_biases", "pos_embed", "rel_pos_h", "rel_pos_w"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(f"precision: bf16 autocast needs a CUDA device, this run uses {device}; use fp32 or auto")
    return precision


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["betas"] = list(cfg.betas)
    return d


def _check_resume(cfg: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    now = _config_dict(cfg)
    diff = [f"{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now" for k in _RUN_DEFINING if saved.get(k) != now[k]]
    if diff:
        raise ValueError(
            f"resume: '{path}' was trained with other settings ({'; '.join(diff)}); a resumed run continues the "
            "same run, so pass the options it was started with (or start a new run with --init)"
        )


class _Unwrap:
    """The encoder inside DistributedDataParallel, or the encoder itself."""

    @staticmethod
    def module(model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train(cfg: TrainConfig | None = None, resume: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run (or continue, with ``resume``) a distillation; returns a summary (final loss, steps, speed).

    Writes into ``cfg.out``: ``last.pt`` (every ``save_every`` steps and at the end), ``log.csv``,
    ``loss.png`` and ``config.json``. Under torchrun, call it in every rank.

    ``resume``: a run folder (its last.pt) or checkpoint to continue. ``cfg`` None then takes the run's
    own settings; for options of this call use ``TrainConfig.resumed(resume, workers=8, ...)``. A cfg
    whose settings differ from the run's is refused (a resumed run continues the same run).
    ``images_per_s`` in the summary is over this call's steps (None when it ran none).
    """
    if cfg is None:
        if resume is None:
            raise TypeError("train: pass a TrainConfig, or resume= to continue a run with its own settings")
        cfg = TrainConfig.resumed(resume)
    _check(cfg)
    return _train(cfg, _dist.setup(cfg.device), resume)


def _train(cfg: TrainConfig, info: _dist.DistInfo, resume: str | os.PathLike | None) -> dict[str, Any]:
    device = info.device
    precision = _resolve_precision(cfg.precision, device)
    store = EmbeddingStore.open(cfg.embeddings)
    img_size = int(store.meta["img_size"])
    rels = list_images(cfg.data)
    missing = store.missing(rels)
    if missing:
        if not cfg.allow_missing or len(missing) == len(rels):
            raise FileNotFoundError(
                f"embeddings: {len(missing)} of {len(rels)} images under '{cfg.data}' have no embedding in "
                f"'{cfg.embeddings}' (first: {missing[0]}); run 'mobilesam embed' on the same folder, or pass "
                "--allow-missing to train on the others"
            )
        rels = [r for r in rels if store.has(r)]
    damaged = store.damaged(rels)
    if damaged:
        rel, why = damaged[0]
        others = f"; {len(damaged) - 1} more of the {len(rels)} are damaged too" if len(damaged) > 1 else ""
        raise DamagedEmbeddingError(store.path_for(rel), why + others)
    per_step = cfg.accumulate * info.world_size
    if cfg.batch_size % per_step:
        raise ValueError(
            f"batch_size: the global batch ({cfg.batch_size}) must be a multiple of accumulate x processes "
            f"({cfg.accumulate} x {info.world_size} = {per_step})"
        )
    if len(rels) < cfg.batch_size:
        raise ValueError(f"batch_size: {cfg.batch_size} is more than the {len(rels)} images to train on")
    steps_per_epoch = len(rels) // cfg.batch_size
    cfg.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    if cfg.warmup_steps is None:
        cfg.warmup_steps = min(1000, cfg.total_steps // 20)
    ckpt = None
    if resume is not None:
        path = resolve_resume(resume)
        ckpt = load_checkpoint(path)
        _check_resume(cfg, ckpt["config"], path)
        if ckpt.get("precision", precision) != precision:  # --device is free, but "auto" follows it
            raise ValueError(
                f"device: the run '{path}' trained in {ckpt['precision']}, this call on {device} would use "
                f"{precision}; resume it on the kind of device it started on (--device)"
            )
        if ckpt.get("images", len(rels)) != len(rels):
            raise ValueError(
                f"data: the run '{path}' trained on {ckpt['images']} images, '{cfg.data}' has {len(rels)} with "
                "embeddings now; a resumed run needs the same images (or start a new run)"
            )
    out = Path(cfg.out or (path.parent if ckpt is not None else "runs/train")).expanduser()
    if ckpt is None and (out / "last.pt").exists():
        raise FileExistsError(
            f"out: '{out}' already holds a run (last.pt); pass --resume {out} to continue it, or choose another --out"
        )

    _seed_all(cfg.seed + info.rank)
    sam = build_distill_sam(cfg.student, img_size, None if ckpt else cfg.init)
    if sam.image_encoder.img_size != img_size or tuple(store.shape[1:]) != (img_size // 16, img_size // 16):
        raise ValueError(f"embeddings: shape {store.shape} does not fit a {cfg.student} student at {img_size} px")
    sam.requires_grad_(False)
    encoder = sam.image_encoder
    if cfg.sync_bn:
        if device.type != "cuda":
            raise ValueError("sync_bn: SyncBatchNorm works on CUDA only; drop --sync-bn on CPU")
        encoder = nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
        sam.image_encoder = encoder
    encoder.requires_grad_(True)
    for unused in ("norm_head", "head"):  # TinyViT's ImageNet classifier: kept for the checkpoint, never run
        if isinstance(getattr(encoder, unused, None), nn.Module):
            getattr(encoder, unused).requires_grad_(False)
    sam.to(device)
    encoder.train()

    optimizer = build_optimizer(encoder, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.total_steps, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio)
    )
    step = 0
    if ckpt is not None:
        weights = {k[len(ENCODER_PREFIX):]: v for k, v in ckpt["model"].items()}
        encoder.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step = int(ckpt["step"])
        states = ckpt.get("rng") or []
        if len(states) == info.world_size:
            set_rng_state(states[info.rank])
        else:
            _seed_all(cfg.seed + info.rank + step)

    model: nn.Module = encoder
    if info.distributed:
        # Depthwise kernels (C, 1, 3, 3) get gradients whose size-1 dim has another stride than DDP's
        # bucket views; the copy it warns about is harmless.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        model = nn.parallel.DistributedDataParallel(
            encoder, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
        )

    dataset = DistillDataset(cfg.data, rels, store, img_size, cfg.hflip, cfg.vflip, cfg.seed)
    end = cfg.total_steps if cfg.stop_after is None else min(cfg.total_steps, step + cfg.stop_after)
    sampler = StepSampler(len(rels), cfg.batch_size, cfg.accumulate, info.world_size, info.rank,
                          cfg.seed, step, end)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )

    log = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.json", (json.dumps({**_config_dict(cfg), "img_size": img_size,
                           "world_size": info.world_size, "teacher": store.meta}, indent=2) + "\n").encode())
        log = CSVLog(out / "log.csv", resume_step=step if ckpt else None)
        micro = cfg.batch_size // per_step
        print(
            f"train: {len(rels)} images, {steps_per_epoch} steps/epoch, steps {step}->{end} of {cfg.total_steps}; "
            f"batch {cfg.batch_size} = {micro} x {info.world_size} process(es) x {cfg.accumulate} accumulation; "
            f"{cfg.student} student at {img_size} px on {device} ({precision})"
        )

    def save(at_step: int, last_loss: float) -> None:
        states = [None] * info.world_size
        if info.distributed:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if info.is_main:
            save_checkpoint(out / "last.pt", {
                "model": {ENCODER_PREFIX + k: v for k, v in _Unwrap.module(model).state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": at_step,
                "epoch": at_step // steps_per_epoch,
                "loss": last_loss,
                "config": _config_dict(cfg),
                "img_size": img_size,
                "student": cfg.student,
                "rng": states,
                "world_size": info.world_size,
                "images": len(rels),
                "precision": precision,
            })
            plot_loss(out / "log.csv", out / "loss.png")

    bar = tqdm(total=cfg.total_steps, initial=step, desc="train", unit="step",
               disable=not (cfg.progress and info.is_main))
    interval_loss = torch.zeros((), device=device)
    interval_steps, interval_start, run_start = 0, time.perf_counter(), time.perf_counter()
    last_loss = float(ckpt["loss"]) if ckpt is not None else float("nan")  # a finished run's, if no step runs
    first_loss = None
    batches = iter(loader)
    images_seen = 0
    try:
        while step < end:
            step_loss = torch.zeros((), device=device)
            for k in range(cfg.accumulate):
                batch = next(batches)
                if "error" in batch:
                    raise ValueError(batch["error"])
                x = preprocess_batch(sam, batch["images"], device)
                y = batch["targets"].to(device, non_blocking=True).float()
                x, y = apply_flips(x, y, batch)
                # DDP all-reduces gradients only on the last micro-step of an accumulation.
                sync = k == cfg.accumulate - 1 or not info.distributed
                with contextlib.nullcontext() if sync else model.no_sync():
                    with _autocast(device, precision):
                        pred = model(x)
                    loss = F.mse_loss(pred.float(), y) / cfg.accumulate
                    loss.backward()
                step_loss += loss.detach()
            if cfg.clip_grad > 0:
                nn.utils.clip_grad_norm_(encoder.parameters(), cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            interval_loss += step_loss
            interval_steps += 1
            images_seen += cfg.batch_size
            if step % cfg.log_every == 0 or step == end:
                if info.distributed:
                    dist.all_reduce(interval_loss)
                    interval_loss /= info.world_size
                last_loss = float(interval_loss) / interval_steps
                first_loss = last_loss if first_loss is None else first_loss
                now = time.perf_counter()
                speed = interval_steps * cfg.batch_size / max(now - interval_start, 1e-9)
                lr = scheduler.get_last_lr()[0]
                if log is not None:
                    log.write(step=step, epoch=(step - 1) // steps_per_epoch, loss=last_loss, lr=lr,
                              images_per_s=speed, elapsed_s=now - run_start)
                bar.set_postfix(loss=f"{last_loss:.4g}", lr=f"{lr:.2e}", img_s=f"{speed:.3g}")
                interval_loss.zero_()
                interval_steps, interval_start = 0, now
            bar.update(1)
            if step % cfg.save_every == 0 or step == end:
                save(step, last_loss)
    finally:
        bar.close()  # before an error's line, so that it does not land inside the bar
    seconds = time.perf_counter() - run_start
    summary = {
        "step": step,
        "total_steps": cfg.total_steps,
        "finished": step >= cfg.total_steps,
        "loss": last_loss,
        "first_logged_loss": first_loss,
        "images_per_s": images_seen / seconds if images_seen and seconds > 0 else None,
        "seconds": seconds,
        "out": str(out),
        "checkpoint": str(out / "last.pt"),
        "world_size": info.world_size,
        "rank": info.rank,
    }
    if info.is_main and not summary["finished"]:
        print(f"train: stopped at step {step} of {cfg.total_steps}; continue with --resume {out}")
    return summary
