"""SamPredictor input handling: bad prompts, image sources and conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam.io import array_to_rgb, load_image, read_image
from mobilesam.predictor import ImageNotSetError, SamPredictor
from mobilesam.transforms import ResizeLongestSide, preprocess_shape


@pytest.fixture(scope="module")
def predictor(vit_t_pair) -> SamPredictor:
    pred = SamPredictor(vit_t_pair[1])
    pred.set_image(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    return pred


def test_predict_before_set_image(vit_t_pair) -> None:
    pred = SamPredictor(vit_t_pair[1])
    with pytest.raises(ImageNotSetError, match="set_image"):
        pred.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError):  # official code raises RuntimeError: stay catchable the same way
        pred.get_image_embedding()
    with pytest.raises(ValueError):  # and ValueError, as the issue asks
        pred.get_image_embedding()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(point_coords=[[1, 2, 3]], point_labels=[1]), r"point_coords: expected shape \(N, 2\).*\(1, 3\)"),
        (dict(point_coords=[[1, 2], [3, 4]], point_labels=[1]), r"point_labels: expected shape \(2,\).*\(1,\)"),
        (dict(point_coords=[[1, 2]], point_labels=[2]), r"point_labels: expected 1 \(foreground\) or 0.*\[2\.0\]"),
        (dict(point_coords=[[np.nan, 2]], point_labels=[1]), "point_coords: all values must be finite"),
        (dict(point_coords=[[np.inf, 2]], point_labels=[1]), "point_coords: all values must be finite"),
        (dict(point_coords=[[1, 2]]), "point_labels: point_coords were given without point_labels"),
        (dict(point_labels=[1]), "point_coords: point_labels were given without point_coords"),
        (dict(box=[10, 10, 5, 20]), r"box: expected x1 <= x2 and y1 <= y2.*\[10\.0, 10\.0, 5\.0, 20\.0\]"),
        (dict(box=[1, 2, 3]), r"box: expected shape \(4,\)"),
        (dict(box=[[0, 0, 5, 5], [1, 1, 6, 6]]), "box: predict takes one box"),
        (dict(box=[0, 0, 5, 5], mask_input=np.zeros((256, 256))), r"mask_input: expected .*\(1, 256, 256\)"),
        (dict(point_coords="abc", point_labels=[1]), "point_coords: expected numbers"),
    ],
)
def test_bad_prompts_raise_clear_errors(predictor, kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        predictor.predict(**kwargs)


def test_predict_torch_checks_shapes(predictor) -> None:
    with pytest.raises(ValueError, match=r"point_labels: expected shape \(2, 3\)"):
        predictor.predict_torch(torch.zeros(2, 3, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="batch sizes differ"):
        predictor.predict_torch(torch.zeros(2, 1, 2), torch.ones(2, 1), boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"boxes: expected shape \(B, 4\)"):
        predictor.predict_torch(None, None, boxes=torch.zeros(4))


def test_outputs_and_shapes(predictor) -> None:
    masks, scores, low = predictor.predict(point_coords=[[10, 20]], point_labels=[1])
    assert masks.shape == (3, 40, 60) and masks.dtype == bool
    assert scores.shape == (3,) and low.shape == (3, 256, 256)
    masks, scores, low = predictor.predict(box=[5, 5, 30, 30], multimask_output=False, return_logits=True)
    assert masks.shape == (1, 40, 60) and masks.dtype == np.float32
    assert predictor.get_image_embedding().shape == (1, 256, 64, 64)
    assert predictor.original_size == (40, 60) and predictor.input_size == (683, 1024)


def test_bgr_equals_rgb_reversed(vit_t_pair) -> None:
    img = np.random.default_rng(1).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    a, b = SamPredictor(vit_t_pair[1]), SamPredictor(vit_t_pair[1])
    a.set_image(img)
    b.set_image(img[..., ::-1].copy(), image_format="BGR")
    assert torch.equal(a.features, b.features)
    with pytest.raises(ValueError, match="image_format: expected 'RGB' or 'BGR', got 'HSV'"):
        b.set_image(img, image_format="HSV")


def test_preprocess_shape_rounding() -> None:
    assert preprocess_shape(480, 640, 1024) == (768, 1024)
    assert preprocess_shape(19, 27, 1024) == (721, 1024)  # 720.59 rounds up, as int(x + 0.5)
    assert preprocess_shape(2000, 1000, 1024) == (1024, 512)


def test_resize_is_pil_bilinear() -> None:
    img = np.random.default_rng(2).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    out = ResizeLongestSide(1024).apply_image(img)
    want = np.asarray(Image.fromarray(img).resize((1024, 640), Image.BILINEAR))
    assert out.shape == (640, 1024, 3) and np.array_equal(out, want)
    coords = ResizeLongestSide(1024).apply_coords(np.array([[80.0, 50.0]]), (50, 80))
    assert np.allclose(coords, [[1024.0, 640.0]])


def test_image_conversions(tmp_path) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    assert np.array_equal(load_image(grey), np.repeat(grey[..., None], 3, -1))
    assert np.array_equal(load_image(grey[..., None]), np.repeat(grey[..., None], 3, -1))
    rgba = np.concatenate([rgb, np.full((12, 16, 1), 7, np.uint8)], -1)
    assert np.array_equal(load_image(rgba), rgb)
    assert np.array_equal(load_image(rgb[..., ::-1], image_format="BGR"), rgb)
    assert np.array_equal(load_image(rgb.astype(np.uint16) * 257), rgb)
    assert np.array_equal(load_image(rgb / 255.0), rgb)
    with pytest.raises(ValueError, match=r"float image must hold finite values in \[0, 1\].*255"):
        load_image(rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"expected an array of shape HxW.*\(12, 16, 2\)"):
        array_to_rgb(rgb[..., :2])
    with pytest.raises(ValueError, match="expected dtype"):
        array_to_rgb(rgb.astype(np.int64))

    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE)
    pal.save(tmp_path / "pal.png")
    assert np.array_equal(read_image(tmp_path / "pal.png"), np.asarray(pal.convert("RGB")))
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    assert np.array_equal(read_image(tmp_path / "g16.png")[..., 0], grey)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)


def test_exif_orientation_is_applied(tmp_path) -> None:
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, :5] = 255  # bright left edge
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (20, 10, 3)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the left edge is now on top


def test_unreadable_files(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="cannot read .*notes.txt.* as an image"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="expected a file path, a PIL image or an HxWx3 numpy array, got int"):
        load_image(3)
