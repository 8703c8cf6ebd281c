"""Predictor benchmark: ours against the official code, same weights and image, one run.

Image-encoder latency, single-prompt decoder latency (decoder + post-processing to a full-size mask),
image-to-first-mask latency, a 64-prompt batch and peak memory (RSS high-water mark), printed as a
markdown table with ratios to the official code. Each backend, the official code included, runs in
its own process with the default environment; the processes alternate over several rounds.

    python benchmarks/bench_predictor.py                                   # mobile_sam.pt, or random vit_t
    python benchmarks/bench_predictor.py --backends torch,torch-bf16,onnxruntime,onnxruntime-int8 --rounds 5
    python benchmarks/bench_predictor.py --model sam_vit_b_01ec64.pth --image photo.jpg --out bench.md

It is ``mobilesam benchmark --vs-official --random-weights`` with more backends by default; every
option of ``mobilesam benchmark`` applies.
"""

from __future__ import annotations

import sys

from mobilesam.cli import main

DEFAULTS = ["--vs-official", "--random-weights", "--backends", "torch,torch-bf16,onnxruntime,onnxruntime-int8"]


if __name__ == "__main__":
    argv = sys.argv[1:]
    given = {a.split("=")[0] for a in argv}
    extra = [a for i, a in enumerate(DEFAULTS) if not (a == "--backends" and "--backends" in given)
             and not (i > 0 and DEFAULTS[i - 1] == "--backends" and "--backends" in given)]
    sys.exit(main(["benchmark", *extra, *argv]))
