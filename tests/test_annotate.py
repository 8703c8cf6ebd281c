"""auto_annotate: box labels / COCO boxes / torchvision / callables -> SAM masks -> YOLO + COCO labels."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import mobilesam.annotate as annotate_mod
from mobilesam.annotate import COCO_PARTS, auto_annotate, mask_to_segment
from mobilesam.build import build_sam
from mobilesam.detectors import (
    COCO80_NAMES,
    COCO80_TO_91,
    Detections,
    TorchvisionDetector,
    UltralyticsDetector,
    filter_detections,
    make_detector,
)
from mobilesam.masks import decode_rle, polygons_to_mask

YOLO_NAMES = ["cat", "dog", "bird"]
# Boxes in pixels per image (x1, y1, x2, y2, class[, conf]); d.jpg has no label file, sub/c.png an empty one.
BOXES = {
    "a.jpg": [(40, 30, 160, 130, 2), (150, 60, 280, 180, 0), (10, 120, 90, 190, 1)],
    "b.png": [(30, 40, 200, 200, 1), (180, 20, 300, 150, 1), (0, 0, 50, 50, 0, 0.1)],
    "sub/c.png": [],
}
SIZES = {"a.jpg": (200, 300), "b.png": (240, 320), "sub/c.png": (200, 300), "d.jpg": (180, 260)}


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 90, (h, w, 3), dtype=np.uint8)
    cv2.rectangle(img, (w // 6, h // 6), (w // 2, h // 2), (230, 200, 40), -1)
    cv2.ellipse(img, (2 * w // 3, 2 * h // 3), (w // 6, h // 5), 0, 0, 360, (30, 60, 220), -1)
    return img


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("annotate")
    images, labels = root / "images", root / "labels"
    for k, (name, (h, w)) in enumerate(SIZES.items()):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(h, w, k)).save(images / name, quality=95)
    for name, boxes in BOXES.items():
        h, w = SIZES[name]
        lines = []
        for b in boxes:
            x1, y1, x2, y2, c = b[:5]
            vals = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h, *b[5:]]
            lines.append(f"{c} " + " ".join(f"{v:.6f}" for v in vals))
        (labels / name).with_suffix(".txt").parent.mkdir(parents=True, exist_ok=True)
        (labels / name).with_suffix(".txt").write_text("\n".join(lines))
    (labels / "classes.txt").write_text("\n".join(YOLO_NAMES) + "\n")
    return {"root": root, "images": images, "labels": labels}


@pytest.fixture(scope="module")
def sam(tiny_checkpoint):
    return build_sam(tiny_checkpoint)


class MaskSpy:
    """Records the masks SAM made for each image (in processing order) and can blank some of them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, blank: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[tuple[int, int], np.ndarray, list[np.ndarray]]] = []
        original = annotate_mod._segment_boxes

        def spy(predictor, image, boxes, features=None):
            masks = [m.copy() for m in original(predictor, image, boxes, features)]
            for j in blank:
                masks[j][:] = False
            self.calls.append((image.shape[:2], boxes.copy(), masks))
            yield from masks

        monkeypatch.setattr(annotate_mod, "_segment_boxes", spy)


def _read_lines(path: Path) -> list[tuple[int, np.ndarray]]:
    out = []
    for line in path.read_text().splitlines():
        vals = line.split()
        assert len(vals) >= 7 and len(vals) % 2 == 1, line[:80]
        out.append((int(vals[0]), np.array([float(v) for v in vals[1:]]).reshape(-1, 2)))
    return out


def _reference(mask: np.ndarray, strategy: str) -> np.ndarray:
    """The mask component(s) a polygon is made of: 8-connected, holes filled (a polygon has none)."""
    filled = ndimage.binary_fill_holes(mask)
    if strategy == "all":
        return filled
    lab, n = ndimage.label(filled, structure=np.ones((3, 3)))
    if n == 0:
        return filled
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (np.argmax(sizes) + 1)


