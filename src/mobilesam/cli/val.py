"""``mobilesam val``: mIoU between a student's and its teacher's masks on the same seeded prompts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError, add_backend_argument, check_backend

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


def check_out(args: argparse.Namespace) -> Path:
    """``--out`` as a path that can be written and is no input, checked before validation runs (which may
    take hours); missing parent folders are created when it is written, as for every output."""
    import os

    from ..io import walk_images

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise CLIError(f"--out: '{args.out}' is a folder; expected a JSON file to write (e.g. {out / 'val.json'})", exit_code=2)
    inputs = {Path(p).expanduser().resolve() for p in (args.model, args.teacher) if Path(p).expanduser().is_file()}
    target = out.resolve()
    data = Path(args.data).expanduser()
    if data.is_dir() and target.is_relative_to(data.resolve()):
        inputs.update((data / rel).resolve() for rel in walk_images(data))
    if target in inputs:
        raise CLIError(f"--out: '{args.out}' is an input of this run; choose another file (e.g. val.json)", exit_code=2)
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
