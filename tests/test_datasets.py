"""The labelled-dataset loader (mobilesam.datasets): COCO JSON (polygons, RLE, crowd) and YOLO segmentation
folders; what is set aside is counted; malformed input is a one-line error naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mobilesam.cli import main
from mobilesam.datasets import AnnotationError, load_dataset, size_of
from mobilesam.datasets.coco import element_line
from mobilesam.masks import encode_rle


def _coco(tmp: Path, anns: list[dict], images: int = 3, indent: int | None = 1) -> Path:
    (tmp / "img").mkdir(exist_ok=True)
    for k in range(images):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp / "img" / f"im{k}.png")
    doc = {
        "images": [{"id": 10 + k, "file_name": f"im{k}.png", "width": 60, "height": 40} for k in range(images)],
        "annotations": anns,
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    path = tmp / "ann.json"
    path.write_text(json.dumps(doc, indent=indent))
    return path


def _square(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _anns() -> list[dict]:
    rle = np.zeros((40, 60), bool)
    rle[5:15, 30:50] = True
    crowd = np.zeros((40, 60), bool)
    crowd[20:40, 0:60] = True
    runs = mask_utils.encode(np.asfortranarray(crowd.astype(np.uint8)))
    counts = [int(c) for c in np.diff(np.r_[0, np.flatnonzero(np.diff(np.r_[0, crowd.T.ravel(), 0])), crowd.size])]
    assert sum(counts) == 2400 and int(mask_utils.area(runs)) == 1200
    return [
        {"id": 1, "image_id": 10, "category_id": 3, "segmentation": _square(2, 3, 22, 13), "bbox": [2, 3, 20, 10],
         "iscrowd": 0, "area": 200},
        {"id": 2, "image_id": 10, "category_id": 7, "segmentation": encode_rle(rle), "bbox": [30, 5, 20, 10],
         "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 7, "segmentation": {"size": [40, 60], "counts": counts},
         "bbox": [0, 20, 60, 20], "iscrowd": 1},
        {"id": 4, "image_id": 11, "category_id": 3, "segmentation": [[1, 1, 5, 5]], "bbox": [1, 1, 4, 4], "iscrowd": 0},
    ]


def test_coco_masks_match_pycocotools_and_set_asides_are_counted(tmp_path: Path) -> None:
    path = _coco(tmp_path, _anns())
    ds = load_dataset(path, tmp_path / "img")
    assert ds.names == {0: "cat", 1: "dog"} and ds.category_ids == {0: 3, 1: 7}  # sorted category ids
    assert [len(e.instances) for e in ds.images] == [2, 2, 0]
    assert ds.counts == {"crowd": 1, "degenerate_polygons": 1, "images_without_labels": 1}
    ref = COCO(str(path))
    for entry in ds.images:
        for inst in entry.instances:
            if inst.ann_id == 4:  # 2 points: no area (pycocotools fails on it, taking 4 numbers for a box)
                assert not inst.mask(40, 60).any()
            else:
                np.testing.assert_array_equal(inst.mask(40, 60), ref.annToMask(ref.anns[inst.ann_id]).astype(bool))
    assert ds.images[0].instances[0].area == 200 and ds.images[1].instances[0].iscrowd
    assert "1 crowd" in ds.report() and "1 images without objects" in ds.report()
    assert ds.select_classes(["dog"]).num_instances == 2 and ds.select_classes([0]).num_instances == 2
    assert size_of(32 * 32 - 1) == "small" and size_of(32 * 32) == "medium" and size_of(96 * 96) == "large"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a[3]["segmentation"][0].append(9), r"line \d+ annotation id 4 \(annotations\[3\]\): segmentation\[0\]: "
                                                      "expected x, y pairs, got an odd count of 5"),
        (lambda a: a[1]["segmentation"].update(size=[41, 60]), r"annotation id 2 .*RLE size \[41, 60\] differs"),
        (lambda a: a[0].update(category_id=99), r"annotation id 1 .*category_id 99 is not in 'categories'"),
        (lambda a: a[0].update(image_id=99), r"annotation id 1 .*image_id 99 is not in 'images'"),
        (lambda a: a[0].update(bbox=[0, 0, -1, 2]), r"annotation id 1 .*'bbox' \[x, y, width, height\]"),
        (lambda a: a[2]["segmentation"]["counts"].append(1), "runs cover 2401 pixels"),
    ],
)
def test_coco_malformed_annotation_names_file_and_line(tmp_path: Path, change, message) -> None:
    anns = _anns()
    change(anns)
    path = _coco(tmp_path, anns)
    with pytest.raises(AnnotationError, match=message) as err:
        load_dataset(path, tmp_path / "img")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    k = next(i for i, a in enumerate(anns) if f"annotation id {a['id']} " in str(err.value))
    line = int(str(err.value).split(" line ")[1].split()[0])
    assert path.read_text().split("\n")[line - 1].strip() == "{"  # where annotations[k] starts
    assert line == element_line(path.read_text(), "annotations", k)


def test_element_line_finds_array_elements() -> None:
    text = json.dumps({"info": {"annotations": [0]}, "annotations": [{"a": "x,]"}, 5, [1, 2]], "b": 1}, indent=2)
    lines = text.split("\n")
    assert [lines[element_line(text, "annotations", k) - 1].strip() for k in range(3)] == ["{", "5,", "["]
    assert element_line(text, "annotations", 3) is None and element_line("[]", None, 0) is None
    assert element_line('[{"a": 1},\n 2]', None, 1) == 2


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    """Issue 19: a missing image, a malformed annotation, an empty dataset, a class filter that matches
    nothing: one line naming the file (and line) before any model loads."""
    path = _coco(tmp_path, _anns())
    (tmp_path / "img" / "im1.png").unlink()
    bad = tmp_path / "bad.json"
    anns = _anns()
    anns[0]["segmentation"] = "oops"
    bad.write_text(json.dumps({"images": [{"id": 10, "file_name": "im0.png", "width": 60, "height": 40}],
                               "annotations": anns[:1], "categories": [{"id": 3}]}, indent=1))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"images": [{"id": 10, "file_name": "im0.png", "width": 60, "height": 40}],
                                "annotations": anns[1:2], "categories": [{"id": 7, "name": "dog"}, {"id": 3}]}))
    cases = [
        ([str(path)], "1 of the 3 images listed in", "'im1.png'"),
        ([str(bad)], f"'{bad}' line 11 annotation id 1", "expected a list of polygons or an RLE"),
        ([str(empty)], "holds no images", str(empty)),
        ([str(good), "--classes", "0"], "classes: [0] matches none of the 1 objects", "0 3, 1 dog"),
        ([str(good), "--classes", "horse"], "classes: no class named 'horse'", str(good)),
    ]
    for data, *expected in cases:
        for command in (["val", "--model", "none.pt", "--data"], ["finetune", "--model", "none.pt", "--data"]):
            rc = main([*command, *data, "--images", str(tmp_path / "img"), "--out", str(tmp_path / "o.json")])
            err = capsys.readouterr().err
            assert rc != 0 and err.count("\n") == 1, err
            assert all(e in err for e in expected), err
    assert not (tmp_path / "o.json").exists()
    # The plot goes beside --out (same name, .png): it must not replace an image of the dataset either.
    rc = main(["val", "--model", "none.pt", "--data", str(good), "--images", str(tmp_path / "img"),
               "--out", str(tmp_path / "img" / "im0.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "the plot beside" in err and "('im0.png') would replace an input" in err, err


def _yolo(root: Path) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(root / "images" / "train" / f"{name}.jpg")
    (root / "labels" / "train" / "a.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6\n0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "train" / "b.txt").write_text("\n")
    (root / "labels" / "train" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "images" / "val" / "v.png")
    (root / "labels" / "val" / "v.txt").write_text("0 0.1 0.1 0.9 0.1 0.9 0.9\n")
    yaml = root / "data.yaml"
    yaml.write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n")
    return yaml


def test_yolo_dataset_splits_masks_and_counts(tmp_path: Path) -> None:
    yaml = _yolo(tmp_path)
    train = load_dataset(yaml, split="train")
    assert [e.file for e in train.images] == ["a.jpg", "b.jpg", "c.jpg"] and train.split == "train"
    assert train.names == {0: "cat", 1: "dog"} and train.category_ids == {0: 1, 1: 2}
    assert train.counts == {"box_only": 1, "images_without_labels": 2, "labels_without_image": 1}
    seg, box = train.images[0].instances
    want = np.zeros((40, 80), bool)
    want[4:24, 8:40] = True  # the polygon (8, 4)-(40, 24) in pixels, as pycocotools rasterises it
    got = seg.mask(40, 80)
    assert seg.category == 1 and abs(int(got.sum()) - int(want.sum())) <= 60 and got[5:23, 9:39].all()
    assert box.mask(40, 80) is None and np.allclose(box.xyxy(40, 80), [32, 16, 48, 24])
    assert load_dataset(tmp_path).split == "val" and len(load_dataset(tmp_path).images) == 1  # default: val
    (tmp_path / "labels" / "train" / "c.txt").write_text("0 0.1 0.1\n")
    with pytest.raises(AnnotationError, match=r"labels '.*c\.txt' line 1: expected 'class cx cy w h"):
        load_dataset(yaml, split="train")
    with pytest.raises(ValueError, match=r"split: '.*data.yaml' has no 'test' split \(it has: train, val\)"):
        load_dataset(yaml, split="test")