def _check_label_file(path: Path, masks: list[np.ndarray], classes: list[int], strategy: str) -> int:
    """Line k = the k-th non-empty mask, with its detection's class; the redrawn polygon matches it."""
    h, w = masks[0].shape if masks else (0, 0)
    kept = [j for j, m in enumerate(masks) if mask_to_segment(m, strategy) is not None]
    lines = _read_lines(path)
    assert [c for c, _ in lines] == [classes[j] for j in kept]
    checked = 0
    for (_, xy), j in zip(lines, kept):
        assert xy.min() >= 0.0 and xy.max() <= 1.0
        redrawn = polygons_to_mask([xy * (w, h)], (h, w))
        ref = _reference(masks[j], strategy)
        if ref.sum() >= 100:
            iou = (redrawn & ref).sum() / (redrawn | ref).sum()
            assert iou >= 0.9, (path.name, j, iou)
            checked += 1
    return checked


def test_yolo_box_labels_to_segments_and_coco(dataset, sam, monkeypatch, tmp_path) -> None:
    from pycocotools.coco import COCO

    spy = MaskSpy(monkeypatch)
    out = tmp_path / "labels"
    s = auto_annotate(dataset["images"], dataset["labels"], sam, device="cpu", output_dir=out, save_coco=True)
    assert (s.images, s.annotated, s.skipped, s.failed, s.background) == (4, 4, 0, 0, 2)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.txt")) == [
        "a.txt", "b.txt", "classes.txt", "d.txt", "sub/c.txt"
    ]  # fmt: skip
    assert (out / "d.txt").read_text() == "" and (out / "sub" / "c.txt").read_text() == ""
    assert (out / "classes.txt").read_text().splitlines() == YOLO_NAMES
    yaml = (out / "data.yaml").read_text()
    assert "nc: 3" in yaml and '  2: "bird"' in yaml

    # SAM ran once per image with boxes, on exactly the label boxes (b's conf-0.1 box is dropped).
    assert [c[0] for c in spy.calls] == [SIZES["a.jpg"], SIZES["b.png"]]
    np.testing.assert_allclose(spy.calls[0][1], np.array([b[:4] for b in BOXES["a.jpg"]]), atol=1e-3)
    assert len(spy.calls[1][1]) == 2
    checked = _check_label_file(out / "a.txt", spy.calls[0][2], [2, 0, 1], "all")
    checked += _check_label_file(out / "b.txt", spy.calls[1][2], [1, 1], "all")
    assert checked >= 3  # the geometry check really ran
    assert s.objects + s.empty_masks == 5
    assert s.objects == len(_read_lines(out / "a.txt")) + len(_read_lines(out / "b.txt"))

    coco = COCO(str(out / "instances.json"))
    assert sorted(im["file_name"] for im in coco.dataset["images"]) == sorted(SIZES)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == YOLO_NAMES
    assert len(coco.dataset["annotations"]) == s.objects
    by_name = {im["file_name"]: im for im in coco.dataset["images"]}
    for name, call in zip(["a.jpg", "b.png"], spy.calls):
        im = by_name[name]
        assert (im["height"], im["width"]) == SIZES[name]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]]))
        masks = [m for m in call[2] if mask_to_segment(m, "all") is not None]
        assert len(anns) == len(masks)
        for ann, m in zip(anns, masks):
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), m)
            assert ann["area"] == int(m.sum())
    lines_a = [c for c, _ in _read_lines(out / "a.txt")]
    anns_a = coco.loadAnns(coco.getAnnIds(imgIds=[by_name["a.jpg"]["id"]]))
    assert [a["category_id"] - 1 for a in anns_a] == lines_a

    # Resume: nothing to do, so SAM is not even loaded (a missing checkpoint does not matter).
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.txt")}
    s2 = auto_annotate(dataset["images"], dataset["labels"], "no-such-checkpoint.pt", output_dir=out, save_coco=True)
    assert (s2.annotated, s2.skipped) == (0, 4)
    # Delete two outputs: only those are redone, the others are not touched.
    text_a = (out / "a.txt").read_text()
    (out / "a.txt").unlink()
    (out / "d.txt").unlink()
    spy.calls.clear()
    s3 = auto_annotate(
        dataset["images"], dataset["labels"], sam, device="cpu", output_dir=out, save_coco=True, verbose=False
    )
    assert (s3.annotated, s3.skipped, s3.background) == (2, 2, 1)
    assert [c[0] for c in spy.calls] == [SIZES["a.jpg"]]
    assert (out / "a.txt").read_text() == text_a and (out / "d.txt").read_text() == ""
    for p in (out / "b.txt", out / "sub" / "c.txt"):
        assert p.stat().st_mtime_ns == before[p]
    assert len(COCO(str(out / "instances.json")).dataset["annotations"]) == s.objects
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.is_file()]  # no temp files left


