"""Click to mask drawn, in a real browser (Chromium through Playwright), against ``mobilesam serve``:
decoding in the page (onnxruntime-web) against decoding on the server, in one run.

Starts the real command (``python -m mobilesam serve``) on a random-weight vit_t checkpoint (the
architecture, not the weights, sets the cost; ``--model`` takes another) and a folder of synthetic
640x480 images, then:

1. one client: the same ``--clicks`` random prompts (a new object's first point; every third prompt adds
   a second point to it) are decoded by the server (``?decode=server``) and in the page (with
   ``--threads`` onnxruntime-web threads each), alternating blocks of 10 so that other load on the
   machine falls on every mode alike. The page timestamps the click (the mouse event) and the frame
   that draws the mask; the decoder time is the server's decode (``decode_ms``) or the page's session
   run. The masks of the two modes are compared prompt by prompt (IoU).
2. ``--clients`` pages (default 20, one browser), each clicking every ``--think`` seconds (a person
   labelling; bounded) for ``--seconds``, first with server decoding, then with browser decoding; the
   server's CPU time: the whole process (/proc) and its encoder and decoder threads (``/api/info``).
3. ``--web-images`` (default 3): the page of ``mobilesam export --format web`` served by
   ``python -m http.server``: seconds to encode an image in the page, and click to mask drawn there.

Every client runs on this machine, beside the server: with browser decoding their decoders share its
cores, as they would not with one machine per annotator. Prints a Markdown report; ``--results FILE``
writes it as the "Serve: decoding in the browser" section of that file.

    python benchmarks/browser_clicks.py --clicks 100 --clients 20 --seconds 30 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from load_serve import make_images, pct, write_section  # noqa: E402

SECTION = "Serve: decoding in the browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-renderer-backgrounding",
                 "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows"]


def start_server(model: str, images: Path, home: Path, backend: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mobilesam", "serve", "--model", model, "--images", str(images), "--port", "0",
           "--cache-size", "32", "--backend", backend]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MOBILESAM_HOME": str(home)})
    line = proc.stdout.readline()
    m = re.match(r"mobilesam serve: (http://[\d.]+:\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, m.group(1)


# A person labelling, in the page: a new object and a click on it, then a pause of 0.5 to 1.5 times
# `think` seconds after the mask is drawn (never two clicks of one client in flight).
CLICKER = """(think) => {
  const c = document.getElementById("overlay-canvas");
  const tick = () => {
    if (document.body.dataset.pending === "0") {
      const r = c.getBoundingClientRect();
      const at = {clientX: r.left + (0.05 + 0.9 * Math.random()) * r.width,
                  clientY: r.top + (0.05 + 0.9 * Math.random()) * r.height, button: 0, bubbles: true};
      window.dispatchEvent(new KeyboardEvent("keydown", {key: "n"}));
      c.dispatchEvent(new MouseEvent("mousedown", at));
      window.dispatchEvent(new MouseEvent("mouseup", at));
    }
    window.__clicker = setTimeout(tick, think * 1000 * (0.5 + Math.random()));
  };
  window.mobilesam.timings.length = 0;
  window.__clicker = setTimeout(tick, think * 1000 * Math.random());
}"""


def server_cpu(url: str, pid: int) -> dict[str, float]:
    """CPU seconds of the server: its engine's encoder and decoder threads (``/api/info``), and the
    whole process (/proc: user + system)."""
    with urllib.request.urlopen(f"{url}/api/info") as r:
        info = json.loads(r.read())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return {**info["cpu_seconds"], "process": total, "passes": info["encoder_passes"]}


def open_page(ctx, url: str, image: str, query: str):
    page = ctx.new_page()
    page.goto(f"{url}/{query}")
    page.wait_for_selector("body[data-started='1']")
    page.select_option("#image-select", image)
    page.wait_for_selector("body[data-ready]", timeout=600_000)
    page.wait_for_selector("body[data-pending='0']", state="attached", timeout=600_000)
    return page


def click(page, x: float, y: float, new_object: bool) -> None:
    """A click at image pixel (x, y) of the 640x480 image; waits until the mask is drawn."""
    if new_object:
        page.keyboard.press("n")
    b = page.locator("#overlay-canvas").bounding_box()
    page.mouse.click(b["x"] + x * b["width"] / 640, b["y"] + y * b["height"] / 480)
    page.wait_for_selector("body[data-pending='0']", state="attached", timeout=600_000)


def last_timing(page) -> dict:
    return page.evaluate("window.mobilesam.timings[window.mobilesam.timings.length - 1]")


def active_rle(page) -> dict:
    return page.evaluate("(() => { const o = window.mobilesam.objects[window.mobilesam.objects.length - 1]; "
                         "return o.rle; })()")


def static_page(ctx, model: str, tmp: Path, folder: Path, names: list[str], prompts: list) -> dict[str, list]:
    """Export the web page, serve it with python -m http.server, encode ``names`` and click ``prompts`` there."""
    import socket

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mobilesam", "export", "--model", model, "--format", "web", "--out",
                    str(tmp / "site"), "--no-check"], check=True, capture_output=True)
    out: dict = {"export_s": time.perf_counter() - t0, "encoder": [], "total": [], "decoder": []}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                            str(tmp / "site")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        page = ctx.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("body[data-started='1']")
        for k, name in enumerate(names):
            page.set_input_files("#file-input", str(folder / name))
            while page.evaluate("window.mobilesam.embeddings.length") <= k:
                time.sleep(0.2)
            page.wait_for_selector("body[data-pending='0']", state="attached", timeout=600_000)
        out["encoder"] = [e["encoder_ms"] / 1000 for e in page.evaluate("window.mobilesam.embeddings")]
        for x, y, new in prompts:
            click(page, x, y, new)
            t = last_timing(page)
            out["total"].append((t["drawn"] - t["click"]) / 1000)
            out["decoder"].append(t["decoder_ms"] / 1000)
        page.close()
    finally:
        srv.terminate()
        srv.wait(10)
    return out


def fmt(values: list[float]) -> str:
    return f"p50 {pct(values, 50):.0f} ms, p90 {pct(values, 90):.0f} ms" if values else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: a random-weight vit_t in a temp dir)")
    ap.add_argument("--backend", default="torch", help="server backend (default torch)")
    ap.add_argument("--clicks", type=int, default=100, help="prompts per mode, one client (default 100)")
    ap.add_argument("--threads", default="1,2", help="onnxruntime-web thread counts to time (default 1,2)")
    ap.add_argument("--clients", type=int, default=20, help="pages clicking at once (default 20; 0 skips)")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of each many-client phase (default 30)")
    ap.add_argument("--think", type=float, default=2.0, help="seconds between a client's clicks (default 2)")
    ap.add_argument("--web-images", type=int, default=3, help="images encoded in the static page (default 3; 0 skips)")
    ap.add_argument("--chromium", default=os.environ.get("MOBILESAM_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--results", type=Path, default=None, help=f"write the report as the '{SECTION}' section")
    args = ap.parse_args()

    import torch
    from playwright.sync_api import sync_playwright

    from mobilesam.masks import decode_rle

    tmp = Path(tempfile.mkdtemp(prefix="mobilesam-browser-"))
    folder = tmp / "images"
    folder.mkdir()
    names = make_images(folder, 2 * max(1, args.clients, args.web_images))[::2]  # the 640x480 ones
    model = args.model
    if model is None:
        from mobilesam.modeling import build_model

        torch.manual_seed(0)
        model = str(tmp / "vit_t_random.pt")
        torch.save(build_model("vit_t").state_dict(), model)
    t0 = time.perf_counter()
    proc, url = start_server(model, folder, tmp / "home", args.backend)
    startup = time.perf_counter() - t0
    threads = [int(t) for t in args.threads.split(",") if t]
    modes = [("server", "?decode=server")] + [(f"browser, {t} thread{'s' if t > 1 else ''}", f"?threads={t}")
                                              for t in threads]
    rng = random.Random(0)
    prompts = [(rng.uniform(20, 620), rng.uniform(20, 460), k % 3 != 2) for k in range(args.clicks)]
    single: dict[str, dict[str, list]] = {m: {"total": [], "decoder": [], "rest": [], "paint": [], "rle": []}
                                          for m, _ in modes}
    many: dict[str, dict] = {}
    web: dict[str, list] = {}
    with urllib.request.urlopen(f"{url}/api/info") as r:
        info = json.loads(r.read())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            ctx = browser.new_context(viewport={"width": 1280, "height": 820})
            pages = {m: open_page(ctx, url, names[0], q) for m, q in modes}
            sizes: dict[str, tuple[int, int]] = {}  # largest transfer of each file over the browser-decoding pages
            for m, _ in modes[1:]:
                for name, sent, size in pages[m].evaluate(
                    "performance.getEntriesByType('resource').filter(e => /decoder\\/|ort|embedding/.test(e.name))"
                    ".map(e => [e.name.split('/').pop().split('?')[0], e.transferSize, e.decodedBodySize])"
                ):
                    if sent >= sizes.get(name, (0, 0))[0]:
                        sizes[name] = (sent, size)
            for m, _ in modes:  # warm-up
                for x, y, new in prompts[:5]:
                    click(pages[m], x, y, new)
            for start in range(0, len(prompts), 10):
                for m, _ in modes:
                    for x, y, new in prompts[start : start + 10]:
                        click(pages[m], x, y, new)
                        t = last_timing(pages[m])
                        single[m]["total"].append((t["drawn"] - t["click"]) / 1000)
                        single[m]["decoder"].append(t["decoder_ms"] / 1000)
                        single[m]["rest"].append((t["decoded"] - t["click"] - t["decoder_ms"]) / 1000)
                        single[m]["paint"].append((t["drawn"] - t["decoded"]) / 1000)
                        single[m]["rle"].append(active_rle(pages[m]))
            for page in pages.values():
                page.close()

            # Many clients: each opens its image, then clicks every --think seconds.
            if args.clients:
                for m, q in (modes[0], modes[1]):
                    lat: list[float] = []
                    clients = [open_page(ctx, url, names[k % len(names)], q) for k in range(args.clients)]
                    cpu0, wall0 = server_cpu(url, proc.pid), time.perf_counter()
                    for page in clients:  # each page clicks by itself: no page waits for another
                        page.evaluate(CLICKER, args.think)
                    time.sleep(args.seconds)
                    for page in clients:
                        page.evaluate("clearTimeout(window.__clicker)")
                    for page in clients:
                        page.wait_for_selector("body[data-pending='0']", state="attached", timeout=600_000)
                    wall = time.perf_counter() - wall0
                    cpu1 = server_cpu(url, proc.pid)
                    for page in clients:
                        lat += [(t["drawn"] - t["click"]) / 1000 for t in page.evaluate("window.mobilesam.timings")]
                    many[m] = {"lat": lat, "wall": wall, "cpu": {k: cpu1[k] - cpu0[k] for k in cpu1}}
                    for page in clients:
                        page.close()
            if args.web_images:
                web = static_page(ctx, model, tmp, folder, names[: args.web_images], prompts[:20])
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()

    base = single[modes[0][0]]
    ious = {}
    for m, _ in modes[1:]:
        vals = []
        for a, b in zip(single[m]["rle"], base["rle"]):
            ma, mb = decode_rle(a), decode_rle(b)
            union = (ma | mb).sum()
            vals.append(1.0 if union == 0 else float((ma & mb).sum() / union))
        ious[m] = vals
    load = os.getloadavg()
    lines = [
        f"## {SECTION}",
        "",
        f"`python benchmarks/browser_clicks.py --clicks {args.clicks} --threads {args.threads} --clients "
        f"{args.clients} --seconds {args.seconds:g} --think {args.think:g}` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Chromium headless through "
        f"Playwright, onnxruntime-web {info.get('onnxruntime_web', '?')}; `mobilesam serve --backend "
        f"{args.backend}` on a vit_t checkpoint of random weights ({'given' if args.model else 'random'}), "
        f"640x480 synthetic images; the server started in {startup:.0f} s, exporting the decoder once; load "
        f"average at the end {load[0]:.1f}"
        + (f": other jobs shared the {os.cpu_count()} CPUs, times are upper bounds)." if load[0] > (os.cpu_count() or 1)
           else ")."),
        "",
        "What a browser-decoding page downloads (the decoder and the runtime once, then from the browser's cache; "
        "the embedding per image), on the wire (uncompressed): "
        + ", ".join(f"{n} {t / 1e6:.2f} MB ({d / 1e6:.2f} MB)" for n, (t, d) in sizes.items()) + ".",
        "",
        f"| one client, {args.clicks} prompts | click to mask drawn | decoder | the rest until the mask is ready to "
        "draw (request, upscaling, overlay) | drawing (to the next frame) | mask IoU with the server's (min / mean) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m, _ in modes:
        iou_txt = "-" if m not in ious else f"{min(ious[m]):.4f} / {np.mean(ious[m]):.5f}"
        r = single[m]
        lines.append(f"| {m} | {fmt(r['total'])} | {fmt(r['decoder'])} | {fmt(r['rest'])} | {fmt(r['paint'])} | "
                     f"{iou_txt} |")
    if many:
        lines += ["", f"| {args.clients} clients, one click every {args.think:g} s each | clicks | click to mask "
                  "drawn | server CPU s: whole process / encoder passes / decoding (mask encoding included) |",
                  "| --- | --- | --- | --- |"]
        for m, r in many.items():
            c = r["cpu"]
            lines.append(f"| {m} | {len(r['lat'])} in {r['wall']:.0f} s | {fmt(r['lat'])} | "
                         f"{c['process']:.1f} / {c['encoder']:.1f} ({c['passes']:.0f} passes) / {c['decoder']:.1f} |")
    if web:
        lines += ["", f"Static page (`mobilesam export --format web`, exported in {web['export_s']:.0f} s, served by "
                  "`python -m http.server`: no COOP/COEP, one thread): encoding an image in the page "
                  f"{fmt(web['encoder'])} ({len(web['encoder'])} images); click to mask drawn {fmt(web['total'])}, "
                  f"decoder {fmt(web['decoder'])} ({len(web['total'])} prompts)."]
    lines.append("")
    report = "\n".join(lines)
    print(report)
    if args.results:
        write_section(args.results, report, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
