"""``mobilesam convert``: YOLO segmentation labels or a COCO JSON -> Label Studio, CVAT, COCO or FiftyOne."""

from __future__ import annotations

import argparse

from . import CLIError

FORMATS = ("labelstudio", "labelstudio-polygon", "cvat-yolo", "cvat-coco", "coco", "fiftyone")

EXAMPLES = """\
examples:
  mobilesam convert images/ images_auto_annotate_labels/ --to labelstudio        brush masks, tasks.json
  mobilesam convert images/ labels/ --to labelstudio-polygon --simplify 2         editable polygons
  mobilesam convert images/ labels/instances.json --to cvat-coco                  CVAT COCO 1.0 zip
  mobilesam convert images/ labels/ --to cvat-yolo --out task.zip                 CVAT Ultralytics YOLO seg zip
  mobilesam convert images/ labels/ --to fiftyone --out ds/                       fo.types.COCODetectionDataset

LABELS is a folder of YOLO segmentation .txt files (what annotate, predict save_txt=True and serve write;
names from its classes.txt or data.yaml) or a COCO instance-segmentation JSON. Label Studio tasks refer
to images as /data/local-files/?d=<path under IMAGES> (local-files storage; --image-url changes the
prefix) and come with NAME_labeling_config.xml, the interface they fit.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert labels for Label Studio, CVAT, COCO or FiftyOne",
        description="Convert segmentation labels to the formats labelling tools import.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", help="the folder of images the labels describe: images/")
    p.add_argument("labels", help="YOLO label folder or COCO JSON: labels/ or instances.json")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format: --to labelstudio")
    p.add_argument("--out", default=None, help="output file or folder (default: by format, in the current folder)")
    add_simplify_argument(p)
    p.add_argument("--image-url", default=None,
                   help="prefix of the Label Studio image URLs (default /data/local-files/?d=): "
                        "--image-url https://example.org/imgs/")
    p.add_argument("--no-images", action="store_true",
                   help="leave the images out of the CVAT YOLO zip and the FiftyOne folder: --no-images")
    p.set_defaults(func=run)


def add_simplify_argument(parser: argparse.ArgumentParser) -> None:
    """``--simplify`` (polygon tolerance in pixels), shared by convert and annotate."""
    parser.add_argument(
        "--simplify", type=float, default=None, metavar="PX",
        help="polygon simplification tolerance in pixels (OpenCV approxPolyDP; 0 keeps every contour point; "
             "default 0.5, which kept IoU >= 0.98 with the exact outline in our measurements): --simplify 2",
    )


def run(args: argparse.Namespace) -> int:
    from ..convert import convert
    from ..masks import DEFAULT_SIMPLIFY

    simplify = DEFAULT_SIMPLIFY if args.simplify is None else args.simplify
    try:
        out = convert(args.images, args.labels, args.to, args.out, simplify=simplify, image_url=args.image_url,
                      include_images=not args.no_images)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e).replace("to: ", "--to: ", 1).replace("out: ", "--out: ", 1)
                       .replace("simplify: ", "--simplify: ", 1)) from None
    print(f"Wrote {out}")
    return 0