def test_coco_box_json_keeps_ids_and_filters_classes(dataset, sam, monkeypatch, tmp_path) -> None:
    from pycocotools.coco import COCO

    boxes_a = [(5, [40, 30, 100, 90]), (9, [150, 60, 120, 110]), (9, [10, 120, 80, 70]), (5, [0, 0, 20, 20])]
    gt = {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 300, "height": 200},
            {"id": 20, "file_name": "b.png", "width": 320, "height": 240},
            {"id": 30, "file_name": "c.png", "width": 300, "height": 200},  # matched by base name
        ],
        "annotations": [{"id": k + 1, "image_id": 10, "category_id": c, "bbox": b} for k, (c, b) in enumerate(boxes_a)]
        + [
            {"id": 50, "image_id": 10, "category_id": 9, "bbox": [0, 0, 300, 200], "iscrowd": 1},
            {"id": 51, "image_id": 20, "category_id": 5, "bbox": [10, 10, 50, 50]},
        ],
        "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}],
    }
    gt_path = tmp_path / "boxes.json"
    gt_path.write_text(json.dumps(gt))
    spy = MaskSpy(monkeypatch)
    out = tmp_path / "out"
    s = auto_annotate(
        dataset["images"], str(gt_path), sam, "cpu", classes=[1], output_dir=out, save_coco=True, strategy="largest"
    )
    # Sorted category ids 5, 9 -> classes 0 (cat), 1 (dog); only dogs are kept; crowd boxes are skipped.
    assert (out / "classes.txt").read_text().splitlines() == ["cat", "dog"]
    assert len(spy.calls) == 1
    np.testing.assert_allclose(spy.calls[0][1], [[150, 60, 270, 170], [10, 120, 90, 190]], atol=1e-4)
    _check_label_file(out / "a.txt", spy.calls[0][2], [1, 1], "largest")
    assert (out / "b.txt").read_text() == "" and (out / "sub" / "c.txt").read_text() == ""
    assert (out / "d.txt").read_text() == "" and s.background == 3
    coco = COCO(str(out / "instances.json"))
    ids = {im["file_name"]: im["id"] for im in coco.dataset["images"]}
    assert (ids["a.jpg"], ids["b.png"], ids["sub/c.png"]) == (10, 20, 30)
    assert ids["d.jpg"] not in (10, 20, 30)  # not in the box JSON: a fresh id
    assert {a["category_id"] for a in coco.dataset["annotations"]} <= {9}
    assert {c["id"]: c["name"] for c in coco.dataset["categories"]} == {5: "cat", 9: "dog"}


