"""What ``mobilesam.tune_allocator()`` buys: a 64-prompt multimask batch decoded to full-size masks, in
fresh processes, with and without the allocator tuning, alternating.

    python benchmarks/bench_allocator.py                 # this tree
    python benchmarks/bench_allocator.py --compare SRC   # also another checkout's src/ (e.g. an older commit)

Each run: vit_t with random weights, one 1280x853 random image, ``predict_torch`` of 64 single-point
prompts with ``multimask_output=True``, median of 3 after a warm-up, 1 thread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

WORKER = r"""
import os, time
import numpy as np, torch
torch.set_num_threads(1)
import mobilesam
if os.environ.get("BENCH_TUNE") == "1":
    mobilesam.tune_allocator()
from mobilesam.modeling import build_model
from mobilesam.predictor import SamPredictor
torch.manual_seed(0)
p = SamPredictor(build_model("vit_t").eval())
rng = np.random.default_rng(0)
p.set_image(rng.integers(0, 255, (853, 1280, 3), dtype=np.uint8))
pts = torch.as_tensor(p.transform.apply_coords(rng.uniform(0, 800, (64, 1, 2)), (853, 1280)), dtype=torch.float)
lab = torch.ones(64, 1, dtype=torch.int)
ts = []
for _ in range(4):
    t = time.perf_counter()
    p.predict_torch(pts, lab, multimask_output=True)
    ts.append(time.perf_counter() - t)
print(round(1000 * float(np.median(ts[1:]))))
"""


def run(src: str | None, tune: bool) -> int:
    env = dict(os.environ, BENCH_TUNE="1" if tune else "0")
    if src:
        env["PYTHONPATH"] = src
    out = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, check=True,
                         cwd="/" if src else None)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", default=None, help="another checkout's src/ folder, timed alternately")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    trees = [("this tree", None)] + ([(args.compare, args.compare)] if args.compare else [])
    results: dict[tuple[str, bool], list[int]] = {}
    for _ in range(args.rounds):
        for name, src in trees:
            for tune in (True, False):
                results.setdefault((name, tune), []).append(run(src, tune))
    print("| code | tune_allocator() | 64-prompt multimask batch ms (each round) |\n|---|---|---|")
    for (name, tune), ms in results.items():
        print(f"| {name} | {'yes' if tune else 'no'} | {' / '.join(map(str, ms))} |")


if __name__ == "__main__":
    main()
