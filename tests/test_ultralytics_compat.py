"""An Ultralytics script runs unchanged with ``from mobilesam import SAM``: the same files, fields and formats.

The script is ``tests/ultralytics_calls.py``; ``tests/data/ultralytics_calls.json`` is what Ultralytics
itself gave for it (its version inside). When Ultralytics is installed the script also runs against it live.
"""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mobilesam import SAM
from mobilesam.input_size import check_imgsz, resized_model
from mobilesam.predict_args import parse_options, run_folder

from ultralytics_calls import random_checkpoint, run_calls

RECORD = Path(__file__).parent / "data" / "ultralytics_calls.json"


def _normalised(record: dict) -> dict:
    return json.loads(json.dumps(record))


def _differences(ours: dict, theirs: dict, path: str = "") -> list[str]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        out = []
        for k in sorted(set(ours) | set(theirs)):
            if k not in ours or k not in theirs:
                out.append(f"{path}/{k}: only in {'ours' if k in ours else 'Ultralytics'}")
            else:
                out += _differences(ours[k], theirs[k], f"{path}/{k}")
        return out
    return [] if ours == theirs else [f"{path}: ours {ours!r}, Ultralytics {theirs!r}"]


@pytest.fixture(scope="module")
def script_root(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ultralytics_script")
    ckpt = root / "mobile_sam.pt"
    torch.save(random_checkpoint(), ckpt)
    return root, ckpt


@pytest.fixture(scope="module")
def ours(script_root) -> dict:
    root, ckpt = script_root
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with redirect_stdout(io.StringIO()):
            return _normalised(run_calls(SAM, root, str(ckpt)))
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_script_gives_what_ultralytics_recorded(ours) -> None:
    theirs = json.loads(RECORD.read_text())
    assert theirs.pop("ultralytics_version") == "8.4.190"
    if ours["to_df"] is None:  # neither polars nor pandas here: to_df() said so (ImportError)
        theirs.pop("to_df"), ours.pop("to_df")
    assert _differences(ours, theirs) == []
    # The comparison can fail: a changed field shows.
    changed = json.loads(json.dumps(ours))
    changed["save"]["files"].append("zidane.png")
    assert _differences(changed, theirs) == ["/save/files: ours " + repr(changed["save"]["files"]) +
                                             ", Ultralytics " + repr(theirs["save"]["files"])]


@pytest.mark.slow
def test_script_gives_what_ultralytics_gives_live(ours, tmp_path, monkeypatch) -> None:
    ultralytics = pytest.importorskip("ultralytics")
    import ultralytics.cfg as cfg

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cfg, "SETTINGS", {**dict(cfg.SETTINGS), "runs_dir": str(tmp_path / "runs")})
    monkeypatch.setattr(cfg, "TESTS_RUNNING", False)
    ckpt = tmp_path / "mobile_sam.pt"
    torch.save(random_checkpoint(), ckpt)
    with redirect_stdout(io.StringIO()):
        theirs = _normalised(run_calls(ultralytics.SAM, tmp_path, str(ckpt)))
    if ours["to_df"] is None:
        theirs.pop("to_df"), ours.pop("to_df")
    assert _differences(ours, theirs) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(augment=True), "augment: an Ultralytics argument that has no meaning for SAM"),
        (dict(iou=0.5), "iou: .*SAM runs no NMS"),
        (dict(classes=[0]), "classes: .*prompt index"),
        (dict(epochs=3), "epochs: an Ultralytics training/export setting, not a predict argument"),
        (dict(save="yes"), "save: expected True or False, got 'yes'"),
        (dict(imgsz=[512, 640]), r"imgsz: SAM takes a square input size"),
        (dict(imgsz=16), "imgsz: expected the encoder input size"),
        (dict(line_width=-1), "line_width: expected a positive number"),
        (dict(vid_stride=0), "vid_stride: expected an int >= 1"),
        (dict(quantize=8), "quantize: expected 16"),
        (dict(task="detect"), "task: SAM's task is 'segment'"),
        (dict(simplify=-1), "simplify: expected a tolerance in pixels"),
    ],
)
def test_ultralytics_arguments_checked_by_name(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_options(kwargs)


def test_option_values_and_run_folder(tmp_path, monkeypatch) -> None:
    opts = parse_options(dict(imgsz=500, quantize="fp16", save=True, show_boxes=False, line_width=3))
    assert (opts.imgsz, opts.half, opts.save, opts.show_boxes, opts.line_width) == (512, True, True, False, 3)
    assert check_imgsz([640, 640]) == 640 and check_imgsz(1000) == 1024
    monkeypatch.chdir(tmp_path)
    assert run_folder(None, None, False) == (tmp_path / "runs/segment/predict").resolve()
    (tmp_path / "runs/segment/predict").mkdir(parents=True)
    (tmp_path / "runs/segment/predict-2").mkdir()
    assert run_folder(None, None, False).name == "predict-3"
    assert run_folder(None, None, True).name == "predict"
    assert run_folder("proj", "exp", False) == (tmp_path / "runs/segment/proj/exp").resolve()
    assert run_folder(str(tmp_path / "abs"), None, False) == (tmp_path / "abs/predict").resolve()


def test_imgsz_view_shares_weights_and_keeps_its_own_cache(vit_t_pair) -> None:
    sam = vit_t_pair[1]
    view = resized_model(sam, 256)
    assert view.image_encoder.img_size == 256 and view.prompt_encoder.image_embedding_size == (16, 16)
    assert sam.image_encoder.img_size == 1024 and sam.prompt_encoder.image_embedding_size == (64, 64)
    assert all(a is b for a, b in zip(sam.parameters(), view.parameters()))
    with torch.no_grad():
        assert view.image_encoder(torch.zeros(1, 3, 256, 256)).shape == (1, 256, 16, 16)
    model = SAM(sam, device="cpu")
    usual = model.predictor
    img = np.full((96, 128, 3), 60, np.uint8)
    img[20:70, 30:90] = 220
    first = model.predict(img, points=[60, 45], imgsz=256, verbose=False)[0]
    other = model.predict(img, points=[60, 45], imgsz=128, verbose=False)[0]
    again = model.predict(img, points=[60, 45], imgsz=256, verbose=False)[0]
    # Each size has its own embedding cache (the 256 embedding is not served at 128: its low-res logits
    # would be 64 x 64), and the usual predictor and cache are back afterwards.
    assert torch.equal(first.low_res_logits, again.low_res_logits)
    assert first.low_res_logits.shape == (1, 64, 64) and other.low_res_logits.shape == (1, 32, 32)
    assert first.masks.data.shape == other.masks.data.shape == (1, 96, 128)
    assert model.predictor is usual and len(model._cache) == 0 and sorted(model._sized) == [(128, "cpu"), (256, "cpu")]


def test_video_source_frame_by_frame_and_saved_video(vit_t_pair, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 12, (64, 48))
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[10:30, 20:40] = 200
    for k in range(5):
        writer.write(np.roll(frame, 3 * k, axis=1))
    writer.release()
    model = SAM(vit_t_pair[1], device="cpu")
    stream = model.predict(video, points=[30, 20], stream=True, save=True, save_txt=True, vid_stride=2,
                           verbose=False, imgsz=128)  # a small encoder input: the test is about frames
    assert not isinstance(stream, list)
    results = list(stream)
    assert [r.frame for r in results] == [1, 3, 5] and {r.path for r in results} == {str(video)}
    save_dir = Path(results[0].save_dir)
    assert save_dir == (tmp_path / "runs/segment/predict").resolve()
    assert sorted(p.name for p in (save_dir / "labels").iterdir()) == ["clip_1.txt", "clip_3.txt", "clip_5.txt"]
    cap = cv2.VideoCapture(str(save_dir / "clip.avi"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 3 and not list(save_dir.glob(".*"))  # the video is whole, no temporary file left
    with pytest.raises(ValueError, match="video: cannot open"):
        bad = tmp_path / "bad.mp4"
        bad.write_bytes(b"not a video")
        model.predict(bad, points=[30, 20], verbose=False)


def test_results_methods_of_ultralytics(vit_t_pair, tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    img = np.full((60, 80, 3), 50, np.uint8)
    r = SAM(vit_t_pair[1], device="cpu").predict(img, points=[[40, 30], [10, 10]], verbose=False, imgsz=128)[0]
    assert r.probs is None and r.keypoints is None and r.obb is None and r.save_dir is None
    assert r.verbose() == "1 0, 1 1, " and r.new().verbose() == "(no detections), " and len(r.new()) == 0
    r.show()  # headless: a warning, not an error
    assert "no display" in caplog.text
    csv = r.to_csv().splitlines()
    assert csv[0] == "name,class,confidence,box,segments" and csv[1].startswith("0,0,")
    assert "{'x1': " in csv[1]
    plotted = r.plot(save=True, filename=str(tmp_path / "p.jpg"), color_mode="instance", font_size=9)
    assert plotted.shape == (60, 80, 3) and (tmp_path / "p.jpg").is_file()
    with pytest.raises(ValueError, match="color_mode: expected 'class' or 'instance'"):
        r.plot(color_mode="rainbow")
    r.update(boxes=torch.tensor([[-5.0, -5.0, 500.0, 500.0, 0.5, 0.0], [1.0, 2.0, 3.0, 4.0, 0.2, 1.0]]))
    assert r.boxes.xyxy[0].tolist() == [0.0, 0.0, 80.0, 60.0]  # clipped to the image, as Ultralytics
    with pytest.raises(ValueError, match="keypoints: SAM results hold masks and boxes only"):
        r.update(keypoints=torch.zeros(1, 17, 3))
    r.save_crop(tmp_path / "crops", "a")
    r.save_crop(tmp_path / "crops", "a")
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "crops").rglob("*.jpg")) == [
        "crops/0/a-2.jpg", "crops/0/a.jpg", "crops/1/a-2.jpg", "crops/1/a.jpg"]
    sv = pytest.importorskip("supervision")
    det = r.to_supervision()
    assert isinstance(det, sv.Detections) and len(det) == 2 and det.mask.shape == (2, 60, 80)
    assert det.class_id.tolist() == [0, 1] and list(det.data["class_name"]) == ["0", "1"]


def test_cli_key_value_form_writes_ultralytics_layout(tiny_checkpoint, tmp_path, monkeypatch, capsys) -> None:
    from mobilesam.cli import main

    monkeypatch.chdir(tmp_path)
    img = np.zeros((60, 80, 3), np.uint8)
    img[15:45, 20:60] = 200
    cv2.imwrite(str(tmp_path / "img.jpg"), img)
    code = main(["predict", f"model={tiny_checkpoint}", "source=img.jpg", "points=[[40,30],[5,5]]", "save_txt=True",
                 "save_conf=True", "imgsz=128"])
    assert code == 0
    run = tmp_path / "runs" / "segment" / "predict"
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == ["img.jpg", "labels/img.txt"]
    lines = (run / "labels" / "img.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1"] and all(len(line.split()) % 2 == 0 for line in lines)
    assert "img.jpg: 1 0, 1 1" in capsys.readouterr().out
    # A bad key is one line naming it, with the closest valid ones.
    assert main(["predict", f"model={tiny_checkpoint}", "source=img.jpg", "save_tx=True"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mobilesam predict: error: 'save_tx' is not an argument of predict; did you mean save_txt")
    assert len(err.splitlines()) == 1
    assert main(["predict", "source=img.jpg", "augment=True"]) == 2
    assert "augment: an Ultralytics argument that has no meaning for SAM" in capsys.readouterr().err
