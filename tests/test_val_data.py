"""``mobilesam val --data``: the box and click protocols equal an independent computation with the official
SamPredictor on the same checkpoint; COCO mask AP on hand-checked cases; the CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from mobilesam.masks import encode_rle
from mobilesam.validation import first_click, next_click
from mobilesam.validation.coco_ap import ground_truth, mask_ap


def _disk(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _diamond(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.abs(yy - cy) + np.abs(xx - cx) <= r


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory) -> dict:
    """One image with three objects (disks and a diamond: a unique deepest pixel each), a crowd region and
    a polygon without area; one image without annotations (never embedded)."""
    root = tmp_path_factory.mktemp("valdata")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    h, w = 96, 128
    img = rng.integers(0, 50, (h, w, 3)).astype(np.uint8)
    anns = []
    for j, (shape, cy, cx, r) in enumerate([(_disk, 30, 40, 15), (_diamond, 60, 90, 20), (_disk, 75, 30, 40)]):
        m = shape(h, w, cy, cx, r)
        img[m] = (220, 80 + 60 * j, 40)
        anns.append({"id": j + 1, "image_id": 1, "category_id": 1 + j % 2, "segmentation": encode_rle(m),
                     "area": int(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0})
    Image.fromarray(img).save(root / "img" / "im0.png")
    crowd = np.zeros((h, w), bool)
    crowd[:10] = True
    anns.append({"id": 90, "image_id": 1, "category_id": 1, "segmentation": encode_rle(crowd), "area": 1280,
                 "bbox": [0, 0, 128, 10], "iscrowd": 1})
    anns.append({"id": 91, "image_id": 1, "category_id": 2, "segmentation": [[3, 3, 3, 3, 3, 3]], "area": 0,
                 "bbox": [3, 3, 0, 0], "iscrowd": 0})
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(root / "img" / "empty.png")
    images = [{"id": 1, "file_name": "im0.png", "width": w, "height": h},
              {"id": 3, "file_name": "empty.png", "width": 50, "height": 50}]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return {"root": root, "json": path, "images": root / "img"}


def _official_predictor(model: torch.nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import SamPredictor
    return SamPredictor(model)


def _deepest(mask: np.ndarray) -> tuple[int, int]:
    """An independent first click: scipy's exact Euclidean distance transform (the image border counts)."""
    d = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(x), int(y)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _official_protocols(official, gts: list[tuple[int, np.ndarray]]) -> dict[int, tuple[float, float, list[int]]]:
    """Box and 1-click IoU of each (id, mask) by the official SamPredictor, its image set: {id: (box IoU,
    click IoU, click)}, computed independently of mobilesam (scipy for the click, one predict per prompt)."""
    out = {}
    for ann_id, gt in gts:
        ys, xs = np.nonzero(gt)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        masks, _, _ = official.predict(box=box, multimask_output=False)
        x, y = _deepest(gt)
        clicked, scores, _ = official.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]))
        out[ann_id] = (_iou(masks[0], gt), _iou(clicked[int(np.argmax(scores))], gt), [x, y, 1])
    return out


def _ground_truth(coco_set: dict) -> list[tuple[int, np.ndarray]]:
    coco = COCO(str(coco_set["json"]))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=1, iscrowd=False))
    return [(a["id"], coco.annToMask(a).astype(bool)) for a in anns if coco.annToMask(a).any()]


def test_protocols_equal_the_official_predictor_and_the_check_can_fail(coco_set, vit_t_pair) -> None:
    """On one shared image embedding (no encoder run): our box and 1-click protocols give the official
    predictor's IoUs; one weight of our decoder perturbed moves them."""
    from mobilesam.backends import create_predictor
    from mobilesam.modeling import build_model
    from mobilesam.validation import box_ious, click_ious, mask_box

    ref, ours = vit_t_pair
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    official = _official_predictor(ref)
    official.features, official.original_size, official.input_size = emb, (96, 128), (768, 1024)
    official.is_image_set = True
    gts = _ground_truth(coco_set)
    expected = _official_protocols(official, gts)
    gt = torch.from_numpy(np.stack([m for _, m in gts]))
    boxes = np.stack([mask_box(m) for _, m in gts])

    def predictor(model):
        pred = create_predictor(model)
        pred.set_embedding(emb, (96, 128))
        return pred

    pred = predictor(ours)
    b, run = box_ious(pred, gt, boxes), click_ious(pred, gt, max_clicks=1)
    assert [list(c[0]) for c in run.clicks] == [expected[i][2] for i, _ in gts]
    np.testing.assert_allclose(b, [expected[i][0] for i, _ in gts], atol=2e-3)
    np.testing.assert_allclose(run.iou_after(1), [expected[i][1] for i, _ in gts], atol=2e-3)
    assert len({round(v, 3) for v in b}) > 1  # the masks differ between objects: the comparison means something

    perturbed = build_model("vit_t")
    perturbed.load_state_dict(ours.state_dict())
    with torch.no_grad():
        perturbed.mask_decoder.output_hypernetworks_mlps[0].layers[2].bias += 0.5
    moved = box_ious(predictor(perturbed.eval()), gt, boxes)
    assert np.abs(moved - b).max() > 1e-2


