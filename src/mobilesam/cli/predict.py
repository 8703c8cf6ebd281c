"""``mobilesam predict``: segment images from point / box prompts (or everything) and save the results."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import (
    CLIError,
    add_backend_argument,
    add_embedding_cache_arguments,
    add_model_argument,
    add_save_dir_arguments,
    check_backend,
    check_outputs,
    deferred_interrupt,
    embedding_cache_options,
    input_files,
    planned_stems,
    next_free_dir,
    overlay_path,
    unique_stem,
    write_folder,
)

EXAMPLES = """\
examples:
  mobilesam predict zidane.jpg --points 900,370                       one object from one point
  mobilesam predict zidane.jpg --points 400,370 900,370               two objects, one point each
  mobilesam predict zidane.jpg --points '[[[400,370],[900,370]]]' --labels '[[1,0]]'
                                                                      one object: a positive and a negative point
  mobilesam predict zidane.jpg --bboxes 100,50,700,700                one object from a box
  mobilesam predict images/ --bboxes 10,10,200,200 300,40,600,400     two boxes on every image of a folder
  mobilesam predict 'photos/*.jpg' --model mobile_sam.pt --device cpu  no prompt: segment everything

For each image, SAVE_DIR gets NAME.png (overlay), NAME_masks/mask_000.png ... (one 0/255 PNG per
mask; the folder is empty when there is no mask) and NAME.json (scores, boxes, COCO RLE masks). Mask i
answers prompt i. An output never replaces an input: when SAVE_DIR/NAME.png is the input image itself,
the overlay is NAME_overlay.png. Results of an earlier run in SAVE_DIR are replaced only with --exist-ok.
Files of a folder or glob that cannot be read are skipped with a warning and listed at the end.

Ultralytics' key=value form works too, with Ultralytics' output layout (runs/segment/predict: NAME.jpg,
labels/NAME.txt with save_txt=True, crops/ with save_crop=True; a video gives NAME.avi):
  mobilesam predict model=mobile_sam.pt source=zidane.jpg points=[900,370] save_txt=True
  mobilesam predict source=clip.mp4 bboxes=[100,50,700,700] imgsz=512 project=out name=run1
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment images from point or box prompts (no prompt: everything)",
        description="Segment images from point or box prompts and save overlays, masks and JSON. "
        "With no prompt, every object is segmented (segment-everything, fast mode).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        nargs="+",
        help="image files, folders, glob patterns or http(s) URLs; e.g. zidane.jpg, images/, 'images/*.png', "
        "a.jpg b.jpg",
    )
    add_model_argument(p)
    add_backend_argument(p)
    p.add_argument(
        "--points",
        nargs="+",
        metavar="X,Y",
        help="point prompts in pixels, one object per point: --points 400,370 900,370; for several points "
        "per object give the nesting as JSON: --points '[[[400,370],[900,370]]]'",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        metavar="L",
        help="one label per point, 1 = foreground, 0 = background (default: all 1): --labels 1 0; "
        "nested as JSON to match --points: --labels '[[1,0]]'",
    )
    p.add_argument(
        "--bboxes",
        nargs="+",
        metavar="X1,Y1,X2,Y2",
        help="box prompts in pixels, one object per box: --bboxes 100,50,700,700 20,30,90,120; "
        "with --points, box i and point i describe the same object",
    )
    p.add_argument(
        "--multimask",
        action="store_true",
        help="three candidate masks per prompt instead of one: --multimask",
    )
    p.add_argument(
        "--conf",
        type=float,
        default=None,
        help="drop masks whose predicted IoU is below this (off by default: every prompt keeps its mask): --conf 0.5",
    )
    p.add_argument(
        "--mode",
        choices=("fast", "exact"),
        default="fast",
        help="segment-everything mode, used only without prompts (default: %(default)s): --mode exact",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available): --device cpu")
    add_embedding_cache_arguments(p)
    add_save_dir_arguments(p, "runs/predict")
    p.set_defaults(func=run)


def _numbers(text: str, option: str, width: int, example: str) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != width:
        raise CLIError(
            f"{option}: expected {width} comma-separated numbers such as {example} (or a JSON list), got {text!r}",
            exit_code=2,
        )
    return values


