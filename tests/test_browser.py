"""End to end in a real browser: Playwright drives Debian's Chromium against ``mobilesam serve``.

Screenshots of every step are kept under pytest's temporary folder (the path is printed).
Without Chromium these tests skip with the reason, unless MOBILESAM_BROWSER_TESTS=required (CI sets it
once Chromium is installed), where a missing browser fails.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import Page, sync_playwright
from test_server import ColourRegionPredictor

from mobilesam.masks import decode_rle
from mobilesam.server import create_app

CHROMIUM = os.environ.get("MOBILESAM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# The picture: flat-coloured shapes on grey, so the stand-in predictor's masks are known exactly.
W, H = 640, 480
GREY, RECT, DISC, TRIANGLE, ELLIPSE = (150, 152, 156), (64, 84, 104), (222, 200, 164), (122, 82, 54), (108, 128, 60)


def picture() -> np.ndarray:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:] = GREY
    rgb[120:300, 80:300] = RECT
    cv2.circle(rgb, (470, 200), 80, DISC, -1)
    cv2.fillPoly(rgb, [np.array([[380, 440], [600, 440], [490, 320]], np.int32)], TRIANGLE)
    cv2.ellipse(rgb, (170, 390), (110, 50), 0, 0, 360, ELLIPSE, -1)
    return rgb


def colour_mask(colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(picture() == colour, axis=-1)


class ShapesGenerator:
    """Stand-in segment-everything: one record per shape of the picture."""

    def __init__(self, model) -> None:
        pass

    def generate(self, rgb: np.ndarray) -> list[dict]:
        return [
            {"segmentation": np.all(rgb == c, axis=-1), "predicted_iou": 0.9} for c in (RECT, DISC, TRIANGLE, ELLIPSE)
        ]


@pytest.fixture(scope="module")
def chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        reason = f"Chromium not found at {CHROMIUM} (install it: apt-get install chromium)"
        if os.environ.get("MOBILESAM_BROWSER_TESTS") == "required":
            pytest.fail(reason + "; MOBILESAM_BROWSER_TESTS=required")
        print(f"\nSKIP browser tests: {reason}", file=sys.stderr)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve_screenshots")
    print(f"\nbrowser screenshots: {path}", file=sys.stderr)
    return path


@pytest.fixture(scope="module")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory):
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 820},
            accept_downloads=True,
        )
        try:
            yield ctx
        finally:
            ctx.close()


class ServerThread:
    """uvicorn serving an app on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


# -- page helpers ------------------------------------------------------------------------------------------


# The page's Content-Security-Policy forbids eval, so waits use selectors or poll from Python
# (page.wait_for_function would need eval).
def idle(page: Page) -> None:
    page.wait_for_selector("body[data-pending='0']", state="attached", timeout=60_000)


def wait_until(check, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def canvas_box(page: Page) -> dict:
    return page.locator("#overlay-canvas").bounding_box()


def to_page(page: Page, x: float, y: float) -> tuple[float, float]:
    b = canvas_box(page)
    return b["x"] + x * b["width"] / W, b["y"] + y * b["height"] / H


def click(page: Page, x: float, y: float, **kw) -> None:
    b = canvas_box(page)
    page.locator("#overlay-canvas").click(position={"x": x * b["width"] / W, "y": y * b["height"] / H}, **kw)
    idle(page)


def drag_box(page: Page, x1: float, y1: float, x2: float, y2: float) -> None:
    page.mouse.move(*to_page(page, x1, y1))
    page.mouse.down()
    page.mouse.move(*to_page(page, x2, y2), steps=8)
    page.mouse.up()
    idle(page)


def overlay(page: Page) -> np.ndarray:
    """The overlay canvas as RGBA (h, w, 4), read back from the page."""
    url = page.evaluate("document.getElementById('overlay-canvas').toDataURL('image/png')")
    return np.array(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))


