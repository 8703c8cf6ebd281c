"""Fine-tuning SAM / MobileSAM on your own masks (COCO JSON or YOLO segmentation).

Trained: the mask decoder (default), optionally the prompt encoder, optionally the image encoder (all of
it, or low-rank adapters on its attention and MLP layers: :mod:`.lora`). Prompts are drawn from the
ground truth as SAM was trained (:mod:`.segdata`): a noisy box or a point inside the object, then
``click_rounds`` rounds of a corrective click drawn uniformly from the error region (positive where the
mask misses the object, negative where it spills), each round fed the previous low-resolution logits as
mask input. A single point is ambiguous: its round uses the 3 multimask outputs and learns from the best
one (lowest loss); every other round uses the single-mask output. Loss (:mod:`.losses`): 20 x focal +
dice on the masks, plus the MSE of the predicted IoU, averaged over objects and rounds.

With a frozen image encoder every image is embedded once (the store ``mobilesam embed`` writes: given
with ``embeddings``, else computed into ``RUN/embeddings``), so a step costs decoder time only; image
augmentations are then off (they would change the embedding).

The optimizer-step loop, checkpoints, logs and torchrun handling are the distillation's
(:mod:`.loop`, :mod:`.checkpoint`, :mod:`.logs`, :mod:`.dist`); ``batch_size`` is the global number of
images per optimizer step.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..datasets import SegmentationDataset, load_dataset
from ..io import atomic_write_bytes
from . import dist as _dist
from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from .logs import COLUMNS, CSVLog, plot_curves, read_log
from .lora import LORA_KEYS, LoRALinear, add_lora, merged_state_dict
from .loop import (
    autocast,
    build_optimizer,
    build_scheduler,
    check_optim,
    check_positive,
    check_resume,
    config_dict,
    optimize,
    resolve_precision,
    restore,
    resumed_settings,
    rng_states,
    seed_all,
    step_loader,
)
from .losses import iou_loss, mask_iou, mask_loss
from .segdata import FinetuneDataset, Prepared, collate, prepare
from .store import EmbeddingStore, encoder_fingerprint, preprocess_batch

FORMAT = "mobilesam-finetune"
ENCODER_MODES = ("frozen", "full", "lora")
VAL_COLUMNS = ("val_box_miou", "val_point_miou")
LOG_COLUMNS = (*COLUMNS, *VAL_COLUMNS)

_RUN_DEFINING = (
    "model", "classes", "split", "train_decoder", "train_prompt_encoder", "encoder", "lora_rank", "lora_alpha",
    "objects_per_image", "click_rounds", "box_prob", "hflip", "batch_size", "accumulate", "lr", "weight_decay",
    "optimizer", "momentum", "betas", "schedule", "warmup_steps", "min_lr_ratio", "clip_grad", "seed",
    "total_steps", "precision",
)
_PER_CALL_INHERITED = ("data", "images", "val_data", "val_images", "val_split", "embeddings", "val_embeddings",
                       "workers", "save_every", "log_every", "val_every", "val_max_images", "device")
_PER_CALL_OWN = ("out", "stop_after", "progress")


@dataclass
class FinetuneConfig:
    """Options of ``mobilesam finetune`` (see its --help for each)."""

    data: str
    images: str | None = None  # COCO: the image folder (default: the JSON's folder)
    split: str | None = None  # YOLO: the training split (default train)
    val_data: str | None = None  # default: the val split of a YOLO data.yaml that has one
    val_images: str | None = None
    val_split: str | None = None
    classes: list[int | str] | None = None
    model: str = "mobile_sam.pt"
    out: str | None = None  # None: the resumed run's folder, else runs/finetune
    embeddings: str | None = None  # frozen encoder: stored embeddings of the training images (else RUN/embeddings)
    val_embeddings: str | None = None
    train_decoder: bool = True
    train_prompt_encoder: bool = False
    encoder: str = "frozen"  # frozen, full or lora
    lora_rank: int = 8
    lora_alpha: float | None = None  # None: equal to the rank
    objects_per_image: int = 8
    click_rounds: int = 2
    box_prob: float = 0.5
    hflip: float = 0.0  # only with a trained encoder
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 4
    accumulate: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    warmup_steps: int | None = None  # None: 5% of the steps, at most 250
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0
    precision: str = "auto"
    workers: int = 2
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    val_every: int | None = None  # None: once per epoch
    val_max_images: int | None = None
    device: str | None = None
    stop_after: int | None = None
    progress: bool = True
    total_steps: int = field(default=0, init=False)

    @classmethod
    def resumed(cls, resume: str | os.PathLike, **given: Any) -> FinetuneConfig:
        """The settings of the run at ``resume`` with the options of this call in ``given`` (see
        :meth:`mobilesam.train.TrainConfig.resumed`)."""
        path = resolve_resume(resume)
        saved = load_checkpoint(path, FORMAT, "finetune")["config"]
        return resumed_settings(cls, saved, path, given, _PER_CALL_INHERITED, _PER_CALL_OWN)


def _check(cfg: FinetuneConfig) -> None:
    check_optim(cfg)
    for name in ("lora_rank", "objects_per_image"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    check_positive("click_rounds", cfg.click_rounds, allow_zero=True)
    for name in ("box_prob", "hflip"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
    if cfg.encoder not in ENCODER_MODES:
        raise ValueError(f"encoder: expected one of {ENCODER_MODES}, got {cfg.encoder!r}")
    if cfg.lora_alpha is not None:
        check_positive("lora_alpha", cfg.lora_alpha)
    for name in ("val_every", "val_max_images"):
        if getattr(cfg, name) is not None:
            check_positive(name, getattr(cfg, name))
    if cfg.encoder == "frozen" and cfg.hflip:
        raise ValueError("hflip: with a frozen image encoder the stored embeddings are used, and a flip would "
                         "change them; flips need --encoder full or lora")
    if cfg.encoder != "frozen" and cfg.embeddings is not None:
        raise ValueError(f"embeddings: the image encoder trains (--encoder {cfg.encoder}), so stored embeddings "
                         "cannot be used; drop --embeddings")
    if not (cfg.train_decoder or cfg.train_prompt_encoder or cfg.encoder != "frozen"):
        raise ValueError("train_decoder: nothing would train; train the decoder, the prompt encoder or the encoder")


def load_checkpoint_of(path: Path) -> dict[str, Any]:
    return load_checkpoint(path, FORMAT, "finetune")


class PromptedLoss(nn.Module):
    """The training forward of one micro-batch: embeddings (stored, or from the encoder), the rounds of
    prompts, and the loss averaged over objects and rounds (see the module docstring)."""

    def __init__(self, sam: nn.Module, click_rounds: int) -> None:
        super().__init__()
        self.sam = sam
        self.click_rounds = click_rounds

    def _prompt_embeddings(self, batch: dict, nb: int, clicks: torch.Tensor, labels: torch.Tensor,
                           mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (N, 2 + r, C) and dense (N, C, E, E) embeddings: box objects (the first ``nb``) get their
        box and clicks, point objects their point, clicks and the padding point; same token count."""
        pe = self.sam.prompt_encoder
        n = clicks.shape[0]
        sparse, dense = [], []
        if nb:
            sl = slice(0, nb)
            s, d = pe(points=(clicks[sl], labels[sl]) if clicks.shape[1] else None, boxes=batch["boxes"][sl],
                      masks=mask_input[sl] if mask_input is not None else None)
            sparse.append(s)
            dense.append(d)
        if nb < n:
            sl = slice(nb, n)
            first = batch["points"][sl, None]
            pts = torch.cat([first, clicks[sl]], 1)
            lab = torch.cat([torch.ones_like(labels[sl, :1]), labels[sl]], 1) if clicks.shape[1] else torch.ones(
                n - nb, 1, dtype=torch.int, device=first.device)
            s, d = pe(points=(pts, lab), boxes=None, masks=mask_input[sl] if mask_input is not None else None)
            sparse.append(s)
            dense.append(d)
        return torch.cat(sparse), torch.cat(dense)

    def forward(self, batch: dict) -> torch.Tensor:
        sam = self.sam
        device = sam.mask_decoder.iou_token.weight.device
        if "images" in batch:
            emb = sam.image_encoder(preprocess_batch(sam, batch["images"], device))
        else:
            emb = batch["embeddings"].to(device, non_blocking=True).float()
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        emb = emb[batch["obj_image"]]
        target = batch["targets"][:, None].float()
        valid = batch["valid"][:, None].float()
        n = target.shape[0]
        nb = int(batch["is_box"].sum())
        gen = torch.Generator(device=device).manual_seed(batch["click_seed"])
        clicks = torch.zeros(n, 0, 2, device=device)
        labels = torch.zeros(n, 0, dtype=torch.int, device=device)
        mask_input = None
        image_pe = sam.prompt_encoder.get_dense_pe()
        total = emb.new_zeros(())
        rows = torch.arange(n, device=device)
        for r in range(1 + self.click_rounds):
            sparse, dense = self._prompt_embeddings(batch, nb, clicks, labels, mask_input)
            masks, iou_pred = sam.mask_decoder.predict_masks(emb, image_pe, sparse, dense)  # (N, 4, g, g), (N, 4)
            losses = mask_loss(masks, target, valid)
            actual = mask_iou(masks.detach(), target, valid)
            if r == 0 and nb < n:
                # A single point is ambiguous: learn from the best of the 3 multimask outputs (SAM).
                best = torch.where(rows < nb, torch.zeros_like(rows), 1 + losses[:, 1:].argmin(1))
                iou_err = torch.where((rows < nb)[:, None], iou_loss(iou_pred[:, :1], actual[:, :1]).expand(-1, 3),
                                      iou_loss(iou_pred[:, 1:], actual[:, 1:])).mean(1)
            else:
                best = torch.zeros_like(rows)
                iou_err = iou_loss(iou_pred[:, 0], actual[:, 0])
            total = total + (losses[rows, best] + iou_err).mean()
            if r == self.click_rounds:
                break
            chosen = masks[rows, best].detach()
            mask_input = chosen[:, None].float()
            click, label = corrective_clicks(chosen, target[:, 0], valid[:, 0], gen)
            clicks = torch.cat([clicks, click[:, None]], 1)
            labels = torch.cat([labels, label[:, None]], 1)
        return total / (1 + self.click_rounds)


