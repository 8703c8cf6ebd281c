"""Auto-annotation: a detector finds objects, SAM turns each box into a mask, and the masks are written
as a YOLO segmentation dataset (and optionally COCO instance segmentation).

    from mobilesam import auto_annotate
    auto_annotate(data="path/to/images", det_model="yolo11x.pt", sam_model="mobile_sam.pt")

Resumable (complete label files are skipped), atomic (a crash never leaves half a file), tolerant (an
unreadable image is logged and counted) and distributed (under ``torchrun`` each rank takes a shard).
With COCO output, each labelled image's COCO piece waits in ``output_dir/.coco_parts/`` until the end of
the run merges them into one JSON and removes the folder: only an interrupted run leaves it, for its rerun.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .backends import ImageFeatures, Predictor, create_predictor
from .cache import DiskFeatureCache, FeatureCache
from .detectors import (
    AnnotationInputError,
    CocoBoxesDetector,
    Detections,
    Detector,
    YoloLabelsDetector,
    filter_detections,
    make_detector,
)
from .device import select_device
from .distributed import destroy_process_group, start_process_group, torchrun_env
from .formats import coco, yolo
from .formats.classes import CLASSES_FILE, read_classes, write_classes
from .formats.data_yaml import DATA_YAML, write_data_yaml
from .io import IMAGE_SUFFIXES, atomic_write_text, read_image, walk_images
from .masks import DEFAULT_SIMPLIFY, check_simplify, mask_to_segment
from .pipeline import Pending, cache_key_maker, chunks, encode_pending, prefetch

logger = logging.getLogger(__name__)

STRATEGIES = ("all", "largest")
COCO_PARTS = ".coco_parts"  # per-image COCO pieces in output_dir, merged into one JSON at the end
COCO_JSON = "instances.json"
COCO_DESCRIPTION = "YOLO boxes -> SAM masks, written by mobilesam auto_annotate"
# Masks of one decoder call are upsampled to full image size as float32: bound B x H x W per call.
MAX_MASK_ELEMENTS = 2**27


@dataclass
class AnnotateSummary:
    """What a run did (totals over all ranks when distributed)."""

    images: int = 0  # images found in data
    annotated: int = 0  # images labelled by this run
    objects: int = 0  # label lines written (= COCO annotations)
    empty_masks: int = 0  # detections whose mask has no polygon: reported, no line written
    background: int = 0  # labelled images without detections (empty label files)
    skipped: int = 0  # images already labelled by an earlier run (resume)
    failed: int = 0  # unreadable images or label errors: no label file, retried next run
    seconds: float = 0.0
    output_dir: Path | None = None
    coco_json: Path | None = None
    failed_files: list[str] = field(default_factory=list)
    world_size: int = 1
    per_rank: list[int] = field(default_factory=list)  # images labelled by each rank

    def __str__(self) -> str:
        ips = self.annotated / self.seconds if self.seconds > 0 else 0.0
        ranks = f" on {self.world_size} ranks {self.per_rank}" if self.world_size > 1 else ""
        s = (
            f"auto_annotate: {self.images} images: {self.annotated} labelled{ranks} ({ips:.2f} img/s), "
            f"{self.skipped} skipped (already labelled), {self.failed} failed; {self.objects} objects, "
            f"{self.empty_masks} empty masks, {self.background} images without objects; "
            f"{self.seconds:.1f} s -> {self.output_dir}"
        )
        if self.coco_json:
            s += f" (COCO: {self.coco_json})"
        if self.failed_files:
            s += "\n  failed: " + ", ".join(self.failed_files[:10]) + (" ..." if len(self.failed_files) > 10 else "")
        return s


# ----------------------------------------------------------------------------------------------------
# Images, paths, masks -> label lines


def list_images(data: str | os.PathLike) -> tuple[Path, list[str]]:
    """The data folder and its images' paths relative to it, by the folder rule of
    :func:`mobilesam.io.walk_images` (recursive, sorted, hidden entries skipped).

    ``data`` may also be a single image file.
    """
    p = Path(data).expanduser()
    if p.is_file():
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"data: '{p}' is not an image ({', '.join(IMAGE_SUFFIXES)}) nor a folder")
        return p.parent, [p.name]
    if not p.is_dir():
        raise FileNotFoundError(f"data: folder '{p}' not found")
    names = walk_images(p)
    if not names:
        raise ValueError(f"data: no images ({', '.join(IMAGE_SUFFIXES)}) in '{p}'")
    return p, names


def default_output_dir(data: str | os.PathLike) -> Path:
    """``<data>_auto_annotate_labels`` beside ``data``, as Ultralytics' ``auto_annotate``."""
    p = Path(data).expanduser().resolve()
    return p.parent / f"{p.stem}_auto_annotate_labels"


