"""Detector loading: Ultralytics weights are pickles, so they pass a trust gate before anything reads them.

ultralytics is an optional (AGPL) extra that is not installed here: the tests put a fake module in its place,
whose YOLO class only records what it was asked to load. Every payload below would create a marker file if
it were ever unpickled.
"""

from __future__ import annotations

import hashlib
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilesam.weights as weights_mod
from mobilesam.annotate import auto_annotate
from mobilesam.cli import main
from mobilesam.detectors import (
    ULTRALYTICS_RELEASES,
    ULTRALYTICS_WEIGHTS,
    TorchvisionDetector,
    UltralyticsDetector,
    make_detector,
    ultralytics_weights,
)

PICKLE_MESSAGE = (
    r"is a pickle of Python objects \(Ultralytics weights are\).*: loading it runs code from the file\. "
    r"Pass trust_weights=True if you trust its source"
)


class Payload:
    """Unpickling this calls open(marker, "w"), which creates the marker: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(path: Path, marker: Path) -> Path:
    torch.save({"model": Payload(marker)}, path)
    return path


@pytest.fixture
def fake_ultralytics(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A stand-in ``ultralytics`` module; returns the list of sources its YOLO was asked to load."""
    loaded: list[str] = []

    class YOLO:
        names = {0: "person", 1: "bicycle"}

        def __init__(self, source: str) -> None:
            loaded.append(source)

        def predict(self, image, **kwargs):
            empty = types.SimpleNamespace(xyxy=torch.zeros(0, 4), cls=torch.zeros(0), conf=torch.zeros(0))
            return [types.SimpleNamespace(boxes=empty)]

    monkeypatch.setitem(sys.modules, "ultralytics", types.SimpleNamespace(YOLO=YOLO, RTDETR=YOLO))
    return loaded


