"""What the commands write, and where: outputs never replace inputs, reruns need --exist-ok, interrupted
runs leave consistent folders, the server keeps its class list, argument forms users type (issue 13)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilesam.cli import build_parser, main
from mobilesam.masks import decode_rle
from test_bad_inputs import bomb_folder

LOW = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
       "--box-nms-thresh", "1.0", "--device", "cpu", "--mode", "exact"]


def small(images, shift: int = 0) -> np.ndarray:
    return np.ascontiguousarray(np.roll(images["photo"][::4, ::4], shift, axis=1))


def test_outputs_never_replace_inputs_and_reruns_need_exist_ok(tmp_path, tiny_checkpoint, images, monkeypatch,
                                                               capsys):
    """Item 1: --save-dir = the input's folder writes the overlay beside the input (NAME_overlay.png) and
    says so; a second run into an explicit --save-dir holding results is refused without --exist-ok."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(small(images)).save("shot.png")
    original = Path("shot.png").read_bytes()
    args = ["predict", "shot.png", "--model", str(tiny_checkpoint), "--points", "20,20", "--device", "cpu"]
    assert main([*args, "--save-dir", "."]) == 0
    out = capsys.readouterr().out
    assert Path("shot.png").read_bytes() == original  # the input is untouched
    assert Path("shot_overlay.png").is_file() and Path("shot.json").is_file()
    assert "shot_overlay.png (not shot.png: that is the input)" in out

    # An explicit --save-dir that holds results: refused, before anything is written.
    assert main([*args, "--save-dir", "out"]) == 0
    before = {p: p.read_bytes() for p in Path("out").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*args, "--points", "40,30", "--save-dir", "out"]) == 2
    err = capsys.readouterr().err
    assert "already holds results" in err and "--exist-ok" in err
    assert {p: p.read_bytes() for p in Path("out").rglob("*") if p.is_file()} == before
    assert main([*args, "--points", "40,30", "--save-dir", "out", "--exist-ok"]) == 0
    assert json.loads(Path("out/shot.json").read_text())["prompts"]["points"] == [[[40.0, 30.0]]]
    # Even with --exist-ok an input is never written over.
    Path("out/shot.png").unlink()
    Path("out/shot.json").rename("out/shot.png")  # pretend an input of this name sits where the JSON goes
    Path("out/shot.json").write_text("mine")
    assert main(["predict", "out/shot.json", "--model", str(tiny_checkpoint), "--points", "1,1",
                 "--save-dir", "out", "--exist-ok"]) in (1, 2)
    assert Path("out/shot.json").read_text() == "mine"

    # everything into the folder of its inputs: the same rule.
    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(small(images)).save(src / "cat.png")
    original = (src / "cat.png").read_bytes()
    assert main(["everything", str(src), "--model", str(tiny_checkpoint), "--save-dir", str(src), *LOW]) == 0
    assert (src / "cat.png").read_bytes() == original
    assert (src / "cat_overlay.png").is_file() and (src / "cat" / "metadata.csv").is_file()
    assert "overlay written to" in capsys.readouterr().out
    assert main(["everything", str(src / "cat.png"), "--model", str(tiny_checkpoint), "--save-dir", str(src),
                 *LOW]) == 2
    assert "--exist-ok" in capsys.readouterr().err


def _interrupt_after(monkeypatch, n: int, kind: str) -> None:
    """Make the n-th mask PNG written by ``mobilesam.io.write_image`` raise KeyboardInterrupt (Ctrl-C)."""
    import mobilesam.io

    real = mobilesam.io.write_image
    count = [0]

    def write_image(path, image, image_format="RGB"):
        name = Path(path).stem
        if (kind == "everything" and name.isdigit()) or (kind == "predict" and name.startswith("mask_")):
            count[0] += 1
            if count[0] == n:
                raise KeyboardInterrupt
        return real(path, image, image_format)

    monkeypatch.setattr(mobilesam.io, "write_image", write_image)


