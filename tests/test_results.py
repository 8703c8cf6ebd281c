"""``Results`` / ``Masks`` / ``Boxes`` on hand-made masks: polygons, plot, save, YOLO txt, COCO RLE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from mobilesam import Results
from mobilesam.masks import polygons_to_mask
from mobilesam.results import NEGATIVE_BGR, POSITIVE_BGR, Boxes, Masks, colour

H, W = 60, 80


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture
def result() -> Results:
    """Mask 0: a rectangle; mask 1: two separate squares (large and small); mask 2: empty."""
    img = np.full((H, W, 3), 40, np.uint8)
    img[..., 2] = 90  # BGR: a dark red background
    masks = torch.zeros(3, H, W, dtype=torch.bool)
    masks[0, 10:30, 20:50] = True
    masks[1, 35:55, 5:25] = True
    masks[1, 40:46, 60:66] = True
    boxes = torch.tensor([[20, 10, 49, 29, 0.9, 0], [5, 35, 65, 54, 0.5, 1], [0, 0, 0, 0, 0.1, 2]])
    prompts = {"points": np.array([[[30.0, 20.0]], [[10.0, 45.0]], [[70.0, 5.0]]]),
               "labels": np.array([[1], [1], [0]]), "bboxes": np.array([[2.0, 2.0, 70.0, 57.0]] * 3)}
    logits = torch.randn(3, 256, 256)
    return Results(img, "some/dir/pic.jpg", {0: "0", 1: "1", 2: "2"}, boxes, masks, logits, prompts)


def test_fields(result) -> None:
    assert result.orig_shape == (H, W) and len(result) == 3 and result.path == "some/dir/pic.jpg"
    b = result.boxes
    assert b.xyxy.tolist()[0] == [20, 10, 49, 29]
    assert b.conf.tolist() == pytest.approx([0.9, 0.5, 0.1]) and b.cls.tolist() == [0, 1, 2]
    assert b.xywh.tolist()[0] == [34.5, 19.5, 29, 19]
    np.testing.assert_allclose(b.xyxyn[0].numpy(), [20 / W, 10 / H, 49 / W, 29 / H], rtol=1e-6)
    np.testing.assert_allclose(b.xywhn[0].numpy(), [34.5 / W, 19.5 / H, 29 / W, 19 / H], rtol=1e-6)
    assert result.masks.data.dtype == torch.bool and result.masks.shape == (3, H, W)


def test_polygons_largest_part_and_all_parts(result) -> None:
    xy = result.masks.xy
    assert len(xy) == 3 and all(p.dtype == np.float32 and p.shape[1:] == (2,) for p in xy)
    m = result.masks.data.numpy()
    assert iou(polygons_to_mask([xy[0]], (H, W)), m[0]) > 0.9
    # Mask 1 has two parts: xy joins both (as Ultralytics 8.4), segments("largest") keeps the largest.
    big = np.zeros((H, W), bool)
    big[35:55, 5:25] = True
    assert iou(polygons_to_mask([result.masks.segments("largest")[1]], (H, W)), big) > 0.9
    assert iou(polygons_to_mask([xy[1]], (H, W)), m[1]) > 0.85
    assert xy[2].shape == (0, 2)  # empty mask: no polygon
    np.testing.assert_allclose(result.masks.xyn[0], xy[0] / [W, H], rtol=1e-6)
    assert result.masks.xyn[0].max() <= 1.0


def test_summary_rle_is_coco_rle(result) -> None:
    records = result.summary(rle=True)
    assert [r["class"] for r in records] == [0, 1, 2]
    for rec, m in zip(records, result.masks.data.numpy()):
        rle = {"size": rec["segmentation"]["size"], "counts": rec["segmentation"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), m)
        assert rec["area"] == int(m.sum())
    assert records[0]["box"] == {"x1": 20.0, "y1": 10.0, "x2": 49.0, "y2": 29.0}
    assert records[0]["confidence"] == pytest.approx(0.9)
    assert json.loads(result.to_json(normalize=True))[0]["box"]["x2"] == pytest.approx(49 / W, abs=1e-5)
    # Ultralytics' schema: no RLE in to_json; the outline as segments x / y.
    first = json.loads(result.to_json())[0]
    assert sorted(first) == ["box", "class", "confidence", "name", "segments"]
    assert first["segments"]["x"] == result.masks.xy[0][:, 0].tolist()


def test_save_txt_yolo_format(result, tmp_path) -> None:
    path = tmp_path / "labels" / "pic.txt"
    assert result.save_txt(path) == str(path)
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # the empty mask has no polygon, so no line
    for line, m in zip(lines, result.masks.data.numpy()):
        cls, *vals = line.split()
        xy = np.asarray(vals, float).reshape(-1, 2)
        assert 0 <= xy.min() and xy.max() <= 1
        assert iou(polygons_to_mask([xy * [W, H]], (H, W)), m) > 0.85  # both parts of mask 1 kept
    assert [line.split()[0] for line in lines] == ["0", "1"]
    result.save_txt(path, save_conf=True)  # appended to, as Ultralytics
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and float(lines[2].split()[-1]) == pytest.approx(0.9)
    assert sorted(p.name for p in path.parent.iterdir()) == ["pic.txt"]  # no temporary file left


def test_plot_draws_masks_points_and_boxes(result) -> None:
    out = result.plot(labels=False, conf=False)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert not np.shares_memory(out, result.orig_img) and (result.orig_img == [40, 40, 90]).all()
    # Inside mask 0 (away from outline, box and points) the pixel is tinted with its colour.
    inside = out[22, 40].astype(int)
    expected = np.round(np.array([40, 40, 90]) * 0.55 + np.array(colour(0)) * 0.45)
    assert np.abs(inside - expected).max() <= 1
    # Outside every mask, box and prompt: unchanged.
    assert (out[59, 76] == [40, 40, 90]).all()
    # Prompt points: green positive, red negative.
    assert (out[20, 30] == POSITIVE_BGR).all() and (out[5, 70] == NEGATIVE_BGR).all()
    # The label is drawn in the mask's colour (filled background); the empty mask 2 gets no box.
    labelled = result.plot()
    assert (np.all(labelled == colour(0), axis=-1)).sum() > (np.all(out == colour(0), axis=-1)).sum()
    assert not np.all(result.plot(masks=False, points=False, labels=False, conf=False)[0, 0] == colour(2))
    out = result.plot()
    bare = result.plot(masks=False, boxes=False, points=False)
    assert (bare == result.orig_img).all()
    pil = result.plot(pil=True)
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), out[..., ::-1])


def test_save_writes_overlay_atomically(result, tmp_path) -> None:
    path = tmp_path / "out.png"
    assert result.save(path) == str(path)
    assert np.array_equal(np.asarray(Image.open(path))[..., ::-1], result.plot())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    with pytest.raises(ValueError, match="suffix '.txt'"):
        result.save(tmp_path / "out.txt")


def test_indexing_and_conversion(result) -> None:
    one = result[1]
    assert len(one) == 1 and one.masks.shape == (1, H, W) and one.boxes.cls.tolist() == [1]
    assert one.low_res_logits.shape == (1, 256, 256)
    assert torch.equal(one.low_res_logits[0], result.low_res_logits[1])
    sub = result[[0, 2]]
    assert sub.boxes.cls.tolist() == [0, 2]
    n = result.numpy()
    assert isinstance(n.masks.data, np.ndarray) and isinstance(n.boxes.data, np.ndarray)
    assert isinstance(n.low_res_logits, np.ndarray)
    assert n.boxes.xywh.tolist()[0] == [34.5, 19.5, 29, 19]
    assert np.array_equal(n.masks.xy[0], result.masks.xy[0])
    c = result.cpu()
    assert isinstance(c.masks.data, torch.Tensor) and len(c) == 3
    assert isinstance(n.to("cpu").masks.data, torch.Tensor)
    with pytest.raises(IndexError):
        result[3]


def test_empty_and_invalid(tmp_path) -> None:
    img = np.zeros((H, W, 3), np.uint8)
    r = Results(img, "x.jpg")
    assert len(r) == 0 and r.to_json() == "[]" and r.plot().shape == (H, W, 3)
    r.save_txt(tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()  # nothing to write: no file, as Ultralytics
    with pytest.raises(ValueError, match="2 masks but 1 boxes"):
        Results(img, "x.jpg", boxes=torch.zeros(1, 6), masks=torch.zeros(2, H, W, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"masks of size \(10, 10\) for an image of size \(60, 80\)"):
        Results(img, "x.jpg", boxes=torch.zeros(1, 6), masks=torch.zeros(1, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"boxes: expected shape \(N, 6\)"):
        Boxes(torch.zeros(2, 4), (H, W))
    with pytest.raises(ValueError, match=r"masks: expected shape \(N, H, W\)"):
        Masks(torch.zeros(1, 2, 3, 4), (H, W))
