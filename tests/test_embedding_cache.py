"""The disk cache of embeddings, the read-ahead thread, and folder runs that reuse the cache.

The disk cache: features round-trip in float16, a file never answers for another key, a damaged file is a
miss, the least recently used files go first, and processes sharing the folder at once never see a wrong
or half-written entry. Reopening a labelled folder (``annotate`` again, then ``predict``, ``everything``
and ``serve`` on the same images) costs no encoder pass: encoder calls are counted. (Batched results equal
to one image at a time: ``tests/test_openvino.py``, on the backend whose encoder pass is cheapest, and
``tests/test_backends.py`` for torch.)
"""

from __future__ import annotations

import io
import multiprocessing
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam import SAM
from mobilesam.backends import ImageFeatures
from mobilesam.cache import DiskFeatureCache, FeatureCache, feature_key, image_digest
from mobilesam.pipeline import prefetch


def _features(value: float, size: tuple[int, int] = (30, 40)) -> ImageFeatures:
    g = torch.Generator().manual_seed(int(value))
    tensors = {"image_embeddings": torch.randn(1, 8, 4, 4, generator=g) + value,
               "high_res": torch.randn(1, 2, 8, 8, generator=g)}
    return ImageFeatures(tensors, size, (24, 32))


def test_disk_cache_round_trips_in_float16_and_never_answers_for_another_key(tmp_path, caplog) -> None:
    disk = DiskFeatureCache(tmp_path / "emb")
    stored = _features(3.0)
    disk.put("a", stored)
    got = disk.get("a")
    assert got is not None and got.original_size == (30, 40) and got.input_size == (24, 32)
    assert list(got.tensors) == ["image_embeddings", "high_res"]
    for name, t in stored.tensors.items():
        assert got.tensors[name].dtype == torch.float32
        assert torch.equal(got.tensors[name], t.half().float())  # float16 on disk, exactly that rounding
    assert disk.get("b") is None and (disk.hits, disk.misses) == (1, 1)
    # A file under another key's name (a hash collision, a copied file) is not that key's features.
    disk.path_for("b").parent.mkdir(parents=True, exist_ok=True)
    os.replace(disk.path_for("a"), disk.path_for("b"))
    assert disk.get("b") is None
    disk.path_for("c").parent.mkdir(parents=True, exist_ok=True)
    disk.path_for("c").write_bytes(b"PK\x03\x04 not a whole npz")
    assert disk.get("c") is None and not disk.path_for("c").exists()  # damaged: a miss, and removed
    assert "cannot be read" in caplog.text
    # Two tiers: a disk hit is kept in memory; a put goes to both.
    cache: FeatureCache[ImageFeatures] = FeatureCache(2, disk=disk)
    cache.put("d", _features(4.0))
    assert DiskFeatureCache(tmp_path / "emb").get("d") is not None  # another process would see it
    fresh: FeatureCache[ImageFeatures] = FeatureCache(2, disk=disk)
    assert fresh.get("d") is not None and "d" in fresh
    with pytest.raises(ValueError, match="embedding_cache: expected a folder, got .* \\(a file\\)"):
        DiskFeatureCache(disk.path_for("d"))
    with pytest.raises(ValueError, match="embedding_cache_bytes: expected an int >= 1"):
        DiskFeatureCache(tmp_path, max_bytes=0)
    assert image_digest(np.zeros((2, 3, 3), np.uint8)) != image_digest(np.zeros((3, 2, 3), np.uint8))


def test_disk_cache_evicts_the_least_recently_used(tmp_path) -> None:
    disk = DiskFeatureCache(tmp_path / "emb", max_bytes=10**9)
    for i in range(4):
        disk.put(f"k{i}", _features(float(i)))
        os.utime(disk.path_for(f"k{i}"), (1000 + i, 1000 + i))  # written in order, a second apart
    size = disk.size_bytes() // 4
    assert disk.get("k0") is not None  # used now: the most recent
    disk.max_bytes = int(3.2 * size)
    assert disk.evict() == 2  # down to 90% of the bound: the two least recently used (k1, k2)
    assert [disk.get(f"k{i}") is not None for i in range(4)] == [True, False, False, True]
    disk.put("k4", _features(4.0))  # a put over the bound evicts by itself
    assert disk.size_bytes() <= disk.max_bytes and disk.get("k4") is not None
    disk.clear()
    assert len(disk) == 0


def _hammer(root: str, worker: int, max_bytes: int, out: multiprocessing.Queue) -> None:
    """Puts and gets on shared keys; reports every wrong value seen (a key's features hold its number)."""
    disk = DiskFeatureCache(root, max_bytes=max_bytes)
    wrong = 0
    for step in range(40):
        k = (step * 7 + worker) % 10
        if step % 2:
            disk.put(f"key{k}", _features(float(k)))
        else:
            got = disk.get(f"key{k}")
            if got is not None and not torch.equal(got.embedding, _features(float(k)).embedding.half().float()):
                wrong += 1
    out.put(wrong)


def test_disk_cache_is_safe_for_processes_sharing_it(tmp_path) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    max_bytes = 4 * 2000  # about three entries: evictions race with reads and writes
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path / "emb"), w, max_bytes, out)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert [out.get(timeout=5) for _ in procs] == [0, 0, 0]
    leftovers = [p for p in (tmp_path / "emb").rglob("*") if p.name.endswith(".part")]
    assert leftovers == []  # every write finished or was cleaned up