def test_interrupted_rerun_leaves_every_metadata_row_matching_its_png(tmp_path, tiny_checkpoint, images,
                                                                       monkeypatch):
    """Item 2: Ctrl-C while `everything` (or `predict`) reruns into the same --save-dir: metadata.csv (the
    JSON) and the mask PNGs stay from one run, and no temporary folder is left."""
    for i, shift in enumerate((0, 37)):
        (tmp_path / f"run{i}").mkdir()
        Image.fromarray(small(images, shift)).save(tmp_path / f"run{i}" / "cat.png")
    out = tmp_path / "out"
    base = ["everything", "--model", str(tiny_checkpoint), "--save-dir", str(out), *LOW]
    assert main([base[0], str(tmp_path / "run0" / "cat.png"), *base[1:]]) == 0
    first = (out / "cat" / "metadata.csv").read_text()
    assert len(first.splitlines()) > 3
    with monkeypatch.context() as m:
        _interrupt_after(m, 2, "everything")
        assert main([base[0], str(tmp_path / "run1" / "cat.png"), *base[1:], "--exist-ok"]) == 130
    rows = (out / "cat" / "metadata.csv").read_text().splitlines()[1:]
    pngs = sorted(int(p.stem) for p in (out / "cat").glob("*.png"))
    assert pngs == list(range(len(rows)))
    for row in rows:
        i, area, x, y, w, h = (int(float(v)) for v in row.split(",")[:6])
        mask = np.array(Image.open(out / "cat" / f"{i}.png")) > 0
        assert mask.sum() == area, f"row {i}: its PNG is another run's mask"
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()] == [x, y, w, h]  # SAM: w = x2 - x1
    assert (out / "cat" / "metadata.csv").read_text() == first  # the earlier run, whole
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # The run completes when not interrupted.
    assert main([base[0], str(tmp_path / "run1" / "cat.png"), *base[1:], "--exist-ok"]) == 0
    assert (out / "cat" / "metadata.csv").read_text() != first

    # predict: NAME.json and NAME_masks/ likewise.
    pred = ["predict", str(tmp_path / "run0" / "cat.png"), "--model", str(tiny_checkpoint), "--device", "cpu",
            "--save-dir", str(tmp_path / "pred")]
    assert main([*pred, "--points", "20,20", "40,30"]) == 0
    with monkeypatch.context() as m:
        _interrupt_after(m, 2, "predict")
        assert main([*pred, "--points", "60,10", "10,60", "50,50", "--exist-ok"]) == 130
    doc = json.loads((tmp_path / "pred" / "cat.json").read_text())
    files = sorted(p.name for p in (tmp_path / "pred" / "cat_masks").iterdir())
    assert files == [Path(rec["file"]).name for rec in doc["masks"]]
    for rec in doc["masks"]:
        png = np.array(Image.open(tmp_path / "pred" / rec["file"])) > 0
        assert np.array_equal(png, decode_rle(rec["segmentation"]))
    assert not [p for p in (tmp_path / "pred").iterdir() if p.name.startswith(".")]


