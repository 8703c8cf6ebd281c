"""Cases of the bad-input battery (issue 13): each test names the item it guards.

Each of these failed before its fix: a traceback from deep inside, a silent wrong answer, or an
unhelpful message.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import mobilesam.everything.generator
import mobilesam.io
from mobilesam import SAM, SamPredictor
from mobilesam.backends import create_predictor
from mobilesam.build import build_sam
from mobilesam.device import select_device
from mobilesam.io import array_to_rgb, load_image, read_image, read_url
from mobilesam.transforms import ResizeLongestSide, preprocess_shape
from mobilesam.weights import CheckpointError, load_state_dict


@pytest.fixture(scope="module")
def predictor(vit_t_pair) -> SamPredictor:
    return SamPredictor(vit_t_pair[1])


@pytest.fixture(scope="module")
def sam(vit_t_pair) -> SAM:
    return SAM(vit_t_pair[1], device="cpu")


def test_item9_one_pixel_high_image_is_segmented(predictor) -> None:
    """Item 9: a 1 x 3000 image: the resize rounded its height to 0 ("height and width must be > 0")."""
    assert preprocess_shape(1, 3000, 1024) == (1, 1024)
    assert preprocess_shape(3000, 1, 1024) == (1024, 1)
    assert ResizeLongestSide(1024).apply_image(np.zeros((1, 3000, 3), np.uint8)).shape == (1, 1024, 3)
    image = np.random.default_rng(0).integers(0, 256, (1, 3000, 3), dtype=np.uint8)
    predictor.set_image(image)
    assert predictor.input_size == (1, 1024)
    masks, scores, low_res = predictor.predict(np.array([[1500.0, 0.0]]), np.array([1]))
    assert masks.shape == (3, 1, 3000) and scores.shape == (3,) and low_res.shape == (3, 256, 256)


def test_item12_meta_device_is_refused(vit_t_pair, tiny_checkpoint) -> None:
    """Item 12: device="meta" failed with "Tensor.item() cannot be called on meta tensors"."""
    with pytest.raises(ValueError, match=r"device: .*'cpu'.*got 'meta'"):
        select_device("meta")
    with pytest.raises(ValueError, match=r"device: .*got 'meta'"):
        select_device(torch.device("meta"))
    with pytest.raises(ValueError, match=r"device: .*got 'meta'"):
        SAM(vit_t_pair[1], device="meta")
    with pytest.raises(ValueError, match=r"device: .*got 'meta'"):
        build_sam(tiny_checkpoint, device="meta")
    with pytest.raises(ValueError, match=r"device: .*got 'meta'"):
        create_predictor(tiny_checkpoint, device="meta")
    with pytest.raises(ValueError, match=r"device: .*got 'meta'"):
        create_predictor(vit_t_pair[1], device="meta")
    assert next(vit_t_pair[1].parameters()).device.type == "cpu"  # nothing was moved


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo PAYLOAD-RAN",))


def test_item13_pickle_with_code_is_refused_for_safety(tmp_path) -> None:
    """Item 13 (a): a checkpoint pickling code: torch writes "unsupported GLOBAL" (lower case), which
    was reported as a corrupt zip archive ("delete it and download it again")."""
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert "holds Python objects other than tensors" in message and "for safety" in message
    assert "download it again" not in message


def test_item13_folder_named_like_an_image(tmp_path) -> None:
    """Item 13 (b): a folder named x.jpg given as an image was reported as "not found"."""
    folder = tmp_path / "x.jpg"
    folder.mkdir()
    for read in (read_image, load_image):
        with pytest.raises(IsADirectoryError, match=r"x\.jpg' is a folder, not an image file"):
            read(folder)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_image(tmp_path / "missing.jpg")


def test_item13_big_endian_uint16_array_is_accepted() -> None:
    """Item 13 (c): a valid big-endian uint16 array was refused ("expected dtype uint8, uint16 ...")."""
    native = (np.arange(12 * 5 * 3, dtype=np.uint16).reshape(12, 5, 3) * 300).astype(np.uint16)
    big = native.astype(">u2")
    little = native.astype("<u2")
    expected = array_to_rgb(native, image_format="RGB")
    assert np.array_equal(array_to_rgb(big, image_format="RGB"), expected)
    assert np.array_equal(array_to_rgb(little, image_format="RGB"), expected)
    assert np.array_equal(array_to_rgb(big[..., 0]), array_to_rgb(native[..., 0]))
    floats = np.linspace(0, 1, 20).reshape(4, 5).astype(">f4")
    assert np.array_equal(array_to_rgb(floats), array_to_rgb(floats.astype(np.float32)))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mobilesam" and r.levelno == logging.WARNING]


def test_item16_out_of_image_prompts_warn_or_raise(predictor, sam, images, caplog) -> None:
    """Item 16: points and boxes outside the image were accepted without a word; empty prompt arrays
    were taken as "no prompt"."""
    rgb = images["tiny"]  # 19 x 27
    h, w = rgb.shape[:2]
    predictor.set_image(rgb)
    # The predictor: one warning per call, however many prompts are outside; an error with strict=True.
    caplog.set_level(logging.WARNING, logger="mobilesam")
    caplog.clear()
    predictor.predict(np.array([[5000.0, 10.0], [-3.0, 4.0]]), np.array([1, 1]), box=np.array([0, 0, 900, 10]))
    got = _warnings(caplog)
    assert len(got) == 1 and "outside the image" in got[0] and f"{w} x {h}" in got[0]
    with pytest.raises(ValueError, match="outside the image"):
        predictor.predict(np.array([[5000.0, 10.0]]), np.array([1]), strict=True)
    with pytest.raises(ValueError, match="box.*outside the image"):
        predictor.predict(box=np.array([0, 0, 900, 10]), strict=True)
    caplog.clear()
    predictor.predict(np.array([[0.0, 0.0], [w, h]]), np.array([1, 0]), box=np.array([0, 0, w, h]), strict=True)
    assert _warnings(caplog) == []

    # The SAM facade: each image's size is checked; one warning per call, however many images.
    caplog.clear()
    sam.predict([rgb, rgb], points=[[5000, 10]], image_format="RGB", verbose=False)
    got = _warnings(caplog)
    assert len(got) == 1 and "outside the image" in got[0]
    with pytest.raises(ValueError, match="outside the image"):
        sam.predict(rgb, bboxes=[0, 0, 900, 10], image_format="RGB", strict=True)
    caplog.clear()
    r = sam.predict(rgb, points=[[3, 4]], bboxes=[0, 0, w, h], image_format="RGB", strict=True)[0]
    assert len(r) == 1 and _warnings(caplog) == []

    # Empty prompt arrays are an error; no prompt at all is not (segment everything).
    for kwargs in ({"points": []}, {"points": np.zeros((0, 2))}, {"bboxes": np.zeros((0, 4))},
                   {"points": [], "labels": []}):
        with pytest.raises(ValueError, match="empty"):
            sam.predict(rgb, image_format="RGB", **kwargs)


def test_item17_non_finite_weights_are_refused_at_load(tmp_path, vit_t_pair) -> None:
    """Item 17: a checkpoint with a NaN weight loaded and predicted conf=[nan] with empty masks."""
    state = {k: v.clone() for k, v in vit_t_pair[0].state_dict().items()}
    names = [k for k, v in state.items() if v.is_floating_point()]
    state[names[3]].view(-1)[0] = math.nan
    state[names[7]].view(-1)[-1] = math.inf
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="NaN or inf") as info:
        load_state_dict(path)
    assert names[3] in str(info.value) and names[7] in str(info.value)
    with pytest.raises(CheckpointError, match="NaN or inf"):
        build_sam(path)
    with pytest.raises(CheckpointError, match="NaN or inf"):
        SAM(str(path), device="cpu")


# --------------------------------------------------------------------------- items 7, 8, 15, 20, 23


@pytest.fixture(scope="module")
def colour_sam() -> SAM:
    """SAM on the structured stand-in model of test_everything: no image encoder to run, so fast."""
    from test_everything import colour_models

    return SAM(colour_models()[1], device="cpu")


def bomb_folder(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """a_good.png, bomb.png (over twice the lowered PIL limit: PIL refuses it) and thin.png (1 x 3000)."""
    from test_everything import shapes_image

    folder = root / "imgs"
    folder.mkdir()
    PIL.Image.fromarray(shapes_image(48, 64)).save(folder / "a_good.png")
    PIL.Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(folder / "bomb.png")
    thin = np.random.default_rng(0).integers(0, 256, (1, 3000, 3), dtype=np.uint8)
    PIL.Image.fromarray(thin).save(folder / "thin.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 4096)  # the others are below it: no warning either
    return folder


def test_item7_decompression_bomb_in_a_folder_is_skipped(colour_sam, tmp_path, monkeypatch, caplog, capsys) -> None:
    """Item 7: PIL's DecompressionBombError was not caught by the folder skip: the run stopped there."""
    folder = bomb_folder(tmp_path, monkeypatch)
    caplog.set_level(logging.WARNING, logger="mobilesam")
    results = colour_sam.predict(folder, points=[[10, 0]])
    assert [Path(r.path).name for r in results] == ["a_good.png", "thin.png"]  # 1 x 3000 still works
    assert [Path(p).name for p, _ in colour_sam.skipped] == ["bomb.png"]
    reason = colour_sam.skipped[0][1]
    assert "decompression bomb" in reason and "raise it if you trust the file" in reason and "\n" not in reason
    got = _warnings(caplog)
    assert any(w.startswith(f"mobilesam: skipped '{folder / 'bomb.png'}': ") and "MAX_IMAGE_PIXELS" in w for w in got)
    assert got[-1].startswith("mobilesam: skipped 1 of 3 files") and got[-1].endswith(str(folder / "bomb.png"))
    assert "3/3" in capsys.readouterr().err.split("\r")[-1]  # the bar counts the skipped file as done

    caplog.clear()
    results = colour_sam.predict(folder, points_per_side=2, verbose=False)  # segment everything: the same
    assert [Path(r.path).name for r in results] == ["a_good.png", "thin.png"]
    assert any("skipped 1 of 3 files" in w for w in _warnings(caplog))

    # Named directly, the file is an error: one line naming it and the way out.
    bomb = folder / "bomb.png"
    for call in (lambda: read_image(bomb), lambda: colour_sam.predict(bomb, points=[1, 1])):
        with pytest.raises(ValueError, match=r"cannot read '.*bomb\.png' as an image \(DecompressionBombError: "
                                             r".*decompression bomb.*MAX_IMAGE_PIXELS \(4,096\)") as info:
            call()
        assert "\n" not in str(info.value)


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Sends one byte every 0.2 s, the body (/slow) or from the status line on (/slow-head), for at
    most 8 s: within any per-read timeout, and short enough that a missing deadline fails, not hangs."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
        data = head + b"x" * 1000 if self.path == "/slow-head" else b"x" * 1000
        if self.path == "/slow":
            self.wfile.write(head)
        try:
            for byte in data[:40]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client hung up: what the deadline does