def test_callable_detector_nms_order_and_empty_masks(dataset, sam, monkeypatch, caplog) -> None:
    def detect(image):
        assert image.dtype == np.uint8 and image.shape == (200, 300, 3)
        boxes = [[40, 30, 160, 130], [42, 31, 161, 131], [45, 35, 150, 120], [150, 60, 280, 180], [0, 0, 60, 60]]
        return (
            torch.tensor(boxes, dtype=torch.float32),
            [3, 3, 7, 1, 0],
            [0.6, 0.5, 0.9, 0.7, 0.1],
            {3: "car", 7: "van"},
        )

    # Kept: class-7 (0.9), class-1 (0.7), first class-3 (0.6); the second class-3 box is a duplicate
    # (NMS within its class), the class-0 box is under conf. Detection 1 (class 1) gets an empty mask.
    spy = MaskSpy(monkeypatch, blank=(1,))
    with caplog.at_level(logging.WARNING, logger="mobilesam.annotate"):
        s = auto_annotate(dataset["images"] / "a.jpg", detect, sam, device="cpu", conf=0.25, iou=0.45, verbose=False)
    out = dataset["images"] / "a_auto_annotate_labels"  # the default: beside data
    assert s.output_dir == out and (out / "a.txt").is_file()
    np.testing.assert_allclose(spy.calls[0][1], [[45, 35, 150, 120], [150, 60, 280, 180], [40, 30, 160, 130]])
    assert [c for c, _ in _read_lines(out / "a.txt")] == [7, 3]  # line i = detection i; the empty one is left out
    _check_label_file(out / "a.txt", spy.calls[0][2], [7, 1, 3], "all")
    assert (s.objects, s.empty_masks) == (2, 1)
    assert "empty mask" in caplog.text and "a.jpg" in caplog.text
    names = (out / "classes.txt").read_text().splitlines()
    assert len(names) == 8 and names[3] == "car" and names[7] == "van" and names[1] == "1"


def test_torchvision_detector_random_weights(dataset, sam, monkeypatch, tmp_path) -> None:
    torchvision = pytest.importorskip("torchvision")
    meta = torchvision.models.detection.FasterRCNN_ResNet50_FPN_V2_Weights.DEFAULT.meta["categories"]
    assert [meta[i] for i in COCO80_TO_91] == list(COCO80_NAMES)  # our COCO table is torchvision's

    torch.manual_seed(0)
    det = TorchvisionDetector("ssdlite320_mobilenet_v3_large", weights=None)
    # Random weights score every class alike (~1/91): bias three COCO labels so that detections have
    # clear classes: 1 (person -> class 0), 3 (car -> 2), 18 (dog -> 16).
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in det.model.head.classification_head.module_list:
            bias = list(block.modules())[-1].bias.view(-1, 91)  # (anchors, COCO labels)
            for label, base in ((1, 6.0), (3, 5.0), (18, 5.5)):
                bias[:, label] += base + torch.randn(bias.shape[0], generator=g)
    image = np.asarray(Image.open(dataset["images"] / "a.jpg").convert("RGB"))
    det.configure(conf=0.05, iou=0.45, imgsz=320, max_det=300, classes=None)
    raw = det.detect(image, "a.jpg")
    assert set(raw.classes.tolist()) == {0, 2, 16}
    sd_path = tmp_path / "ssd.pth"
    torch.save(det.model.state_dict(), sd_path)
    again = TorchvisionDetector("ssdlite320_mobilenet_v3_large", weights=sd_path)
    again.configure(conf=0.05, iou=0.45, imgsz=320, max_det=300, classes=None)
    np.testing.assert_allclose(again.detect(image, "a.jpg").boxes, raw.boxes, atol=1e-4)

    # The same filter for every model: conf, classes, class-aware NMS, max_det, by decreasing score.
    kw = dict(conf=0.25, iou=0.3, max_det=3, classes=[0, 16])
    det.configure(imgsz=320, **kw)  # what auto_annotate will do
    want = filter_detections(det.detect(image, "a.jpg"), **kw)
    assert len(want) == 3 and set(want.classes.tolist()) <= {0, 16}
    assert (np.diff(want.scores) <= 0).all() and (want.scores >= 0.25).all()
    spy = MaskSpy(monkeypatch)
    out = tmp_path / "tv"
    s = auto_annotate(
        dataset["images"] / "a.jpg", det, sam, device="cpu", imgsz=320, output_dir=out, save_coco=True, **kw
    )
    np.testing.assert_allclose(spy.calls[0][1], want.boxes, atol=1e-3)
    _check_label_file(out / "a.txt", spy.calls[0][2], want.classes.tolist(), "all")
    assert s.objects + s.empty_masks == len(want)
    assert (out / "classes.txt").read_text().splitlines() == list(COCO80_NAMES)
    coco = json.loads((out / "instances.json").read_text())
    assert coco["categories"][0] == {"id": 1, "name": "person", "supercategory": ""}
    assert {a["category_id"] for a in coco["annotations"]} <= {1, 18}  # COCO ids: person, dog


