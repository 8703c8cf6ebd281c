"""``mobilesam predict`` and ``mobilesam info`` end to end, in a subprocess, on a real photograph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilesam import SAM
from mobilesam.cli import main
from mobilesam.masks import decode_rle


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOBILESAM_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "mobilesam", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, images) -> Path:
    d = tmp_path_factory.mktemp("cli")
    Image.fromarray(images["photo"]).save(d / "cat.jpg", quality=95)
    return d


def test_predict_writes_overlay_masks_and_json(workdir, tiny_checkpoint, vit_t_pair) -> None:
    proc = cli("predict", "cat.jpg", "--model", str(tiny_checkpoint), "--points", "200,150", "300,100",
               "--labels", "1", "1", "--device", "cpu", "--save-dir", "out", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    out = workdir / "out"
    assert "out" in proc.stdout and "cat.jpg: 2 masks" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["cat.json", "cat.png", "cat_masks"]
    assert sorted(p.name for p in (out / "cat_masks").iterdir()) == ["mask_000.png", "mask_001.png"]
    overlay = np.asarray(Image.open(out / "cat.png"))
    assert overlay.shape == (300, 451, 3)
    doc = json.loads((out / "cat.json").read_text())
    assert doc["image"] == "cat.jpg" and doc["orig_shape"] == [300, 451]
    assert doc["prompts"]["points"] == [[[200.0, 150.0]], [[300.0, 100.0]]]
    assert [m["class"] for m in doc["masks"]] == [0, 1]

    # Same masks as the Python API gives with the same weights (tiny_checkpoint holds vit_t_pair's).
    expected = SAM(vit_t_pair[1], device="cpu").predict(str(workdir / "cat.jpg"), points=[[200, 150], [300, 100]])[0]
    for i, rec in enumerate(doc["masks"]):
        png = np.asarray(Image.open(out / rec["file"])) > 0
        assert np.array_equal(png, decode_rle(rec["segmentation"]))
        assert np.array_equal(png, expected.masks.data[i].numpy())
        assert rec["confidence"] == pytest.approx(float(expected.boxes.conf[i]), abs=1e-4)


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def test_bad_points_and_missing_file_in_subprocess(workdir, tiny_checkpoint) -> None:
    proc = cli("predict", "cat.jpg", "--model", str(tiny_checkpoint), "--points", "200", cwd=workdir)
    assert proc.returncode == 2
    assert one_line_error(proc.stderr) == (
        "mobilesam predict: error: --points: expected 2 comma-separated numbers such as 900,370 "
        "(or a JSON list), got '200'"
    )
    proc = cli("predict", "missing.jpg", "--model", str(tiny_checkpoint), "--points", "1,2", cwd=workdir)
    assert proc.returncode == 1
    assert one_line_error(proc.stderr) == "mobilesam predict: error: source: file 'missing.jpg' not found"
    assert not (workdir / "runs").exists()  # nothing written on errors


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--points", "200,abc"], 2, "--points: expected 2 comma-separated numbers"),
        (["--points", "200,150", "--labels", "3"], 2, "--labels: expected 1 (foreground) or 0 (background), got '3'"),
        (["--bboxes", "10,20,5,40"], 2, "bboxes: expected x1 <= x2 and y1 <= y2"),
        (["--bboxes", "10,20,50"], 2, "--bboxes: expected 4 comma-separated numbers such as 100,50,700,700"),
        (["--points", "[[1,2]"], 2, "--points: '[[1,2]' is not valid JSON"),
        (["--points", "1,2", "3,4", "--labels", "[[1,0]]"], 2, "nest them"),
        (["--points", "1,2", "--conf", "3"], 2, "--conf: expected a number in [0, 1], got 3.0"),
    ],
)
def test_bad_values_give_one_line(workdir, tiny_checkpoint, capsys, monkeypatch, args, code, message) -> None:
    monkeypatch.chdir(workdir)
    assert main(["predict", "cat.jpg", "--model", str(tiny_checkpoint), *args]) == code
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("mobilesam predict: error: ") and message in line


def test_bad_checkpoint_and_debug(workdir, capsys, monkeypatch) -> None:
    monkeypatch.chdir(workdir)
    assert main(["predict", "cat.jpg", "--model", "cat.jpg", "--points", "1,2"]) == 1
    assert "error: checkpoint: 'cat.jpg'" in one_line_error(capsys.readouterr().err)
    with pytest.raises(FileNotFoundError):  # --debug lets the exception (and its traceback) through
        main(["--debug", "predict", "missing.jpg", "--points", "1,2"])


def test_info(workdir, tiny_checkpoint) -> None:
    proc = cli("info", "--model", str(tiny_checkpoint), "--detailed", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "MobileSAM (vit_t) summary: 219 layers, 10,130,092 parameters" in proc.stdout
    assert "40.7 MB" in proc.stdout and "image_encoder" in proc.stdout and "mask_decoder" in proc.stdout


@pytest.mark.parametrize(
    "command, options",
    [
        ("predict", ["--model", "--points", "--labels", "--bboxes", "--multimask", "--conf", "--mode", "--device",
                     "--save-dir"]),
        ("info", ["--model", "--detailed"]),
    ],
)
def test_help_explains_every_option_with_an_example(capsys, command, options) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text
    for opt in options:
        # Each option's help shows it in use ("--opt VALUE" after "e.g." or ": ").
        helps = " ".join(text.split(f"  {opt}", 1)[1].split("\n  -", 1)[0].split())
        assert f": {opt}" in helps or f"e.g. {opt}" in helps, f"{command} {opt}: no example in {helps!r}"