def shown(page: Page) -> np.ndarray:
    """Pixels covered by some mask tint, at image size (canvas pixels mapped back)."""
    alpha = overlay(page)[..., 3] >= 50  # tints are drawn at 37-50 % opacity, their outlines at 90 %
    return cv2.resize(alpha.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def objects(page: Page) -> int:
    return page.locator("#object-list li").count()


def shoot(page: Page, shots: Path, name: str) -> Path:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def download(page: Page, button: str, dest: Path) -> Path:
    with page.expect_download() as info:
        page.click(button)
    d = info.value
    path = dest / d.suggested_filename
    d.save_as(str(path))
    return path


# -- tests -------------------------------------------------------------------------------------------------


def test_label_with_clicks_box_undo_everything_and_export(browser, shots: Path, tmp_path: Path):
    img = tmp_path / "shapes.png"
    Image.fromarray(picture()).save(img)
    app = create_app(predictor_factory=ColourRegionPredictor, generator_factory=ShapesGenerator)
    with ServerThread(app) as srv:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "console",
            lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None,
        )
        page.goto(srv.url)
        page.wait_for_selector("body[data-started='1']")
        page.set_input_files("#file-input", str(img))
        page.wait_for_selector("body[data-ready]")
        idle(page)
        assert "shapes.png" in page.inner_text("#status")
        shoot(page, shots, "01_opened")

        # A click on the red rectangle: its mask appears over exactly its pixels.
        with page.expect_response(re.compile(r"/predict$")) as resp:
            click(page, 190, 210)
        assert resp.value.status == 200
        api_mask = decode_rle(resp.value.json()["rle"])
        assert np.array_equal(api_mask, colour_mask(RECT))
        assert iou(shown(page), colour_mask(RECT)) > 0.95  # the point marker lies inside the rectangle
        assert "Score: 0.950" in page.inner_text("#score")
        shoot(page, shots, "02_click")

        # A second positive point adds the disc; a shift-click (negative) on it takes it away again.
        click(page, 470, 200)
        assert iou(shown(page), colour_mask(RECT) | colour_mask(DISC)) > 0.95
        with page.expect_request(re.compile(r"/predict$")) as req:
            click(page, 440, 230, modifiers=["Shift"])
        assert json.loads(req.value.post_data)["labels"] == [1, 1, 0]
        on = shown(page)
        assert iou(on, colour_mask(RECT)) > 0.95 and (on & colour_mask(DISC)).sum() < 300  # two markers remain
        shoot(page, shots, "03_negative_point")
        assert objects(page) == 1

        # N starts a new object; a drag draws a box around the green triangle.
        page.keyboard.press("n")
        drag_box(page, 370, 310, 610, 450)
        shoot(page, shots, "04_box")
        on = shown(page)
        Image.fromarray(on).save(shots / "04_box_shown.png")
        assert iou(on, colour_mask(RECT) | colour_mask(TRIANGLE)) > 0.95
        assert objects(page) == 2

        # Right-click is a negative point too.
        page.keyboard.press("n")
        with page.expect_request(re.compile(r"/predict$")) as req:
            click(page, 20, 20, button="right")
        assert json.loads(req.value.post_data)["labels"] == [0]
        assert objects(page) == 3

        # Undo twice: the right-click object, then the box object go; redo brings the box back.
        page.keyboard.press("Control+z")
        page.keyboard.press("Control+z")
        assert objects(page) == 1
        assert iou(shown(page), colour_mask(RECT)) > 0.95
        shoot(page, shots, "05_undo")
        page.keyboard.press("Control+y")
        assert objects(page) == 2
        assert iou(shown(page), colour_mask(RECT) | colour_mask(TRIANGLE)) > 0.95
        page.click("#btn-undo")
        page.click("#btn-redo")
        assert objects(page) == 2

        # Name the second object's class in the list.
        page.locator("#object-list li").nth(1).locator("input").fill("triangle")
        page.locator("#object-list li").nth(1).locator("input").press("Enter")
        page.keyboard.press("n")
        idle(page)

        # Export: COCO JSON, YOLO txt and PNG masks, parsed and checked against the true shapes.
        coco = json.loads(download(page, "#btn-export-coco", tmp_path).read_text())
        assert [c["name"] for c in coco["categories"]] == ["object", "triangle"]
        assert coco["images"][0]["file_name"] == "shapes.png"
        got = [decode_rle(a["segmentation"]) for a in coco["annotations"]]
        assert len(got) == 2 and iou(got[0], colour_mask(RECT)) == 1.0 and iou(got[1], colour_mask(TRIANGLE)) == 1.0
        assert coco["annotations"][1]["category_id"] == 2
        yolo = download(page, "#btn-export-yolo", tmp_path).read_text().splitlines()
        assert [line.split()[0] for line in yolo] == ["0", "1"]
        coords = np.array(yolo[1].split()[1:], float).reshape(-1, 2)
        assert coords.min() >= 0 and coords.max() <= 1
        assert abs(coords[:, 1].max() * H - 440) < 2 and abs(coords[:, 1].min() * H - 320) < 2
        with zipfile.ZipFile(download(page, "#btn-export-png", tmp_path)) as zf:
            names = zf.namelist()
            assert names == ["shapes_001_object.png", "shapes_002_triangle.png"]
            assert iou(np.array(Image.open(io.BytesIO(zf.read(names[1])))) > 0, colour_mask(TRIANGLE)) == 1.0
        shoot(page, shots, "06_exported")

        # Everything: the generator's masks become objects, one undo step.
        page.keyboard.press("e")
        idle(page)
        assert objects(page) == 6
        assert "4 masks" in page.inner_text("#status")
        on = shown(page)
        assert iou(on, ~colour_mask(GREY)) > 0.95
        shoot(page, shots, "06b_everything")
        page.keyboard.press("Control+z")
        assert objects(page) == 2

        # Bad input shows the server's message; the page keeps working.
        page.set_input_files(
            "#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}]
        )
        page.wait_for_selector("footer.error")
        assert "415" in page.inner_text("#status") and "not a readable image" in page.inner_text("#status")

        # Drag and drop opens an image too.
        b64 = base64.b64encode(img.read_bytes()).decode()
        dt = page.evaluate_handle(
            """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
            return dt; }""",
            b64,
        )
        page.dispatch_event("#stage", "drop", {"dataTransfer": dt})
        wait_until(lambda: page.title().startswith("dropped.png"))
        idle(page)
        assert objects(page) == 0
        assert not errors, errors
        page.close()