@torch.no_grad()
def corrective_clicks(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                      gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per object, drawn uniformly from the error region of low-res ``logits`` (N, g, g) against
    ``target`` (N, g, g) on the valid cells: label 1 in the missed part, 0 in the spill; a perfect mask
    gets a positive click in the object. Coordinates (N, 2) in the input frame (4 pixels per cell, the
    position inside the cell drawn too)."""
    pred = logits > 0
    t, v = target.bool(), valid.bool()
    error = (pred ^ t) & v
    none = ~error.flatten(1).any(1)
    weights = torch.where(none[:, None], (t & v).flatten(1), error.flatten(1)).float()
    weights[weights.sum(1) == 0] = v.flatten(1)[weights.sum(1) == 0].float()
    cell = torch.multinomial(weights, 1, generator=gen)[:, 0]
    g = logits.shape[-1]
    y, x = cell // g, cell % g
    jitter = torch.rand(cell.shape[0], 2, generator=gen, device=logits.device) * 4
    coords = torch.stack([x, y], 1).float() * 4 + jitter
    label = t.flatten(1).gather(1, cell[:, None])[:, 0].int()
    return coords, label


def _training_mode(sam: nn.Module) -> None:
    """Train mode, except the image encoder: its BatchNorm statistics stay those of the checkpoint, even
    when its weights train (batches of a few images would spoil them)."""
    sam.train()
    sam.image_encoder.eval()


def _set_trainable(sam: nn.Module, cfg: FinetuneConfig) -> list[str]:
    """Freeze everything, then unfreeze what ``cfg`` trains; returns the adapted layers (LoRA)."""
    sam.requires_grad_(False)
    adapted: list[str] = []
    if cfg.encoder == "lora":
        adapted = add_lora(sam.image_encoder, cfg.lora_rank, cfg.lora_alpha)
    elif cfg.encoder == "full":
        sam.image_encoder.requires_grad_(True)
        for unused in ("norm_head", "head"):  # TinyViT's ImageNet classifier: kept for the checkpoint, never run
            if isinstance(getattr(sam.image_encoder, unused, None), nn.Module):
                getattr(sam.image_encoder, unused).requires_grad_(False)
    if cfg.train_decoder:
        sam.mask_decoder.requires_grad_(True)
    if cfg.train_prompt_encoder:
        sam.prompt_encoder.requires_grad_(True)
    return adapted


def _checkpoint_weights(sam: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(flat official state_dict with adapters merged, the exact adapter state: adapter tensors and the
    un-merged weights of adapted layers) -- together what a resumed run needs bit for bit."""
    flat = merged_state_dict(sam)
    lora = {}
    for name, m in sam.named_modules():
        if isinstance(m, LoRALinear):
            lora[f"{name}.weight"] = m.weight.detach().clone()
            for key in LORA_KEYS:
                lora[f"{name}.{key}"] = getattr(m, key).detach().clone()
    return flat, lora


def _load_weights(sam: nn.Module, ckpt: dict[str, Any]) -> None:
    own = sam.state_dict()
    weights = dict(ckpt["model"])
    weights.update(ckpt.get("lora") or {})
    missing = sorted(set(own) - set(weights))
    if missing:
        raise ValueError(f"resume: the checkpoint lacks {', '.join(missing[:4])}")
    sam.load_state_dict({k: weights[k] for k in own}, strict=True)


def _default_val(cfg: FinetuneConfig, ds: SegmentationDataset) -> tuple[str | None, str | None, str | None]:
    """(val_data, val_images, val_split): the given ones, else the val split of the training data.yaml."""
    if cfg.val_data is not None:
        return cfg.val_data, cfg.val_images, cfg.val_split
    if ds.kind == "yolo" and ds.split is not None and ds.split != "val" and Path(ds.source).is_file():
        from ..formats.data_yaml import read_data_yaml

        if read_data_yaml(ds.source).get("val"):
            return str(ds.source), None, "val"
    return None, None, None


def _embeddings(sam: nn.Module, ds: SegmentationDataset, prepared: list[str], given: str | None, default: Path,
                cfg: FinetuneConfig, info: _dist.DistInfo, label: str) -> EmbeddingStore:
    """The store holding the (frozen) encoder's embedding of every image in ``prepared``: ``given`` (checked
    on its first image against this model's encoder), else computed once into ``default``."""
    from .store import embed_folder

    img_size = sam.image_encoder.img_size
    if given is not None:
        store = EmbeddingStore.open(given)
        if int(store.meta["img_size"]) != img_size:
            raise ValueError(f"{label}: '{given}' holds embeddings at {store.meta['img_size']} px, the model takes {img_size}")
        missing = store.missing(prepared)
        if missing:
            raise FileNotFoundError(
                f"{label}: {len(missing)} of the {len(prepared)} images have no embedding in '{given}' (first: "
                f"{missing[0]}); run 'mobilesam embed --model {cfg.model} --data {ds.root}' or leave out --{label.replace('_', '-')}"
            )
        fingerprint = store.meta.get("encoder_sha256")
        if fingerprint is None:  # a store from before fingerprints: run one image through the encoder
            _check_store(sam, ds, store, prepared[0], given, label)
        elif fingerprint != encoder_fingerprint(sam.image_encoder):
            raise ValueError(
                f"{label}: '{given}' was not written by this model's image encoder (its weights differ from those "
                f"recorded in {given}/meta.json); compute them with 'mobilesam embed' and this --model, or leave out "
                f"--{label.replace('_', '-')}"
            )
        return store
    embed_folder(sam, ds.root, default, images=prepared, workers=min(cfg.workers, 4), device=info.device,
                 teacher_name=f"image encoder of {cfg.model}", progress=cfg.progress)
    _dist.barrier(info)
    return EmbeddingStore.open(default)


@torch.no_grad()
def _check_store(sam: nn.Module, ds: SegmentationDataset, store: EmbeddingStore, rel: str, given: str, label: str) -> None:
    """One image through this model's encoder must give its stored embedding (fp16 storage, CPU or GPU
    kernels: within 2% of the embedding's scale)."""
    from ..io import read_image
    from ..transforms import ResizeLongestSide

    resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(read_image(ds.root / rel))
    x = torch.as_tensor(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].float()
    sam.image_encoder.eval()
    emb = sam.image_encoder(sam.preprocess(x.to(sam.device)))[0].float().cpu()
    stored = torch.from_numpy(store.read(rel)).float()
    err = float((emb - stored).abs().max() / stored.abs().max().clamp(min=1e-6))
    if err > 0.02:
        raise ValueError(
            f"{label}: '{given}' was not written by this model's image encoder (image '{rel}' differs by "
            f"{err:.1%} of the embedding's scale); compute them with 'mobilesam embed' and this --model, or leave "
            f"out --{label.replace('_', '-')}"
        )


def _validate(sam: nn.Module, val_ds: SegmentationDataset, indices: list[int], store: EmbeddingStore | None,
              info: _dist.DistInfo) -> dict[str, float]:
    """Box and 1-click mIoU of the current model on the validation images (split across ranks)."""
    from ..backends import create_predictor
    from ..validation.runner import evaluate

    pred = create_predictor(sam, "torch")  # eval mode
    mine = indices[info.rank :: info.world_size]
    objects, _, _, _ = evaluate(pred, val_ds, mine, max_clicks=1, embeddings=store, progress=False, desc="finetune val")
    _training_mode(sam)
    pairs = [(o["box_iou"], o["click_ious"][0]) for o in objects]
    if info.distributed:
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, pairs)
        pairs = [p for part in gathered for p in part]
    if not pairs:
        return {}
    arr = np.array(pairs)
    return {"val_box_miou": float(arr[:, 0].mean()), "val_point_miou": float(arr[:, 1].mean())}


