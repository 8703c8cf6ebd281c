"""Exports to labelling tools (``mobilesam convert``), each read back by the tool's own reader or its schema.

- Label Studio brush RLE: byte-equal to what Label Studio's own encoder (``label_studio_sdk.converter.brush.
  mask2rle``, recorded in ``tests/data/labelstudio_brush.json``) writes, and decoded by its decoder when
  ``label_studio_sdk`` is installed.
- CVAT COCO 1.0 and FiftyOne: read by pycocotools (what CVAT's and FiftyOne's COCO importers decode RLE
  with) and checked against their documented layouts; CVAT YOLO: its layout (data.yaml, train.txt).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from mobilesam.cli import main
from mobilesam.convert import convert
from mobilesam.formats import coco, yolo
from mobilesam.formats.data_yaml import parse_data_yaml
from mobilesam.formats.labelstudio import decode_brush, encode_brush
from mobilesam.masks import mask_iou, polygons_to_mask

BRUSH = Path(__file__).parent / "data" / "labelstudio_brush.json"
H, W = 40, 50


def _masks() -> list[np.ndarray]:
    ring = np.zeros((H, W), bool)
    ring[5:35, 5:30] = True
    ring[15:25, 12:22] = False  # a hole
    blob = np.zeros((H, W), bool)
    blob[10:30, 34:46] = True
    blob[2:5, 40:44] = True  # a second part
    return [ring, blob]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path, Path]:
    """images/ with two pictures, their COCO JSON (RLE, exact masks) and YOLO labels with classes.txt."""
    root = tmp_path_factory.mktemp("exports")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.png"):
        Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(images / name)
    masks = _masks()
    anns = [coco.annotation(m, c + 1, image_id=i, score=0.9 - 0.1 * c) for i in (1, 2) for c, m in enumerate(masks)]
    doc = coco.document([coco.image_record(1, "a.jpg", W, H), coco.image_record(2, "sub/b.png", W, H)], anns,
                        coco.category_records({0: "cat", 1: "dog"}))
    coco.write_coco(root / "instances.json", doc)
    labels = root / "labels"
    (labels / "sub").mkdir(parents=True)
    for name in ("a", "sub/b"):
        yolo.write_labels(labels / f"{name}.txt", [yolo.mask_line(c, m, simplify=0) for c, m in enumerate(masks)])
    (labels / "classes.txt").write_text("cat\ndog\n")
    return images, root / "instances.json", labels


def test_brush_rle_is_label_studios_own() -> None:
    record = json.loads(BRUSH.read_text())
    assert record["source"].startswith("label_studio_sdk")
    for name, case in record["cases"].items():
        mask = np.asarray(case["mask"], bool)
        assert encode_brush(mask) == case["rle"], name
        assert np.array_equal(decode_brush(case["rle"], *mask.shape), mask), name
    with pytest.raises(ValueError, match=r"rle: holds 252 values, expected 4 x 9 x 9"):
        decode_brush(record["cases"]["rect"]["rle"], 9, 9)
    # The comparison can fail: one changed pixel changes the bytes.
    mask = np.asarray(record["cases"]["rect"]["mask"], bool)
    mask[0, 0] = True
    assert encode_brush(mask) != record["cases"]["rect"]["rle"]


def test_brush_rle_read_by_label_studio_when_installed() -> None:
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    for m in _masks():
        got = brush.decode_rle(encode_brush(m)).reshape(H, W, 4)[:, :, 3] > 0
        assert np.array_equal(got, m)


def test_labelstudio_tasks_brush_and_polygon(dataset, tmp_path) -> None:
    images, instances, labels = dataset
    out = convert(images, instances, "labelstudio", tmp_path / "tasks.json", progress=False)
    tasks = json.loads(out.read_text())
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=a.jpg", "/data/local-files/?d=sub/b.png"]
    results = tasks[0]["predictions"][0]["result"]
    assert [r["value"]["brushlabels"] for r in results] == [["cat"], ["dog"]]
    for r, m in zip(results, _masks()):
        assert r["type"] == "brushlabels" and r["from_name"] == "tag" and r["to_name"] == "image"
        assert (r["original_width"], r["original_height"], r["value"]["format"]) == (W, H, "rle")
        assert np.array_equal(decode_brush(r["value"]["rle"], H, W), m)  # holes and parts kept exactly
    config = (tmp_path / "tasks_labeling_config.xml").read_text()
    assert '<BrushLabels name="tag" toName="image">' in config and '<Label value="dog"/>' in config

    out = convert(images, labels, "labelstudio-polygon", tmp_path / "poly.json", progress=False, simplify=0.5)
    results = json.loads(out.read_text())[1]["predictions"][0]["result"]
    # From YOLO rings a multi-part mask comes back joined by its one-pixel bridges: one polygon each.
    assert {r["type"] for r in results} == {"polygonlabels"} and len(results) == 2
    dog = [np.asarray(r["value"]["points"]) * [W / 100, H / 100] for r in results
           if r["value"]["polygonlabels"] == ["dog"]]
    assert all(0 <= p.min() and p.max() <= max(W, H) for p in dog)
    assert float(mask_iou(polygons_to_mask(dog, (H, W)), _masks()[1])) > 0.85


def test_cvat_yolo_zip_layout(dataset, tmp_path) -> None:
    images, _, labels = dataset
    out = convert(images, labels, "cvat-yolo", tmp_path / "t.zip", progress=False)
    with zipfile.ZipFile(out) as zf:
        members = set(zf.namelist())
        meta = parse_data_yaml(zf.read("data.yaml").decode())
        listed = zf.read("train.txt").decode().splitlines()
        lines = zf.read("labels/train/a.txt").decode().splitlines()
    assert meta["path"] == "." and meta["train"] == "train.txt" and meta["names"] == {0: "cat", 1: "dog"}
    assert listed == ["images/train/a.jpg", "images/train/b.png"] and set(listed) <= members
    assert {"labels/train/a.txt", "labels/train/b.txt"} <= members
    segs = [yolo.parse_line(line) for line in lines]
    assert [s.cls for s in segs] == [0, 1] and all(s.xy.min() >= 0 and s.xy.max() <= 1 for s in segs)


def test_cvat_coco_zip_and_fiftyone_folder_read_by_pycocotools(dataset, tmp_path) -> None:
    images, instances, _ = dataset
    out = convert(images, instances, "cvat-coco", tmp_path / "c.zip", progress=False)
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["annotations/instances_default.json"]
        (tmp_path / "cvat.json").write_bytes(zf.read("annotations/instances_default.json"))
    api = COCO(str(tmp_path / "cvat.json"))
    anns = api.loadAnns(api.getAnnIds(imgIds=[1]))
    assert all(a["iscrowd"] == 1 for a in anns)  # RLE masks, as CVAT exports them
    assert [np.array_equal(api.annToMask(a).astype(bool), m) for a, m in zip(anns, _masks())] == [True, True]

    folder = convert(images, instances, "fiftyone", tmp_path / "fo", progress=False)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "data/a.jpg", "data/sub/b.png", "labels.json"]
    api = COCO(str(folder / "labels.json"))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == ["cat", "dog"]
    ring = api.annToMask(api.loadAnns(api.getAnnIds(imgIds=[2]))[0]).astype(bool)
    assert np.array_equal(ring, _masks()[0]) and not ring[20, 17]  # the hole is kept


def test_convert_cli_and_errors(dataset, tmp_path, capsys, monkeypatch) -> None:
    images, instances, labels = dataset
    monkeypatch.chdir(tmp_path)
    assert main(["convert", str(images), str(instances), "--to", "coco"]) == 0
    assert "Wrote" in capsys.readouterr().out and (tmp_path / "instances.json").is_file()
    assert main(["convert", str(images), str(tmp_path / "nope"), "--to", "coco"]) == 1
    assert "labels: expected a folder of YOLO label files or a COCO .json" in capsys.readouterr().err
    assert main(["convert", str(images), str(labels), "--to", "coco", "--simplify", "-1"]) == 1
    assert "--simplify: expected a tolerance in pixels >= 0" in capsys.readouterr().err


def test_simplify_tolerance_in_label_writers() -> None:
    """YOLO label writers (save_txt, annotate, convert, the server) simplify outlines by DEFAULT_SIMPLIFY; 0 keeps
    every contour point; the simplified polygon stays within IoU 0.98 of the exact one on a smooth shape."""
    from mobilesam.masks import DEFAULT_SIMPLIFY, mask_to_polygons
    from mobilesam.server.labels import LabelObject, to_yolo

    yy, xx = np.mgrid[0:200, 0:300]
    disc = (xx - 150) ** 2 / 90**2 + (yy - 100) ** 2 / 60**2 <= 1
    exact, simple = to_yolo([LabelObject("a", disc)], (200, 300), ["a"], 0), to_yolo([LabelObject("a", disc)],
                                                                                      (200, 300), ["a"])
    n_exact, n_simple = (len(t.split()) for t in (exact, simple))
    assert n_simple < n_exact / 2 and DEFAULT_SIMPLIFY > 0
    seg = yolo.parse_line(simple)
    assert float(mask_iou(polygons_to_mask([seg.xy * (300, 200)], (200, 300)),
                          polygons_to_mask(mask_to_polygons(disc, "all"), (200, 300)))) >= 0.98
    with pytest.raises(ValueError, match="simplify: expected a tolerance in pixels >= 0"):
        mask_to_polygons(disc, "all", simplify=float("nan"))