def test_server_never_writes_labels_over_classes_txt(tmp_path):
    """Item 3: saving the labels of an image named classes.png is refused (409): its YOLO labels would be
    classes.txt, the folder's class list; nothing is written."""
    from mobilesam.server.labels import LabelError, LabelObject, LabelStore

    root = tmp_path / "images"
    root.mkdir()
    for name in ("classes.png", "a.png", "Classes.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name)
    (root / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "sub" / "classes.png")
    store = LabelStore(root)
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    obj = [LabelObject("cat", mask)]
    for name in ("classes.png", "Classes.jpg"):  # no classes.txt yet, then with one
        with pytest.raises(LabelError, match="class list") as e:
            store.save(root / name, obj, (8, 8))
        assert e.value.status == 409
        assert not (root / "classes.txt").exists() and not (root / "classes.json").exists()
    store.save(root / "a.png", [LabelObject("dog", mask), *obj], (8, 8))
    assert (root / "classes.txt").read_text() == "dog\ncat\n"
    with pytest.raises(LabelError, match="class list"):
        store.save(root / "classes.png", obj, (8, 8))
    assert (root / "classes.txt").read_text() == "dog\ncat\n"
    assert store.classes() == ["dog", "cat"]
    # In a sub-folder classes.txt is no class list: labelled as any other image.
    store.save(root / "sub" / "classes.png", obj, (8, 8))
    assert (root / "sub" / "classes.txt").read_text().split()[0] == "1"


def test_several_sources_glob_hint_and_debug_after_the_command(tmp_path, tiny_checkpoint, images, monkeypatch,
                                                               capsys):
    """Item 14: an unquoted glob (several sources) is accepted by predict / everything, other commands
    say to quote it; --debug is accepted after the command name."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(small(images)).save("a.png")
    Image.fromarray(small(images, 20)).save("b.png")
    assert main(["predict", "a.png", "b.png", "--model", str(tiny_checkpoint), "--points", "20,20",
                 "--device", "cpu", "--save-dir", "out"]) == 0
    assert sorted(p.name for p in Path("out").glob("*.json")) == ["a.json", "b.json"]
    assert build_parser().parse_args(["everything", "a.png", "b.png"]).source == ["a.png", "b.png"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["annotate", "a.png", "b.png"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: b.png" in err and "quote the pattern" in err and "pass the folder" in err

    assert main(["predict", "missing.png", "--points", "1,2"]) == 1
    with pytest.raises(FileNotFoundError):  # --debug after the command: the traceback comes through
        main(["predict", "missing.png", "--points", "1,2", "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", "predict", "missing.png", "--points", "1,2"])
    for command in ("info", "embed", "train", "annotate", "serve", "val", "export", "benchmark"):
        parser = build_parser()
        sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        assert "--debug" in sub._option_string_actions, command


def test_detector_error_names_the_flag_and_embed_workers_fit_the_cpus(tmp_path, tiny_checkpoint, images,
                                                                       monkeypatch, capsys):
    """Item 23 (part): the CLI's detector download error names --det-weights, not weights=PATH; embed
    defaults to min(4, usable CPUs) loader workers."""
    from torchvision.models import detection

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(detection, "fasterrcnn_resnet50_fpn", offline)
    Image.fromarray(small(images)).save(tmp_path / "a.png")
    assert main(["annotate", str(tmp_path / "a.png"), "--det-model", "torchvision:fasterrcnn_resnet50_fpn",
                 "--model", str(tiny_checkpoint), "--output-dir", str(tmp_path / "labels")]) == 1
    err = capsys.readouterr().err
    assert "--det-weights PATH" in err and "weights=PATH" not in err and "--det-model: " in err

    import torch.utils.data

    import mobilesam.train.store as store

    assert build_parser().parse_args(["embed", "--model", "m", "--data", "d", "--out", "o"]).workers is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    seen = []
    real = torch.utils.data.DataLoader

    def loader(*args, num_workers=0, **kwargs):
        seen.append(num_workers)
        return real(*args, num_workers=0, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(small(images)).save(tmp_path / "imgs" / "a.png")
    store.embed_folder(tiny_checkpoint, tmp_path / "imgs", tmp_path / "emb", img_size=64, progress=False)
    assert seen == [2]


def _named_paths(line: str, save_dir: Path) -> list[Path]:
    return [Path(w.strip(",()")) for w in line.split() if w.strip(",()").startswith(str(save_dir))]


@pytest.mark.slow  # four image-encoder passes of the random vit_t: over 10 s on a busy 2-core machine
def test_folder_runs_skip_a_bomb_end_the_bar_at_100_and_name_only_what_exists(tmp_path, tiny_checkpoint,
                                                                               monkeypatch, capsys):
    """Items 7, 20, 23: a decompression bomb in a folder stopped predict and everything; the bar ended at
    2/3 when a file was skipped; 0 masks came without a reason; every path the summary names exists."""
    folder = bomb_folder(tmp_path, monkeypatch)
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", str(tiny_checkpoint), "--points", "10,0", "--conf", "1",
                 "--device", "cpu", "--save-dir", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if " -> " in line]
    assert [Path(line.split(":")[0]).name for line in lines] == ["a_good.png", "thin.png"]
    for line in lines:
        named = _named_paths(line, out)
        assert len(named) == 3 and all(p.exists() for p in named), line
        empty = not any((out / f"{Path(line.split(':')[0]).stem}_masks").iterdir())
        assert ("is empty" in line) == empty
    assert "bomb.png" in captured.err and "decompression bomb" in captured.err
    assert "skipped 1 of 3 files" in captured.err
    assert "3/3" in captured.err.split("\r")[-1]
    assert "Traceback" not in captured.err

    n = 2 * 2 * 3  # --points-per-side 2: 3 candidate masks per grid point
    assert main(["everything", str(folder), "--model", str(tiny_checkpoint), "--points-per-side", "2",
                 "--mode", "exact", "--device", "cpu", "--save-dir", str(tmp_path / "every")]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 3 files" in err and "decompression bomb" in err
    assert "3/3" in err.split("\r")[-1]
    # Random weights predict IoUs far below the default threshold: each image says so, in the CLI's words.
    reasons = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("mobilesam: 0 masks")]
    assert len(reasons) == 2
    for line in reasons:
        assert f"0 masks: {n} candidates from 4 points, {n} below --pred-iou-thresh=0.88 (best " in line
        assert line.endswith("; lower --pred-iou-thresh")

    # A bomb named directly: one line naming it, exit code 1.
    assert main(["predict", str(folder / "bomb.png"), "--model", str(tiny_checkpoint), "--points", "1,1",
                 "--device", "cpu", "--save-dir", str(tmp_path / "one")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mobilesam predict: error: image: cannot read ")
    assert "bomb.png" in err[0] and "decompression bomb" in err[0]
