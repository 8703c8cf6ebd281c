"""Label formats and shared helpers: one writer per format (the same bytes from Results, auto_annotate and
the server), round trips of YOLO / COCO / classes.txt / data.yaml, the atomic write, the folder walk,
mask IoU and the torchrun environment."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilesam.annotate as annotate_mod
from mobilesam import Results
from mobilesam.distributed import start_process_group, torchrun_env
from mobilesam.formats import classes as classes_fmt
from mobilesam.formats import coco, data_yaml, yolo
from mobilesam.io import atomic_write_bytes, walk_images
from mobilesam.masks import mask_iou
from mobilesam.server.images import ImageFolder
from mobilesam.server.labels import LabelObject, LabelStore, to_yolo
from mobilesam.sources import resolve_sources
from mobilesam.train.store import list_images as store_list_images

H, W = 60, 80


def _masks() -> list[np.ndarray]:
    """A rectangle, two separate parts, one touching the right and bottom edges, an empty mask, a thin diagonal."""
    m = np.zeros((5, H, W), bool)
    m[0, 10:30, 20:50] = True
    m[1, 35:55, 5:25] = True
    m[1, 40:46, 60:66] = True
    m[2, 45:, 70:] = True
    for i in range(20):
        m[4, 5 + i, 55 + i : 58 + i] = True
    return list(m)


MASKS = _masks()
BOXES = [coco.bbox_xywh(m) for m in MASKS]  # one distinct box per mask, to find it again
BOXES = [[x, y, x + max(w, 1), y + max(h, 1)] for x, y, w, h in BOXES]
BOXES[3] = [1, 1, 9, 9]  # the empty mask's detection


def _results_bytes(tmp_path: Path) -> bytes:
    boxes = torch.tensor([[*b, 0.9, k] for k, b in enumerate(BOXES)], dtype=torch.float32)
    r = Results(np.zeros((H, W, 3), np.uint8), "pic.png", None, boxes, torch.from_numpy(np.stack(MASKS)))
    return Path(r.save_txt(tmp_path / "results.txt")).read_bytes()


def _annotate_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(images / "pic.png")

    def detector(image: np.ndarray):
        return np.asarray(BOXES, np.float32), np.arange(len(BOXES)), np.linspace(0.9, 0.5, len(BOXES))

    def segment_boxes(predictor, image, boxes, features=None):  # SAM's answer for each box: the mask it was made from
        for b in boxes:
            yield MASKS[[list(map(float, x)) for x in BOXES].index([float(v) for v in b])]

    monkeypatch.setattr(annotate_mod, "_segment_boxes", segment_boxes)
    monkeypatch.setattr(annotate_mod, "_make_predictor", lambda *a, **k: object())
    monkeypatch.setattr(annotate_mod, "encode_pending", lambda predictor, group, cache: [None] * len(group))
    out = tmp_path / "annotate"
    annotate_mod.auto_annotate(images, detector, "unused.pt", device="cpu", output_dir=out, verbose=False)
    return (out / "pic.txt").read_bytes()


def _server_bytes(tmp_path: Path) -> tuple[bytes, bytes]:
    root = tmp_path / "served"
    root.mkdir()
    image = root / "pic.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(image)
    names = [f"class{k}" for k in range(len(MASKS))]
    objects = [LabelObject(n, m, 0.9) for n, m in zip(names, MASKS)]
    LabelStore(root).save(image, objects, (H, W))
    return (root / "pic.txt").read_bytes(), to_yolo(objects, (H, W), names).encode()


def test_three_yolo_writers_give_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_results = _results_bytes(tmp_path)
    from_annotate = _annotate_bytes(tmp_path, monkeypatch)
    from_store, from_export = _server_bytes(tmp_path)
    assert from_results == from_annotate == from_store == from_export
    lines = from_results.decode().split("\n")
    assert lines[-1] == "" and len(lines) == 5  # four lines: the empty mask has none
    assert [line.split()[0] for line in lines[:-1]] == ["0", "1", "2", "4"]
    for line in lines[:-1]:
        assert all(len(v.split(".")[1]) == yolo.DECIMALS for v in line.split()[1:])
    # The mask touching the right and bottom edges stays inside [0, 1].
    xy = yolo.parse_line(lines[2]).xy
    assert xy.max() <= 1.0 and xy[:, 0].max() == pytest.approx((W - 1) / W, abs=1e-6)


def test_yolo_format_clips_and_round_trips(tmp_path: Path) -> None:
    assert yolo.format_line(3, np.array([[-5, 10], [100, 30], [40, 70]]), W, H) == (
        "3 0.000000 0.166667 1.000000 0.500000 0.500000 1.000000"
    )
    assert yolo.format_line(0, np.array([[8, 6], [16, 6], [16, 12]]), W, H, conf=0.87654321).endswith(" 0.876543")
    segments = [np.array([[1, 2], [30, 2], [30, 40], [1, 40]], float), np.array([[10, 10], [20, 15], [12, 25]], float)]
    lines = [yolo.format_line(k, s, W, H, conf=0.5 if k else None) for k, s in enumerate(segments)]
    yolo.write_labels(tmp_path / "a.txt", lines)
    back = yolo.read_labels(tmp_path / "a.txt")
    assert [s.cls for s in back] == [0, 1] and [s.conf for s in back] == [None, 0.5]
    for seg, got in zip(segments, back):
        np.testing.assert_allclose(got.xy * (W, H), seg, atol=1e-6 * W)
    assert (tmp_path / "a.txt").read_text() == "".join(line + "\n" for line in lines)
    assert yolo.mask_line(0, np.zeros((H, W), bool)) is None
    with pytest.raises(ValueError, match="3 points or more"):
        yolo.parse_line("0 0.1 0.2 0.3 0.4")
    with pytest.raises(ValueError, match="non-negative integer class"):
        yolo.parse_line("1.5 0.1 0.2 0.3 0.4 0.5 0.6")
    with pytest.raises(ValueError, match="'x.txt' line 2: expected numbers"):
        yolo.parse_line("0 a 0.2 0.3 0.4 0.5 0.6", "'x.txt' line 2")


def test_coco_document_round_trips(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    anns = [coco.annotation(m, k + 1, image_id=7, score=0.123456789) for k, m in enumerate(MASKS)]
    doc = coco.document([coco.image_record(7, "pic.png", W, H)], anns, coco.category_records({0: "a", 1: "b"}),
                        {"description": "test"})
    assert list(doc) == ["info", "licenses", "images", "annotations", "categories"]
    assert list(doc["annotations"][0]) == [
        "id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd", "score"
    ]  # fmt: skip
    assert [a["id"] for a in doc["annotations"]] == [1, 2, 3, 4, 5] and anns[0]["score"] == 0.12346
    assert doc["categories"] == [{"id": 1, "name": "a", "supercategory": ""}, {"id": 2, "name": "b", "supercategory": ""}]
    assert doc["annotations"][0]["bbox"] == [20, 10, 30, 20] and doc["annotations"][3]["bbox"] == [0, 0, 0, 0]
    path = coco.write_coco(tmp_path / "sub" / "instances.json", doc)
    back = coco.read_coco(path)
    assert back == doc
    for ann, m in zip(back["annotations"], MASKS):
        assert np.array_equal(coco.annotation_mask(ann), m) and ann["area"] == int(m.sum())
    api = COCO(str(path))
    assert np.array_equal(api.annToMask(api.loadAnns(1)[0]).astype(bool), MASKS[0])
    with pytest.raises(ValueError, match="'image_id'"):
        coco.document([], [coco.annotation(MASKS[0], 1)], [])
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="no 'annotations' list"):
        coco.read_coco(tmp_path / "bad.json")


def test_classes_txt_round_trips_and_refuses_line_breaks(tmp_path: Path) -> None:
    names = ["cat", "hot dog", "Straße", "猫", "a:b #c"]
    path = classes_fmt.write_classes(tmp_path / "classes.txt", names)
    assert path.read_bytes() == "".join(n + "\n" for n in names).encode("utf-8")
    assert classes_fmt.read_classes(path) == dict(enumerate(names))
    for bad in ("two\nlines", "carriage\rreturn", "line\u2028separator", "para\u2029graph", "next\x85line", "  ", ""):
        with pytest.raises(ValueError, match=r"names\[1\]"):
            classes_fmt.write_classes(tmp_path / "bad.txt", ["ok", bad])
    assert not (tmp_path / "bad.txt").exists()
    # Reading splits on "\n" only: a U+2028 another tool left in a name does not shift the later classes.
    (tmp_path / "foreign.txt").write_bytes("a\u2028b\n c \r\n\nd\n".encode())
    assert classes_fmt.read_classes(tmp_path / "foreign.txt") == {0: "a\u2028b", 1: "c", 3: "d"}
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        classes_fmt.read_classes(tmp_path / "latin1.txt")
    assert classes_fmt.read_classes(tmp_path / "latin1.txt", errors="replace") == {0: "caf\ufffd"}


def test_data_yaml_round_trips_and_reads_hand_written_files(tmp_path: Path) -> None:
    names = {0: "cat", 1: 'say "hi"', 2: "Straße: #1"}
    path = data_yaml.write_data_yaml(
        tmp_path / "data.yaml", names, "written by a test\nsecond line", train=tmp_path / "images", val="images/val",
        nc_note=3, flag=True,
    )
    text = path.read_text()
    assert text.startswith("# written by a test\n# second line\ntrain: ")
    assert "nc: 3\nnames:\n  0: \"cat\"\n" in text
    assert data_yaml.read_data_yaml(path) == {
        "train": str(tmp_path / "images"), "val": "images/val", "nc_note": 3, "flag": True, "nc": 3, "names": names,
    }  # fmt: skip
    hand = (
        "# Ultralytics style\npath: ../datasets/coco8  # root\ntrain: 'images/train'\nval: images/val\n"
        "test:\nnames:\n  0: person\n  1: 'traffic light'\n"
    )
    with pytest.raises(ValueError, match="line 5: 'test:' opens a block"):
        data_yaml.parse_data_yaml(hand)
    got = data_yaml.parse_data_yaml(hand.replace("test:\n", "test: ~\n"))
    assert got == {"path": "../datasets/coco8", "train": "images/train", "val": "images/val", "test": None,
                   "names": {0: "person", 1: "traffic light"}}
    assert data_yaml.parse_data_yaml("names: [cat, 'hot, dog', \"x\"]\n")["names"] == {0: "cat", 1: "hot, dog", 2: "x"}
    assert data_yaml.parse_data_yaml("names:\n  - cat\n  - dog\nnc: 2\n") == {"names": {0: "cat", 1: "dog"}, "nc": 2}
    with pytest.raises(ValueError, match="line 2: expected '  N: name'"):
        data_yaml.parse_data_yaml("names:\n  nested: {a: 1}\n")


def test_atomic_write_mode_and_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_umask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "new" / "f.bin", b"one")
        assert path.read_bytes() == b"one"
        assert path.stat().st_mode & 0o777 == 0o644  # as a plain open() gives, not mkstemp's 0o600
        atomic_write_bytes(path, b"two")
        assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old_umask)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(path, b"three")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]  # no temporary file left


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    files = ["b.jpg", "a.PNG", "a-b/x.png", "a/x.png", "a/deep/er/y.webp", ".hidden.png", ".cache/z.png",
             "sub/.z.jpg", "notes.txt", "sub/labels.txt"]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.png").write_bytes(b"")
    os.symlink(outside, root / "linked_dir")
    os.symlink(outside / "o.png", root / "link_out.png")
    os.symlink(root / "missing.png", root / "broken.png")
    return root


def test_one_folder_rule_for_every_command(tree: Path) -> None:
    images = ["a-b/x.png", "a.PNG", "a/deep/er/y.webp", "a/x.png", "b.jpg", "link_out.png"]
    assert walk_images(tree) == images  # recursive, sorted as strings, hidden and links to folders skipped
    assert walk_images(tree, suffixes=None) == sorted([*images, "notes.txt", "sub/labels.txt"])
    assert annotate_mod.list_images(tree) == (tree, images)
    assert store_list_images(tree) == images
    assert ImageFolder(tree).list() == [n for n in images if n != "link_out.png"]  # confined to the folder
    found = [Path(e.obj).relative_to(tree).as_posix() for e in resolve_sources(tree)]
    assert found == sorted([*images, "notes.txt", "sub/labels.txt"])  # predict: non-images reported as skipped
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        walk_images(tree / "b.jpg")


def test_mask_iou_numpy_and_torch() -> None:
    a = np.stack(MASKS)
    b = a.copy()
    b[0, 10:20] = False  # half of the rectangle
    got = mask_iou(a, b)
    assert got.dtype == np.float64 and got.shape == (5,)
    np.testing.assert_allclose(got, [0.5, 1, 1, 1, 1])  # the empty pair counts as 1
    assert float(mask_iou(a[0], np.zeros((H, W), bool))) == 0.0
    t = mask_iou(torch.from_numpy(a), torch.from_numpy(b))
    assert t.dtype == torch.float64 and torch.allclose(t, torch.from_numpy(got))
    with pytest.raises(ValueError, match="one size"):
        mask_iou(a, b[:, :10])


def test_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert torchrun_env() == torchrun_env().__class__(0, 1, 0, 1) and not torchrun_env().distributed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert (torchrun_env().rank, torchrun_env().world_size, torchrun_env().distributed) == (2, 4, True)
    with pytest.raises(RuntimeError, match="MASTER_ADDR/MASTER_PORT is not"):
        start_process_group("gloo", 4)
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(ValueError, match="LOCAL_RANK: expected an integer"):
        torchrun_env()
