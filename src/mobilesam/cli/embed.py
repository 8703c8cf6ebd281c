"""``mobilesam embed``: store the teacher's image embeddings of a folder of images (for ``train``)."""

from __future__ import annotations

import argparse

from . import CLIError

EXAMPLE = """example:
  mobilesam embed --model sam_vit_h_4b8939.pth --data sa1b/images --out sa1b/emb_vit_h
  torchrun --nproc_per_node 4 -m mobilesam embed --model sam_vit_h_4b8939.pth --data sa1b/images --out sa1b/emb_vit_h

Each embedding is 256x64x64 float16 = 2 MiB; an interrupted run resumes where it stopped."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="compute and store teacher image embeddings for distillation",
        description="Compute the teacher's image embedding of every image under --data and store it (fp16, one "
        ".npy per image) under --out. Images already done are skipped, so a stopped run resumes. Under "
        "torchrun the images are split between processes.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="teacher checkpoint, path or known name (e.g. sam_vit_h_4b8939.pth)")
    p.add_argument("--data", required=True, help="folder of images, searched recursively (e.g. sa1b/images)")
    p.add_argument("--out", required=True, help="embeddings folder to create or complete (e.g. sa1b/emb_vit_h)")
    p.add_argument("--batch-size", type=int, default=1, help="images per teacher forward pass (e.g. 4 on a large GPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-loading worker processes (default: 4, or the number of CPUs if fewer; e.g. 8; "
                   "0 loads in the main process)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="teacher compute precision on CUDA (e.g. bf16: about 2-3x faster, slightly less exact); "
                   "embeddings are stored as fp16 either way")
    p.add_argument("--img-size", type=int, default=1024,
                   help="model input size (default 1024; smaller, e.g. 256, only for quick experiments: the "
                   "prompt encoder and mask decoder need 1024)")
    p.add_argument("--overwrite", action="store_true", help="recompute every embedding, even those already stored")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.store import embed_folder

    r = embed_folder(
        args.model, args.data, args.out, img_size=args.img_size, batch_size=args.batch_size,
        workers=args.workers, device=args.device, precision=args.precision, overwrite=args.overwrite,
    )
    if r["rank"] == 0:
        rate = f" ({r['images_per_s']:.3g} img/s)" if r["images_per_s"] is not None else ""
        print(
            f"embed: {r['images']} images: {r['computed']} computed{rate}, {r['skipped']} already stored, "
            f"{r['failed']} failed (unreadable) by this process -> {r['out']}"
        )
    if r["failed"]:
        name, why = r["failed_files"][0]
        more = f" and {r['failed'] - 1} more (listed above)" if r["failed"] > 1 else ""
        raise CLIError(
            f"{r['failed']} image(s) could not be read and have no embedding: '{name}' ({why}){more}; the others "
            "are stored (replace or remove the bad files, then run embed again to finish)"
        )
    return 0
