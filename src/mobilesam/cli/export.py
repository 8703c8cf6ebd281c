"""``mobilesam export``: the image encoder and the prompt decoder in a registered export format (ONNX, ...)."""

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
  mobilesam export --model mobile_sam.pt --format openvino --quantize int8 --calibration photos/
  mobilesam export --model mobile_sam.pt --format executorch --quantize int8   .pte for ExecuTorch (XNNPACK)
  mobilesam export --model mobile_sam.pt --format tflite                      .tflite for LiteRT
  mobilesam export --model mobile_sam.pt --format coreml --quantize fp16      .mlpackage for Core ML (macOS/iOS)
  mobilesam export --model mobile_sam.pt --format web --out site     a static page: python -m http.server -d site
  mobilesam export --model models/mobilesam --format web --out site  the same from an ONNX export folder

Then: SAM("models/mobilesam") or OnnxSamPredictor("models/mobilesam", precision="int8").
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..export.registry import available_export_formats

    p = subparsers.add_parser(
        "export",
        help="export the model (encoder + prompt decoder) for another runtime, e.g. ONNX, optionally int8",
        description="Export the image encoder and the prompt encoder + mask decoder for another runtime, "
        "with manifest.json (files, SHA-256, inputs and outputs, the differences to PyTorch measured at "
        "export time). --format onnx: the image encoder (RGB image resized to longest side 1024 -> "
        "1x256x64x64 embedding; normalisation and padding inside the graph) and the decoder with the "
        "interface of SAM's official ONNX export (inputs image_embeddings, point_coords, point_labels, "
        "mask_input, has_mask_input, orig_im_size; outputs masks, iou_predictions, low_res_masks; any number "
        "of points). Every graph is compared with PyTorch before the command reports success. Each format "
        'needs its extra, e.g. pip install "mobilesam[onnx]".',
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    p.add_argument(
        "--format", default="onnx", choices=available_export_formats(),
        help="export format (default: %(default)s); e.g. --format onnx",
    )
    # Format options default to None: only those given are passed, so a format that does not take one
    # refuses it by name instead of ignoring it.
    p.add_argument(
        "--quantize",
        choices=["int8", "fp16"],
        default=None,
        help="also write int8 variants (onnx: ONNX Runtime dynamic quantization of MatMul weights; openvino: NNCF "
        "post-training quantization of the image encoder; executorch: XNNPACK dynamic int8; tflite: LiteRT quantizer "
        "dynamic int8) or fp16 ones (coreml); e.g. --quantize int8",
    )
    p.add_argument(
        "--calibration", default=None, metavar="DIR",
        help="openvino --quantize int8: a folder of your images to calibrate on (default: built-in synthetic "
        "images; the manifest says which); e.g. --calibration photos/",
    )
    p.add_argument(
        "--calibration-size", type=int, default=None, metavar="N",
        help="openvino --quantize int8: images of --calibration used (default: 32); e.g. --calibration-size 64",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: <checkpoint name>_<format> in the current folder); e.g. --out models/mobilesam",
    )
    p.add_argument(
        "--parts",
        default=None,
        help="what to export, comma-separated (default: encoder,decoder); e.g. --parts decoder",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, 17 to 21 (default: 17); e.g. --opset 18")
    p.add_argument(
        "--return-single-mask",
        action="store_true",
        default=None,
        help="decoder returns only the best mask, as the official export's --return-single-mask; "
        "e.g. --return-single-mask",
    )
    p.add_argument(
        "--layout",
        choices=("mobilesam", "anylabeling"),
        default=None,
        help="file layout: mobilesam (default), or anylabeling: the encoder input samexporter and X-AnyLabeling "
        "use (input_image, H x W x 3), their file names and X-AnyLabeling's custom-model config; "
        "e.g. --layout anylabeling",
    )
    p.add_argument(
        "--max-points", type=int, default=None,
        help="executorch, tflite, coreml: point slots of the decoder (a box takes 2; default: 10); e.g. --max-points 16",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the comparison with PyTorch (onnx.checker still runs); e.g. --no-check",
    )
    p.set_defaults(func=run)


# CLI option -> exporter keyword, for the format options above.
FORMAT_OPTIONS = {"quantize": "quantize", "parts": "parts", "opset": "opset", "return_single_mask": "return_single_mask",
                  "layout": "layout", "max_points": "max_points",
                  "calibration": "calibration", "calibration_size": "calibration_size"}


def run(args: argparse.Namespace) -> int:
    from ..export import export_model, get_export_format

    entry = get_export_format(args.format)
    options = {}
    for attr, keyword in FORMAT_OPTIONS.items():
        value = getattr(args, attr)
        if value is None:
            continue
        if keyword not in entry.options:
            flag = "--" + attr.replace("_", "-")
            raise CLIError(f"{flag}: not an option of --format {args.format}", 2)
        options[keyword] = value
    if "parts" in options:
        parts = tuple(s.strip() for s in options["parts"].split(",") if s.strip())
        bad = [s for s in parts if s not in ("encoder", "decoder")]
        if bad or not parts:
            raise CLIError(f"--parts: expected 'encoder', 'decoder' or both comma-separated, got {args.parts!r}", 2)
        options["parts"] = parts
    out = Path(args.out) if args.out else Path.cwd() / f"{Path(str(args.model)).stem}_{entry.folder_suffix}"
    try:
        manifest = export_model(args.model, out, args.format, check=not args.no_check, **options)
    except ValueError as e:  # an option's value: the message starts with its keyword, the flag without "--"
        keyword, _, rest = str(e).partition(":")
        if keyword not in FORMAT_OPTIONS or not rest:
            raise
        raise CLIError(f"--{keyword.replace('_', '-')}:{rest}", 2) from None
    detail = f" (opset {manifest['opset']})" if "opset" in manifest else ""
    print(f"exported {manifest.get('model_type', 'the model')} as {args.format} to {out}/{detail}:")
    for key, entry_ in manifest["files"].items():
        checks = manifest.get("checks", {})
        check = checks.get(key) or checks.get(f"pipeline_{entry_.get('precision')}", {})
        note = ""
        if "mask_iou_vs_fp32_mean" in check:
            note = f"mask IoU vs fp32 {check['mask_iou_vs_fp32_mean']:.4f}"
        elif "validated" in check:
            note = "spec validated (run it on macOS)"
        elif "embedding_max_abs_diff" in check:
            note = f"embedding max abs diff vs PyTorch {check['embedding_max_abs_diff']:.2g}"
        elif "low_res_max_abs_diff" in check:
            note = (f"logit max abs diff vs PyTorch {check['low_res_max_abs_diff']:.2g}, "
                    f"min mask IoU {check['mask_iou_min']:.4f}")
        elif "mask_iou_vs_fp32" in check:
            note = f"mask IoU vs fp32 {check['mask_iou_vs_fp32']:.4f}"
        name = entry_.get("path") or entry_.get("xml")  # onnx: one file; openvino: .xml + .bin
        print(f"  {name:<28} {entry_.get('precision', ''):>5} {entry_['bytes'] / 1e6:8.1f} MB   {note}")
    print("  manifest.json")
    if manifest.get("layout") == "anylabeling":
        print("  anylabeling_config.yaml   (X-AnyLabeling: Load Custom Model -> this file)")
    return 0