def test_filter_detections_semantics() -> None:
    d = Detections(
        [[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 9, 9]],
        [0, 0, 1, 0, 2],
        [0.5, 0.9, 0.4, 0.3, 0.2],
    )
    kept = filter_detections(d, conf=0.25, iou=0.5, max_det=10, classes=None)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.4, 0.3]) and kept.classes.tolist() == [0, 1, 0]
    assert len(filter_detections(d, conf=0.25, iou=0.5, max_det=2, classes=None)) == 2
    assert filter_detections(d, conf=0.0, iou=0.5, max_det=9, classes=[2]).classes.tolist() == [2]
    # Box labels keep every box in file order: only classes and conf apply.
    labels = filter_detections(d, conf=0.25, iou=0.5, max_det=1, classes=[0], is_model=False)
    assert labels.scores.tolist() == pytest.approx([0.5, 0.9, 0.3])


def test_failures_are_counted_and_retried(sam, tmp_path, caplog) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("ok.png", "badlabel.png"):
        Image.fromarray(_image(40, 50, 0)).save(images / name)
    (images / "corrupt.jpg").write_bytes(b"not an image at all")
    (labels / "badlabel.txt").write_text("0 0.5 0.5 0.2\n")  # 4 values: malformed
    (labels / "ok.txt").write_text("")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="mobilesam.annotate"):
        s = auto_annotate(images, labels, sam, device="cpu", output_dir=out, verbose=False)
    assert (s.annotated, s.failed, s.background) == (1, 2, 1)
    assert sorted(s.failed_files) == ["badlabel.png", "corrupt.jpg"]
    assert "corrupt.jpg" in caplog.text and "badlabel.txt" in caplog.text and "line 1" in caplog.text
    assert sorted(p.name for p in out.glob("*.txt")) == ["classes.txt", "ok.txt"]
    (labels / "badlabel.txt").write_text("")  # fixed: the rerun does just the failed ones
    s2 = auto_annotate(images, labels, sam, device="cpu", output_dir=out, verbose=False)
    assert (s2.annotated, s2.skipped, s2.failed) == (1, 1, 1)
    assert "corrupt" in str(s2)
    s3 = auto_annotate(images, labels, sam, device="cpu", output_dir=out, overwrite=True, verbose=False)
    assert (s3.annotated, s3.skipped, s3.failed) == (2, 0, 1)
    with pytest.raises(ValueError, match="output_dir: .* is the box-label folder"):
        auto_annotate(images, labels, sam, output_dir=labels)


