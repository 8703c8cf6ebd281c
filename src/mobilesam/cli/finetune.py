"""``mobilesam finetune``: fine-tune SAM / MobileSAM on your own masks (COCO JSON or YOLO segmentation)."""

from __future__ import annotations

import argparse

from .train import add_run_arguments, run_config

EXAMPLE = """examples:
  mobilesam finetune --data train.json --images train/ --val-data val.json --val-images val/ --model mobile_sam.pt
  mobilesam finetune --data my_dataset/data.yaml --model mobile_sam.pt --epochs 20 --out runs/ft
  mobilesam finetune --data my_dataset/data.yaml --encoder lora --lora-rank 8 --hflip 0.5
  mobilesam finetune --resume runs/ft
  torchrun --nproc_per_node 4 -m mobilesam finetune --data my_dataset/data.yaml --batch-size 16

Writes RUN/best.pt (the official flat checkpoint of the best validation, by the mean of box and 1-click
mIoU, the starting weights included; the final weights without validation data: load it like
mobile_sam.pt), RUN/last.pt (everything to resume bit for bit on CPU with one thread), RUN/log.csv
(loss, learning rate, speed, validation mIoU), RUN/curves.png, RUN/config.json, and RUN/embeddings/
(frozen encoder: each image embedded once). A YOLO data.yaml trains on its train split and validates on
its val split. --resume RUN continues with the run's own settings (options of this call only)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune the mask decoder (optionally prompt encoder, image encoder or LoRA) on labelled masks",
        description="SAM-style fine-tuning on a COCO instances JSON or a YOLO segmentation dataset: prompts drawn "
        "from the ground truth (noisy boxes, points, rounds of corrective clicks with the previous logits as mask "
        "input, the best of 3 masks for a single click), focal + dice (20:1) + IoU MSE, AdamW with warmup and cosine "
        "decay, validation with the box and 1-click protocols of 'mobilesam val'. Runs on one process or under "
        "torchrun; --batch-size is the global number of images per optimizer step.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--data", help="training data: a COCO instances .json (with --images) or a YOLO dataset (data.yaml or folder); "
      "needed unless --resume")
    a("--images", default=None, help="the image folder of a COCO --data (default: the JSON's folder)")
    a("--split", default=None, help="split of a YOLO data.yaml to train on (default: train)")
    a("--val-data", default=None,
      help="validation data, as --data (default: the val split of a YOLO data.yaml; none for COCO)")
    a("--val-images", default=None, help="the image folder of a COCO --val-data")
    a("--val-split", default=None, help="split of --val-data (default: val)")
    a("--classes", nargs="+", default=None, help="train on these classes only, by index or name (e.g. 0 2)")
    a("--model", default=None, help="starting checkpoint or known weights name (default: mobile_sam.pt)")
    a("--out", default=None, help="run folder (default: runs/finetune, or the resumed run's folder)")
    a("--resume", default=None, help="continue a stopped run with its own settings: its folder or last.pt")
    a("--embeddings", default=None,
      help="frozen encoder: this model's stored embeddings of the training images ('mobilesam embed'); default: "
      "computed once into RUN/embeddings")
    a("--val-embeddings", default=None, help="the same for the validation images")
    a("--encoder", default=None, choices=("frozen", "full", "lora"),
      help="image encoder: frozen (default; stored embeddings), full (all its weights) or lora (low-rank adapters "
      "on its attention and MLP layers)")
    a("--lora-rank", type=int, default=None, help="rank of the LoRA adapters (default 8)")
    a("--lora-alpha", type=float, default=None, help="LoRA scale numerator: updates are scaled by alpha / rank (default: rank)")
    a("--train-prompt-encoder", action="store_true", default=None, help="also train the prompt encoder")
    a("--freeze-decoder", dest="train_decoder", action="store_false", default=None,
      help="keep the mask decoder as it is (train only the prompt encoder and/or the image encoder)")
    a("--objects-per-image", type=int, default=None, help="objects drawn per image and step (default 8)")
    a("--click-rounds", type=int, default=None,
      help="rounds of corrective clicks after the first prompt, each with the previous logits as mask input (default 2)")
    a("--box-prob", type=float, default=None, help="probability that an object's first prompt is its box (default 0.5)")
    a("--hflip", type=float, default=None, help="probability of a left-right flip of image and masks (trained encoder only)")
    add_run_arguments(p, epochs="default 10", warmup="at most 250", lr="default 1e-4")
    a("--val-every", type=int, default=None, help="validate every N steps (default: once per epoch) and at the end")
    a("--val-max-images", type=int, default=None, help="validate on a seeded random subset of N images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.finetuner import FinetuneConfig, finetune

    if args.classes is not None:
        args.classes = [int(c) if c.lstrip("-").isdigit() else c for c in args.classes]
    cfg = run_config(args, FinetuneConfig, ("data",))
    r = finetune(cfg, resume=args.resume)
    if r["rank"] == 0 and r["finished"]:
        val = r["validation"]
        first, last = (val[0], val[-1]) if val else (None, None)
        line = f"finetune: done, {r['step']} steps, final loss {r['loss']:.5g}"
        if first is not None:
            line += (f"; validation box mIoU {first['val_box_miou']:.4f} -> {last['val_box_miou']:.4f}, 1-click mIoU "
                     f"{first['val_point_miou']:.4f} -> {last['val_point_miou']:.4f} (steps {first['step']} -> "
                     f"{last['step']}); best at step {r['best']['step']}")
        print(line + f" -> {r['checkpoint']}")
    return 0
