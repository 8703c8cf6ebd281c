"""``mobilesam val``: a model on labelled data (``--data`` a COCO JSON or YOLO dataset: box and click mIoU,
NoC, mask AP), or, with ``--teacher``, mIoU between a student's and its teacher's masks on the same seeded
prompts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError, add_backend_argument, check_backend

EXAMPLE = """examples:
  mobilesam val --model mobile_sam.pt --data coco/annotations/instances_val2017.json --images coco/val2017
  mobilesam val --model runs/finetune/best.pt --data my_dataset/data.yaml --split val --out runs/val.json
  mobilesam val --model mobile_sam.pt --data instances_val2017.json --images val2017 --detections det.json
  mobilesam val --model my_mobile_sam.pt --teacher sam_vit_h_4b8939.pth --data sa1b/val --prompts 5

Labelled data (no --teacher): box mIoU, mIoU after 1/3/5 clicks, NoC@85/90 (overall and by COCO size),
mask AP with --detections or --det-model; writes --out (JSON: every number and each object's IoUs)
and a plot beside it (same name, .png)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "val",
        help="compare a student's masks with its teacher's (mIoU, embedding MSE)",
        description="The MobileSAM paper's measure: for each image the same seeded prompts (single points, two "
        "points 100-500 px apart, boxes) go to the student and the teacher; prints mIoU between their "
        "masks (overall and per prompt kind) and the embedding MSE, and writes them to a JSON file.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="checkpoint, known weights name or exported folder (e.g. mobile_sam.pt)")
    p.add_argument("--data", required=True,
                   help="labelled data: a COCO instances .json (with --images) or a YOLO dataset (data.yaml or its "
                   "folder); with --teacher: a folder of images, searched recursively (e.g. sa1b/val)")
    p.add_argument("--images", default=None, help="the image folder of a COCO --data (default: the JSON's folder)")
    p.add_argument("--split", default=None, help="split of a YOLO data.yaml: train, val or test (default: val)")
    p.add_argument("--classes", nargs="+", default=None,
                   help="only objects of these classes, by index (sorted COCO category ids for COCO) or name (e.g. 0 2)")
    p.add_argument("--max-clicks", type=int, default=20, help="click budget of NoC@85/90 (default: %(default)s)")
    p.add_argument("--full-curve", action="store_true",
                   help="click every object --max-clicks times (else 5, then until IoU 0.90) for the full curve")
    p.add_argument("--detections", default=None,
                   help="COCO results JSON of a detector ([{image_id, category_id, bbox, score}]): mask AP of the model "
                   "segmenting those boxes (e.g. det.json)")
    p.add_argument("--det-model", default=None,
                   help="a detector for mask AP, as in 'annotate': YOLO weights, a torchvision model name or box labels")
    p.add_argument("--conf", type=float, default=0.001, help="--det-model score threshold (default: %(default)s)")
    p.add_argument("--iou", type=float, default=0.7, help="--det-model NMS IoU (default: %(default)s)")
    p.add_argument("--max-det", type=int, default=100, help="--det-model detections per image (default: %(default)s)")
    p.add_argument("--trust-weights", action="store_true", help="load --det-model Ultralytics weights that are not official")
    p.add_argument("--teacher", default=None,
                   help="student-vs-teacher mode: the teacher checkpoint (e.g. sam_vit_h_4b8939.pth)")
    p.add_argument("--embeddings", default=None,
                   help="with --teacher: its stored embeddings of these images, to skip its encoder (e.g. sa1b/emb_val)")
    p.add_argument("--prompts", type=int, default=5, help="with --teacher: prompts of each kind per image (e.g. 10)")
    p.add_argument("--max-images", type=int, default=None, help="validate on a seeded random subset (e.g. 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and of the subset (e.g. 1)")
    p.add_argument("--multimask", action="store_true",
                   help="with --teacher: use the best of the 3 multimask outputs (highest predicted IoU) instead of the single mask")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    add_backend_argument(p)
    p.add_argument("--out", default="val.json",
                   help="JSON file for the summary and per-object (or per-image) IoUs; the plot goes beside it as "
                   ".png (e.g. runs/val.json)")
    p.set_defaults(func=run)


def check_out(args: argparse.Namespace) -> Path:
    """``--out`` as a path that can be written and is no input, checked before validation runs (which may
    take hours); missing parent folders are created when it is written, as for every output."""
    import os

    from ..io import walk_images

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise CLIError(f"--out: '{args.out}' is a folder; expected a JSON file to write (e.g. {out / 'val.json'})", exit_code=2)
    given = (args.model, args.teacher, args.data, args.detections, getattr(args, "det_model", None))
    inputs = {Path(p).expanduser().resolve() for p in given if p is not None and Path(p).expanduser().is_file()}
    target = out.resolve()
    data = Path(args.data).expanduser()
    folders = [data if data.is_dir() else data.parent]
    if getattr(args, "images", None):
        folders.append(Path(args.images).expanduser())
    for folder in folders:
        if folder.is_dir() and (target.is_relative_to(folder.resolve()) or target.with_suffix(".png").is_relative_to(
                folder.resolve())):
            inputs.update((folder / rel).resolve() for rel in walk_images(folder, suffixes=None))
    if target in inputs:
        raise CLIError(f"--out: '{args.out}' is an input of this run; choose another file (e.g. val.json)", exit_code=2)
    if args.teacher is None and target.with_suffix(".png") in inputs:
        raise CLIError(f"--out: the plot beside '{args.out}' ('{target.with_suffix('.png').name}') would replace an "
                       "input of this run; choose another file name (e.g. val.json)", exit_code=2)
    if args.embeddings is not None and target.is_relative_to(Path(args.embeddings).expanduser().resolve()):
        raise CLIError(f"--out: '{args.out}' is inside the --embeddings folder; choose a file outside it", exit_code=2)
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the first folder that exists: the missing ones are created under it
    if not folder.is_dir():
        raise CLIError(f"--out: cannot write '{args.out}': '{folder}' is a file, not a folder", exit_code=2)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"--out: cannot write '{args.out}': no permission to write in '{folder}'", exit_code=2)
    return out


