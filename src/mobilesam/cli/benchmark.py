"""``mobilesam benchmark``: encoder and per-prompt latency and peak memory of each backend, optionally
against the official code, each in its own process, alternating."""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  mobilesam benchmark                                            torch and onnxruntime on mobile_sam.pt
  mobilesam benchmark --vs-official --backends torch,torch-bf16,onnxruntime,onnxruntime-int8
  mobilesam benchmark --model my_sam.pt --image bus.jpg --rounds 5 --out results.md
  mobilesam benchmark --random-weights --vs-official             no weights at hand: random vit_t
  mobilesam benchmark --peers                                    also SAM-b, SAM2, FastSAM, YOLO-seg (Ultralytics)

Backends: torch (fp32, default), torch-bf16 (encoder under bf16 autocast; fast on CPUs with AMX/AVX512-BF16),
onnxruntime (fp32), onnxruntime-int8 (int8 encoder, fp32 decoder; needs VNNI to be fast), official.
Ratios are against the official code measured in the same run. Numbers vary with other load on the
machine: rerun with more --rounds on a quiet machine for figures to publish.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..export.bench import add_arguments

    p = subparsers.add_parser(
        "benchmark",
        help="time the image encoder and the prompt decoder of each backend (and the official code)",
        description="Image-encoder latency, decoder latency per prompt (to a full-size mask), image-to-first-"
        "mask latency, a 64-prompt batch, peak memory (RSS high-water mark) and mask IoU between backends. "
        "Each backend runs in its own process; processes alternate over --rounds rounds; medians are shown.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..export.bench import BACKENDS, run_benchmark
    from . import CLIError

    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backends if b not in BACKENDS]
    if bad or not args.backends:
        got = ",".join(args.backends) or "nothing"
        raise CLIError(f"--backends: expected some of {','.join(BACKENDS)}, got {got}", 2)
    if args.rounds < 1 or args.runs < 1 or args.prompts < 1:
        raise CLIError("--rounds, --runs and --prompts: expected integers >= 1", 2)
    args.argv = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "benchmark" else []
    report = run_benchmark(args)
    print(report)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(report + "\n")
    return 0
