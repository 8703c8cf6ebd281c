"""Load test of ``mobilesam serve`` on 127.0.0.1: click round trips, first-open times, errors and memory.

Starts the real command (``python -m mobilesam serve``) on a random-weight vit_t checkpoint (the
architecture, not the weights, sets the cost) and a folder of synthetic images, then:

1. one client: first-open time (open + embedding) of fresh images, and click round trips;
2. N clients (default 20) clicking for D seconds (default 30); now and then a client opens another
   image, so encoder passes run while others click and the embedding cache (--cache-size) evicts.

The server's resident memory is sampled throughout. Prints a Markdown report; ``--results FILE``
writes it as the "Serve" section of that file (other sections are kept).

    python benchmarks/load_serve.py --clients 20 --seconds 30 --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    import cv2

    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        h, w = (480, 640) if i % 2 == 0 else (768, 1024)
        img = np.full((h, w, 3), rng.integers(60, 200, 3), np.uint8)
        for _ in range(6):
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.circle(img, (x, y), int(rng.integers(20, min(h, w) // 4)), c, -1)
        name = f"img_{i:02d}.png"
        cv2.imwrite(str(folder / name), img)
        names.append(name)
    return names


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Client:
    """One keep-alive HTTP connection, as one browser tab."""

    reconnects = 0

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=120)

    def post(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else b""
        for attempt in (0, 1):
            try:
                self.conn.request("POST", path, body=data, headers={"content-type": "application/json"})
                r = self.conn.getresponse()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                # The server closes idle keep-alive connections (uvicorn: after 5 s); a browser
                # then opens a new one and sends the request again, and so does this client.
                if attempt:
                    raise
                Client.reconnects += 1
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        raw = r.read()
        return r.status, json.loads(raw) if raw else {}

    def open(self, name: str) -> tuple[dict, float, bool]:
        """Open an image and wait for its embedding: (image, seconds, embedding was cached)."""
        t0 = time.perf_counter()
        status, img = self.post("/api/images/open", {"name": name})
        if status != 200:
            raise RuntimeError(f"open {name}: {status} {img}")
        status, emb = self.post(f"/api/images/{img['id']}/embed")
        if status != 200:
            raise RuntimeError(f"embed {name}: {status} {emb}")
        return img, time.perf_counter() - t0, emb["cached"]

    def click(self, img: dict, rng: random.Random) -> float:
        w, h = img["width"], img["height"]
        kind = rng.random()
        if kind < 0.6:
            n = rng.randint(1, 3)
            body = {
                "points": [[rng.uniform(0, w), rng.uniform(0, h)] for _ in range(n)],
                "labels": [1] + [rng.randint(0, 1) for _ in range(n - 1)],
            }
        else:
            x1, y1 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            body = {"box": [x1, y1, x1 + rng.uniform(10, w / 2), y1 + rng.uniform(10, h / 2)]}
            if kind > 0.85:
                body.update(
                    points=[[(body["box"][0] + body["box"][2]) / 2, (body["box"][1] + body["box"][3]) / 2]], labels=[1]
                )
        t0 = time.perf_counter()
        status, r = self.post(f"/api/images/{img['id']}/predict", body)
        if status != 200 or "rle" not in r:
            raise RuntimeError(f"predict: {status} {str(r)[:200]}")
        return time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"p50 {pct(values, 50):.0f} ms, p90 {pct(values, 90):.0f} ms, p99 {pct(values, 99):.0f} ms, "
        f"max {max(values) * 1000:.0f} ms"
    )


def start_server(model: str, images: Path, cache_size: int) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mobilesam",
            "serve",
            "--model",
            model,
            "--images",
            str(images),
            "--port",
            "0",
            "--cache-size",
            str(cache_size),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    m = re.match(r"mobilesam serve: http://([\d.]+):(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, m.group(1), int(m.group(2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint (default: a random-weight vit_t written to a temp dir)")
    ap.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration of the many-client phase (default 30)")
    ap.add_argument("--images", type=int, default=32, help="synthetic images in the folder (default 32)")
    ap.add_argument(
        "--cache-size", type=int, default=24, help="server --cache-size (default 24; fewer than the clients thrash)"
    )
    ap.add_argument(
        "--open-every",
        type=int,
        default=100,
        help="a client opens another image about every this many clicks (default 100)",
    )
    ap.add_argument("--results", type=Path, default=None, help="write the report as the 'Serve' section of this file")
    args = ap.parse_args()

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="mobilesam-load-"))
    folder = tmp / "images"
    folder.mkdir()
    names = make_images(folder, args.images)
    model = args.model
    if model is None:
        from mobilesam.modeling import build_model

        torch.manual_seed(0)
        model = str(tmp / "vit_t_random.pt")
        torch.save(build_model("vit_t").state_dict(), model)

    proc, host, port = start_server(model, folder, args.cache_size)
    rss: list[tuple[float, float]] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not stop_sampling.is_set():
            rss.append((time.perf_counter() - t0, rss_mb(proc.pid)))
            stop_sampling.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # Phase 1: one client.
        c = Client(host, port)
        opens_fresh, opens_cached, single_clicks = [], [], []
        rng = random.Random(0)
        for name in names[:3]:
            img, sec, cached = c.open(name)
            (opens_cached if cached else opens_fresh).append(sec)
        img, sec, cached = c.open(names[0])
        (opens_cached if cached else opens_fresh).append(sec)
        for _ in range(5):  # warm-up
            c.click(img, rng)
        for _ in range(100):
            single_clicks.append(c.click(img, rng))
        rss_after_single = rss_mb(proc.pid)

        # Phase 2: many clients.
        clicks: list[float] = []
        first_opens: list[tuple[float, bool]] = []
        opens: list[tuple[float, bool]] = []
        errors: list[str] = []
        lock = threading.Lock()
        ready = threading.Barrier(args.clients + 1)
        go = threading.Event()
        deadline = 0.0

        def run_client(k: int) -> None:
            r = random.Random(k + 1)
            try:
                cl = Client(host, port)
                im, s, cached = cl.open(names[k % len(names)])  # all clients open at once
                with lock:
                    first_opens.append((s, cached))
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"client {k}: {type(e).__name__}: {e}")
                ready.abort()
                return
            ready.wait()
            go.wait()
            try:
                while time.perf_counter() < deadline:
                    if r.random() < 1 / args.open_every:
                        im, s, cached = cl.open(r.choice(names))
                        with lock:
                            opens.append((s, cached))
                        continue
                    lat = cl.click(im, r)
                    with lock:
                        clicks.append(lat)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"client {k}: {type(e).__name__}: {e}")

        t_open = time.perf_counter()
        threads = [threading.Thread(target=run_client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            pass  # a client failed to open its image: reported with the errors
        open_wall = time.perf_counter() - t_open
        rss_after_opens = rss_mb(proc.pid)
        t0 = time.perf_counter()
        deadline = t0 + args.seconds
        go.set()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        stop_sampling.set()
        sampler.join()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()

    fresh = [s for s, cached in opens if not cached]
    warm = [s for s, cached in opens if cached]
    rss_vals = [v for _, v in rss]
    half = [v for t, v in rss if t >= rss[-1][0] / 2]
    load = os.getloadavg()
    lines = [
        "## Serve",
        "",
        f"`python benchmarks/load_serve.py --clients {args.clients} --seconds {args.seconds:g} --cache-size "
        f"{args.cache_size} --images {args.images} --open-every {args.open_every}` "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; load average at the end "
        f"{load[0]:.1f}; `mobilesam serve` on CPU with a vit_t (MobileSAM) checkpoint of random weights, "
        f"{args.images} synthetic PNG images of 640x480 and 1024x768)."
        + (
            f" Other jobs shared the {os.cpu_count()} CPUs during the run: the times are upper bounds."
            if load[0] > (os.cpu_count() or 1)
            else ""
        ),
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| first open, one client (open + image embedding, {len(opens_fresh)} images) | {stats(opens_fresh)} |",
        f"| reopen of an embedded image, one client | {stats(opens_cached)} |",
        f"| click round trip, one client ({len(single_clicks)} clicks: prompt encoder + decoder + mask encoding) | "
        f"{stats(single_clicks)} |",
        f"| {args.clients} clients open {args.clients} images at once (one encoder thread: they queue; all "
        f"done in {open_wall:.1f} s) | {stats([s for s, _ in first_opens])} |",
        f"| click round trip, {args.clients} clients clicking for {wall:.0f} s ({len(clicks)} clicks, "
        f"{len(clicks) / wall:.1f} clicks/s; a client opens another image every ~{args.open_every} clicks) | "
        f"{stats(clicks)} |",
        f"| first open while the others click ({len(fresh)} with an encoder pass) | {stats(fresh)} |",
        f"| reopen while the others click ({len(warm)} cached) | {stats(warm)} |",
        f"| errors (non-200 answers, exceptions) | {len(errors)} ({Client.reconnects} reconnections after the "
        f"server closed an idle keep-alive connection, as browsers do) |",
        f"| server memory (RSS) | {rss_after_single:.0f} MB after one client, {rss_after_opens:.0f} MB after the "
        f"{args.clients} opens; while clicking: second half {min(half):.0f}-{max(half):.0f} MB, peak "
        f"{max(rss_vals):.0f} MB, end {rss_vals[-1]:.0f} MB |",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    for e in errors[:10]:
        print("error:", e, file=sys.stderr)
    if args.results:
        write_section(args.results, report)
    return 1 if errors else 0


def write_section(path: Path, section: str, title: str = "Serve") -> None:
    """Replace (or append) the '## {title}' section of a Markdown file, keeping the others; atomic."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
