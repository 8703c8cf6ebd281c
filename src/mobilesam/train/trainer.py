"""The distillation loop: the student's image encoder learns the stored teacher embeddings (MSE).

One process or many (torchrun: nccl on GPU, gloo on CPU). ``batch_size`` is the global batch of
one optimizer step, shared by ranks and gradient-accumulation steps, so a run's samples and loss
curve do not depend on how many processes run it. Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..io import atomic_write_bytes
from . import dist as _dist
from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from .data import DistillDataset, apply_flips, collate
from .logs import CSVLog, plot_loss
from .loop import (
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    autocast,
    build_optimizer,
    build_scheduler,
    check_optim,
    check_positive,
    check_resume,
    config_dict,
    lr_factor,
    optimize,
    resolve_precision,
    restore,
    resumed_settings,
    rng_states,
    seed_all,
    step_loader,
    unwrap,
)
from .models import ENCODER_PREFIX, build_distill_sam
from .store import DamagedEmbeddingError, EmbeddingStore, list_images, preprocess_batch

__all__ = ["OPTIMIZERS", "PRECISIONS", "SCHEDULES", "TrainConfig", "lr_factor", "train"]

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
        return resumed_settings(cls, saved, path, given, _PER_CALL_INHERITED, _PER_CALL_OWN)


def _check(cfg: TrainConfig) -> None:
    check_optim(cfg)
    for name in ("hflip", "vflip"):
        check_positive(name, getattr(cfg, name), allow_zero=True)


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
    precision = resolve_precision(cfg.precision, device)
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
        check_resume(cfg, ckpt["config"], path, _RUN_DEFINING)
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

    seed_all(cfg.seed + info.rank)
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
    scheduler = build_scheduler(optimizer, cfg)
    step = 0
    if ckpt is not None:
        weights = {k[len(ENCODER_PREFIX):]: v for k, v in ckpt["model"].items()}
        encoder.load_state_dict(weights, strict=True)
        step = restore(ckpt, optimizer, scheduler, info, cfg.seed)

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
    loader = step_loader(dataset, len(rels), cfg, info, step, end, collate)

    log = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.json", (json.dumps({**config_dict(cfg), "img_size": img_size,
                           "world_size": info.world_size, "teacher": store.meta}, indent=2) + "\n").encode())
        log = CSVLog(out / "log.csv", resume_step=step if ckpt else None)
        micro = cfg.batch_size // per_step
        print(
            f"train: {len(rels)} images, {steps_per_epoch} steps/epoch, steps {step}->{end} of {cfg.total_steps}; "
            f"batch {cfg.batch_size} = {micro} x {info.world_size} process(es) x {cfg.accumulate} accumulation; "
            f"{cfg.student} student at {img_size} px on {device} ({precision})"
        )

    def save(at_step: int, last_loss: float) -> None:
        states = rng_states(info)
        if info.is_main:
            save_checkpoint(out / "last.pt", {
                "model": {ENCODER_PREFIX + k: v for k, v in unwrap(model).state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": at_step,
                "epoch": at_step // steps_per_epoch,
                "loss": last_loss,
                "config": config_dict(cfg),
                "img_size": img_size,
                "student": cfg.student,
                "rng": states,
                "world_size": info.world_size,
                "images": len(rels),
                "precision": precision,
            })
            plot_loss(out / "log.csv", out / "loss.png")

    def micro_loss(batch: dict, k: int) -> torch.Tensor:
        x = preprocess_batch(sam, batch["images"], device)
        y = batch["targets"].to(device, non_blocking=True).float()
        x, y = apply_flips(x, y, batch)
        with autocast(device, precision):
            pred = model(x)
        return F.mse_loss(pred.float(), y)

    done = optimize(
        info=info, model=model, clip_params=encoder.parameters, optimizer=optimizer, scheduler=scheduler,
        batches=iter(loader), micro_loss=micro_loss, step=step, end=end, total_steps=cfg.total_steps,
        accumulate=cfg.accumulate, clip_grad=cfg.clip_grad, batch_size=cfg.batch_size,
        steps_per_epoch=steps_per_epoch, log_every=cfg.log_every, save_every=cfg.save_every, log=log, save=save,
        # a finished run's loss, if no step runs
        last_loss=float(ckpt["loss"]) if ckpt is not None else float("nan"), progress=cfg.progress,
    )
    step, last_loss, first_loss, images_seen, seconds = (done.step, done.last_loss, done.first_loss,
                                                        done.images_seen, done.seconds)
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
