"""``mobilesam everything``: segment every object of images with the automatic mask generator.

Output follows Meta's ``scripts/amg.py``: for each image a folder NAME/ with one PNG per mask (0.png,
1.png, ... as 0/255) and ``metadata.csv`` (the official columns), or with ``--rle`` one NAME.json (the
list of records, ``segmentation`` as COCO RLE); plus an overlay NAME.png beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
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
  mobilesam everything photo.jpg                                  fast mode, masks in runs/everything/photo/
  mobilesam everything images/ --mode exact                       the official algorithm, every image of a folder
  mobilesam everything 'shots/*.png' --rle --save-dir out/        COCO-RLE JSON per image instead of PNGs
  mobilesam everything photo.jpg --points-per-side 16 --pred-iou-thresh 0.8 --min-mask-region-area 100

For each image, SAVE_DIR gets NAME/ (0.png, 1.png, ... and metadata.csv, as Meta's amg.py writes them)
or NAME.json with --rle, and NAME.png, an overlay of all masks (NAME_overlay.png when NAME.png is the
input image itself: an output never replaces an input). Each NAME/ is written whole, metadata.csv last,
so an interrupted run leaves every folder from one run. Earlier results are replaced only with --exist-ok.
Files of a folder or glob that cannot be read are skipped with a warning and listed at the end; an image
left without masks gets a warning with the count each filter removed and the threshold to lower.
"""

METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,"
    "crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)

# (option, type, default, help with an example) for every generator parameter the CLI exposes.
GENERATOR_OPTIONS: list[tuple[str, type, Any, str]] = [
    ("points_per_side", int, 32, "grid points per image side (points_per_side**2 prompts): --points-per-side 16"),
    ("points_per_batch", int, 64, "prompts decoded together (more: faster, more memory): --points-per-batch 128"),
    ("pred_iou_thresh", float, None,
     "keep masks whose predicted IoU is above this (SAM: 0.88, SAM 2: 0.8, the official defaults): "
     "--pred-iou-thresh 0.8"),
    ("stability_score_thresh", float, 0.95, "keep masks at least this stable: --stability-score-thresh 0.9"),
    ("stability_score_offset", float, 1.0, "logit offset of the stability score: --stability-score-offset 0.5"),
    ("box_nms_thresh", float, 0.7, "box IoU above which duplicate masks are removed: --box-nms-thresh 0.6"),
    ("crop_n_layers", int, 0, "also run on 2**i x 2**i crops for i = 1..N: --crop-n-layers 1"),
    ("crop_nms_thresh", float, 0.7, "box IoU for duplicates between crops: --crop-nms-thresh 0.6"),
    ("crop_overlap_ratio", float, 512 / 1500, "overlap of neighbouring crops: --crop-overlap-ratio 0.25"),
    ("crop_n_points_downscale_factor", int, 1,
     ("grid points per side divided by this in each crop layer: --crop-n-points-downscale-factor 2")),
    ("min_mask_region_area", int, 0,
     ("remove islands and fill holes smaller than this many pixels: --min-mask-region-area 100")),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "everything",
        help="segment every object of images (automatic mask generator)",
        description="Segment every object of one or more images with a grid of point prompts, and save "
        "the masks in the layout of Meta's amg.py (PNG folder + metadata.csv, or COCO-RLE JSON with --rle).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", nargs="+",
                   help="image files, folders, glob patterns or http(s) URLs: images/ (or a.jpg b.jpg)")
    add_model_argument(p)
    add_backend_argument(p)
    p.add_argument("--mode", choices=("fast", "exact"), default="fast",
                   help="fast (default), or exact = the official algorithm, decision for decision: --mode exact")
    for name, typ, default, text in GENERATOR_OPTIONS:
        shown = f"{default:.4g}" if isinstance(default, float) else "the model's" if default is None else default
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=default,
                       help=f"{text} (default: {shown})")
    p.add_argument("--rle", action="store_true",
                   help="write NAME.json with COCO-RLE masks instead of a folder of PNGs: --rle")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or mps (default: best available): --device cpu")
    add_embedding_cache_arguments(p)
    add_save_dir_arguments(p, "runs/everything")
    p.set_defaults(func=run)


def _option_names(message: str) -> str:
    """Name the command-line options in a generator message: ``pred_iou_thresh`` -> ``--pred-iou-thresh``."""
    import re

    for name, *_ in GENERATOR_OPTIONS:
        message = re.sub(rf"(?<![-\w]){name}\b", f"--{name.replace('_', '-')}", message)
    return message


class _OptionNames:
    """A logging filter that names the generator's options as this command's flags in the generator's
    own warnings (its 0-masks warning says which threshold to lower); other warnings, which may name
    files, are left as they are."""

    def filter(self, record: Any) -> bool:
        from ..everything import generator

        if record.pathname == generator.__file__:
            record.msg, record.args = _option_names(record.getMessage()), None
        return True


@contextlib.contextmanager
def _cli_logging() -> Iterator[None]:
    """Warnings of the run (skipped files, images without masks) printed above the progress bar, with
    the command's option names."""
    import logging

    from tqdm.contrib.logging import logging_redirect_tqdm

    log = logging.getLogger("mobilesam")
    names = _OptionNames()
    log.addFilter(names)
    try:
        with logging_redirect_tqdm([log]):
            yield
    finally:
        log.removeFilter(names)


