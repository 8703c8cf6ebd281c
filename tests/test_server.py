"""API tests of ``mobilesam serve`` (FastAPI test client): every endpoint, good and bad input."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import threading
import time
import types
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from mobilesam.backends import ImageFeatures
from mobilesam.masks import decode_rle, polygons_to_mask
from mobilesam.predictor import SamPredictor
from mobilesam.server import create_app
from mobilesam.server.engine import default_generator_factory
from mobilesam.masks import rle_counts_total

# -- a stand-in predictor with exact, known masks ------------------------------------------------------------

BACKGROUND = (120, 120, 120)
RED = (220, 40, 40)
BLUE = (40, 60, 220)


def scene(h: int = 120, w: int = 160, shift: int = 0) -> np.ndarray:
    """Grey background, a red rectangle (the object) and a blue disc; ``shift`` moves the rectangle."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:] = BACKGROUND
    rgb[30 + shift : 80 + shift, 40:100] = RED
    cv2.circle(rgb, (130, 95), 15, BLUE, -1)
    return rgb


def red_mask(h: int = 120, w: int = 160, shift: int = 0) -> np.ndarray:
    return np.all(scene(h, w, shift) == RED, axis=-1)


class ColourRegionPredictor:
    """Test stand-in for ``SamPredictor``: the mask of a point is the connected region of its colour.

    The 'embedding' is the image itself, so a mask computed on the wrong embedding is caught. ``gate``
    holds ``set_image`` (an encoder pass) until it is set; ``delay`` widens race windows in ``predict``.
    """

    def __init__(self, gate: threading.Event | None = None, delay: float = 0.0) -> None:
        self.gate, self.delay = gate, delay
        self.reset_image()

    def reset_image(self) -> None:
        self.features = None
        self.original_size = self.input_size = None

    def set_image(self, image: np.ndarray) -> None:
        if self.gate is not None:
            assert self.gate.wait(60), "gate never opened"
        rgb = np.ascontiguousarray(image)
        self.set_embedding(torch.from_numpy(rgb.copy()), rgb.shape[:2], rgb.shape[:2])

    def get_image_embedding(self) -> torch.Tensor:
        return self.features

    def set_embedding(self, features, original_size, input_size=None) -> None:
        self.features = features
        self.original_size = tuple(original_size)
        self.input_size = tuple(input_size or original_size)

    # The backend interface the server uses: features are opaque to it.
    def get_features(self) -> ImageFeatures:
        return ImageFeatures({"image": self.features}, self.original_size, self.input_size)

    def set_features(self, features: ImageFeatures) -> None:
        self.set_embedding(features.tensors["image"], features.original_size, features.input_size)

    @staticmethod
    def region(rgb: np.ndarray, x: float, y: float) -> np.ndarray:
        h, w = rgb.shape[:2]
        fill = np.zeros((h + 2, w + 2), np.uint8)
        seed = (min(int(x), w - 1), min(int(y), h - 1))
        flags = 4 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (1 << 8)
        cv2.floodFill(rgb.copy(), fill, seed, 0, (10, 10, 10), (10, 10, 10), flags)
        return fill[1:-1, 1:-1].astype(bool)

    def predict(
        self,
        point_coords=None,
        point_labels=None,
        box=None,
        mask_input=None,
        multimask_output=True,
        return_logits=False,
    ):
        features = self.features
        time.sleep(self.delay)
        assert self.features is features, "the predictor was changed by another request during predict"
        rgb = features.numpy()
        mask = np.zeros(rgb.shape[:2], bool)
        points = [] if point_coords is None else list(zip(point_coords.tolist(), point_labels.tolist()))
        if box is not None:
            x1, y1, x2, y2 = np.asarray(box).reshape(4)
            if not any(lab for _, lab in points):
                mask |= self.region(rgb, (x1 + x2) / 2, (y1 + y2) / 2)
            inside = np.zeros_like(mask)
            inside[int(y1) : int(np.ceil(y2)) + 1, int(x1) : int(np.ceil(x2)) + 1] = True
        for (x, y), lab in points:
            if lab == 1:
                mask |= self.region(rgb, x, y)
        for (x, y), lab in points:
            if lab == 0:
                mask &= ~self.region(rgb, x, y)
        if box is not None:
            mask &= inside
        n = 3 if multimask_output else 1
        scores = np.array([0.9, 0.95, 0.8][:n], np.float32)
        return np.repeat(mask[None], n, 0), scores, np.zeros((n, 256, 256), np.float32)


class StubGenerator:
    def __init__(self, model) -> None:
        self.model = model

    def generate(self, rgb: np.ndarray) -> list[dict]:
        return [
            {"segmentation": np.all(rgb == RED, axis=-1), "predicted_iou": 0.97},
            {"segmentation": np.all(rgb == BLUE, axis=-1), "predicted_iou": 0.91},
        ]