def test_folder_save_reload_and_keyboard_navigation(browser, shots: Path, tmp_path: Path):
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(picture()).save(root / "a.png")
    Image.fromarray(picture()[:, ::-1].copy()).save(root / "b.png")
    app = create_app(predictor_factory=ColourRegionPredictor, generator_factory=ShapesGenerator, images_dir=root)
    with ServerThread(app) as srv:
        page = browser.new_page()
        page.goto(srv.url)
        page.wait_for_selector("body[data-started='1']")
        page.select_option("#image-select", "a.png")
        page.wait_for_selector("body[data-ready]")
        page.fill("#class-input", "brick")
        page.locator("#class-input").press("Enter")
        click(page, 190, 210)
        page.keyboard.press("n")
        page.fill("#class-input", "ball")
        page.locator("#class-input").press("Enter")
        click(page, 470, 200)
        click(page, 560, 60, modifiers=["Shift"])  # a background point: the disc's mask stays the disc
        page.keyboard.press("n")
        page.fill("#class-input", "roof")
        page.locator("#class-input").press("Enter")
        drag_box(page, 372, 306, 612, 452)
        click(page, 490, 400)  # box and point together
        page.keyboard.press("Control+s")  # saved with the roof still selected: its prompts stay visible
        wait_until(lambda: page.inner_text("#status").startswith("Saved"))
        shoot(page, shots, "07_saved")
        assert (root / "classes.txt").read_text() == "brick\nball\nroof\n"
        yolo = (root / "a.txt").read_text().splitlines()
        assert [line.split()[0] for line in yolo] == ["0", "1", "2"]
        doc = json.loads((root / "a.json").read_text())
        assert iou(decode_rle(doc["annotations"][1]["segmentation"]), colour_mask(DISC)) == 1.0
        assert iou(decode_rle(doc["annotations"][2]["segmentation"]), colour_mask(TRIANGLE)) == 1.0
        assert doc["annotations"][1]["prompts"]["labels"] == [1, 0]
        assert doc["annotations"][2]["prompts"]["box"] == pytest.approx([372, 306, 612, 452], abs=1)  # screen pixels

        # → opens the next image (nothing unsaved), ← comes back: the saved objects are loaded.
        page.keyboard.press("ArrowRight")
        wait_until(lambda: page.title().startswith("b.png"))
        idle(page)
        assert objects(page) == 0
        page.keyboard.press("ArrowLeft")
        wait_until(lambda: page.title().startswith("a.png"))
        idle(page)
        assert objects(page) == 3
        assert [page.locator("#object-list li").nth(i).locator("input").input_value() for i in range(3)] == [
            "brick",
            "ball",
            "roof",
        ]
        assert iou(shown(page), colour_mask(RECT) | colour_mask(DISC) | colour_mask(TRIANGLE)) > 0.95
        page.close()

        # A fresh page (reload) sees the same labels and the folder's classes.
        page = browser.new_page()
        page.goto(srv.url)
        page.wait_for_selector("body[data-started='1']")
        assert page.locator("#class-list option").count() == 3
        page.select_option("#image-select", "a.png")
        page.wait_for_selector("body[data-ready]")
        idle(page)
        assert objects(page) == 3
        click(page, 170, 390)  # a fourth object, on the ellipse
        page.keyboard.press("n")
        assert objects(page) == 4
        assert iou(shown(page), ~colour_mask(GREY)) > 0.95
        shoot(page, shots, "08_reloaded")
        page.close()