def _prompt_arg(values: list[str] | None, option: str, width: int, example: str) -> Any:
    """``["900,370", ...]`` -> [[900, 370], ...]; a single JSON value (``'[[[1,2],[3,4]]]'``) is taken as is."""
    if values is None:
        return None
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            return json.loads(values[0])
        except json.JSONDecodeError as e:
            raise CLIError(f"{option}: {values[0]!r} is not valid JSON ({e.msg})", exit_code=2) from None
    if width == 1:
        out = []
        for v in values:
            if v.strip() not in ("0", "1"):
                raise CLIError(f"{option}: expected 1 (foreground) or 0 (background), got {v!r}", exit_code=2)
            out.append(int(v))
        return out
    return [_numbers(v, option, width, example) for v in values]


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x


def output_paths(save_dir: Path, stem: str, inputs: set[Path]) -> tuple[Path, Path, Path]:
    """The overlay PNG, the masks folder and the JSON of the image named ``stem``."""
    return overlay_path(save_dir, stem, inputs), save_dir / f"{stem}_masks", save_dir / f"{stem}.json"


def save_result(
    result: Any, save_dir: Path, stem: str, inputs: set[Path] | None = None
) -> tuple[Path, Path, Path]:
    """Write the overlay PNG, one PNG per mask and the JSON of ``result``; returns their paths.

    The masks go into a fresh folder that is swapped in whole, and the JSON is written last (atomically,
    Ctrl-C held between the two): an interrupted run leaves each image's masks and JSON from one run.
    """
    from ..io import atomic_write_bytes, write_image

    overlay, mask_dir, meta = output_paths(save_dir, stem, inputs or set())
    # name, class, confidence, box, area, COCO RLE (the outline polygons are left to the RLE they come from)
    records = [{k: v for k, v in rec.items() if k != "segments"} for rec in result.summary(rle=True)]
    masks = result.masks.numpy().data.astype(bool)
    for i, rec in enumerate(records):
        rec["file"] = str((mask_dir / f"mask_{i:03d}.png").relative_to(save_dir))

    def write_masks(folder: Path) -> None:
        for i, m in enumerate(masks[: len(records)]):
            write_image(folder / f"mask_{i:03d}.png", m.astype(np.uint8) * 255)

    doc = {
        "image": result.path,
        "orig_shape": list(result.orig_shape),
        "prompts": _jsonable(result.prompts),
        "speed_ms": result.speed,
        "masks": records,
    }
    data = (json.dumps(doc, indent=2) + "\n").encode()
    picture = result.plot()
    with deferred_interrupt():  # Ctrl-C held: this image's files are committed together
        write_folder(mask_dir, write_masks, r"mask_\d+\.png")
        atomic_write_bytes(meta, data)
        write_image(overlay, picture, image_format="BGR")
    return overlay, mask_dir, meta


# key=value arguments of the Ultralytics form, besides Ultralytics' own predict arguments.
KEY_VALUE_OWN = ("model", "source", "points", "labels", "bboxes", "multimask_output", "conf", "device", "half",
                 "verbose", "backend", "mode", "strict")


def _is_key_value(token: str) -> bool:
    key, eq, _ = token.partition("=")
    return bool(eq) and key.isidentifier() and not Path(token).exists()