@pytest.fixture(scope="module")
def trickle_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_item8_url_download_has_an_overall_deadline(colour_sam, trickle_url, monkeypatch) -> None:
    """Item 8: a server trickling a byte at a time held SAM.predict(url) without end (the timeout was per read)."""
    monkeypatch.setattr(mobilesam.io, "URL_DEADLINE", 1.0)  # read when called
    for path in ("/slow", "/slow-head"):
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=rf"downloading '{trickle_url}{path}' took longer than the 1 s "
                                                  r"deadline .*or raise mobilesam\.io\.URL_DEADLINE"):
            colour_sam.predict(trickle_url + path, points=[1, 1])
        assert time.monotonic() - start < 3.0
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="took longer than the 0.5 s deadline"):
        read_url(trickle_url + "/slow", deadline=0.5)
    assert time.monotonic() - start < 2.5
    with pytest.raises(ValueError, match=r"deadline: expected a number of seconds > 0, got 0"):
        read_url(trickle_url + "/slow", deadline=0)


def test_item20_segment_everything_shows_progress_and_explains_zero_masks(sam, colour_sam, images, monkeypatch,
                                                                          caplog, capsys) -> None:
    """Item 20: segment everything printed nothing for minutes, then "0 masks" with no reason (random
    weights predict IoUs far below pred_iou_thresh=0.88)."""
    monkeypatch.setattr(mobilesam.everything.generator, "PROGRESS_DELAY", 0)  # shown at once, not after 1 s
    caplog.set_level(logging.WARNING, logger="mobilesam")
    rgb = images["tiny"]
    result = sam.predict(rgb, image_format="RGB", points_per_side=2, mode="exact")[0]
    err = capsys.readouterr().err
    assert "grid points: " in err and "/4 [" in err  # a bar over the 4 grid points, on stderr
    assert len(result) == 0
    got = [w for w in _warnings(caplog) if "0 masks" in w]
    assert len(got) == 1
    n = 2 * 2 * 3  # 3 candidate masks per grid point
    assert got[0].startswith(f"mobilesam: 0 masks: {n} candidates from 4 points, {n} below pred_iou_thresh=0.88 (best ")
    assert got[0].endswith("; lower pred_iou_thresh")
    best = float(got[0].split("(best ")[1].split(")")[0])
    assert best < 0.88

    colour_sam.predict(rgb, image_format="RGB", points_per_side=2, mode="exact")
    assert "grid points: " in capsys.readouterr().err
    colour_sam.predict(rgb, image_format="RGB", points_per_side=2, mode="exact", verbose=False)
    assert "grid points" not in capsys.readouterr().err  # verbose=False: no bar