def test_bad_arguments_and_missing_ultralytics(dataset, sam, monkeypatch) -> None:
    images = dataset["images"]
    for kwargs, pattern in [
        (dict(conf=1.5), r"conf: expected a number in \[0, 1\], got 1.5"),
        (dict(iou=-0.1), r"iou: expected a number in \[0, 1\]"),
        (dict(imgsz=0), "imgsz: expected an integer >= 32"),
        (dict(max_det=0), "max_det: expected an integer >= 1"),
        (dict(classes=[0, -1]), "classes: expected non-negative integer"),
        (dict(classes=["person"]), "classes: expected a list of class indices"),
        (dict(strategy="biggest"), "strategy: expected 'all'"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            auto_annotate(images, dataset["labels"], "unused.pt", **kwargs)
    with pytest.raises(FileNotFoundError, match="data: folder '.*nowhere' not found"):
        auto_annotate(images / "nowhere", dataset["labels"])
    with pytest.raises(TypeError, match="det_model"):
        make_detector(42)
    with pytest.raises(ValueError, match="det_model: 'no_such_labels' is not an existing folder"):
        make_detector("no_such_labels")
    with pytest.raises(TypeError, match=r"expected \(boxes, class_ids, scores\)"):
        auto_annotate(images / "a.jpg", lambda im: [[0, 0, 1, 1]], sam, device="cpu", output_dir=images.parent / "x")
    with pytest.raises(ValueError, match=r"boxes: expected XYXY"):
        auto_annotate(
            images / "a.jpg", lambda im: ([[5, 0, 1, 1]], [0], [1.0]), sam, device="cpu", output_dir=images.parent / "x"
        )
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as if not installed
    for det_model in ("yolo11x.pt", Path("runs/best.pt")):
        with pytest.raises(
            ImportError,
            match=r"pip install 'mobilesam\[annotate-yolo\]'.*AGPL|AGPL.*pip install 'mobilesam\[annotate-yolo\]'",
        ):
            make_detector(det_model)
    with pytest.raises(ImportError, match="ultralytics"):
        UltralyticsDetector("yolo11x.pt")


def test_cli_help_and_no_optional_imports() -> None:
    code = (
        "import sys; import mobilesam.annotate, mobilesam.detectors, mobilesam.cli.annotate; "
        "bad = [m for m in ('torchvision', 'ultralytics', 'timm', 'mobile_sam', 'segment_anything') "
        "if m in sys.modules]; "
        "assert not bad, bad; from mobilesam.cli import main; sys.exit(main(['annotate', '--help']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for opt in ("--det-model", "--boxes", "--model", "--conf", "--classes", "--output-dir", "--coco", "--overwrite"):
        assert opt in r.stdout


def test_torchrun_two_ranks_shard_without_loss_or_duplicates(dataset, tiny_checkpoint, tmp_path) -> None:
    from pycocotools.coco import COCO

    # Five images; the two with boxes (sorted positions 0 and 1) land on different ranks.
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for k in range(5):
        Image.fromarray(_image(60, 80, k)).save(images / f"im{k}.png")
    (labels / "im0.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.3 0.3 0.2 0.2\n")
    (labels / "im1.txt").write_text("1 0.6 0.5 0.4 0.6\n")
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "mobilesam", "annotate", str(images), "--boxes", str(labels), "--model", str(tiny_checkpoint),
        "--device", "cpu", "--output-dir", str(out), "--coco",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("auto_annotate: 5 images") == 1  # one summary, from rank 0
    assert "5 labelled on 2 ranks [3, 2]" in r.stdout
    txt = sorted(p.name for p in out.glob("*.txt") if p.name != "classes.txt")
    assert txt == [f"im{k}.txt" for k in range(5)]
    assert len(_read_lines(out / "im0.txt")) + len(_read_lines(out / "im1.txt")) >= 2
    assert [p for p in out.rglob("*") if p.is_file() and ".part" in p.name] == []
    coco = COCO(str(out / "instances.json"))
    assert sorted(im["file_name"] for im in coco.dataset["images"]) == [f"im{k}.png" for k in range(5)]
    ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(ids) == len(set(ids)) == len(_read_lines(out / "im0.txt")) + len(_read_lines(out / "im1.txt"))
    for a in coco.dataset["annotations"]:
        assert decode_rle(a["segmentation"]).shape == (60, 80)


def _last_bar(err: str) -> str:
    """The last state tqdm drew of the auto_annotate bar."""
    return [s for s in err.replace("\r", "\n").splitlines() if s.startswith("auto_annotate:") and "img" in s][-1]


def test_unusable_images_are_skipped_and_the_dataset_files_written(sam, tmp_path, monkeypatch, caplog, capsys) -> None:
    """Issue 13 item 7: a decompression bomb and a 1-pixel-high image (too thin for an R-CNN's resize) are
    skipped and reported like unreadable files; the run ends (bar at 100%) with classes.txt and data.yaml."""
    pytest.importorskip("torchvision")
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    Image.fromarray(_image(40, 50, 0)).save(images / "ok.png")
    Image.fromarray(_image(40, 50, 1)).save(images / "done.png")
    Image.fromarray(_image(1, 3000, 2)).save(images / "thin.png")
    Image.fromarray(_image(150, 150, 3)).save(images / "bomb.png")
    (images / "corrupt.jpg").write_bytes(b"not an image")
    out.mkdir()
    (out / "done.txt").write_text("")  # labelled by an earlier run: skipped
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # bomb.png (22,500 pixels) is over twice the limit
    torch.manual_seed(0)
    det = TorchvisionDetector("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None)
    with caplog.at_level(logging.WARNING, logger="mobilesam.annotate"):
        s = auto_annotate(images, det, sam, device="cpu", conf=1.0, output_dir=out)
    assert (s.images, s.skipped, s.annotated, s.failed) == (5, 1, 1, 3)
    assert s.failed_files == ["bomb.png", "corrupt.jpg", "thin.png"]
    assert "thin.png skipped: image of 3000x1 pixels is too thin" in caplog.text
    assert "bomb.png skipped:" in caplog.text and "decompression bomb" in caplog.text
    assert (out / "ok.txt").read_text() == "" and not (out / "thin.txt").exists()
    assert (out / "classes.txt").read_text().splitlines() == list(COCO80_NAMES)
    assert "nc: 80" in (out / "data.yaml").read_text()
    err = capsys.readouterr().err
    assert " 100%" in _last_bar(err) and "4/4" in _last_bar(err)


def test_interrupted_run_keeps_a_dataset_and_coco_parts_only_until_finished(sam, tmp_path, monkeypatch, capsys) -> None:
    """Issue 13 items 7 and 23: an error part-way still leaves classes.txt / data.yaml for what was labelled
    and keeps .coco_parts/ for the rerun; a finished run removes .coco_parts/, resumes from instances.json,
    and its summary and help name only what exists."""
    from pycocotools.coco import COCO

    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for k in range(4):
        Image.fromarray(_image(40, 50, k)).save(images / f"im{k}.png")
    calls = []

    def detect(image):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the detector's device went away")
        # One object, on the first image only; the others are background.
        return ([[5, 5, 30, 25]], [2], [0.9], {2: "bird"}) if len(calls) == 1 else ([], [], [])

    with pytest.raises(RuntimeError, match="device went away"):
        auto_annotate(images, detect, sam, device="cpu", output_dir=out, save_coco=True, verbose=False)
    assert (out / "classes.txt").read_text().splitlines() == ["0", "1", "bird"]
    assert "nc: 3" in (out / "data.yaml").read_text()
    assert sorted(p.name for p in (out / COCO_PARTS).iterdir()) == ["im0.png.json", "im1.png.json"]
    assert not (out / "instances.json").exists()
    objects = len(_read_lines(out / "im0.txt"))

    s = auto_annotate(images, lambda im: ([], [], []), sam, device="cpu", output_dir=out, save_coco=True)
    assert (s.skipped, s.annotated) == (2, 2)
    assert not (out / COCO_PARTS).exists()
    coco = COCO(str(out / "instances.json"))
    assert sorted(im["file_name"] for im in coco.dataset["images"]) == [f"im{k}.png" for k in range(4)]
    assert len(coco.dataset["annotations"]) == objects
    printed = capsys.readouterr().out
    named = re.findall(r"-> (\S+)", printed) + re.findall(r"\(COCO: (\S+)\)", printed)
    assert len(named) == 2 and all(Path(p).exists() for p in named)

    # Resume after a finished run: instances.json is what it resumes from.
    (out / "im3.txt").unlink()
    s = auto_annotate(images, lambda im: ([], [], []), sam, device="cpu", output_dir=out, save_coco=True, verbose=False)
    assert (s.skipped, s.annotated) == (3, 1) and not (out / COCO_PARTS).exists()
    again = COCO(str(out / "instances.json"))
    assert again.dataset["annotations"] == coco.dataset["annotations"]
    assert again.dataset["images"] == coco.dataset["images"]

    from mobilesam.cli import main

    with pytest.raises(SystemExit):
        main(["annotate", "--help"])
    help_text = capsys.readouterr().out
    assert ".coco_parts/" in help_text and "interrupted" in help_text and "--trust-weights" in help_text
    assert "_masks" not in help_text