def test_the_payload_really_runs_when_unpickled(tmp_path: Path) -> None:
    # What the gate protects against: without weights_only, loading the file runs its code.
    marker = tmp_path / "ran"
    torch.load(_evil(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_pickled_weights_are_refused_without_trust(tmp_path, fake_ultralytics, monkeypatch, capsys) -> None:
    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError, match=f"det_model: '{re.escape(str(evil))}' {PICKLE_MESSAGE}"):
        make_detector(evil)
    with pytest.raises(ValueError, match=PICKLE_MESSAGE):
        UltralyticsDetector(str(evil))
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(ValueError, match=PICKLE_MESSAGE):
        auto_annotate(tmp_path / "images", str(evil), "unused.pt", output_dir=tmp_path / "out", verbose=False)
    # The CLI says it in its own words.
    assert main(["annotate", str(tmp_path / "images"), "--det-model", str(evil), "--model", "unused.pt"]) == 1
    err = capsys.readouterr().err
    assert "Pass --trust-weights if you trust its source" in err and "trust_weights" not in err
    assert err.count("\n") == 1  # one line, no traceback
    # A URL is a pickle too (Ultralytics downloads and loads it).
    with pytest.raises(ValueError, match=PICKLE_MESSAGE):
        make_detector("https://example.com/best.pt")
    # A name Ultralytics would download itself but that has no known hash.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="not a file here nor one of the official weights"):
        make_detector("yolo11n-obb.pt")
    assert not marker.exists() and fake_ultralytics == []


def test_trusted_weights_pass_the_gate(tmp_path, fake_ultralytics, tiny_checkpoint) -> None:
    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "evil.pt", marker)
    det = make_detector(evil, trust_weights=True)
    assert fake_ultralytics == [str(evil)] and det.names == {0: "person", 1: "bicycle"}
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    args = ["annotate", str(tmp_path / "images"), "--det-model", str(evil), "--model", str(tiny_checkpoint),
            "--device", "cpu", "--output-dir", str(tmp_path / "out"), "--trust-weights", "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert fake_ultralytics[-1] == str(evil) and (tmp_path / "out" / "a.txt").read_text() == ""
    assert (tmp_path / "out" / "classes.txt").read_text().splitlines() == ["person", "bicycle"]
    assert not marker.exists()  # the fake loader does not unpickle: the gate itself read nothing


def test_official_names_are_checked_by_sha256(tmp_path, fake_ultralytics, monkeypatch) -> None:
    marker = tmp_path / "ran"
    fake = _evil(tmp_path / "yolo11n.pt", marker)  # an official name, other bytes
    official = ULTRALYTICS_WEIGHTS["yolo11n.pt"][1]
    with pytest.raises(ValueError, match=f"named like the official yolo11n.pt but with SHA-256 .*, not the {official}"):
        make_detector(fake)
    with pytest.raises(ValueError, match=PICKLE_MESSAGE):
        make_detector(fake)
    assert fake_ultralytics == [] and not marker.exists()
    # The same file, were its hash the official one, loads without the flag.
    digest = hashlib.sha256(fake.read_bytes()).hexdigest()
    tag = ULTRALYTICS_WEIGHTS["yolo11n.pt"][0]
    monkeypatch.setitem(ULTRALYTICS_WEIGHTS, "yolo11n.pt", (tag, digest, ()))
    make_detector(fake)
    assert fake_ultralytics == [str(fake)]
    # So does an older official release of the name.
    monkeypatch.setitem(ULTRALYTICS_WEIGHTS, "yolo11n.pt", (tag, official, (digest,)))
    make_detector(fake)
    assert fake_ultralytics == [str(fake)] * 2


def test_bare_official_name_is_downloaded_checked_into_the_cache(tmp_path, fake_ultralytics, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MOBILESAM_OFFLINE", raising=False)
    body = b"official bytes"
    tag = ULTRALYTICS_WEIGHTS["yolov8n.pt"][0]
    url = f"{ULTRALYTICS_RELEASES}/{tag}/yolov8n.pt"
    monkeypatch.setitem(ULTRALYTICS_WEIGHTS, "yolov8n.pt", (tag, hashlib.sha256(body).hexdigest(), ()))
    calls = []

    def download(got_url, dest, sha256, **kwargs):
        calls.append((got_url, sha256))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(body)

    monkeypatch.setattr(weights_mod, "download_file", download)
    cached = tmp_path / "home" / "ultralytics" / "yolov8n.pt"
    make_detector("yolov8n.pt")
    assert calls == [(url, hashlib.sha256(body).hexdigest())] and fake_ultralytics == [str(cached)]
    make_detector("yolov8n")  # Ultralytics' bare stem; the cache answers, no second download
    assert len(calls) == 1 and fake_ultralytics[-1] == str(cached)
    cached.write_bytes(b"changed since")
    with pytest.raises(ValueError, match="named like the official yolov8n.pt but with SHA-256"):
        make_detector("yolov8n.pt")
    cached.unlink()
    monkeypatch.setenv("MOBILESAM_OFFLINE", "1")
    with pytest.raises(ValueError, match=f"downloads are off .*download {re.escape(url)}"):
        make_detector("yolov8n.pt")
    assert len(calls) == 1 and len(fake_ultralytics) == 2
    with pytest.raises(FileNotFoundError, match="det_model: weights file 'runs/best.pt' not found"):
        make_detector("runs/best.pt")


def test_gate_passes_unpickled_formats_and_the_table_is_well_formed() -> None:
    for spec in ("yolo11n.onnx", "yolo11n.yaml", "model.engine", "best.torchscript"):
        assert ultralytics_weights(spec) == spec
    assert ultralytics_weights("https://example.com/best.pt", trust_weights=True) == "https://example.com/best.pt"
    assert {"yolo11n.pt", "yolo11x.pt", "yolov8n.pt", "yolov8n-seg.pt"} <= set(ULTRALYTICS_WEIGHTS)
    assert ULTRALYTICS_RELEASES == "https://github.com/ultralytics/assets/releases/download"
    for name, (tag, sha, older) in ULTRALYTICS_WEIGHTS.items():
        assert re.fullmatch(r"v\d+\.\d+\.\d+", tag) and re.fullmatch(r"(yolo11|yolov8)[nsmlx](-seg)?\.pt", name)
        assert all(re.fullmatch("[0-9a-f]{64}", h) for h in (sha, *older)), name
    hashes = [h for _, sha, older in ULTRALYTICS_WEIGHTS.values() for h in (sha, *older)]
    assert len(hashes) == len(set(hashes))  # no hash copied onto a second name


def test_torchvision_state_dict_is_never_unpickled(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    marker = tmp_path / "ran"
    with pytest.raises(ValueError, match="holds Python objects other than tensors"):
        TorchvisionDetector("ssdlite320_mobilenet_v3_large", weights=_evil(tmp_path / "sd.pth", marker))
    assert not marker.exists()
