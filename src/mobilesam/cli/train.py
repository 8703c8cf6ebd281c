"""``mobilesam train``: distil a teacher's image embeddings into a student image encoder."""

from __future__ import annotations

import argparse
from typing import Any

from . import CLIError

EXAMPLE = """example:
  mobilesam train --data sa1b/images --embeddings sa1b/emb_vit_h --out runs/mobilesam --epochs 8 --batch-size 8
  mobilesam train --resume runs/mobilesam
  torchrun --nproc_per_node 4 -m mobilesam train --data sa1b/images --embeddings sa1b/emb_vit_h --batch-size 32

Writes RUN/last.pt (model, optimizer, scheduler, step, RNG), RUN/log.csv, RUN/loss.png, RUN/config.json.
--resume RUN continues with the run's own settings: give only options of this call (--data, --embeddings
and --out where the folders moved, --workers, --device, --save-every, --log-every, --allow-missing,
--stop-after); any other option given must equal the run's."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a student image encoder on stored teacher embeddings (MobileSAM distillation)",
        description="Decoupled distillation (MobileSAM paper): the student image encoder learns to reproduce "
        "the teacher's stored image embeddings with an MSE loss. Runs on one process or under torchrun "
        "(nccl on GPU, gloo on CPU); --batch-size is the global batch of one optimizer step.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--data", help="folder of training images, searched recursively (e.g. sa1b/images); needed unless --resume")
    a("--embeddings", help="teacher embeddings of those images, from 'mobilesam embed' (e.g. sa1b/emb_vit_h); "
      "needed unless --resume")
    a("--out", default=None, help="run folder for checkpoints and logs (default: runs/train, or the resumed run's folder; e.g. runs/mobilesam)")
    a("--student", default=None, help="student architecture (e.g. vit_t, MobileSAM's TinyViT)")
    a("--init", default=None, help="start from the image encoder of this checkpoint (e.g. mobile_sam.pt)")
    a("--resume", default=None,
      help="continue a stopped run with its own settings (see below): its folder or a checkpoint (e.g. runs/mobilesam)")
    add_run_arguments(p, epochs="e.g. 8, as in the paper", warmup="at most 1000", lr="e.g. 5e-4")
    a("--hflip", type=float, default=None,
      help="probability of a horizontal flip of image and embedding (e.g. 0.5; an approximation, see the docs)")
    a("--vflip", type=float, default=None, help="probability of a vertical flip of image and embedding (e.g. 0.5)")
    a("--sync-bn", action="store_true", default=None, help="synchronise BatchNorm statistics across GPUs (CUDA only)")
    a("--allow-missing", action="store_true", default=None, help="train on the images that have embeddings, skipping the others")
    p.set_defaults(func=run)


def add_run_arguments(p: argparse.ArgumentParser, *, epochs: str, warmup: str, lr: str) -> None:
    """The options of every training run (``train``, ``finetune``): length, batch, optimizer, schedule,
    precision, loading, checkpoints, device. Every default is None, so that an option given is told from
    one not given (see :func:`run_config`)."""
    a = p.add_argument
    a("--epochs", type=int, default=None, help=f"passes over the images ({epochs})")
    a("--steps", type=int, default=None, help="total optimizer steps, instead of --epochs (e.g. 100000)")
    a("--batch-size", type=int, default=None, help="global images per optimizer step, over all processes (e.g. 8)")
    a("--accumulate", type=int, default=None, help="gradient-accumulation micro-steps per optimizer step (e.g. 2)")
    a("--lr", type=float, default=None, help=f"peak learning rate ({lr})")
    a("--weight-decay", type=float, default=None, help="decoupled weight decay, not applied to biases and norms (e.g. 0.05)")
    a("--optimizer", default=None, choices=("adamw", "adam", "sgd"), help="optimizer (e.g. adamw)")
    a("--momentum", type=float, default=None, help="SGD momentum (e.g. 0.9)")
    a("--schedule", default=None, choices=("cosine", "linear", "constant"),
      help="learning-rate decay after warmup, down to --min-lr-ratio x --lr (e.g. cosine)")
    a("--warmup-steps", type=int, default=None, help=f"linear warmup steps (default: 5%% of the steps, {warmup}; e.g. 500)")
    a("--min-lr-ratio", type=float, default=None, help="final learning rate as a fraction of --lr (e.g. 0.0)")
    a("--clip-grad", type=float, default=None, help="clip the gradient norm to this value; 0 turns it off (e.g. 0.5)")
    a("--precision", default=None, choices=("auto", "bf16", "fp32"),
      help="auto: bf16 autocast on CUDA, fp32 on CPU (e.g. fp32 to disable mixed precision)")
    a("--workers", type=int, default=None, help="data-loading worker processes per process (e.g. 8; 0: main process)")
    a("--seed", type=int, default=None, help="seed of the data order, flips and initialisation (e.g. 1)")
    a("--save-every", type=int, default=None, help="write RUN/last.pt every N steps, and at the end (e.g. 500)")
    a("--log-every", type=int, default=None, help="log loss, learning rate and speed every N steps (e.g. 50)")
    a("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    a("--stop-after", type=int, default=None,
      help="stop (with a checkpoint) after N steps in this call, e.g. for time-limited jobs; continue with --resume")


def _flag(message: str, given: dict) -> str:
    """``lr: ...`` -> ``--lr: ...``: the API's setting names, as this command's options."""
    name = message.split(":", 1)[0]
    return "--" + name.replace("_", "-") + message[len(name):] if name in given else message


def run_config(args: argparse.Namespace, cls: type, required: tuple[str, ...]) -> Any:
    """The settings of this call: a new run's from the options given (``cls``'s defaults for the others),
    or, with ``--resume``, the run's own with the options of this call (``cls.resumed``)."""
    from dataclasses import fields

    # Every option's default is None, so that one given is told from one not given: a resumed run takes
    # the run's own settings for those not given; a new run, the dataclass's defaults (kept in one place).
    names = {f.name for f in fields(cls) if f.init}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.resume is not None:
        try:
            return cls.resumed(args.resume, **given)
        except ValueError as e:
            raise CLIError(_flag(str(e), given), exit_code=2) from None
    for name in required:
        if name not in given:
            raise CLIError(f"--{name}: required for a new run (or pass --resume RUN to continue one)", exit_code=2)
    return cls(**given)


def run(args: argparse.Namespace) -> int:
    from ..train.trainer import TrainConfig, train

    cfg = run_config(args, TrainConfig, ("data", "embeddings"))
    r = train(cfg, resume=args.resume)
    if r["rank"] == 0 and r["finished"]:
        if r["images_per_s"] is None:
            print(f"train: the run was already complete at step {r['step']} (loss {r['loss']:.5g}) -> {r['checkpoint']}")
        else:
            print(
                f"train: done, {r['step']} steps, final loss {r['loss']:.5g}, {r['images_per_s']:.3g} img/s "
                f"over this call's {r['seconds']:.3g} s -> {r['checkpoint']}"
            )
    return 0