def finetune(cfg: FinetuneConfig | None = None, resume: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """Fine-tune (or continue, with ``resume``) a SAM / MobileSAM model on labelled masks; returns a summary.

    Give a :class:`FinetuneConfig`, or its fields as keyword ``options`` (``finetune(data="coco.json",
    images="imgs", model="mobile_sam.pt", epochs=5)``). ``resume``: a run folder or its last.pt; without
    ``cfg`` the run's own settings are taken, with the options of this call (see
    :meth:`FinetuneConfig.resumed`).

    Writes into ``cfg.out``: ``best.pt`` (the official flat checkpoint of the best validation, by the
    mean of box and 1-click mIoU; the final weights when there is no validation data), ``last.pt``
    (everything to resume bit for bit), ``log.csv``, ``curves.png`` (loss and validation mIoU),
    ``config.json``, and ``embeddings/`` (frozen encoder, unless ``embeddings`` was given). Under
    torchrun, call it in every rank.
    """
    if cfg is None:
        if resume is not None:
            cfg = FinetuneConfig.resumed(resume, **options)
        else:
            cfg = FinetuneConfig(**options)
    elif options:
        raise TypeError("finetune: give a FinetuneConfig or keyword options, not both")
    _check(cfg)
    return _finetune(cfg, _dist.setup(cfg.device), resume)


def _finetune(cfg: FinetuneConfig, info: _dist.DistInfo, resume: str | os.PathLike | None) -> dict[str, Any]:
    from ..build import build_sam, detect_model_type
    from ..modeling import Sam

    device = info.device
    precision = resolve_precision(cfg.precision, device)
    is_coco = Path(cfg.data).suffix.lower() == ".json"
    ds = load_dataset(cfg.data, cfg.images, split=cfg.split or (None if is_coco else "train"), classes=cfg.classes)
    prepared: Prepared = prepare(ds, progress=cfg.progress and info.is_main)
    if not prepared.images:
        raise ValueError(f"data: no object with a mask to train on ({ds.report()})")
    val_data, val_images, val_split = _default_val(cfg, ds)
    val_ds = None
    if val_data is not None:
        val_ds = load_dataset(val_data, val_images, split=val_split, classes=cfg.classes)
        if not any(not i.iscrowd and i.has_mask for e in val_ds.images for i in e.instances):
            raise ValueError(f"val_data: no object with a mask to validate on ({val_ds.report()})")
    per_step = cfg.accumulate * info.world_size
    if cfg.batch_size % per_step:
        raise ValueError(
            f"batch_size: the global batch ({cfg.batch_size}) must be a multiple of accumulate x processes "
            f"({cfg.accumulate} x {info.world_size} = {per_step})"
        )
    n_images = len(prepared.images)
    if n_images < cfg.batch_size:
        raise ValueError(f"batch_size: {cfg.batch_size} is more than the {n_images} images with objects to train on")
    steps_per_epoch = n_images // cfg.batch_size
    cfg.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    if cfg.warmup_steps is None:
        cfg.warmup_steps = min(250, cfg.total_steps // 20)
    val_every = cfg.val_every or steps_per_epoch

    ckpt, path = None, None
    if resume is not None:
        path = resolve_resume(resume)
        ckpt = load_checkpoint_of(path)
        check_resume(cfg, ckpt["config"], path, _RUN_DEFINING, new_run="another --out")
        if ckpt.get("precision", precision) != precision:
            raise ValueError(f"device: the run '{path}' trained in {ckpt['precision']}, this call on {device} would "
                             f"use {precision}; resume it on the kind of device it started on (--device)")
        if ckpt.get("images", n_images) != n_images:
            raise ValueError(f"data: the run '{path}' trained on {ckpt['images']} images, '{cfg.data}' has {n_images} "
                             "with objects now; a resumed run needs the same data (or start a new run)")
    out = Path(cfg.out or (path.parent if path is not None else "runs/finetune")).expanduser()
    if ckpt is None and (out / "last.pt").exists():
        raise FileExistsError(
            f"out: '{out}' already holds a run (last.pt); pass --resume {out} to continue it, or choose another --out"
        )

    seed_all(cfg.seed + info.rank)
    if ckpt is None:
        sam = build_sam(cfg.model, device="cpu")
    else:
        sam = build_sam(None, model_type=ckpt["model_type"], device="cpu")
    if not isinstance(sam, Sam):
        raise ValueError(f"model: fine-tuning takes SAM / MobileSAM checkpoints; '{cfg.model}' is a {type(sam).__name__}")
    model_type = detect_model_type(sam.state_dict())
    adapted = _set_trainable(sam, cfg)
    if ckpt is not None:
        _load_weights(sam, ckpt)
    sam.to(device)

    frozen = cfg.encoder == "frozen"
    files = [im.file for im in prepared.images]
    store = _embeddings(sam, ds, files, cfg.embeddings, out / "embeddings", cfg, info, "embeddings") if frozen else None
    val_indices: list[int] = []
    val_store = None
    if val_ds is not None:
        val_indices = list(range(len(val_ds.images)))
        if cfg.val_max_images is not None and cfg.val_max_images < len(val_indices):
            val_indices = sorted(np.random.default_rng(cfg.seed).choice(len(val_indices), cfg.val_max_images,
                                                                         replace=False).tolist())
        if frozen:
            val_files = [val_ds.images[i].file for i in val_indices
                         if any(not x.iscrowd and x.has_mask for x in val_ds.images[i].instances)]
            same_root = val_ds.root.resolve() == ds.root.resolve()
            if same_root and cfg.val_embeddings is None and not store.missing(val_files):
                val_store = store  # the validation images are among those already embedded
            else:
                default = out / ("embeddings" if same_root and cfg.embeddings is None else "embeddings_val")
                val_store = _embeddings(sam, val_ds, val_files, cfg.val_embeddings, default, cfg, info,
                                        "val_embeddings")
    _training_mode(sam)

    module = PromptedLoss(sam, cfg.click_rounds)
    optimizer = build_optimizer(sam, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    step = 0
    best = {"metric": None, "step": None}
    if ckpt is not None:
        step = restore(ckpt, optimizer, scheduler, info, cfg.seed)
        best = dict(ckpt.get("best") or best)
    model: nn.Module = module
    if info.distributed:
        # Which of the 4 mask outputs gets a gradient depends on the prompts of the micro-batch.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    dataset = FinetuneDataset(ds, prepared.images, sam.image_encoder.img_size, store=store,
                              objects_per_image=cfg.objects_per_image, box_prob=cfg.box_prob, hflip=cfg.hflip,
                              seed=cfg.seed)
    end = cfg.total_steps if cfg.stop_after is None else min(cfg.total_steps, step + cfg.stop_after)
    loader = step_loader(dataset, n_images, cfg, info, step, end, partial(collate, seed=cfg.seed))

    log = None
    trained = [n for n, p in sam.named_parameters() if p.requires_grad]
    n_trained = sum(p.numel() for p in sam.parameters() if p.requires_grad)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.json", (json.dumps({
            **config_dict(cfg), "model_type": model_type, "world_size": info.world_size,
            "trained_parameters": n_trained, "lora_layers": len(adapted),
            "data_report": ds.report(), "set_aside": prepared.counts,
        }, indent=2) + "\n").encode())
        log = CSVLog(out / "log.csv", resume_step=step if ckpt else None, columns=LOG_COLUMNS)
        what = ["mask decoder"] * cfg.train_decoder + ["prompt encoder"] * cfg.train_prompt_encoder
        what += {"full": ["image encoder"], "lora": [f"LoRA rank {cfg.lora_rank} on {len(adapted)} encoder layers"]}.get(cfg.encoder, [])
        print(
            f"finetune: {ds.report()}; training on {n_images} images with {prepared.counts['objects']} objects, "
            f"{steps_per_epoch} steps/epoch, steps {step}->{end} of {cfg.total_steps}; training "
            f"{' + '.join(what)} ({n_trained:,} parameters) of a {model_type} on {device} ({precision})"
            + ("; frozen encoder: stored embeddings, no image augmentation" if frozen else "")
            + (f"; validating on {len(val_indices)} images of {val_ds.source} every {val_every} steps" if val_ds else
               "; no validation data (best.pt will hold the final weights)")
        )

    def plot() -> None:
        plot_curves(out / "log.csv", out / "curves.png", LOG_COLUMNS,
                    [("training loss (20 focal + dice + IoU MSE)", ["loss"], None),
                     ("validation mIoU", list(VAL_COLUMNS), (0.0, 1.0))])

    def save_best(at_step: int, metric: float | None) -> None:
        if info.is_main:
            flat, _ = _checkpoint_weights(sam)
            buf = io.BytesIO()
            torch.save(flat, buf)
            atomic_write_bytes(out / "best.pt", buf.getvalue())
        best.update(metric=metric, step=at_step)

    def save(at_step: int, last_loss: float) -> None:
        states = rng_states(info)
        if info.is_main:
            flat, lora = _checkpoint_weights(sam)
            save_checkpoint(out / "last.pt", {
                "model": flat, "lora": lora, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": at_step, "epoch": at_step // steps_per_epoch, "loss": last_loss, "config": config_dict(cfg),
                "model_type": model_type, "rng": states, "world_size": info.world_size, "images": n_images,
                "precision": precision, "best": dict(best),
            }, FORMAT)
            plot()

    def validate_at(at_step: int) -> dict[str, float] | None:
        if val_ds is None or not (at_step % val_every == 0 or at_step == cfg.total_steps):
            return None
        metrics = _validate(sam, val_ds, val_indices, val_store, info)
        if metrics:
            value = (metrics["val_box_miou"] + metrics["val_point_miou"]) / 2
            if best["metric"] is None or value > best["metric"]:
                save_best(at_step, value)
        return metrics

    if ckpt is None and val_ds is not None:
        first = _validate(sam, val_ds, val_indices, val_store, info)  # step 0: the starting point, a candidate too
        if first:
            save_best(0, (first["val_box_miou"] + first["val_point_miou"]) / 2)
            if log is not None:
                log.write(step=0, epoch=0, **first)

    def micro_loss(batch: dict, k: int) -> torch.Tensor:
        with autocast(device, precision):
            return model(batch)

    done = optimize(
        info=info, model=model, clip_params=lambda: [p for p in sam.parameters() if p.requires_grad],
        optimizer=optimizer, scheduler=scheduler, batches=iter(loader), micro_loss=micro_loss, step=step, end=end,
        total_steps=cfg.total_steps, accumulate=cfg.accumulate, clip_grad=cfg.clip_grad, batch_size=cfg.batch_size,
        steps_per_epoch=steps_per_epoch, log_every=cfg.log_every, save_every=cfg.save_every, log=log, save=save,
        after_step=validate_at, last_loss=float(ckpt["loss"]) if ckpt is not None else float("nan"),
        desc="finetune", progress=cfg.progress,
    )
    finished = done.step >= cfg.total_steps
    if finished and val_ds is None:
        save_best(done.step, None)
    if info.is_main:
        plot()
    rows = [r for r in read_log(out / "log.csv", LOG_COLUMNS) if r["val_box_miou"] == r["val_box_miou"]]
    summary = {
        "step": done.step, "total_steps": cfg.total_steps, "finished": finished, "loss": done.last_loss,
        "first_logged_loss": done.first_loss, "seconds": done.seconds,
        "images_per_s": done.images_seen / done.seconds if done.images_seen and done.seconds > 0 else None,
        "validation": [{"step": int(r["step"]), **{k: r[k] for k in VAL_COLUMNS}} for r in rows],
        "best": dict(best), "trained_parameters": n_trained, "trained_tensors": len(trained),
        "out": str(out), "checkpoint": str(out / "best.pt"), "last": str(out / "last.pt"),
        "world_size": info.world_size, "rank": info.rank, "set_aside": prepared.counts,
    }
    if info.is_main and not finished:
        print(f"finetune: stopped at step {done.step} of {cfg.total_steps}; continue with --resume {out}")
    return summary


__all__ = ["ENCODER_MODES", "FORMAT", "FinetuneConfig", "PromptedLoss", "corrective_clicks", "finetune"]
