"""``mobilesam assemble``: a trained student encoder + the teacher's decoder -> one official-format checkpoint."""

from __future__ import annotations

import argparse

EXAMPLE = """example:
  mobilesam assemble --encoder runs/train/last.pt --decoder-from sam_vit_h_4b8939.pth --out my_mobile_sam.pt
  mobilesam predict --model my_mobile_sam.pt ..."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "assemble",
        help="build a MobileSAM checkpoint from a trained encoder and the teacher's decoder",
        description="Combine the student's image encoder (a training checkpoint) with the teacher's prompt "
        "encoder and mask decoder into a flat state_dict in the official format, which mobilesam, "
        "SamPredictor and the official mobile_sam package load.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--encoder", required=True,
                   help="training checkpoint or any checkpoint with image_encoder.* weights (e.g. runs/train/last.pt)")
    p.add_argument("--decoder-from", required=True,
                   help="teacher checkpoint giving the prompt encoder and mask decoder (e.g. sam_vit_h_4b8939.pth)")
    p.add_argument("--out", required=True, help="file to write (e.g. my_mobile_sam.pt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.assemble import assemble

    r = assemble(args.encoder, args.decoder_from, args.out)
    print(
        f"assemble: {r['model_type']}, {r['keys']} tensors, {r['parameters']:,} parameters, "
        f"{r['size_bytes'] / 1e6:.1f} MB -> {r['out']}"
    )
    if r["trained_img_size"] != 1024:
        print(f"assemble: warning: the encoder was trained at {r['trained_img_size']} px; SAM runs it at 1024 px")
    return 0
