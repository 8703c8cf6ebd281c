"""The backend registry: a backend registered from outside the package runs under every front end.

``CountingPredictor`` is such a backend, written as a user would: it wraps the torch predictor by
composition and counts the calls the front ends make. Each test checks that the counts moved, so a
front end that built its own predictor (the old wiring) fails here.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam import SAM
from mobilesam.backends import (
    ImageFeatures,
    Predictor,
    available_backends,
    create_predictor,
    get_backend,
    register_backend,
    unregister_backend,
)
from mobilesam.backends.torch_predictor import SamPredictor
from mobilesam.cache import FeatureCache

CALLS: collections.Counter = collections.Counter()
COUNTED = ("set_image", "encode_prepared", "set_features", "predict", "predict_torch", "decode_low_res",
           "decode_low_res_above")


def grid_decodes(calls: collections.Counter) -> int:
    """Batches of grid points decoded by segment everything (fast mode scores them before upscaling where
    the backend can: ``decode_low_res_above``)."""
    return calls["decode_low_res"] + calls["decode_low_res_above"]


def encoder_passes(calls: collections.Counter) -> int:
    """Images embedded: one ``set_image`` each, or several in one ``encode_prepared`` (folder runs)."""
    return calls["set_image"] + calls["encode_prepared"]


class CountingPredictor:
    """A user's backend: the torch predictor behind it, every interface call counted in ``CALLS``."""

    backend = "counting"

    def __init__(self, model, **options) -> None:
        CALLS["created"] += 1
        self._inner = SamPredictor(model, **options)

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in COUNTED:
            return attr

        def counted(*args, **kwargs):
            CALLS[name] += 1
            return attr(*args, **kwargs)

        return counted


@pytest.fixture
def counting():
    CALLS.clear()
    register_backend("counting", CountingPredictor, description="test: counts calls")
    yield CALLS
    unregister_backend("counting")


def scene(h: int = 96, w: int = 128) -> np.ndarray:
    rgb = np.full((h, w, 3), 40, np.uint8)
    rgb[20:60, 30:90] = (220, 30, 30)
    return rgb


def test_registry_lists_builtins_and_refuses_bad_names(counting) -> None:
    names = available_backends()
    assert names[:4] == ["torch", "torch-bf16", "onnxruntime", "onnxruntime-int8"] and "counting" in names
    assert get_backend("onnxruntime").exported and not get_backend("torch").exported
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_backend("counting", CountingPredictor)
    with pytest.raises(ValueError, match=r"backend: expected one of \[.*'torch'.*\], got 'tensorrt'"):
        create_predictor(torch.nn.Module(), "tensorrt")
    with pytest.raises(ValueError, match="name: expected a non-empty backend name"):
        register_backend("a,b", CountingPredictor)
    with pytest.raises(TypeError, match="factory: expected a callable"):
        register_backend("x", "not callable")