def label_path(output_dir: Path, name: str) -> Path:
    return output_dir / Path(name).with_suffix(".txt")


def coco_part_path(output_dir: Path, name: str) -> Path:
    return output_dir / COCO_PARTS / f"{name}.json"


format_segment = yolo.format_line  # ``class x1 y1 ...`` normalised: the rule of mobilesam.formats.yolo


def _segment_boxes(
    predictor: Predictor, image: np.ndarray, boxes: np.ndarray, features: ImageFeatures | None = None
) -> Iterator[np.ndarray]:
    """Boolean (H, W) masks, one per XYXY box, in box order: one image embedding (``features`` when they
    are at hand), all boxes decoded in one batched pass (split only when B x H x W would exceed
    ``MAX_MASK_ELEMENTS``)."""
    if features is not None:
        predictor.set_features(features)
    else:
        predictor.set_image(image)
    h, w = image.shape[:2]
    b = torch.as_tensor(boxes, dtype=torch.float32, device=predictor.device)
    b = predictor.transform.apply_boxes_torch(b, (h, w))
    step = max(1, MAX_MASK_ELEMENTS // (h * w))
    for s in range(0, len(b), step):
        masks, _, _ = predictor.predict_torch(None, None, b[s : s + step], multimask_output=False)
        yield from masks[:, 0].cpu().numpy()


# ----------------------------------------------------------------------------------------------------
# Distributed


class _Dist:
    """Rank and world size from torchrun's environment; a gloo process group for barriers and gathers."""

    def __init__(self) -> None:
        env = torchrun_env()
        self.rank, self.world, self.local_rank = env.rank, env.world_size, env.local_rank
        self.local_world = env.local_world_size
        self.group: Any = None
        self.created = False
        if self.world <= 1:
            self.rank, self.world = 0, 1
            return
        import torch.distributed as dist

        # Ranks meet only at the start and the end; the end waits for the slowest shard.
        self.created = start_process_group("gloo", self.world, timeout=timedelta(hours=24))
        if not self.created and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")  # CPU objects travel on gloo, whatever the main backend
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def close(self) -> None:
        if self.created:
            destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# Dataset files


def _read_names(path: Path) -> dict[int, str]:
    return read_classes(path) if path.is_file() else {}


def _final_names(known: dict[int, str], seen: set[int], previous: dict[int, str]) -> dict[int, str]:
    """Contiguous {0..K-1: name}: the detector's names, else an earlier run's, else the number."""
    top = max([*known, *seen, *previous, -1]) + 1
    return {i: known.get(i) or previous.get(i) or str(i) for i in range(top)}


def _write_names(
    output_dir: Path, data_root: Path, known: dict[int, str], seen: set[int], label_files: dict[Path, str]
) -> dict[int, str]:
    """Write ``classes.txt`` and ``data.yaml`` for the classes known or seen (and an earlier run's);
    returns the names written."""
    clash = (output_dir / CLASSES_FILE) in label_files
    names = _final_names(known, seen, {} if clash else _read_names(output_dir / CLASSES_FILE))
    if clash:
        logger.warning("auto_annotate: an image is named 'classes': classes.txt not written, see data.yaml")
    write_dataset_files(output_dir, data_root, names, classes_txt=not clash)
    return names


DATA_YAML_COMMENT = (
    "YOLO segmentation dataset written by mobilesam auto_annotate.\n"
    "Ultralytics finds an image's label by replacing '/images/' with '/labels/' in its path: to train,\n"
    "keep these labels in DATASET/labels for images in DATASET/images."
)


def write_dataset_files(output_dir: Path, data_root: Path, names: dict[int, str], classes_txt: bool = True) -> None:
    """``classes.txt`` (one name per line) and an Ultralytics ``data.yaml``."""
    if classes_txt:
        write_classes(output_dir / CLASSES_FILE, names.values())
    images = data_root.resolve()
    write_data_yaml(
        output_dir / DATA_YAML, names, DATA_YAML_COMMENT, train=images, val=images, labels=output_dir.resolve()
    )


def previous_coco(path: Path | None) -> dict[str, dict[str, Any]]:
    """The images of a COCO JSON that an earlier run wrote at ``path``, as parts (file name -> ``file_name,
    width, height, annotations``): a finished run keeps no parts, and its JSON is what a rerun resumes from.
    Any other file at ``path`` gives nothing (and is replaced at the end)."""
    if path is None or not path.is_file():
        return {}
    try:
        doc = coco.read_coco(path)
        if not isinstance(doc.get("info"), dict) or doc["info"].get("description") != COCO_DESCRIPTION:
            return {}
        anns: dict[int, list[dict[str, Any]]] = {}
        for a in doc["annotations"]:
            part = {k: v for k, v in a.items() if k not in ("id", "image_id")}
            anns.setdefault(int(a["image_id"]), []).append(part)
        return {
            str(im["file_name"]): {
                "file_name": str(im["file_name"]),
                "width": int(im["width"]),
                "height": int(im["height"]),
                "annotations": anns.get(int(im["id"]), []),
            }
            for im in doc["images"]
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("auto_annotate: '%s' cannot be read back (%s): its images are labelled again", path, e)
        return {}


def merge_coco(
    output_dir: Path,
    names_list: Sequence[str],
    names: dict[int, str],
    detector: Detector,
    path: Path,
    previous: dict[str, dict[str, Any]] | None = None,
) -> tuple[Path, int]:
    """Merge the per-image COCO parts of ``names_list`` (image order), else their ``previous`` records,
    into one COCO instance-segmentation JSON with RLE masks; returns its path and the number of images
    with neither (failed)."""
    parts = []
    missing = 0
    for name in names_list:
        p = coco_part_path(output_dir, name)
        if p.is_file():
            parts.append(json.loads(p.read_text(encoding="utf-8")))
        elif previous and name in previous:
            parts.append({"id": detector.image_id(name), **previous[name]})
        else:
            missing += 1
    kept_ids = [int(pt["id"]) for pt in parts if pt.get("id") is not None]
    base = max(kept_ids, default=0)
    images, annotations = [], []
    for k, pt in enumerate(parts):
        img_id = int(pt["id"]) if pt.get("id") is not None else base + k + 1
        images.append(coco.image_record(img_id, pt["file_name"], pt["width"], pt["height"]))
        annotations.extend({"image_id": img_id, **a} for a in pt["annotations"])
    info = {
        "description": COCO_DESCRIPTION,
        "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    cats = coco.category_records(names, detector.category_id)
    coco.write_coco(path, coco.document(images, annotations, cats, info))
    return path, missing


# ----------------------------------------------------------------------------------------------------


def _check_args(conf: Any, iou: Any, imgsz: Any, max_det: Any, classes: Any, strategy: Any) -> list[int] | None:
    for name, v in (("conf", conf), ("iou", iou)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name}: expected a number in [0, 1], got {v!r}")
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32:
        raise ValueError(f"imgsz: expected an integer >= 32 (pixels, longest side), got {imgsz!r}")
    if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
        raise ValueError(f"max_det: expected an integer >= 1, got {max_det!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected 'all' (join every part of a mask) or 'largest', got {strategy!r}")
    if classes is None:
        return None
    items = [classes] if isinstance(classes, int) else classes
    try:
        out = [int(c) for c in items]
    except (TypeError, ValueError):
        raise ValueError(f"classes: expected a list of class indices such as [0, 2], got {classes!r}") from None
    if any(c < 0 or isinstance(c, bool) for c in items) or any(float(a) != b for a, b in zip(items, out)):
        raise ValueError(f"classes: expected non-negative integer class indices, got {classes!r}")
    return out


def _make_predictor(sam_model: Any, device: torch.device, backend: str) -> Predictor:
    if isinstance(sam_model, Predictor):
        return sam_model
    if isinstance(sam_model, (torch.nn.Module, str, os.PathLike)):  # a Sam, a Sam2, or a file
        return create_predictor(sam_model, backend, device=device)
    raise TypeError(
        f"sam_model: expected a checkpoint path or weights name ('mobile_sam.pt'), a Sam or a predictor, "
        f"got {type(sam_model).__name__}"
    )


def _check_not_overwriting_input(detector: Detector, out: Path, coco_path: Path | None) -> None:
    if isinstance(detector, YoloLabelsDetector) and detector.labels_dir.resolve() == out.resolve():
        raise ValueError(
            f"output_dir: '{out}' is the box-label folder itself; its box labels would be skipped as done or "
            "overwritten: choose another output_dir"
        )
    if (
        isinstance(detector, CocoBoxesDetector)
        and coco_path is not None
        and coco_path.resolve() == detector.json_path.resolve()
    ):
        raise ValueError(f"save_coco: '{coco_path}' is the input box JSON; choose another path")


def _pick_device(device: Any, dist: _Dist) -> torch.device:
    if (device is None or device == "") and dist.world > 1 and torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return select_device(device)


def auto_annotate(
    data: str | os.PathLike,
    det_model: Any = "yolo11x.pt",
    sam_model: Any = "mobile_sam.pt",
    device: str | torch.device | None = "",
    conf: float = 0.25,
    iou: float = 0.45,
    imgsz: int = 640,
    max_det: int = 300,
    classes: Sequence[int] | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    save_coco: bool | str | os.PathLike = False,
    strategy: str = "all",
    backend: str = "torch",
    trust_weights: bool = False,
    verbose: bool = True,
    batch: int = 1,
    embedding_cache: str | os.PathLike | None = None,
    embedding_cache_bytes: int | None = None,
    simplify: float = DEFAULT_SIMPLIFY,
) -> AnnotateSummary:
    """Label a folder of images with segmentation masks: detector boxes -> SAM masks -> YOLO polygons.

    Args:
        data: folder of images (subfolders included) or one image file.
        det_model: Ultralytics weights (``"yolo11x.pt"``, needs ``pip install 'mobilesam[annotate-yolo]'``;
            a ``.pt`` file other than the official ones needs ``trust_weights``), a torchvision model name
            (``"fasterrcnn_resnet50_fpn_v2"``), a folder of YOLO box labels, a COCO box JSON, a
            :class:`~mobilesam.detectors.Detector`, or a callable
            ``image (H, W, 3) RGB uint8 -> (boxes XYXY, class_ids, scores[, names])``.
        sam_model: SAM or SAM 2 checkpoint path or weights name (``sam2.1_t.pt``), a ``Sam`` or ``Sam2``, an
            exported folder (ONNX backends) or a predictor of any backend.
            backend: a name from ``mobilesam.backends.available_backends()``.
        device: "" picks cuda, then mps, then cpu (under torchrun with CUDA: ``cuda:LOCAL_RANK``).
        conf: minimum detection score. iou: class-aware NMS threshold. imgsz: detector input size
            (longest side). max_det: most detections per image. classes: class indices to keep.
            (Box labels keep every box: only ``classes``, and ``conf`` where labels carry scores, apply.)
        output_dir: default ``<data>_auto_annotate_labels`` beside ``data``.
        overwrite: redo images whose label file exists (default: skip them, so a rerun resumes).
        save_coco: also write a COCO instance-segmentation JSON with RLE masks (``True``: ``output_dir/
            instances.json``; or a path). Per-image pieces wait in ``output_dir/.coco_parts/`` until the
            end of the run, which removes them (an interrupted run leaves them for its rerun).
        strategy: ``"all"`` joins every part of a mask into one polygon (as Ultralytics); ``"largest"``
            keeps the largest part.
        simplify: tolerance in pixels of the polygons' simplification (OpenCV ``approxPolyDP``), so
            labels stay editable; 0 keeps every contour point. COCO masks are RLE, never simplified.
        trust_weights: load Ultralytics weights that are not official (by SHA-256): they are pickles of
            Python objects, and loading one runs code from the file.
        verbose: progress bar and summary (rank 0).
        batch: images per image-encoder call (images are read on a background thread meanwhile).
        embedding_cache: a folder of image embeddings kept across runs (:class:`~mobilesam.cache.
            DiskFeatureCache`): labelling the same images again (``overwrite``, other detector settings)
            costs no encoder pass. embedding_cache_bytes: its size bound (default 4 GiB).

    Writes one ``.txt`` per image (``class x1 y1 x2 y2 ...`` normalised, one line per object in
    detection order, empty for an image without objects), ``classes.txt`` and ``data.yaml`` (also when
    an error stops the run, for what it labelled). Unreadable or unusable images (a decompression bomb,
    an image too thin for the detector) are logged, counted as failed and retried by the next run.
    Returns an :class:`AnnotateSummary`.
    """
    t0 = time.perf_counter()
    classes = _check_args(conf, iou, imgsz, max_det, classes, strategy)
    simplify = check_simplify(simplify)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected an int >= 1 (images per encoder call), got {batch!r}")
    disk = DiskFeatureCache.open(embedding_cache, embedding_cache_bytes)
    root, names_list = list_images(data)
    out = Path(output_dir).expanduser() if output_dir is not None else default_output_dir(data)
    coco_path = None
    if save_coco:
        coco_path = out / COCO_JSON if save_coco is True else Path(save_coco).expanduser()
    labels = [label_path(out, n) for n in names_list]
    seen_label: dict[Path, str] = {}
    for n, lp in zip(names_list, labels):
        if lp in seen_label:
            raise ValueError(f"data: '{seen_label[lp]}' and '{n}' would share the label file '{lp}'; rename one")
        seen_label[lp] = n

    dist = _Dist()
    pool: ThreadPoolExecutor | None = None
    try:
        dev = _pick_device(device, dist)
        detector = make_detector(det_model, device=dev, trust_weights=trust_weights)
        _check_not_overwriting_input(detector, out, coco_path)
        detector.configure(conf=float(conf), iou=float(iou), imgsz=imgsz, max_det=max_det, classes=classes, device=dev)
        out.mkdir(parents=True, exist_ok=True)

        previous = previous_coco(coco_path)

        def complete(i: int) -> bool:
            if not labels[i].is_file():
                return False
            return coco_path is None or names_list[i] in previous or coco_part_path(out, names_list[i]).is_file()

        pending = [i for i in range(len(names_list)) if overwrite or not complete(i)]
        dist.barrier()  # every rank has its pending list before anyone writes
        shard = pending[dist.rank :: dist.world]
        stats = dict(annotated=0, objects=0, empty_masks=0, background=0, failed=0)
        failed_files: list[str] = []
        seen: set[int] = set()
        predictor = _make_predictor(sam_model, dev, backend) if shard else None  # a bad checkpoint fails before any work
        cache = None
        if disk is not None and predictor is not None:
            DiskFeatureCache.check_predictor(disk, predictor)
            cache = FeatureCache(0, disk=disk)  # no image comes twice in a run: the disk tier only
        key_of = cache_key_maker(predictor) if cache is not None else None
        # Mask -> polygon work runs on CPU threads while the next image waits; ranks of a node share the cores.
        workers = min(8, (os.cpu_count() or 1) // max(dist.local_world, 1))
        pool = ThreadPoolExecutor(workers, thread_name_prefix="annotate") if workers > 1 and shard else None

        def read(i: int) -> tuple[int, Any]:
            """On the background thread: the image (its cache lookup and resize too), or why it failed."""
            try:
                image = read_image(root / names_list[i])
            except Exception as e:  # noqa: BLE001 - any unreadable file is this image's problem only
                return i, AnnotationInputError(str(e))
            return i, Pending.of(predictor, i, image, cache, key_of)

        def detect(i: int, ready: Any) -> Detections | None:
            """The image's detections, or None (counted as failed) when it cannot be used."""
            try:
                if isinstance(ready, AnnotationInputError):
                    raise ready
                return filter_detections(
                    detector.detect(ready.image, names_list[i]), conf=float(conf), iou=float(iou), max_det=max_det,
                    classes=classes, is_model=detector.is_model,
                )  # fmt: skip
            except AnnotationInputError as e:
                stats["failed"] += 1
                failed_files.append(names_list[i])
                logger.warning("auto_annotate: %s skipped: %s", names_list[i], e)
                return None

        def write_one(i: int, image: np.ndarray, dets: Detections, features: ImageFeatures | None) -> None:
            name = names_list[i]
            lines, anns, empty = _label_image(predictor, image, dets, detector, strategy, coco_path is not None,
                                              pool, features, simplify)
            if empty:
                logger.warning(
                    "auto_annotate: %s: %d of %d detections have an empty mask (detections %s, classes %s); "
                    "no line written for them", name, len(empty), len(dets), empty,
                    [int(dets.classes[j]) for j in empty],
                )  # fmt: skip
            h, w = image.shape[:2]
            if coco_path is not None:
                # The part goes first: the label file is the mark of a complete image.
                part = {"id": detector.image_id(name), "file_name": name, "width": w, "height": h, "annotations": anns}
                atomic_write_text(coco_part_path(out, name), coco.dumps(part))
            yolo.write_labels(labels[i], lines)
            seen.update(int(c) for c in dets.classes)
            stats["annotated"] += 1
            stats["objects"] += len(lines)
            stats["empty_masks"] += len(empty)
            stats["background"] += int(len(dets) == 0)

        def annotate_group(group: list[tuple[int, Any]]) -> None:
            """Detections of each image, one encoder call for the images with any (and not cached), labels."""
            found = []
            try:
                for i, ready in group:
                    dets = detect(i, ready)
                    if dets is None:
                        bar.update(1)
                    else:
                        found.append((i, ready, dets))
                encode_pending(predictor, [ready for _, ready, dets in found if len(dets)], cache)
                for i, ready, dets in found:
                    write_one(i, ready.image, dets, ready.features)
                    bar.update(1)
            finally:
                bar.set_postfix(objects=stats["objects"], failed=stats["failed"], refresh=False)

        # Counted by hand: every image (labelled, failed or not) moves the bar, so a finished run ends at 100%.
        bar = tqdm(
            total=len(shard), desc="auto_annotate", unit="img", disable=not (verbose and dist.rank == 0),
            dynamic_ncols=True,
        )  # fmt: skip
        try:
            # Images are read (and resized for the encoder) on a background thread while the encoder runs.
            for group in chunks(prefetch(shard, read, depth=2 * batch), batch):
                annotate_group(group)
        except BaseException:
            bar.close()
            if stats["annotated"]:
                # What was labelled stays a usable dataset; the COCO parts stay for the rerun to merge.
                try:
                    _write_names(out, root, detector.names, seen, seen_label)
                except Exception as e:  # noqa: BLE001 - the error that stopped the run is the one to report
                    logger.warning("auto_annotate: classes.txt / data.yaml not written: %s", e)
            raise
        bar.close()
        note = detector.report()
        if note:
            logger.warning("auto_annotate%s: %s", f" (rank {dist.rank})" if dist.world > 1 else "", note)

        gathered = dist.gather((stats, failed_files, sorted(seen), detector.names))
        summary = AnnotateSummary(
            images=len(names_list),
            skipped=len(names_list) - len(pending),
            output_dir=out,
            world_size=dist.world,
            per_rank=[g[0]["annotated"] for g in gathered],
        )
        all_seen: set[int] = set()
        known: dict[int, str] = {}
        for st, ff, sn, nm in gathered:
            for k, v in st.items():
                setattr(summary, k, getattr(summary, k) + v)
            summary.failed_files = sorted(summary.failed_files + ff)
            all_seen.update(sn)
            known.update(nm)
        if dist.rank == 0:
            names = _write_names(out, root, known, all_seen, seen_label)
            if coco_path is not None:
                merge_coco(out, names_list, names, detector, coco_path, previous)
                # Every rank is done: the JSON holds all the parts, which a rerun no longer needs.
                shutil.rmtree(out / COCO_PARTS, ignore_errors=True)
        dist.barrier()  # every rank returns once the dataset files are complete
        summary.coco_json = coco_path
        summary.seconds = time.perf_counter() - t0
        if verbose and dist.rank == 0:
            print(summary)
        return summary
    finally:
        if pool is not None:
            pool.shutdown()
        dist.close()


def _mask_record(
    mask: np.ndarray, category_id: int, score: float, strategy: str, with_coco: bool, simplify: float = 0.0
) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """The YOLO segment of one mask and, ``with_coco``, its COCO annotation (runs in worker threads)."""
    seg = mask_to_segment(mask, strategy, simplify)
    if seg is None or not with_coco:
        return seg, None
    return seg, coco.annotation(mask, category_id, score=score)


def _label_image(
    predictor: Predictor | None,
    image: np.ndarray,
    dets: Detections,
    detector: Detector,
    strategy: str,
    with_coco: bool,
    pool: ThreadPoolExecutor | None = None,
    features: ImageFeatures | None = None,
    simplify: float = 0.0,
) -> tuple[list[str], list[dict[str, Any]], list[int]]:
    """Label lines, COCO annotations and indices of detections with an empty mask, for one image.

    Line k is detection j's polygon with detection j's class, j increasing: empty masks leave no line,
    and never shift a class onto another object. Masks become polygons in ``pool``'s threads (OpenCV
    releases the GIL), in order.
    """
    if len(dets) == 0:
        return [], [], []
    assert predictor is not None
    h, w = image.shape[:2]
    classes = [int(c) for c in dets.classes]
    lines: list[str] = []
    anns: list[dict[str, Any]] = []
    empty: list[int] = []
    masks = _segment_boxes(predictor, image, dets.boxes, features)
    convert = partial(_mask_record, strategy=strategy, with_coco=with_coco, simplify=simplify)
    j = 0
    while batch := list(islice(masks, 64)):
        ids = [detector.category_id(c) for c in classes[j : j + len(batch)]]
        scores = [float(s) for s in dets.scores[j : j + len(batch)]]
        records = pool.map(convert, batch, ids, scores) if pool is not None else map(convert, batch, ids, scores)
        for seg, ann in records:
            if seg is None:
                empty.append(j)
            else:
                lines.append(yolo.format_line(classes[j], seg, w, h))
                if ann is not None:
                    anns.append(ann)
            j += 1
    return lines, anns, empty


__all__ = [
    "AnnotateSummary",
    "auto_annotate",
    "default_output_dir",
    "format_segment",
    "list_images",
    "mask_to_segment",
]