def test_prefetch_keeps_order_and_raises_where_the_error_is() -> None:
    assert list(prefetch(range(7), lambda x: x * x, depth=2)) == [x * x for x in range(7)]

    def boom(x):
        if x == 3:
            raise ValueError("image 3: unreadable")
        return x

    got = []
    with pytest.raises(ValueError, match="image 3: unreadable"):
        for x in prefetch(range(10), boom):
            got.append(x)
    assert got == [0, 1, 2]
    stream = prefetch(iter(range(1000)), lambda x: x)
    assert next(stream) == 0
    stream.close()  # stops the thread early (it would block on a full queue otherwise)


def _scenes() -> list[np.ndarray]:
    out = []
    for i, (h, w) in enumerate(((96, 128), (120, 80))):
        rgb = np.full((h, w, 3), 40 + 30 * i, np.uint8)
        rgb[20:60, 30:70] = (220, 30, 30)
        rgb[70:90, 10:50] = (30, 200, 60)
        out.append(rgb)
    return out


@pytest.fixture
def encoder_calls(vit_t_pair):
    """Images per image-encoder call of the torch backend, as run."""
    calls: list[int] = []
    handle = vit_t_pair[1].image_encoder.register_forward_hook(lambda m, args, out: calls.append(len(out)))
    yield calls
    handle.remove()


@pytest.mark.slow
def test_reopening_a_labelled_folder_costs_no_encoder_pass(vit_t_pair, tiny_checkpoint, encoder_calls, tmp_path,
                                                          monkeypatch) -> None:
    """annotate fills the cache (one encoder call for both images); annotate again, predict, everything (in
    Python and on the command line) and serve on the same images, in new objects as new processes would
    be, run no encoder."""
    from mobilesam import auto_annotate

    data = tmp_path / "images"
    data.mkdir()
    for i, rgb in enumerate(_scenes()):
        Image.fromarray(rgb).save(data / f"{i}.png")
    cache = tmp_path / "embeddings"

    def detector(rgb):
        return np.array([[30.0, 20.0, 70.0, 60.0]]), np.array([0]), np.array([0.9])

    def annotate(**options):
        return auto_annotate(data, det_model=detector, sam_model=vit_t_pair[1], device="cpu", verbose=False,
                             output_dir=tmp_path / "labels", embedding_cache=cache, batch=2, **options)

    annotate()
    assert encoder_calls == [2] and len(DiskFeatureCache(cache)) == 2
    first = (tmp_path / "labels" / "0.txt").read_text()
    encoder_calls.clear()
    annotate(overwrite=True)
    assert encoder_calls == []
    again = (tmp_path / "labels" / "0.txt").read_text()
    assert again.split()[0] == first.split()[0] == "0" and abs(len(again.split()) - len(first.split())) <= 4

    model = SAM(vit_t_pair[1], device="cpu", embedding_cache=cache)
    r = model.predict(str(data / "1.png"), points=[40, 80], verbose=False)[0]
    model.predict(str(data / "0.png"), points_per_side=2, verbose=False)  # segment everything
    assert encoder_calls == [] and r.masks.data.shape == (1, 120, 80)
    # The cached (float16) features give the masks of the uncached path, up to that rounding.
    fresh = SAM(vit_t_pair[1], device="cpu").predict(str(data / "1.png"), points=[40, 80], verbose=False)[0]
    assert encoder_calls == [1]
    encoder_calls.clear()
    assert (r.low_res_logits - fresh.low_res_logits).abs().max() < 0.05 * fresh.low_res_logits.abs().max()
    assert int((r.masks.data != fresh.masks.data).sum()) <= 0.01 * r.masks.data.numel()

    from fastapi.testclient import TestClient

    from mobilesam.server import create_app

    app = create_app(vit_t_pair[1], embedding_cache=cache)
    buf = io.BytesIO()
    Image.fromarray(_scenes()[0]).save(buf, format="PNG")
    with TestClient(app) as client:
        image_id = client.post("/api/images/upload", files={"file": ("s.png", buf.getvalue(), "image/png")}).json()["id"]
        r = client.post(f"/api/images/{image_id}/predict", json={"points": [[50, 40]], "labels": [1]})
        assert r.status_code == 200, r.text
    assert encoder_calls == [] and app.state.engine.encoder_passes == 0

    from mobilesam.backends.torch_predictor import SamPredictor
    from mobilesam.cli import main

    passes: list[int] = []  # the command builds its own model from the checkpoint (the same weights)
    encode = SamPredictor._encode_batch
    monkeypatch.setattr(SamPredictor, "_encode_batch", lambda self, images: passes.append(len(images))
                        or encode(self, images))
    assert main(["everything", str(data), "--model", str(tiny_checkpoint), "--device", "cpu", "--points-per-side",
                 "2", "--embedding-cache", str(cache), "--batch", "2", "--save-dir", str(tmp_path / "ev")]) == 0
    assert passes == [] and sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["0", "0.png", "1", "1.png"]


def test_embedding_cache_refuses_a_backend_that_cannot_name_its_features(vit_t_pair, tmp_path) -> None:
    from mobilesam.backends import register_backend, unregister_backend
    from mobilesam.backends.torch_predictor import SamPredictor

    class Anonymous(SamPredictor):
        def feature_identity(self):
            return None

    register_backend("anonymous-test", lambda model, **o: Anonymous(model, **o))
    try:
        with pytest.raises(ValueError, match="embedding_cache: the 'torch' backend does not name its features"):
            SAM(vit_t_pair[1], device="cpu", backend="anonymous-test", embedding_cache=tmp_path)
    finally:
        unregister_backend("anonymous-test")
    with pytest.raises(ValueError, match="embedding_cache_bytes: given without embedding_cache"):
        SAM(vit_t_pair[1], device="cpu", embedding_cache_bytes=10)
    key = feature_key("d" * 40, SAM(vit_t_pair[1], device="cpu").predictor.feature_identity())
    assert key.startswith("d" * 40 + "|sam/vit_t/") and key.endswith("/torch/cpu")
