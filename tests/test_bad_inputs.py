"""Cases of the bad-input battery (issue 13): each test names the item it guards.

Each of these failed before its fix: a traceback from deep inside, a silent wrong answer, or an
unhelpful message.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest
import torch

from mobilesam import SAM, SamPredictor
from mobilesam.backends import create_predictor
from mobilesam.build import build_sam
from mobilesam.device import select_device
from mobilesam.io import array_to_rgb, load_image, read_image
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