def png_bytes(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def stub_app(**kw) -> TestClient:
    kw.setdefault("predictor_factory", ColourRegionPredictor)
    kw.setdefault("generator_factory", StubGenerator)
    return TestClient(create_app(**kw))


def upload(client: TestClient, rgb: np.ndarray, name: str = "scene.png") -> dict:
    r = client.post("/api/images/upload", files={"file": (name, png_bytes(rgb), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def mask_of(payload: dict) -> np.ndarray:
    return decode_rle(payload["rle"])


# -- page --------------------------------------------------------------------------------------------------


def test_page_static_files_and_security_headers():
    with stub_app() as c:
        page = c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<script type="module" src="static/app.js"' in page.text and 'href="static/style.css"' in page.text
        for path in ("app.js", "decoder.js", "masks.js", "labels.js", "style.css", "ort/ort.wasm.bundle.min.mjs"):
            r = c.get(f"/static/{path}")
            assert r.status_code == 200 and len(r.text) > 500
            # No CDN: everything the page needs is served by the app itself (onnxruntime-web's one URL is
            # in an error message).
            assert "http://" not in r.text and r.text.count("https://") <= path.startswith("ort/")
        assert "http" not in page.text.replace("http-equiv", "")
        assert "script-src 'self' 'wasm-unsafe-eval'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert c.get("/static/../app.py").status_code == 404
        info = c.get("/api/info").json()
        assert info["folder"] is False and info["everything"] is True and info["cache_size"] == 16


# -- the real model: embed once, decode per click ----------------------------------------------------------


@pytest.fixture(scope="module")
def real_client(tiny_checkpoint: Path):
    with TestClient(create_app(str(tiny_checkpoint), cache_size=4, decode="server")) as c:
        yield c


def test_click_uses_cached_embedding_and_matches_sam_predictor(real_client):
    rgb = scene()
    a = upload(real_client, rgb)
    b = upload(real_client, rgb)
    assert a["id"] != b["id"] and len(a["id"]) >= 32  # random, unguessable ids
    assert (a["width"], a["height"]) == (160, 120)
    engine = real_client.app.state.engine
    first = real_client.post(f"/api/images/{a['id']}/embed").json()
    again = real_client.post(f"/api/images/{b['id']}/embed").json()
    assert first["encoder_ms"] > 0 and again["cached"] is True  # same content: one embedding
    passes = engine.encoder_passes
    prompts = [
        {"points": [[60, 50]], "labels": [1]},
        {"points": [[60, 50], [130, 95]], "labels": [1, 0]},
        {"box": [30, 20, 110, 90]},
        {"points": [[60, 50]], "labels": [1], "box": [30, 20, 110, 90], "multimask": True},
    ]
    results = []
    for body in prompts:
        r = real_client.post(f"/api/images/{a['id']}/predict", json=body)
        assert r.status_code == 200, r.text
        results.append(r.json())
    assert engine.encoder_passes == passes, "a click must not run the image encoder"
    assert all(r["embedding_cached"] for r in results)

    # The reference: the official-API predictor on the same weights, embedding computed from scratch.
    ref = SamPredictor(engine.model)  # the same weights, loaded from the checkpoint by create_app
    ref.set_image(rgb)
    for body, got in zip(prompts, results):
        pts = np.array(body["points"], float) if "points" in body else None
        labs = np.array(body["labels"]) if "labels" in body else None
        box = np.array(body["box"], float) if "box" in body else None
        multi = body.get("multimask", box is None and pts is not None and len(pts) == 1)
        masks, scores, _ = ref.predict(pts, labs, box, multimask_output=multi)
        best = int(np.argmax(scores))
        mask = mask_of(got)
        assert mask.shape == (120, 160)
        assert (mask != masks[best]).mean() < 1e-3, body
        assert got["score"] == pytest.approx(float(scores[best]), abs=1e-3)
        assert got["area"] == int(mask.sum())
        png = Image.open(io.BytesIO(base64.b64decode(got["png"].split(",", 1)[1]))).convert("RGBA")
        assert png.size == (160, 120) and np.array_equal(np.array(png)[..., 3] > 127, mask)  # alpha = mask


@pytest.mark.parametrize("shape", [(1, 3000), pytest.param((3000, 1), marks=pytest.mark.slow)])
def test_one_pixel_thin_upload_clicks_end_to_end(real_client, shape):
    """Issue 13 item 9: a 1 x 3000 upload (its short side rounds to 0 in the model's frame) is embedded
    and answers clicks and boxes with full-size masks, where it used to give HTTP 500."""
    h, w = shape
    rgb = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = upload(real_client, rgb, "thin.png")
    assert (image["height"], image["width"]) == (h, w)
    for body in ({"points": [[w / 2, h / 2]], "labels": [1]}, {"box": [0, 0, w, h]}):
        r = real_client.post(f"/api/images/{image['id']}/predict", json=body)
        assert r.status_code == 200, r.text
        assert mask_of(r.json()).shape == (h, w)
    shown = real_client.get(f"/api/images/{image['id']}/image")
    assert shown.status_code == 200 and Image.open(io.BytesIO(shown.content)).size == (w, h)


BAD_PROMPTS = [
    ({"points": [[200, 10]], "labels": [1]}, "points[0]"),
    ({"points": [[-1, 10]], "labels": [1]}, "points[0]"),
    ({"points": [[10, 10]], "labels": [1, 0]}, "labels"),
    ({"points": [[10, 10]], "labels": [2]}, "labels[0]"),
    ({"points": [[10, 10]]}, "labels"),
    ({"points": [[10, 10, 3]], "labels": [1]}, "points[0]"),
    ({"points": "10,10", "labels": [1]}, "points"),
    ({"points": [["a", 10]], "labels": [1]}, "points[0][0]"),
    ({"box": [50, 10, 20, 40]}, "box"),
    ({"box": [0, 0, 500, 40]}, "box"),
    ({"box": [0, 0, 10]}, "box"),
    ({}, "points, box"),
    ({"points": [], "labels": []}, "points, box"),
    ({"points": [[1, 1]] * 65, "labels": [1] * 65}, "points"),
    ({"points": [[1, 1]], "labels": [1], "colour": "red"}, "colour"),
    ({"points": [[1, 1]], "labels": [1], "multimask": "maybe"}, "multimask"),
]


@pytest.mark.parametrize("body,argument", BAD_PROMPTS, ids=[str(i) for i in range(len(BAD_PROMPTS))])
def test_bad_prompts_get_422_naming_the_argument(body, argument):
    with stub_app() as c:
        image = upload(c, scene())
        r = c.post(f"/api/images/{image['id']}/predict", json=body)
        assert r.status_code == 422, r.text
        assert argument in r.json()["detail"], r.json()


def test_bad_json_nan_and_unknown_ids():
    with stub_app() as c:
        image = upload(c, scene())
        url = f"/api/images/{image['id']}/predict"
        r = c.post(url, content=b'{"points": [[10, 10]], "labels": [1', headers={"content-type": "application/json"})
        assert r.status_code == 422 and "invalid JSON" in r.json()["detail"]
        r = c.post(url, content=b'{"points": [[NaN, 10]], "labels": [1]}', headers={"content-type": "application/json"})
        assert r.status_code == 422 and "points[0][0]" in r.json()["detail"] and "finite" in r.json()["detail"]
        r = c.post(url, content=b'{"points": [[10, 10]], "labels": [1]}', headers={"content-type": "text/plain"})
        assert r.status_code == 422
        for bad in ("nope", "A" * 32, "..%2F..%2Fetc", image["id"][:-1] + ("x" if image["id"][-1] != "x" else "y")):
            for method, path in (("post", "predict"), ("post", "embed"), ("get", "image"), ("post", "everything")):
                body = {"points": [[1, 1]], "labels": [1]} if method == "post" else None
                r = c.request(method.upper(), f"/api/images/{bad}/{path}", json=body)
                assert r.status_code == 404, (bad, path, r.text)
        assert "open the image again" in r.json()["detail"]


# -- uploads -----------------------------------------------------------------------------------------------


def test_upload_rejects_non_images_and_oversized_files():
    with stub_app(max_upload_bytes=200_000, max_pixels=100_000) as c:

        def post(data: bytes, name: str = "x.png"):
            return c.post("/api/images/upload", files={"file": (name, data, "image/png")})

        r = post(b"this is not an image")
        assert r.status_code == 415 and "not a readable image" in r.json()["detail"]
        r = post(b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "x.svg")
        assert r.status_code == 415
        r = post(png_bytes(scene())[:200])  # truncated
        assert r.status_code == 415
        pdf = io.BytesIO()
        Image.fromarray(scene()).save(pdf, format="PDF")
        assert post(pdf.getvalue(), "x.pdf").status_code == 415
        assert post(b"").status_code == 422
        big = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)  # ~270 kB as PNG
        r = post(png_bytes(big))
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        # Over the pixel limit: refused from the header, before decoding.
        r = post(png_bytes(np.zeros((400, 400, 3), np.uint8)))
        assert r.status_code == 413 and "160,000 pixels" in r.json()["detail"]
        assert c.post("/api/images/upload").status_code == 422  # no file field
        r = c.post(
            "/api/images/upload",
            content=b"x" * 10,
            headers={"content-length": str(5_000_000), "content-type": "multipart/form-data; boundary=x"},
        )
        assert r.status_code == 413
        assert len(c.app.state.registry) == 0


def multipart(name: str, data: bytes, boundary: str = "mobilesam-test") -> tuple[bytes, bytes, str]:
    """The head and tail of a one-file multipart/form-data body, and its content type."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_chunked_upload_is_held_to_the_size_limit_while_streaming():
    """Issue 13 item 10: a body sent without a Content-Length (chunked) and over the limit gets 413, as one
    with a Content-Length does, not 400 'error parsing the body'; a small chunked upload still works."""
    limit = 1024  # the body limit is this plus 1 MiB of form overhead
    with stub_app(max_upload_bytes=limit) as c:
        head, tail, ctype = multipart("big.png", b"")

        def body():
            yield head
            for _ in range(3 * 1024):  # 3 MiB in 1 KiB chunks
                yield b"\0" * 1024
            yield tail

        r = c.post("/api/images/upload", content=body(), headers={"content-type": ctype})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert r.status_code == 413, r.text
        assert "limit" in r.json()["detail"] and r.headers["x-content-type-options"] == "nosniff"
        assert len(c.app.state.registry) == 0

        start, end, _ = multipart("small.png", png_bytes(scene()))
        r = c.post("/api/images/upload", content=iter([start[:100], start[100:], end]), headers={"content-type": ctype})
        assert r.status_code == 200, r.text
        assert (r.json()["width"], r.json()["height"]) == (160, 120)


def png_bomb(w: int, h: int) -> bytes:
    """A valid 1-bit black PNG of w x h pixels: a few hundred kB that decode to w*h*3 bytes of RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = bytes(1 + (w + 7) // 8)
    idat = b"".join(comp.compress(row * 1000) for _ in range(h // 1000)) + comp.compress(row * (h % 1000))
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 30_000])
def test_decompression_bombs_are_refused_without_decoding(side):
    # 10000^2 passes PIL's own bomb check but not our 40 Mpx default; 30000^2 trips both.
    bomb = png_bomb(side, side)
    assert len(bomb) < 300_000
    with stub_app() as c:
        t0 = time.perf_counter()
        r = c.post("/api/images/upload", files={"file": ("bomb.png", bomb, "image/png")})
        assert r.status_code == 413, r.text
        assert f"{side * side:,} pixels" in r.json()["detail"] or f"{side * side} pixels" in r.json()["detail"]
        assert time.perf_counter() - t0 < 5


def test_upload_exif_orientation_and_greyscale():
    rgb = scene()
    grey = io.BytesIO()
    Image.fromarray(rgb).convert("L").save(grey, format="JPEG")
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(rgb).save(rotated, format="JPEG", exif=exif)
    with stub_app() as c:
        g = c.post("/api/images/upload", files={"file": ("g.jpg", grey.getvalue(), "image/jpeg")}).json()
        assert (g["width"], g["height"]) == (160, 120)
        r = c.post("/api/images/upload", files={"file": ("r.jpg", rotated.getvalue(), "image/jpeg")}).json()
        assert (r["width"], r["height"]) == (120, 160)  # as a viewer shows it
        img = c.get(f"/api/images/{r['id']}/image")
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(img.content)).size == (120, 160)


# -- concurrency and caches ---------------------------------------------------------------------------------


def test_encoder_pass_never_blocks_other_clicks():
    gate = threading.Event()
    with stub_app(predictor_factory=lambda: ColourRegionPredictor(gate=gate)) as c:
        gate.set()
        a = upload(c, scene())
        assert c.post(f"/api/images/{a['id']}/embed").status_code == 200
        gate.clear()  # the next encoder pass hangs until the gate opens
        b = upload(c, scene(shift=10), "b.png")
        embed_b: dict = {}
        t = threading.Thread(target=lambda: embed_b.update(r=c.post(f"/api/images/{b['id']}/embed")))
        t.start()
        try:
            for _ in range(5):
                t0 = time.perf_counter()
                r = c.post(f"/api/images/{a['id']}/predict", json={"points": [[60, 50]], "labels": [1]})
                assert r.status_code == 200 and time.perf_counter() - t0 < 5
                assert np.array_equal(mask_of(r.json()), red_mask())
            assert t.is_alive() and "r" not in embed_b  # B's encoder pass is still running
        finally:
            gate.set()
        t.join(30)
        assert embed_b["r"].status_code == 200
        r = c.post(f"/api/images/{b['id']}/predict", json={"points": [[60, 50]], "labels": [1]})
        assert np.array_equal(mask_of(r.json()), red_mask(shift=10))


def test_concurrent_clicks_on_different_images_get_their_own_masks():
    with stub_app(predictor_factory=lambda: ColourRegionPredictor(delay=0.003)) as c:
        ids = [upload(c, scene(shift=s), f"{s}.png")["id"] for s in (0, 10, 20)]
        for i in ids:
            c.post(f"/api/images/{i}/embed")
        results: list[tuple[int, np.ndarray]] = []
        errors: list[BaseException] = []

        def click(k: int) -> None:
            try:
                r = c.post(f"/api/images/{ids[k % 3]}/predict", json={"points": [[60, 55]], "labels": [1]})
                assert r.status_code == 200, r.text
                results.append((k % 3, mask_of(r.json())))
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=click, args=(k,)) for k in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[0]
        assert len(results) == 24
        for k, mask in results:
            assert np.array_equal(mask, red_mask(shift=(0, 10, 20)[k])), k


def flat_png(h: int, w: int, value: int = 90) -> bytes:
    """A one-colour PNG: a few kB on the wire, h * w * 3 bytes once decoded."""
    return png_bytes(np.full((h, w, 3), value, np.uint8))


def test_full_encoder_queue_answers_503_with_retry_after():
    """Issue 13 item 15: uploads waiting for the encoder are bounded (max_queue); one more gets 503 with
    Retry-After and is not kept; failed uploads give their place back; the queue drains."""
    gate = threading.Event()
    with stub_app(predictor_factory=lambda: ColourRegionPredictor(gate=gate), max_queue=2) as c:
        try:
            for _ in range(3):  # refused before a place is used up for good
                r = c.post("/api/images/upload", files={"file": ("x.png", b"not an image", "image/png")})
                assert r.status_code == 415
            a = upload(c, scene(), "a.png")  # in the encoder, held at the gate
            b = upload(c, scene(shift=5), "b.png")  # waiting behind it
            r = c.post("/api/images/upload", files={"file": ("c.png", png_bytes(scene(shift=10)), "image/png")})
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert "max-queue" in r.json()["detail"] and "retry" in r.json()["detail"]
            assert len(c.app.state.registry) == 2
            # Joining a pass already queued needs no new place: the page's embed call after an upload.
            joined: dict = {}
            t = threading.Thread(target=lambda: joined.update(r=c.post(f"/api/images/{b['id']}/embed")))
            t.start()
        finally:
            gate.set()
        t.join(30)
        assert joined["r"].status_code == 200, joined["r"].text
        assert c.post(f"/api/images/{a['id']}/embed").json()["cached"] is True
        upload(c, scene(shift=10), "c.png")
        upload(c, scene(shift=15), "d.png")


def test_queued_uploads_hold_their_bytes_not_their_pixels():
    """Issue 13 item 15: an upload waiting for the encoder keeps its compressed bytes; the pixels are
    decoded when its encoder pass starts (12 flat 6000 x 6000 PNGs used to hold 108 MB each)."""
    import gc
    import tracemalloc

    h, w = 1000, 1500
    decoded = h * w * 3
    gate = threading.Event()
    with stub_app(predictor_factory=lambda: ColourRegionPredictor(gate=gate), max_queue=4) as c:
        try:
            upload(c, scene())  # the encoder thread waits at the gate with this one
            gc.collect()
            tracemalloc.start()
            try:
                ids = []
                for k in range(3):
                    data = flat_png(h, w, 60 + k)
                    assert len(data) < decoded / 100
                    r = c.post("/api/images/upload", files={"file": (f"flat{k}.png", data, "image/png")})
                    assert r.status_code == 200, r.text
                    ids.append(r.json()["id"])
                del data, r
                gc.collect()
                held, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert held < decoded / 4, (held, decoded)  # three queued images, not even a quarter of one
            assert peak < 2.5 * decoded, (peak, decoded)  # one upload decoded at a time, then let go
        finally:
            gate.set()
        for k, image_id in enumerate(ids):  # the queued passes decode the right pixels
            r = c.post(f"/api/images/{image_id}/predict", json={"points": [[5, 5]], "labels": [1]})
            assert r.status_code == 200 and mask_of(r.json()).all(), k


def test_embedding_cache_and_open_images_are_bounded():
    with stub_app(cache_size=2, max_images=3) as c:
        ids = [upload(c, scene(shift=s), f"{s}.png")["id"] for s in (0, 5, 10, 15)]
        for i in ids[1:]:
            c.post(f"/api/images/{i}/embed")
        engine = c.app.state.engine
        assert len(engine.cached_keys()) == 2
        assert c.post(f"/api/images/{ids[0]}/embed").status_code == 404  # the oldest image was dropped
        passes = engine.encoder_passes
        r = c.post(f"/api/images/{ids[1]}/predict", json={"points": [[60, 50]], "labels": [1]})
        assert r.status_code == 200 and np.array_equal(mask_of(r.json()), red_mask(shift=5))
        assert engine.encoder_passes == passes + 1  # evicted: embedded again from the kept upload
        assert len(engine.cached_keys()) == 2


# -- segment everything ------------------------------------------------------------------------------------


def test_everything_with_a_generator_and_without_the_module(monkeypatch):
    with stub_app() as c:
        image = upload(c, scene())
        r = c.post(f"/api/images/{image['id']}/everything")
        assert r.status_code == 200, r.text
        masks = r.json()["masks"]
        assert [m["score"] for m in masks] == [0.97, 0.91]  # largest first
        assert np.array_equal(mask_of(masks[0]), red_mask())
    monkeypatch.setitem(sys.modules, "mobilesam.everything", None)  # as if the module were not installed
    fake_model = types.SimpleNamespace(image_encoder=None)  # only the generator would use it
    with stub_app(model=fake_model, generator_factory=None) as c:
        image = upload(c, scene())
        r = c.post(f"/api/images/{image['id']}/everything")
        assert r.status_code == 501 and "mobilesam.everything" in r.json()["detail"]
        # Clicks keep working.
        assert c.post(f"/api/images/{image['id']}/predict", json={"box": [30, 20, 110, 90]}).status_code == 200


def test_default_generator_factory_builds_the_fast_generator():
    pytest.importorskip("mobilesam.everything", reason="segment-everything lands in another change")
    from mobilesam.modeling import build_model

    gen = default_generator_factory(build_model("vit_t"))
    assert gen.mode == "fast" and callable(gen.generate)


# -- export ------------------------------------------------------------------------------------------------


def objects_from_clicks(c: TestClient, image_id: str) -> list[dict]:
    red = c.post(f"/api/images/{image_id}/predict", json={"points": [[60, 50]], "labels": [1]}).json()
    blue = c.post(f"/api/images/{image_id}/predict", json={"box": [110, 75, 150, 115]}).json()
    return [
        {"class_name": "brick", "rle": red["rle"], "score": red["score"], "points": [[60, 50]], "labels": [1]},
        {"class_name": "ball", "rle": blue["rle"], "score": blue["score"], "box": [110, 75, 150, 115]},
    ]


def blue_mask() -> np.ndarray:
    return np.all(scene() == BLUE, axis=-1)


def test_export_coco_yolo_png():
    with stub_app() as c:
        image = upload(c, scene(), "my scene.png")
        objs = objects_from_clicks(c, image["id"])
        body = {"objects": objs, "classes": ["ball", "brick"]}
        url = f"/api/images/{image['id']}/export"

        r = c.post(url + "?format=coco", json=body)
        assert r.status_code == 200 and 'filename="my_scene.json"' in r.headers["content-disposition"]
        doc = r.json()
        assert doc["images"] == [{"id": 1, "file_name": "my scene.png", "width": 160, "height": 120}]
        assert [cat["name"] for cat in doc["categories"]] == ["ball", "brick"]
        red, blue = doc["annotations"]
        assert red["category_id"] == 2 and blue["category_id"] == 1
        assert np.array_equal(decode_rle(red["segmentation"]), red_mask())
        assert red["bbox"] == [40, 30, 60, 50] and red["area"] == 3000

        r = c.post(url + "?format=yolo", json=body)
        assert r.status_code == 200 and json.loads(r.headers["x-classes"]) == ["ball", "brick"]
        lines = [line.split() for line in r.text.splitlines()]
        assert [line[0] for line in lines] == ["1", "0"]
        for line, truth in zip(lines, (red_mask(), blue_mask())):
            xy = np.array(line[1:], float).reshape(-1, 2) * [160, 120]
            poly = polygons_to_mask([xy], (120, 160))
            iou = (poly & truth).sum() / (poly | truth).sum()
            assert iou > 0.85, iou

        r = c.post(url + "?format=png", json=body)
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            names = zf.namelist()
            assert names == ["my_scene_001_brick.png", "my_scene_002_ball.png"]
            png = np.array(Image.open(io.BytesIO(zf.read(names[0]))))
            assert np.array_equal(png > 127, red_mask())

        assert c.post(url + "?format=voc", json=body).status_code == 422


def test_export_and_save_reject_bad_objects():
    with stub_app() as c:
        image = upload(c, scene())
        good = objects_from_clicks(c, image["id"])[0]
        url = f"/api/images/{image['id']}/export"
        other_size = {"size": [10, 10], "counts": good["rle"]["counts"]}
        bad_objects = [
            ({**good, "rle": other_size}, "does not match the image size"),
            ({**good, "rle": {"size": [120, 160], "counts": "0"}}, "runs cover"),  # too few pixels
            ({**good, "rle": {"size": [120, 160], "counts": "\x7f\x7f"}}, "invalid RLE"),
            ({**good, "rle": {"size": [120, 160], "counts": good["rle"]["counts"] + "1"}}, "runs cover"),
            ({**good, "rle": {"size": [120, 160], "counts": "P"}}, "truncated run"),
            ({**good, "rle": "abc"}, "rle"),
            ({**good, "class_name": ""}, "class_name"),
            ({**good, "class_name": "a\nb"}, "class_name"),
            ({**good, "class_name": "x" * 65}, "class_name"),
            ({**good, "points": [[999, 1]]}, "points[0]"),
            ({**good, "score": float("nan")}, "score"),
        ]
        for obj, message in bad_objects:
            r = c.post(
                url, content=json.dumps({"objects": [obj]}).encode(), headers={"content-type": "application/json"}
            )
            assert r.status_code == 422, (message, r.text)
            assert message in r.json()["detail"], (message, r.json())
        assert c.post(url, json={"objects": [good], "classes": ["ok", ""]}).status_code == 422
        assert c.post(url, json={"objects": "all"}).status_code == 422
        # Save needs a folder image.
        r = c.post(f"/api/images/{image['id']}/save", json={"objects": [good]})
        assert r.status_code == 400 and "export" in r.json()["detail"]


def test_rle_check_agrees_with_pycocotools():
    from mobilesam.masks import encode_rle

    rng = np.random.default_rng(1)
    for shape in ((1, 1), (7, 3), (120, 160)):
        m = rng.random(shape) > 0.6
        assert rle_counts_total(encode_rle(m)["counts"]) == m.size
    assert rle_counts_total(encode_rle(np.ones((50, 70), bool))["counts"]) == 3500


# -- the images folder -------------------------------------------------------------------------------------


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    Image.fromarray(scene()).save(root / "a.png")
    Image.fromarray(scene(shift=10)).save(root / "sub" / "b.png")
    Image.fromarray(scene()).save(root / ".hidden" / "c.png")
    (root / "notes.txt").write_text("not an image")
    (root / "fake.png").write_bytes(b"not a png")
    outside = tmp_path / "secret"
    outside.mkdir()
    Image.fromarray(scene()).save(outside / "secret.png")
    (outside / "secret.json").write_text("{}")
    os.symlink(outside / "secret.png", root / "link_out.png")
    os.symlink(outside, root / "dir_out")
    os.symlink(root / "a.png", root / "link_in.png")
    return root


def test_folder_listing_and_path_confinement(folder: Path):
    with stub_app(images_dir=folder) as c:
        assert c.get("/api/info").json()["folder"] is True
        names = c.get("/api/images").json()["images"]
        assert names == ["a.png", "fake.png", "link_in.png", "sub/b.png"]
        r = c.post("/api/images/open", json={"name": "sub/b.png"})
        assert r.status_code == 200 and r.json()["objects"] == [] and r.json()["name"] == "sub/b.png"
        assert c.post("/api/images/open", json={"name": "link_in.png"}).status_code == 200
        refused = {
            "../secret/secret.png": 400,
            "sub/../../secret/secret.png": 400,
            str(folder.parent / "secret" / "secret.png"): 400,  # absolute
            "/etc/passwd": 400,
            "~/x.png": 400,
            "sub\\..\\a.png": 400,
            "./a.png": 400,
            "": 400,
            "link_out.png": 403,  # a symlink to a file outside
            "dir_out/secret.png": 403,  # through a symlinked folder
            "notes.txt": 415,
            "fake.png": 415,
            "missing.png": 404,
            "sub": 415,
        }
        for name, code in refused.items():
            r = c.post("/api/images/open", json={"name": name})
            assert r.status_code == code, (name, r.text)
            assert "name" in r.json()["detail"] or "image" in r.json()["detail"]
        assert c.post("/api/images/open", json={"path": "a.png"}).status_code == 422
        assert c.post("/api/images/open", json={"name": 3}).status_code == 422
    with stub_app() as c:
        assert c.get("/api/images").status_code == 404
        assert c.post("/api/images/open", json={"name": "a.png"}).status_code == 404


def test_save_writes_labels_atomically_and_reopen_loads_them(folder: Path):
    with stub_app(images_dir=folder) as c:
        image = c.post("/api/images/open", json={"name": "a.png"}).json()
        objs = objects_from_clicks(c, image["id"])
        r = c.post(f"/api/images/{image['id']}/save", json={"objects": objs})
        assert r.status_code == 200, r.text
        assert r.json() == {"saved": ["classes.txt", "a.json", "a.txt"], "classes": ["brick", "ball"]}
        assert (folder / "classes.txt").read_text() == "brick\nball\n"
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
        doc = json.loads((folder / "a.json").read_text())
        assert np.array_equal(decode_rle(doc["annotations"][0]["segmentation"]), red_mask())
        yolo = (folder / "a.txt").read_text().splitlines()
        assert [line.split()[0] for line in yolo] == ["0", "1"]

        # A second image: known classes keep their ids, new ones are appended.
        b = c.post("/api/images/open", json={"name": "sub/b.png"}).json()
        red_b = c.post(f"/api/images/{b['id']}/predict", json={"points": [[60, 60]], "labels": [1]}).json()
        r = c.post(
            f"/api/images/{b['id']}/save",
            json={
                "objects": [{"class_name": "ball", "rle": red_b["rle"]}, {"class_name": "cube", "rle": red_b["rle"]}]
            },
        )
        assert r.json()["saved"] == ["classes.txt", "sub/b.json", "sub/b.txt"]
        assert [line.split()[0] for line in (folder / "sub" / "b.txt").read_text().splitlines()] == ["1", "2"]
        assert c.get("/api/info").json()["classes"] == ["brick", "ball", "cube"]

        reopened = c.post("/api/images/open", json={"name": "a.png"}).json()
        assert reopened["labels_error"] is None
        got = reopened["objects"]
        assert [o["class_name"] for o in got] == ["brick", "ball"]
        assert got[0]["points"] == [[60.0, 50.0]] and got[0]["labels"] == [1] and got[1]["box"] == [110, 75, 150, 115]
        assert np.array_equal(mask_of(got[0]), red_mask()) and np.array_equal(mask_of(got[1]), blue_mask())
        # Saving nothing clears the labels (and is allowed: the files are ours).
        assert c.post(f"/api/images/{reopened['id']}/save", json={"objects": []}).status_code == 200
        assert (folder / "a.txt").read_text() == ""


def test_folder_image_deleted_or_changed_after_opening_gets_a_clear_4xx(folder: Path):
    """Issue 13 item 10: an opened image whose file is then deleted gives 404 naming it (was 500), on
    the image and on a click that must embed it again; one replaced by another picture gives 409."""
    with stub_app(images_dir=folder, cache_size=1) as c:
        a = c.post("/api/images/open", json={"name": "a.png"}).json()
        b = c.post("/api/images/open", json={"name": "sub/b.png"}).json()
        assert c.post(f"/api/images/{a['id']}/embed").status_code == 200
        assert c.post(f"/api/images/{b['id']}/embed").status_code == 200  # a's embedding is evicted
        (folder / "a.png").unlink()
        for r in (
            c.get(f"/api/images/{a['id']}/image"),
            c.post(f"/api/images/{a['id']}/predict", json={"points": [[60, 50]], "labels": [1]}),
            c.post(f"/api/images/{a['id']}/everything"),
        ):
            assert r.status_code == 404, r.text
            assert "'a.png'" in r.json()["detail"] and "no longer" in r.json()["detail"]
        r = c.post("/api/images/open", json={"name": "a.png"})
        assert r.status_code == 404 and "a.png" in r.json()["detail"]
        Image.fromarray(scene(shift=20)).save(folder / "sub" / "b.png")
        r = c.get(f"/api/images/{b['id']}/image")
        assert r.status_code == 409 and "'sub/b.png'" in r.json()["detail"] and "open it again" in r.json()["detail"]
        again = c.post("/api/images/open", json={"name": "sub/b.png"}).json()
        assert c.get(f"/api/images/{again['id']}/image").status_code == 200


LINE_BREAKS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\r", "\n", "\x1c"]


@pytest.mark.parametrize("sep", LINE_BREAKS, ids=[f"U+{ord(c):04X}" for c in LINE_BREAKS])
def test_class_names_with_line_breaks_are_refused_and_ids_survive_a_restart(folder: Path, sep: str):
    """Issue 13 item 4: a class name with a line break inside is refused with 422 naming it (it would take
    two lines of classes.txt and shift every later class id); at either end it is trimmed. After a
    restart on the same folder every saved object has its own class name again."""
    with stub_app(images_dir=folder) as c:
        a = c.post("/api/images/open", json={"name": "a.png"}).json()
        brick, ball = objects_from_clicks(c, a["id"])
        r = c.post(f"/api/images/{a['id']}/save", json={"objects": [brick, {**ball, "class_name": f"big{sep}ball"}]})
        assert r.status_code == 422, r.text
        assert "objects[1].class_name" in r.json()["detail"] and repr(f"big{sep}ball") in r.json()["detail"]
        assert not (folder / "classes.txt").exists() and not (folder / "a.json").exists()
        r = c.post(f"/api/images/{a['id']}/export", json={"objects": [brick], "classes": ["ok", f"x{sep}y"]})
        assert r.status_code == 422 and "classes[1]" in r.json()["detail"]
        r = c.post(f"/api/images/{a['id']}/save", json={"objects": [brick, {**ball, "class_name": f"{sep}ball{sep}"}]})
        assert r.status_code == 200, r.text
        assert r.json()["classes"] == ["brick", "ball"]
        b = c.post("/api/images/open", json={"name": "sub/b.png"}).json()
        red_b = c.post(f"/api/images/{b['id']}/predict", json={"points": [[60, 60]], "labels": [1]}).json()
        r = c.post(f"/api/images/{b['id']}/save", json={"objects": [{"class_name": "cube", "rle": red_b["rle"]}]})
        assert r.status_code == 200, r.text
    with stub_app(images_dir=folder) as c:  # a restart: the class list is read back from classes.txt
        assert c.get("/api/info").json()["classes"] == ["brick", "ball", "cube"]
        names = dict(enumerate(c.get("/api/info").json()["classes"]))
        for image, expected in (("a.png", ["brick", "ball"]), ("sub/b.png", ["cube"])):
            got = c.post("/api/images/open", json={"name": image}).json()
            assert [o["class_name"] for o in got["objects"]] == expected
            if image == "sub/b.png":  # saved without a score: reopened with none (was a 500)
                assert got["objects"][0]["score"] is None
            ids = [int(line.split()[0]) for line in (folder / image).with_suffix(".txt").read_text().splitlines()]
            assert [names[i] for i in ids] == expected


FOREIGN_CLASSES = {
    "u2028_inside": ("cat\u2028dog\nbrick\n", {"cat\u2028dog": 0, "brick": 1, "ball": 2}),
    "blank_line": ("cat\n\nbrick\n", {"cat": 0, "brick": 2, "ball": 3}),
    "crlf_no_final_newline": ("cat\r\nbrick", {"cat": 0, "brick": 1, "ball": 2}),
}


@pytest.mark.parametrize("text,ids", FOREIGN_CLASSES.values(), ids=FOREIGN_CLASSES.keys())
def test_saving_keeps_the_ids_of_a_foreign_classes_txt(folder: Path, text: str, ids: dict):
    """Issue 13 item 4: a classes.txt another tool wrote, with a U+2028 inside a name or a blank line, is
    appended to, never rewritten: its lines keep their numbers (the class ids of labels already in the
    folder), where the server used to answer 500 or renumber them."""
    (folder / "classes.txt").write_bytes(text.encode())
    with stub_app(images_dir=folder) as c:
        a = c.post("/api/images/open", json={"name": "a.png"}).json()
        r = c.post(f"/api/images/{a['id']}/save", json={"objects": objects_from_clicks(c, a["id"])})
        assert r.status_code == 200, r.text
        assert (folder / "classes.txt").read_bytes().startswith(text.encode())
        yolo_ids = [int(line.split()[0]) for line in (folder / "a.txt").read_text().splitlines()]
        assert yolo_ids == [ids["brick"], ids["ball"]]
        doc = json.loads((folder / "a.json").read_text())
        cats = {cat["id"]: cat["name"] for cat in doc["categories"]}
        assert [cats[ann["category_id"]] for ann in doc["annotations"]] == ["brick", "ball"]
    with stub_app(images_dir=folder) as c:
        assert c.get("/api/info").json()["classes"] == list(ids)
        got = c.post("/api/images/open", json={"name": "a.png"}).json()
        assert got["labels_error"] is None and [o["class_name"] for o in got["objects"]] == ["brick", "ball"]


def test_save_never_overwrites_foreign_files_or_follows_links(folder: Path, tmp_path: Path):
    (folder / "sub" / "b.json").write_text('{"mine": true}')
    Image.fromarray(scene()).save(folder / "twin.png")
    Image.fromarray(scene()).save(folder / "twin.jpg")
    os.symlink(tmp_path / "secret" / "secret.json", folder / "a.json")
    with stub_app(images_dir=folder) as c:
        obj = None
        for name, message in (
            ("sub/b.png", "not written by mobilesam"),
            ("twin.png", "share the label files"),
            ("a.png", "link"),
        ):
            image = c.post("/api/images/open", json={"name": name}).json()
            obj = obj or objects_from_clicks(c, image["id"])[:1]
            r = c.post(f"/api/images/{image['id']}/save", json={"objects": obj})
            assert r.status_code == 409 and message in r.json()["detail"], (name, r.text)
        assert (folder / "sub" / "b.json").read_text() == '{"mine": true}'
        assert (tmp_path / "secret" / "secret.json").read_text() == "{}"
        assert not (folder / "twin.txt").exists()
        # A damaged labels file does not stop the image from opening.
        (folder / "sub" / "b.json").write_text(
            '{"info": {"description": "mobilesam serve labels"}, "annotations": [{}]}'
        )
        r = c.post("/api/images/open", json={"name": "sub/b.png"})
        assert r.status_code == 200 and r.json()["objects"] == [] and "cannot read" in r.json()["labels_error"]


# -- request guards and the command line -------------------------------------------------------------------


def test_cross_origin_posts_and_foreign_hosts_are_refused():
    with stub_app(allowed_hosts=["127.0.0.1", "localhost"]) as c:
        ok = {"host": "127.0.0.1:8000"}
        files = {"file": ("s.png", png_bytes(scene()), "image/png")}
        assert c.get("/api/info", headers=ok).status_code == 200
        assert c.get("/api/info", headers={"host": "evil.example:8000"}).status_code == 400  # DNS rebinding
        r = c.post("/api/images/upload", files=files, headers={**ok, "origin": "http://evil.example"})
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
        r = c.post("/api/images/upload", files=files, headers={**ok, "origin": "http://127.0.0.1:8000"})
        assert r.status_code == 200


def test_create_app_argument_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="model"):
        create_app()
    with pytest.raises(ValueError, match="cache_size"):
        create_app(predictor_factory=ColourRegionPredictor, cache_size=0)
    with pytest.raises(ValueError, match="max_queue"):
        create_app(predictor_factory=ColourRegionPredictor, max_queue=0)
    with pytest.raises(NotADirectoryError, match="images"):
        create_app(predictor_factory=ColourRegionPredictor, images_dir=tmp_path / "nope")


def test_cli_serve_help_and_errors(tmp_path: Path, capsys, monkeypatch):
    from mobilesam.cli import main

    monkeypatch.setenv("MOBILESAM_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in (
        "--model",
        "--images",
        "--host",
        "--port",
        "--cache-size",
        "--max-upload-mb",
        "--max-pixels",
        "--max-queue",
    ):
        assert opt in out
    assert main(["serve", "--model", str(tmp_path / "missing.pt"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.pt" in err and err.startswith("mobilesam serve: error:")
    assert main(["serve", "--port", "70000"]) == 2 and "--port" in capsys.readouterr().err
    assert main(["serve", "--max-queue", "0", "--port", "0"]) == 2 and "--max-queue" in capsys.readouterr().err
    assert (
        main(["serve", "--model", str(tmp_path / "missing.pt"), "--images", str(tmp_path / "no_dir"), "--port", "0"])
        == 1
    )
    assert "no_dir" in capsys.readouterr().err  # checked before the model is loaded
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as without the 'serve' extra
    assert main(["serve", "--port", "0"]) == 1
    assert "pip install 'mobilesam[serve]'" in capsys.readouterr().err