def test_click_rule() -> None:
    gt = _disk(41, 61, 20, 25, 12)
    assert first_click(gt) == (25, 20) == _deepest(gt)
    assert next_click(gt, gt) is None
    pred = gt.copy()
    pred[:, 40:55] = True  # spills to the right: the deepest spill is negative
    x, y, label = next_click(pred, gt)
    assert label == 0 and not gt[y, x] and pred[y, x] and 45 <= x <= 50
    pred = _disk(41, 61, 20, 25, 4)  # misses most of the object: positive click in the missed ring
    x, y, label = next_click(pred, gt)
    assert label == 1 and gt[y, x] and not pred[y, x]


def test_mask_ap_hand_checked(tmp_path: Path) -> None:
    """One 20x20 object (small: 400 px). A perfect mask scores AP 1.0; one shifted 4 px right has IoU
    320 / 480 = 0.667, a true positive at IoU thresholds 0.50-0.65 only: AP = 4/10, AP50 1, AP75 0."""
    from mobilesam.datasets import load_dataset

    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(tmp_path / "a.png")
    gt = np.zeros((60, 60), bool)
    gt[10:30, 10:30] = True
    (tmp_path / "gt.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 60}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "segmentation": encode_rle(gt), "area": 400,
                         "bbox": [10, 10, 20, 20], "iscrowd": 0}],
        "categories": [{"id": 5, "name": "box"}]}))
    ds = load_dataset(tmp_path / "gt.json")
    truth = ground_truth(ds)
    perfect = mask_ap(truth, [{"image_id": 1, "category_id": 5, "segmentation": encode_rle(gt), "score": 0.9}], [1], [5])
    assert [perfect[k] for k in ("AP", "AP50", "AP75", "APs")] == pytest.approx([1.0] * 4)
    assert perfect["APm"] is None and perfect["APl"] is None  # no medium or large object
    shifted = np.roll(gt, 4, axis=1)
    assert _iou(shifted, gt) == pytest.approx(2 / 3)
    low = mask_ap(truth, [{"image_id": 1, "category_id": 5, "segmentation": encode_rle(shifted), "score": 0.9}], [1], [5])
    assert [low[k] for k in ("AP", "AP50", "AP75")] == pytest.approx([0.4, 1.0, 0.0])
    assert mask_ap(truth, [], [1], [5])["AP"] == 0.0