def run(args: argparse.Namespace) -> int:
    if args.teacher is None:
        return run_labelled(args)
    for name in ("images", "split", "classes", "detections", "det_model"):
        if getattr(args, name) is not None:
            raise CLIError(f"--{name.replace('_', '-')}: only for labelled --data (without --teacher)", exit_code=2)
    from ..io import atomic_write_text
    from ..train.val import format_table, validate

    out = check_out(args)
    result = validate(
        args.model, args.teacher, args.data, embeddings=args.embeddings, prompts=args.prompts,
        max_images=args.max_images, seed=args.seed, multimask=args.multimask, device=args.device,
        backend=check_backend(args.backend),
    )
    print(format_table(result["summary"]))
    path = atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"val: results saved to {path}")
    return 0


def run_labelled(args: argparse.Namespace) -> int:
    from ..validation import format_table, val

    for name, given in (("embeddings", args.embeddings is not None), ("multimask", args.multimask),
                        ("prompts", args.prompts != 5)):
        if given:
            raise CLIError(f"--{name}: only with --teacher (the student-vs-teacher measure); labelled --data uses "
                           "the box and click protocols", exit_code=2)
    out = check_out(args)
    classes = None
    if args.classes is not None:
        classes = [int(c) if c.lstrip("-").isdigit() else c for c in args.classes]
    result = val(
        args.model, args.data, args.images, split=args.split, classes=classes, backend=check_backend(args.backend),
        device=args.device, max_clicks=args.max_clicks, full_curve=args.full_curve, detections=args.detections,
        det_model=args.det_model, conf=args.conf, iou=args.iou, max_det=args.max_det, trust_weights=args.trust_weights,
        max_images=args.max_images, seed=args.seed, out=out,
    )
    print(format_table(result))
    print(f"val: results saved to {result['json']}, plot {result['plot']}")
    return 0