def test_item23_half_in_the_constructor_is_the_default_of_predict(colour_sam, monkeypatch) -> None:
    """Item 23: SAM(..., half=True) was a TypeError; only predict(half=True) existed."""
    model = colour_sam.model
    with pytest.raises(ValueError, match=r"half: float16 inference runs on CUDA only, and this model is on cpu"):
        SAM(model, device="cpu", half=True)
    with pytest.raises(TypeError, match=r"half: expected True or False, got 'yes'"):
        SAM(model, device="cpu", half="yes")
    # Without a GPU, the CUDA check is bypassed to see which half each step runs with.
    seen: list[bool] = []
    monkeypatch.setattr(SAM, "_check_half", lambda self, half: None)
    monkeypatch.setattr(SAM, "_autocast", lambda self, half: seen.append(half) or contextlib.nullcontext())
    sam = SAM(model, device="cpu", half=True)
    rgb = np.zeros((32, 40, 3), np.uint8)
    sam.predict(rgb, points=[5, 5])
    assert seen and all(seen)
    n = len(seen)
    sam.predict(rgb, points=[5, 5], half=False)  # the argument of predict wins
    assert len(seen) > n and not any(seen[n:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_item23_half_runs_on_cuda(vit_t_pair, images) -> None:
    sam = SAM(copy.deepcopy(vit_t_pair[1]), device="cuda", half=True)
    result = sam.predict(images["photo"], points=[100, 100], image_format="RGB")[0]
    full = sam.predict(images["photo"], points=[100, 100], image_format="RGB", half=False)[0]
    assert result.masks.data.shape == full.masks.data.shape and result.masks.data.is_cuda


@pytest.mark.parametrize("error", [RuntimeError("benchmark: backend 'torch' failed"), KeyboardInterrupt()])
def test_item15_failed_benchmark_leaves_no_temporary_folder(tiny_checkpoint, tmp_path, monkeypatch, error) -> None:
    """Item 15: a failed benchmark left its mobilesam-bench-* folder in the temporary folder."""
    from mobilesam import bench

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    used: list[Path] = []

    def fail(job, params, tmp):
        used.append(Path(tmp))
        assert (Path(tmp) / "bench.png").is_file()  # the run had written there
        raise error

    monkeypatch.setattr(bench, "_run_in_process", fail)
    with pytest.raises(type(error)):
        bench.run_benchmark(str(tiny_checkpoint), ["torch"], rounds=1, runs=1, prompts=1, batch=False)
    assert used and used[0].parent == root
    assert list(root.iterdir()) == []