def write_masks_to_folder(records: list[dict[str, Any]], folder: Path) -> None:
    """One 0/255 PNG per mask and metadata.csv, as the official amg.py.

    The files go into a fresh hidden folder, metadata.csv last, which then replaces ``folder`` whole: an
    interrupted run leaves the old folder or the new one, never PNGs of one run under another's metadata.
    """
    from ..io import atomic_write_bytes, write_image

    def write(tmp: Path) -> None:
        rows = [METADATA_HEADER]
        for i, rec in enumerate(records):
            write_image(tmp / f"{i}.png", rec["segmentation"].astype(np.uint8) * 255)
            values = [i, rec["area"], *rec["bbox"], *rec["point_coords"][0], rec["predicted_iou"],
                      rec["stability_score"], *rec["crop_box"]]
            rows.append(",".join(str(v) for v in values))
        atomic_write_bytes(tmp / "metadata.csv", "\n".join(rows).encode())

    write_folder(folder, write, r"\d+\.png|metadata\.csv")


def output_paths(save_dir: Path, stem: str, rle: bool, inputs: set[Path]) -> tuple[Path, Path]:
    """The masks (NAME.json with --rle, else the folder NAME/) and the overlay of the image named ``stem``."""
    return save_dir / (f"{stem}.json" if rle else stem), overlay_path(save_dir, stem, inputs)


def overlay(image: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """BGR image with every mask tinted in its own colour (large masks first) and outlined."""
    import cv2

    from ..results import colour

    out = image[..., ::-1].astype(np.float32)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for rank, i in enumerate(order):
        m = masks[i]
        out[m] = 0.5 * out[m] + 0.5 * np.array(colour(rank), np.float32)
    out = out.clip(0, 255).astype(np.uint8)
    for rank, i in enumerate(order):
        contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour(rank), 1)
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..backends import create_predictor
    from ..cache import DiskFeatureCache, FeatureCache
    from ..everything import automatic_mask_generator, check_options
    from ..io import atomic_write_bytes, write_image
    from ..masks import decode_rle
    from ..pipeline import embed_stream
    from ..sources import iter_entries, resolve_sources

    # An option left at None takes the default of the model family's generator (SAM 2's differ).
    options = {name: getattr(args, name) for name, *_ in GENERATOR_OPTIONS if getattr(args, name) is not None}
    options.update(mode=args.mode, output_mode="coco_rle" if args.rle else "binary_mask")
    try:
        check_options(**options)  # bad options and a missing source fail before the model loads
    except (ValueError, TypeError) as e:
        raise CLIError(_option_names(str(e)), exit_code=2) from None
    cache_options = embedding_cache_options(args)
    source = args.source[0] if len(args.source) == 1 else args.source
    entries = resolve_sources(source)
    save_dir = Path(args.save_dir) if args.save_dir else next_free_dir("runs/everything")
    inputs = input_files(entries)
    planned = planned_stems(entries)
    for stem in sorted(planned):  # results of an earlier run, or an input in the way: refused before the model loads
        check_outputs(output_paths(save_dir, stem, args.rle, inputs), inputs, args.exist_ok, save_dir)
    disk = DiskFeatureCache.open(cache_options["embedding_cache"], cache_options["embedding_cache_bytes"])
    predictor = create_predictor(args.model, check_backend(args.backend), device=args.device)
    DiskFeatureCache.check_predictor(disk, predictor)
    cache = FeatureCache(0, disk=disk) if disk is not None else None  # no image comes twice: the disk tier only
    generator = automatic_mask_generator(predictor, **options)  # the model family's (SAM 2: Meta's SAM 2 one)
    stems: set[str] = set()
    done = 0
    # A skipped file counts as done, so the bar ends at 100%.
    bar = tqdm(total=len(entries), desc="everything", unit="image")
    with _cli_logging(), bar:
        # Images are read on a background thread while the encoder runs, --batch per encoder call.
        images = iter_entries(entries, "RGB", lambda path, reason: bar.update())
        for embedded in embed_stream(predictor, images, lambda item: item.image, batch=args.batch, cache=cache):
            item = embedded.item
            unique = unique_stem(item.path, stems)
            masks_path, overlay_file = output_paths(save_dir, unique, args.rle, inputs)
            if unique not in planned:
                check_outputs((masks_path, overlay_file), inputs, args.exist_ok, save_dir)
            records = generator.generate(item.image, features=embedded.features)
            if args.rle:
                masks = [decode_rle(r["segmentation"]) for r in records]
            else:
                masks = [r["segmentation"] for r in records]
            picture = overlay(item.image, masks)
            with deferred_interrupt():  # the masks and their overlay, committed together
                if args.rle:
                    atomic_write_bytes(masks_path, json.dumps(records).encode())
                else:
                    write_masks_to_folder(records, masks_path)
                write_image(overlay_file, picture, image_format="BGR")
            if overlay_file.stem != unique:
                tqdm.write(f"{item.path}: overlay written to {overlay_file} (not {unique}.png: that is the input)")
            bar.set_postfix_str(f"{unique}: {len(records)} masks")
            bar.update()
            done += 1
    if done == 0:
        raise CLIError(f"no image of {source!r} could be read")
    print(f"Results saved to {save_dir}")
    return 0
