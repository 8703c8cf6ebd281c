"""``mobilesam annotate``: detector boxes (or existing box labels) -> SAM masks -> a YOLO segmentation dataset."""

from __future__ import annotations

import argparse

from . import (
    CLIError,
    add_backend_argument,
    add_embedding_cache_arguments,
    add_model_argument,
    check_backend,
    embedding_cache_options,
)

EXAMPLES = """\
examples:
  mobilesam annotate images/                                     YOLO boxes (yolo11x.pt, needs ultralytics) -> masks
  mobilesam annotate images/ --boxes labels/                     YOLO box labels -> segmentation labels
  mobilesam annotate images/ --boxes instances_train.json --coco  COCO boxes -> YOLO + COCO masks
  mobilesam annotate images/ --det-model fasterrcnn_resnet50_fpn_v2 --classes 0 2 --conf 0.5
  mobilesam annotate images/ --det-model retinanet_resnet50_fpn_v2 --det-weights retina.pth
  torchrun --nproc-per-node 4 -m mobilesam annotate images/ --boxes labels/   one shard per process

Writes OUTPUT_DIR/<image>.txt (one 'class x1 y1 x2 y2 ...' line per object, normalised to [0, 1];
an empty file for an image without objects), classes.txt and data.yaml (also when an error stops the
run), and with --coco OUTPUT_DIR/instances.json. Unreadable images (corrupt, decompression bombs, too
thin for the detector) are skipped, counted as failed and retried by the next run. A rerun skips images
already labelled (--overwrite redoes them). With --coco, per-image pieces wait in OUTPUT_DIR/.coco_parts/
until the run ends; it is removed then, and only an interrupted run leaves it, for its rerun.

Ultralytics .pt weights are pickled Python objects: loading one runs code from the file. The official
weights (yolo11n.pt ... yolo11x.pt, yolov8n.pt ..., their -seg versions) are checked by SHA-256 (and
downloaded, checked, when not in the current folder); any other .pt needs --trust-weights.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "annotate",
        help="auto-annotate images: detector boxes -> SAM masks -> YOLO segmentation labels",
        description="Turn detections (a detector, or existing box labels) into segmentation labels with SAM.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="folder of images (subfolders included) or one image: images/")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--det-model",
        default=None,
        help="detector: Ultralytics weights (default yolo11x.pt; pip install 'mobilesam[annotate-yolo]'; a .pt "
        "other than the official ones needs --trust-weights) or a torchvision model name: "
        "--det-model fasterrcnn_resnet50_fpn_v2",
    )
    src.add_argument(
        "--boxes",
        default=None,
        metavar="LABELS",
        help="existing box labels instead of a detector: a folder of YOLO .txt files (--boxes labels/) "
        "or a COCO JSON (--boxes instances.json)",
    )
    p.add_argument(
        "--trust-weights",
        action="store_true",
        help="load Ultralytics --det-model weights that are not official (by SHA-256): they are pickles, and "
        "loading one runs code from the file, so only for files from a source you trust: --trust-weights",
    )
    p.add_argument(
        "--det-weights",
        default=None,
        help="local state_dict for a torchvision --det-model (default: its pretrained COCO weights): "
        "--det-weights frcnn.pth",
    )
    add_model_argument(p)
    add_backend_argument(p)
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 or mps (default: best available): --device cpu")
    p.add_argument(
        "--conf", type=float, default=0.25, help="minimum detection score (default: %(default)s): --conf 0.5"
    )
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default: %(default)s): --iou 0.6")
    p.add_argument(
        "--imgsz", type=int, default=640, help="detector input size, longest side (default: %(default)s): --imgsz 1280"
    )
    p.add_argument(
        "--max-det", type=int, default=300, help="most detections per image (default: %(default)s): --max-det 100"
    )
    p.add_argument(
        "--classes", type=int, nargs="+", default=None, metavar="C", help="class indices to keep: --classes 0 2"
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help="label folder (default: <data>_auto_annotate_labels beside data): --output-dir dataset/labels",
    )
    p.add_argument("--coco", action="store_true", help="also write OUTPUT_DIR/instances.json (COCO, RLE masks): --coco")
    p.add_argument("--overwrite", action="store_true", help="redo images that already have a label file: --overwrite")
    p.add_argument(
        "--strategy",
        choices=("all", "largest"),
        default="all",
        help="a mask in several parts: join all parts into one polygon (as Ultralytics), or keep the largest "
        "(default: %(default)s): --strategy largest",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary: --quiet")
    add_embedding_cache_arguments(p)
    from .convert import FORMATS, add_simplify_argument

    add_simplify_argument(p)
    p.add_argument(
        "--export", nargs="+", choices=FORMATS, default=(), metavar="FORMAT",
        help=f"also write the labels for a labelling tool, into OUTPUT_DIR/export/ ({', '.join(FORMATS)}): "
             "--export labelstudio cvat-coco",
    )
    p.set_defaults(func=run)


def cli_message(message: str) -> str:
    """A Python API message in the words of this command's flags (``weights=PATH`` -> ``--det-weights PATH``)."""
    message = message.replace("pass weights=PATH to a local state_dict", "pass --det-weights PATH (a local state_dict)")
    message = message.replace("Pass trust_weights=True", "Pass --trust-weights")
    return message.replace("det_model: ", "--det-model: ", 1) if message.startswith("det_model: ") else message


def run(args: argparse.Namespace) -> int:
    from ..annotate import auto_annotate

    det: object = args.boxes or args.det_model or "yolo11x.pt"
    if args.det_weights is not None:
        from ..detectors import TORCHVISION_MODELS, TorchvisionDetector

        name = str(det).removeprefix("torchvision:")
        if args.boxes or name not in TORCHVISION_MODELS and not str(det).startswith("torchvision:"):
            raise CLIError(
                f"--det-weights: only for a torchvision --det-model ({', '.join(TORCHVISION_MODELS)}), got {det!r}",
                exit_code=2,
            )
        try:
            det = TorchvisionDetector(name, weights=args.det_weights)  # takes the run's device
        except (RuntimeError, ValueError) as e:
            raise CLIError(cli_message(str(e))) from None
    try:
        auto_annotate(
            args.data,
            det_model=det,
            sam_model=args.model,
            device=args.device,
            conf=args.conf,
            iou=args.iou,
            imgsz=args.imgsz,
            max_det=args.max_det,
            classes=args.classes,
            output_dir=args.output_dir,
            overwrite=args.overwrite,
            save_coco=args.coco,
            strategy=args.strategy,
            backend=check_backend(args.backend),
            trust_weights=args.trust_weights,
            verbose=not args.quiet,
            batch=args.batch,
            **embedding_cache_options(args),
            **({} if args.simplify is None else {"simplify": args.simplify}),
        )
    except (ValueError, RuntimeError) as e:
        raise CLIError(cli_message(str(e).replace("simplify: ", "--simplify: ", 1))) from None
    if args.export:
        from pathlib import Path

        from ..annotate import default_output_dir, list_images
        from ..convert import DEFAULT_NAMES, convert
        from ..masks import DEFAULT_SIMPLIFY

        root, _ = list_images(args.data)
        out = Path(args.output_dir).expanduser() if args.output_dir else default_output_dir(args.data)
        simplify = DEFAULT_SIMPLIFY if args.simplify is None else args.simplify
        for fmt in args.export:
            path = convert(root, out, fmt, out / "export" / DEFAULT_NAMES[fmt], simplify=simplify,
                           progress=not args.quiet)
            if not args.quiet:
                print(f"Exported {fmt}: {path}")
    return 0
