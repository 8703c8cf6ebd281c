"""``mobilesam train``: distil a teacher's image embeddings into a student image encoder."""

from __future__ import annotations

import argparse

EXAMPLE = """example:
  mobilesam train --data sa1b/images --embeddings sa1b/emb_vit_h --out runs/mobilesam --epochs 8 --batch-size 8
  mobilesam train --data sa1b/images --embeddings sa1b/emb_vit_h --out runs/mobilesam --resume runs/mobilesam
  torchrun --nproc_per_node 4 -m mobilesam train --data sa1b/images --embeddings sa1b/emb_vit_h --batch-size 32

Writes RUN/last.pt (model, optimizer, scheduler, step, RNG), RUN/log.csv, RUN/loss.png, RUN/config.json."""


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
    a("--data", required=True, help="folder of training images, searched recursively (e.g. sa1b/images)")
    a("--embeddings", required=True, help="teacher embeddings of those images, from 'mobilesam embed' (e.g. sa1b/emb_vit_h)")
    a("--out", default=None, help="run folder for checkpoints and logs (default: runs/train, or the resumed run's folder; e.g. runs/mobilesam)")
    a("--student", default="vit_t", help="student architecture (e.g. vit_t, MobileSAM's TinyViT)")
    a("--init", default=None, help="start from the image encoder of this checkpoint (e.g. mobile_sam.pt)")
    a("--resume", default=None, help="continue a stopped run: its folder or a checkpoint (e.g. runs/mobilesam)")
    a("--epochs", type=int, default=8, help="passes over the images (e.g. 8, as in the paper)")
    a("--steps", type=int, default=None, help="total optimizer steps, instead of --epochs (e.g. 100000)")
    a("--batch-size", type=int, default=8, help="global images per optimizer step, over all processes (e.g. 8)")
    a("--accumulate", type=int, default=1, help="gradient-accumulation micro-steps per optimizer step (e.g. 2)")
    a("--lr", type=float, default=1e-3, help="peak learning rate (e.g. 5e-4)")
    a("--weight-decay", type=float, default=0.01, help="decoupled weight decay, not applied to biases and norms (e.g. 0.05)")
    a("--optimizer", default="adamw", choices=("adamw", "adam", "sgd"), help="optimizer (e.g. adamw)")
    a("--momentum", type=float, default=0.9, help="SGD momentum (e.g. 0.9)")
    a("--schedule", default="cosine", choices=("cosine", "linear", "constant"),
      help="learning-rate decay after warmup, down to --min-lr-ratio x --lr (e.g. cosine)")
    a("--warmup-steps", type=int, default=None, help="linear warmup steps (default: 5%% of the steps, at most 1000; e.g. 500)")
    a("--min-lr-ratio", type=float, default=0.01, help="final learning rate as a fraction of --lr (e.g. 0.0)")
    a("--clip-grad", type=float, default=1.0, help="clip the gradient norm to this value; 0 turns it off (e.g. 0.5)")
    a("--precision", default="auto", choices=("auto", "bf16", "fp32"),
      help="auto: bf16 autocast on CUDA, fp32 on CPU (e.g. fp32 to disable mixed precision)")
    a("--hflip", type=float, default=0.0,
      help="probability of a horizontal flip of image and embedding (e.g. 0.5; an approximation, see the docs)")
    a("--vflip", type=float, default=0.0, help="probability of a vertical flip of image and embedding (e.g. 0.5)")
    a("--workers", type=int, default=4, help="data-loading worker processes per process (e.g. 8; 0: main process)")
    a("--seed", type=int, default=0, help="seed of the data order, flips and initialisation (e.g. 1)")
    a("--save-every", type=int, default=1000, help="write RUN/last.pt every N steps, and at the end (e.g. 500)")
    a("--log-every", type=int, default=10, help="log loss, learning rate and speed every N steps (e.g. 50)")
    a("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    a("--sync-bn", action="store_true", help="synchronise BatchNorm statistics across GPUs (CUDA only)")
    a("--allow-missing", action="store_true", help="train on the images that have embeddings, skipping the others")
    a("--stop-after", type=int, default=None,
      help="stop (with a checkpoint) after N steps in this call, e.g. for time-limited jobs; continue with --resume")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.trainer import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, embeddings=args.embeddings, out=args.out, student=args.student, init=args.init,
        epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, accumulate=args.accumulate,
        lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer, momentum=args.momentum,
        schedule=args.schedule, warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio,
        clip_grad=args.clip_grad, precision=args.precision, hflip=args.hflip, vflip=args.vflip,
        workers=args.workers, seed=args.seed, save_every=args.save_every, log_every=args.log_every,
        device=args.device, sync_bn=args.sync_bn, allow_missing=args.allow_missing, stop_after=args.stop_after,
    )
    r = train(cfg, resume=args.resume)
    if r["rank"] == 0 and r["finished"]:
        print(f"train: done, {r['step']} steps, final loss {r['loss']:.5g}, {r['images_per_s']:.1f} img/s -> {r['checkpoint']}")
    return 0