def page_objects(page: Page) -> list[dict]:
    """The page's objects: prompts, COCO RLE, score and (base64 float32) low-res logits."""
    return json.loads(
        page.evaluate(
            """JSON.stringify(window.mobilesam.objects.map((o) => {
            let low = null;
            if (o.lowRes) {
                const b = new Uint8Array(o.lowRes.buffer, o.lowRes.byteOffset, o.lowRes.byteLength);
                let s = ""; for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
                low = btoa(s);
            }
            return {points: o.points, labels: o.labels, box: o.box, rle: o.rle, score: o.score, low_res: low};
            }))"""
        )
    )


def server_mask(url: str, image_id: str, obj: dict, mask_input: str | None = None) -> np.ndarray:
    """The server's mask for a page object's prompts (and mask input), decoded by /predict."""
    import httpx

    body = {"points": obj["points"], "labels": obj["labels"], "box": obj["box"]}
    if mask_input:
        body["mask_input"] = mask_input
    r = httpx.post(f"{url}/api/images/{image_id}/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return decode_rle(r.json()["rle"])


@pytest.mark.slow
def test_browser_decoding_through_the_cli(browser, shots: Path, tmp_path: Path, web_site: Path):
    """``mobilesam serve`` as a user starts it (random vit_t weights, exported): clicks, a negative point, a
    box and a refinement from the previous mask are decoded in the page with no request to the server,
    and give the server's masks; ``?decode=server`` (the fallback) gives the same masks; saved labels
    reopen."""
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(picture()).save(root / "shapes.png")
    env = {**os.environ, "MOBILESAM_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "mobilesam", "serve", "--model", str(web_site / "model"), "--backend", "onnxruntime"]
    proc = subprocess.Popen(
        cmd + ["--images", str(root), "--port", "0", "--cache-size", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        m = re.match(r"mobilesam serve: (http://127\.0\.0\.1:\d+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = m.group(1)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        page.wait_for_selector("body[data-started='1']")
        page.select_option("#image-select", "shapes.png")
        page.wait_for_selector("body[data-ready]", timeout=60_000)
        page.wait_for_selector("body[data-decoder='browser']", state="attached")
        assert "decoding in the browser" in page.inner_text("#status")
        assert any(u.endswith("/embedding?dtype=float16") for u in requests)
        image_id = page.evaluate("window.mobilesam.image.id")

        click(page, 190, 210)  # a point
        click(page, 440, 230, modifiers=["Shift"])  # a negative point refines it
        drag_box(page, 60, 100, 320, 320)  # a box refines it too
        page.keyboard.press("m")  # refine from the previous mask (the decoder's mask input)
        before = page_objects(page)[0]["low_res"]
        click(page, 250, 250)
        objs = page_objects(page)
        assert len(objs) == 1 and objs[0]["labels"] == [1, 0, 1] and objs[0]["box"] is not None
        assert not [u for u in requests if "/predict" in u], "a click went to the server"
        import httpx

        cpu = httpx.get(f"{url}/api/info").json()["cpu_seconds"]
        assert cpu["decoder"] == 0 and cpu["encoder"] > 0  # the server only encoded the image
        timings = page.evaluate("window.mobilesam.timings")
        assert len(timings) == 4 and all(t["mode"] == "browser" and t["drawn"] >= t["click"] for t in timings)
        mine = decode_rle(objs[0]["rle"])
        theirs = server_mask(url, image_id, objs[0], mask_input=before)
        print(f"browser vs server mask IoU (fp16 embedding, mask input): {iou(mine, theirs):.5f}")
        assert iou(mine, theirs) >= 0.999 and mine.sum() > 100
        # The comparison can fail: the first click alone gives another mask.
        first = {"points": objs[0]["points"][:1], "labels": [1], "box": None}
        assert iou(mine, server_mask(url, image_id, first)) < 0.999

        # The drawn overlay is the mask (nearest pixel, as the page draws it).
        page.keyboard.press("n")
        idle(page)
        alpha = overlay(page)[..., 3]
        expected = cv2.resize(mine.astype(np.uint8), alpha.shape[::-1], interpolation=cv2.INTER_NEAREST_EXACT) > 0
        assert ((alpha >= 50) == expected).mean() > 0.995
        shoot(page, shots, "09_browser_decoding")

        # A second object of another class (a lone point); undo and redo; save beside the image.
        page.fill("#class-input", "ball")
        page.locator("#class-input").press("Enter")
        click(page, 470, 200)
        page.keyboard.press("n")
        page.keyboard.press("Control+z")
        page.keyboard.press("Control+z")
        assert objects(page) == 1
        page.keyboard.press("Control+y")
        page.keyboard.press("Control+y")
        idle(page)
        browser_objs = page_objects(page)
        page.keyboard.press("Control+s")
        wait_until(lambda: page.inner_text("#status").startswith("Saved"))
        assert (root / "classes.txt").read_text() == "object\nball\n"
        assert not errors, errors
        page.close()

        page = browser.new_page()
        page.goto(url + "/?decode=server")
        page.wait_for_selector("body[data-started='1']")
        page.select_option("#image-select", "shapes.png")
        page.wait_for_selector("body[data-ready]", timeout=60_000)
        page.wait_for_selector("body[data-decoder='server']", state="attached")
        assert len(page_objects(page)) == 2  # the labels saved from the browser-decoded page
        assert [page.locator("#object-list li").nth(i).locator("input").input_value() for i in range(2)] == [
            "object",
            "ball",
        ]
        page.keyboard.press("c")
        click(page, 190, 210)
        click(page, 440, 230, modifiers=["Shift"])
        drag_box(page, 60, 100, 320, 320)
        page.keyboard.press("m")
        with page.expect_request(re.compile(r"/predict$")) as req:
            click(page, 250, 250)
        assert len(json.loads(req.value.post_data)["mask_input"]) == len(before)  # the server's own low-res mask
        page.keyboard.press("n")
        click(page, 470, 200)
        page.keyboard.press("n")
        idle(page)
        fallback = page_objects(page)
        for b, f in zip(browser_objs, fallback):
            print(f"browser vs fallback mask IoU: {iou(decode_rle(b['rle']), decode_rle(f['rle'])):.5f}")
            assert iou(decode_rle(b["rle"]), decode_rle(f["rle"])) >= 0.999
        assert len(fallback) == 2
        page.close()
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.slow
def test_static_export_in_a_plain_file_server(browser, shots: Path, tmp_path: Path, web_site: Path):
    """The folder of ``mobilesam export --format web`` served by ``python -m http.server`` (nothing of
    mobilesam behind it): an opened image is encoded in the page, clicks give masks, and the COCO, YOLO
    and PNG files the page writes hold them."""
    from mobilesam.formats.coco import bbox_xywh
    from mobilesam.formats.yolo import parse_line
    from mobilesam.masks import DEFAULT_SIMPLIFY, mask_to_segment, polygons_to_mask

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(web_site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    img = tmp_path / "shapes.png"
    Image.fromarray(picture()).save(img)
    try:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        deadline = time.time() + 30
        while True:
            try:
                page.goto(f"http://127.0.0.1:{port}/")
                break
            except Exception:  # noqa: BLE001 - the file server is still starting
                assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.2)
        page.wait_for_selector("body[data-started='1']")
        page.set_input_files("#file-input", str(img))
        page.wait_for_selector("body[data-ready]", timeout=120_000)
        idle(page)
        status = page.inner_text("#status")
        print(f"static page: {status}")
        assert "encoder" in status and "decoding in the browser" in status
        assert page.locator("#btn-everything").is_disabled() and page.locator("#btn-save").is_hidden()

        click(page, 190, 210)
        click(page, 440, 230, modifiers=["Shift"])
        page.keyboard.press("n")
        page.fill("#class-input", "roof")
        page.locator("#class-input").press("Enter")
        drag_box(page, 370, 310, 610, 450)
        page.keyboard.press("n")
        idle(page)
        shoot(page, shots, "10_static_page")
        objs = page_objects(page)
        masks = [decode_rle(o["rle"]) for o in objs]
        assert len(masks) == 2 and all(m.shape == (H, W) and m.sum() > 100 for m in masks)
        alpha = overlay(page)[..., 3]
        union = cv2.resize((masks[0] | masks[1]).astype(np.uint8), alpha.shape[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        assert ((alpha >= 50) == (union > 0)).mean() > 0.995  # drawn as decoded

        coco = json.loads(download(page, "#btn-export-coco", tmp_path).read_text())
        assert [c["name"] for c in coco["categories"]] == ["object", "roof"]
        assert coco["images"] == [{"id": 1, "file_name": "shapes.png", "width": W, "height": H}]
        for a, m in zip(coco["annotations"], masks):
            assert np.array_equal(decode_rle(a["segmentation"]), m)
            assert a["area"] == m.sum() and a["bbox"] == bbox_xywh(m) and a["iscrowd"] == 0
        with zipfile.ZipFile(download(page, "#btn-export-png", tmp_path)) as zf:
            assert zf.namelist() == ["shapes_001_object.png", "shapes_002_roof.png"]
            for name, m in zip(zf.namelist(), masks):
                png = np.array(Image.open(io.BytesIO(zf.read(name))))
                assert png.shape == (H, W) and np.array_equal(png > 0, m) and set(np.unique(png)) <= {0, 255}
        # YOLO: one ring per object, simplified as the server's (DEFAULT_SIMPLIFY px), with fewer points than
        # the exact outline; filled it covers the mask as the server's ring does.
        lines = download(page, "#btn-export-yolo", tmp_path).read_text().splitlines()
        assert [line.split()[0] for line in lines] == ["0", "1"]
        for line, m in zip(lines, masks):
            ring = parse_line(line).xy * (W, H)
            ours = polygons_to_mask([ring], (H, W))
            server_ring = mask_to_segment(m, "all", simplify=DEFAULT_SIMPLIFY)
            server = polygons_to_mask([server_ring], (H, W))
            exact = len(mask_to_segment(m, "all"))
            print(f"YOLO ring filled vs the server's ring: IoU {iou(ours, server):.4f}, vs the mask {iou(ours, m):.4f};"
                  f" points: {len(ring)} (server {len(server_ring)}, exact outline {exact})")
            # The page traces and simplifies as OpenCV does: the same points, bar rare ties.
            assert iou(ours, server) > 0.999 and abs(len(ring) - len(server_ring)) <= 0.01 * len(server_ring)
            assert len(ring) < exact
        assert all(u.startswith(f"http://127.0.0.1:{port}/") or u.startswith(("blob:", "data:")) for u in requests)
        assert not errors, errors
        page.close()
    finally:
        proc.terminate()
        proc.wait(15)
