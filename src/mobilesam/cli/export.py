"""``mobilesam export``: ONNX files for the image encoder and the prompt decoder, optionally int8."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CLIError, add_model_argument

EXAMPLES = """\
examples:
  mobilesam export --model mobile_sam.pt --format onnx                   writes ./mobile_sam_onnx/
  mobilesam export --model mobile_sam.pt --format onnx --quantize int8 --out models/mobilesam
  mobilesam export --model sam_vit_b_01ec64.pth --format onnx --parts decoder
  mobilesam export --model mobile_sam.pt --format onnx --return-single-mask   for SAM's web demo and tools

Then: SAM("models/mobilesam") or OnnxSamPredictor("models/mobilesam", precision="int8").
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export the model to ONNX (encoder + prompt decoder), optionally quantized to int8",
        description="Export the image encoder (RGB image resized to longest side 1024 -> 1x256x64x64 "
        "embedding; normalisation and padding inside the graph) and the prompt encoder + mask decoder "
        "with the interface of SAM's official ONNX export (inputs image_embeddings, point_coords, "
        "point_labels, mask_input, has_mask_input, orig_im_size; outputs masks, iou_predictions, "
        "low_res_masks; any number of points), plus manifest.json. Every graph is checked with "
        "onnx.checker and compared with PyTorch before the command reports success. "
        'Needs: pip install "mobilesam[onnx]".',
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument(
        "--format", default="onnx", choices=["onnx"], help="export format (default: %(default)s); e.g. --format onnx"
    )
    p.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="also write int8 variants (ONNX Runtime dynamic quantization of MatMul weights); e.g. --quantize int8",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: <checkpoint name>_onnx in the current folder); e.g. --out models/mobilesam",
    )
    p.add_argument(
        "--parts",
        default="encoder,decoder",
        help="what to export, comma-separated (default: %(default)s); e.g. --parts decoder",
    )
    p.add_argument(
        "--opset", type=int, default=17, help="ONNX opset, 17 to 21 (default: %(default)s); e.g. --opset 18"
    )
    p.add_argument(
        "--return-single-mask",
        action="store_true",
        help="decoder returns only the best mask, as the official export's --return-single-mask; "
        "e.g. --return-single-mask",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the comparison with PyTorch (onnx.checker still runs); e.g. --no-check",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_onnx

    parts = tuple(s.strip() for s in args.parts.split(",") if s.strip())
    bad = [s for s in parts if s not in ("encoder", "decoder")]
    if bad or not parts:
        raise CLIError(f"--parts: expected 'encoder', 'decoder' or both comma-separated, got {args.parts!r}", 2)
    out = Path(args.out) if args.out else Path.cwd() / f"{Path(str(args.model)).stem}_onnx"
    manifest = export_onnx(
        args.model,
        out,
        quantize=args.quantize,
        parts=parts,
        opset=args.opset,
        return_single_mask=args.return_single_mask,
        check=not args.no_check,
    )
    print(f"exported {manifest['model_type']} to {out}/ (opset {manifest['opset']}):")
    for key, entry in manifest["files"].items():
        check = manifest["checks"].get(key, {})
        note = ""
        if "embedding_max_abs_diff" in check:
            note = f"embedding max abs diff vs PyTorch {check['embedding_max_abs_diff']:.2g}"
        elif "low_res_max_abs_diff" in check:
            note = (f"logit max abs diff vs PyTorch {check['low_res_max_abs_diff']:.2g}, "
                    f"min mask IoU {check['mask_iou_min']:.4f}")
        print(f"  {entry['path']:<28} {entry['precision']:>5} {entry['bytes'] / 1e6:8.1f} MB   {note}")
    print("  manifest.json")
    return 0