@pytest.mark.slow
def test_cli_val_data_equals_the_official_predictor(coco_set, tiny_checkpoint, vit_t_pair, tmp_path: Path) -> None:
    """``mobilesam val --data`` in a subprocess, on the image itself: its box and 1-click IoUs equal the
    official SamPredictor's on the same checkpoint; counts, NoC, AP fields and the plot are written."""
    det = tmp_path / "det.json"
    det.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [25, 15, 31, 31], "score": 0.9},
                               {"image_id": 1, "category_id": 2, "bbox": [70, 40, 41, 41], "score": 0.3}]))
    out = tmp_path / "runs" / "val.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mobilesam", "val", "--model", str(tiny_checkpoint), "--data", str(coco_set["json"]),
         "--images", str(coco_set["images"]), "--max-clicks", "3", "--detections", str(det), "--out", str(out),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in ("box mIoU", "1-click mIoU", "3-click mIoU", "NoC@85", "NoC@90", "mask AP (COCOeval segm)"):
        assert row in proc.stdout
    result = json.loads(out.read_text())
    c = result["counts"]
    assert (c["objects"], c["crowd"], c["empty_masks"], c["images_without_objects"]) == (3, 1, 1, 1)
    assert c["images_evaluated"] == 2 and c["failed_images"] == 0  # the empty image is counted, not embedded

    official = _official_predictor(vit_t_pair[0])
    official.set_image(np.asarray(Image.open(coco_set["images"] / "im0.png").convert("RGB")))
    expected = _official_protocols(official, _ground_truth(coco_set))
    got = {o["ann_id"]: o for o in result["objects"]}
    assert sorted(got) == sorted(expected)
    for ann_id, (box_iou, click_iou, click) in expected.items():
        assert got[ann_id]["clicks"][0] == click
        assert got[ann_id]["box_iou"] == pytest.approx(box_iou, abs=2e-3)
        assert got[ann_id]["click_ious"][0] == pytest.approx(click_iou, abs=2e-3)
        assert len(got[ann_id]["click_ious"]) == 3 and got[ann_id]["noc90"] <= 3
    s = result["summary"]
    assert s["box_miou"]["all"] == pytest.approx(np.mean([e[0] for e in expected.values()]), abs=2e-3)
    assert s["point_miou"]["1"]["all"] == pytest.approx(np.mean([e[1] for e in expected.values()]), abs=2e-3)
    assert set(s["point_miou"]) == {"1", "3"}
    assert s["objects"] == {"all": 3, "small": 2, "medium": 1, "large": 0}  # areas 709, 841 | 3751
    ap = result["mask_ap"]
    assert ap["detections"] == 2 and 0.0 <= ap["AP"] <= 1.0
    with Image.open(out.with_suffix(".png")) as im:
        assert im.size == (1280, 480)


def test_detector_classes_map_by_name_else_by_index(coco_set) -> None:
    """A detector's classes become the dataset's by name when it names them (a COCO-trained detector on
    COCO), else by index; those that match nothing are counted, not scored."""
    from mobilesam.datasets import load_dataset
    from mobilesam.validation.runner import _Detections

    ds = load_dataset(coco_set["json"], coco_set["images"])  # classes 0 "a", 1 "b"
    entry = ds.images[0]
    image = np.zeros((96, 128, 3), np.uint8)

    def named(img):
        return [[1, 2, 30, 40], [5, 5, 9, 9], [0, 0, 4, 4]], [7, 3, 1], [0.9, 0.8, 0.7], {7: "b", 3: "zebra", 1: "a"}

    dets = _Detections(ds, None, named, "cpu", conf=0.0, iou=0.7, max_det=100, imgsz=640, trust_weights=False)
    found = dets(entry, image)
    assert [(f[1], f[2]) for f in found] == [(1, pytest.approx(0.9)), (0, pytest.approx(0.7))]
    assert dets.unmatched == 1
    np.testing.assert_allclose(found[0][0], [1, 2, 30, 40])

    dets = _Detections(ds, None, lambda img: ([[1, 2, 30, 40], [3, 3, 8, 8]], [1, 5], [0.9, 0.5]), "cpu",
                       conf=0.0, iou=0.7, max_det=100, imgsz=640, trust_weights=False)
    assert [f[1] for f in dets(entry, image)] == [1] and dets.unmatched == 1


def test_yolo_ground_truth_for_ap(tmp_path: Path) -> None:
    """A YOLO dataset becomes a COCO ground truth (ids 1.., masks rasterised as pycocotools does, box-only
    lines left out): its own masks score AP 1.0."""
    from test_datasets import _yolo

    from mobilesam.datasets import load_dataset

    ds = load_dataset(_yolo(tmp_path), split="train")
    truth = ground_truth(ds)
    assert [c["id"] for c in truth.dataset["categories"]] == [1, 2] and len(truth.dataset["images"]) == 3
    (ann,) = truth.dataset["annotations"]  # the segment of a.jpg; its box line has no mask
    assert ann["category_id"] == 2 and ann["area"] == int(ds.images[0].instances[0].mask(40, 80).sum())
    perfect = [{"image_id": 1, "category_id": 2, "segmentation": ann["segmentation"], "score": 1.0}]
    assert mask_ap(truth, perfect, [1, 2, 3], [1, 2])["AP"] == pytest.approx(1.0)
