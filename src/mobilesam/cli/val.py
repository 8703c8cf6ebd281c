"""``mobilesam val``: mIoU between a student's and its teacher's masks on the same seeded prompts."""

from __future__ import annotations

import argparse
import json

from . import add_backend_argument, check_backend

EXAMPLE = """example:
  mobilesam val --model my_mobile_sam.pt --teacher sam_vit_h_4b8939.pth --data sa1b/val --prompts 5
  mobilesam val --model my_mobile_sam.pt --teacher sam_vit_h_4b8939.pth --data sa1b/val --embeddings sa1b/emb_val"""


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
    p.add_argument("--model", required=True, help="student checkpoint (e.g. my_mobile_sam.pt)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (e.g. sam_vit_h_4b8939.pth)")
    p.add_argument("--data", required=True, help="folder of images, searched recursively (e.g. sa1b/val)")
    p.add_argument("--embeddings", default=None,
                   help="the teacher's stored embeddings of these images, to skip its encoder (e.g. sa1b/emb_val)")
    p.add_argument("--prompts", type=int, default=5, help="prompts of each kind per image (e.g. 10)")
    p.add_argument("--max-images", type=int, default=None, help="validate on a seeded random subset (e.g. 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and of the subset (e.g. 1)")
    p.add_argument("--multimask", action="store_true",
                   help="use the best of the 3 multimask outputs (highest predicted IoU) instead of the single mask")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    add_backend_argument(p)
    p.add_argument("--out", default="val.json", help="JSON file for the summary and per-image IoUs (e.g. runs/val.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import atomic_write_bytes
    from ..train.val import format_table, validate

    result = validate(
        args.model, args.teacher, args.data, embeddings=args.embeddings, prompts=args.prompts,
        max_images=args.max_images, seed=args.seed, multimask=args.multimask, device=args.device,
        backend=check_backend(args.backend),
    )
    print(format_table(result["summary"]))
    path = atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(f"val: results saved to {path}")
    return 0
