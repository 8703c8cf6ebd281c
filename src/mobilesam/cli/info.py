"""``mobilesam info``: a model's layers, parameters, GFLOPs and size."""

from __future__ import annotations

import argparse

from . import add_model_argument

EXAMPLES = """\
examples:
  mobilesam info                                 MobileSAM (mobile_sam.pt)
  mobilesam info --model sam_vit_b_01ec64.pth    any checkpoint file or known name
  mobilesam info --model sam2.1_t.pt             SAM 2.1 tiny (Ultralytics' name; Meta's file)
  mobilesam info --model my_weights.pt --detailed
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="print a model's layers, parameters, GFLOPs and size",
        description="Print a one-line summary of a model, like Ultralytics' model.info(): layers, "
        "parameters, GFLOPs (image encoder at 1024 x 1024 plus the mask decoder for one point, "
        "counted by torch's FlopCounterMode) and size in MB (10**6 bytes, fp32 state_dict).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument(
        "--detailed",
        action="store_true",
        help="also list parameters and GFLOPs of the image encoder, prompt encoder and mask decoder: --detailed",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model import SAM

    model = SAM(args.model, device="cpu")
    print(f"checkpoint: {model.ckpt_path}  (model type {model.model_type})")
    model.info(detailed=args.detailed, verbose=True)
    return 0