def _value(text: str) -> Any:
    """Ultralytics' CLI values: True / False / None, numbers and lists as Python literals, else the text."""
    import ast

    low = text.strip().lower()
    if low in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[low]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_key_value(args: argparse.Namespace) -> int:
    """``mobilesam predict key=value ...`` (Ultralytics' form): SAM.predict with those arguments, saving as
    Ultralytics' CLI does (``save`` defaults to True)."""
    import difflib

    from ..predict_args import HANDLED, NOT_FOR_SAM, ULTRALYTICS_KEYS

    valid = sorted(set(KEY_VALUE_OWN) | set(HANDLED) - {"task"})
    kwargs: dict[str, Any] = {}
    for token in args.source:
        if not _is_key_value(token):
            raise CLIError(f"'{token}': in the key=value form every argument is key=value (e.g. source={token})",
                           exit_code=2)
        key, _, text = token.partition("=")
        if key in NOT_FOR_SAM:
            raise CLIError(f"{key}: an Ultralytics argument that has no meaning for SAM here ({NOT_FOR_SAM[key]})",
                           exit_code=2)
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            kind = "an Ultralytics training/export setting, not" if key in ULTRALYTICS_KEYS else "not"
            raise CLIError(f"'{key}' is {kind} an argument of predict{hint} (valid: {', '.join(valid)})",
                           exit_code=2)
        if key in kwargs:
            raise CLIError(f"'{key}' is given twice", exit_code=2)
        # Paths and names stay text (a folder named 2024 is not a number).
        kwargs[key] = text if key in ("source", "model", "project", "name") else _value(text)
    if kwargs.pop("mode", "predict") != "predict":
        raise CLIError("mode: this command predicts; mode=predict or leave it out", exit_code=2)
    source = kwargs.pop("source", None)
    if source is None:
        raise CLIError("source: missing; e.g. source=zidane.jpg (a file, folder, glob, URL or video)", exit_code=2)
    from ..model import SAM, parse_prompts

    try:
        parse_prompts(kwargs.get("points"), kwargs.get("labels"), kwargs.get("bboxes"))
    except ValueError as e:
        raise CLIError(str(e), exit_code=2) from None
    model = SAM(kwargs.pop("model", "mobile_sam.pt"), device=kwargs.pop("device", None),
                backend=check_backend(kwargs.pop("backend", "torch")))
    kwargs.setdefault("save", True)  # as Ultralytics' command line
    n = 0
    for result in model.predict(source, stream=True, **kwargs):
        n += 1
        where = f" (frame {result.frame})" if result.source_mode == "video" else ""
        print(f"{result.path}{where}: {result.verbose()}".rstrip(", "))
    if n == 0:
        raise CLIError(f"no image of {source!r} could be read")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.source and _is_key_value(args.source[0]):
        return run_key_value(args)
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..model import SAM, parse_prompts
    from ..sources import resolve_sources

    points = _prompt_arg(args.points, "--points", 2, "900,370")
    labels = _prompt_arg(args.labels, "--labels", 1, "1")
    bboxes = _prompt_arg(args.bboxes, "--bboxes", 4, "100,50,700,700")
    if args.conf is not None and not 0.0 <= args.conf <= 1.0:
        raise CLIError(f"--conf: expected a number in [0, 1], got {args.conf}", exit_code=2)
    try:
        parse_prompts(points, labels, bboxes)  # fail on bad prompts before loading anything
    except ValueError as e:
        raise CLIError(str(e), exit_code=2) from None
    source = args.source[0] if len(args.source) == 1 else args.source
    entries = resolve_sources(source)  # a missing file fails here, before the model loads
    save_dir = Path(args.save_dir) if args.save_dir else next_free_dir("runs/predict")
    inputs = input_files(entries)
    planned = planned_stems(entries)
    for stem in sorted(planned):  # results of an earlier run, or an input in the way: refused before the model loads
        check_outputs(output_paths(save_dir, stem, inputs), inputs, args.exist_ok, save_dir)

    cache_options = embedding_cache_options(args)
    model = SAM(args.model, device=args.device, backend=check_backend(args.backend), **cache_options)
    stems: set[str] = set()
    n_images = 0
    # Warnings (skipped files, images without masks) above SAM.predict's progress bar, not through it.
    with logging_redirect_tqdm([logging.getLogger("mobilesam")]):
        for result in model.predict(
            source,
            stream=True,
            points=points,
            labels=labels,
            bboxes=bboxes,
            multimask_output=args.multimask,
            conf=args.conf,
            mode=args.mode,
            batch=args.batch,
        ):
            unique = unique_stem(result.path, stems)
            if unique not in planned:
                check_outputs(output_paths(save_dir, unique, inputs), inputs, args.exist_ok, save_dir)
            overlay, mask_dir, meta = save_result(result, save_dir, unique, inputs)
            n_images += 1
            note = f" (not {save_dir / (unique + '.png')}: that is the input)" if overlay.stem != unique else ""
            masks = f"{mask_dir}/" if len(result) else f"no mask, so {mask_dir}/ is empty"
            count = f"{len(result)} mask{'s' if len(result) != 1 else ''}"
            tqdm.write(f"{result.path}: {count} -> {overlay}{note}, {meta}, {masks}", file=sys.stdout)
    if n_images == 0:
        raise CLIError(f"no image of {source!r} could be read")
    print(f"Results saved to {save_dir}")
    return 0