def test_torch_predictor_is_a_predictor_and_features_round_trip(vit_t_pair) -> None:
    pred = create_predictor(vit_t_pair[1], "torch")
    assert isinstance(pred, Predictor) and pred.backend == "torch"
    pred.set_image(scene())
    feats = pred.get_features()
    assert isinstance(feats, ImageFeatures) and feats.original_size == (96, 128) and feats.input_size == (768, 1024)
    assert set(feats.tensors) == {"image_embeddings"} and feats.nbytes == 256 * 64 * 64 * 4
    a = pred.predict(np.array([[50.0, 40.0]]), np.array([1]))
    pred.reset_image()
    pred.set_features(feats)
    b = pred.predict(np.array([[50.0, 40.0]]), np.array([1]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(TypeError, match="features: expected an ImageFeatures"):
        pred.set_features(feats.embedding)


def test_set_images_batches_the_encoder_and_keeps_the_order(vit_t_pair) -> None:
    pred = create_predictor(vit_t_pair[1], "torch", encoder_batch=2)
    images = [scene(), scene()[:, ::-1].copy(), scene(60, 200)]
    calls = []
    handle = vit_t_pair[1].image_encoder.register_forward_hook(lambda m, args, out: calls.append(len(out)))
    try:
        feats = pred.set_images(images)
    finally:
        handle.remove()
    assert calls == [2, 1]  # two encoder passes for three images
    assert pred.original_size == (60, 200) and [f.original_size for f in feats] == [(96, 128), (96, 128), (60, 200)]
    for image, f in zip(images, feats):
        pred.set_image(image)
        single = pred.get_image_embedding()
        assert f.input_size == pred.input_size
        assert (f.embedding - single).abs().max() <= 1e-4 * single.abs().max()
    assert not torch.allclose(feats[0].embedding, feats[1].embedding)


def test_sam_predict_with_prompts_and_without_runs_through_the_backend(counting, vit_t_pair) -> None:
    model = SAM(vit_t_pair[1], backend="counting")
    r = model.predict(scene(), points=[[50, 40]], labels=[1], image_format="RGB", verbose=False)[0]
    assert len(r) == 1 and encoder_passes(counting) == 1 and counting["predict_torch"] == 1
    model.predict(scene(), bboxes=[30, 20, 90, 60], image_format="RGB", verbose=False)  # cached: no encoder pass
    assert encoder_passes(counting) == 1 and counting["set_features"] == 2 and counting["predict_torch"] == 2
    model.predict(scene(), points_per_side=4, image_format="RGB", verbose=False)  # segment everything, fast
    assert grid_decodes(counting) >= 1 and encoder_passes(counting) == 1  # the cached features again
    before = counting["predict_torch"]
    model.predict(scene(), mode="exact", points_per_side=4, image_format="RGB", verbose=False)
    assert counting["predict_torch"] > before


def test_generator_runs_through_the_backend(counting, vit_t_pair) -> None:
    from mobilesam.everything import SamAutomaticMaskGenerator

    gen = SamAutomaticMaskGenerator(vit_t_pair[1], points_per_side=4, mode="fast", backend="counting")
    gen.generate(scene())
    assert counting["created"] == 1 and counting["set_image"] == 1 and grid_decodes(counting) >= 1
    exact = SamAutomaticMaskGenerator(create_predictor(vit_t_pair[1], "counting"), points_per_side=4)
    exact.generate(scene())
    assert counting["created"] == 2 and counting["predict_torch"] >= 1
    with pytest.raises(ValueError, match="backend: 'torch-bf16' was asked for, but model is a 'counting' predictor"):
        SamAutomaticMaskGenerator(exact.predictor, backend="torch-bf16")


def test_auto_annotate_runs_through_the_backend(counting, vit_t_pair, tmp_path: Path) -> None:
    from mobilesam import auto_annotate

    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(scene()).save(data / "a.png")

    def detector(rgb):
        return np.array([[30.0, 20.0, 90.0, 60.0]]), np.array([0]), np.array([0.9])

    auto_annotate(data, det_model=detector, sam_model=vit_t_pair[1], device="cpu", output_dir=tmp_path / "out",
                  backend="counting", verbose=False)
    assert encoder_passes(counting) == 1 and counting["predict_torch"] >= 1
    assert (tmp_path / "out" / "a.txt").read_text().startswith("0 ")


def test_server_runs_through_the_backend(counting, vit_t_pair) -> None:
    import io

    from fastapi.testclient import TestClient

    from mobilesam.server import create_app

    buf = io.BytesIO()
    Image.fromarray(scene()).save(buf, format="PNG")
    with TestClient(create_app(vit_t_pair[1], backend="counting", decode="server")) as c:
        r = c.post("/api/images/upload", files={"file": ("s.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
        image_id = r.json()["id"]
        r = c.post(f"/api/images/{image_id}/predict", json={"points": [[50, 40]], "labels": [1]})
        assert r.status_code == 200, r.text
        assert counting["set_image"] == 1 and counting["set_features"] >= 1 and counting["predict"] == 1
    with pytest.raises(ValueError, match="backend: expected one of"):
        create_app(vit_t_pair[1], backend="tensorrt")


def test_feature_cache_is_a_bounded_lru() -> None:
    cache: FeatureCache[int] = FeatureCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.keys() == ["a", "c"] and cache.get("b") is None and len(cache) == 2
    empty: FeatureCache[int] = FeatureCache(0)
    empty.put("a", 1)
    assert len(empty) == 0
    with pytest.raises(ValueError, match="capacity: expected an int >= 0"):
        FeatureCache(-1)


@pytest.mark.slow
def test_cli_commands_run_on_onnxruntime(tiny_checkpoint: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """predict, everything, annotate and val with --backend onnxruntime, end to end (one export, cached)."""
    pytest.importorskip("onnxruntime")
    from mobilesam.cli import main

    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path / "cache"))
    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(scene()).save(data / "a.png")
    labels = tmp_path / "boxes"
    labels.mkdir()
    (labels / "a.txt").write_text("0 0.46875 0.416667 0.46875 0.416667\n")
    common = ["--model", str(tiny_checkpoint), "--backend", "onnxruntime"]
    assert main(["predict", str(data / "a.png"), "--points", "50,40", "--save-dir", str(tmp_path / "p"), *common]) == 0
    assert (tmp_path / "p" / "a.json").is_file()
    exports = list((tmp_path / "cache" / "onnx").iterdir())
    assert len(exports) == 1  # the model was exported once, into the cache
    assert main(["everything", str(data / "a.png"), "--points-per-side", "4", "--save-dir", str(tmp_path / "e"),
                 *common]) == 0
    assert (tmp_path / "e" / "a" / "metadata.csv").is_file()
    assert main(["annotate", str(data), "--boxes", str(labels), "--output-dir", str(tmp_path / "ann"),
                 "--device", "cpu", *common]) == 0
    assert (tmp_path / "ann" / "a.txt").read_text().startswith("0 ")
    assert main(["val", "--teacher", str(tiny_checkpoint), "--data", str(data), "--prompts", "1",
                 "--out", str(tmp_path / "val.json"), *common]) == 0
    result = json.loads((tmp_path / "val.json").read_text())
    assert result["settings"]["backend"] == "onnxruntime" and result["summary"]["miou"] > 0.9
    assert list((tmp_path / "cache" / "onnx").iterdir()) == exports  # and reused by every command
    capsys.readouterr()
    assert main(["predict", str(data / "a.png"), "--points", "50,40", "--model", str(tiny_checkpoint),
                 "--backend", "tensorrt"]) == 2
    assert "--backend: expected one of torch, torch-bf16, onnxruntime" in capsys.readouterr().err
