"""``mobilesam benchmark``: encoder and per-prompt latency and peak memory of each backend, optionally
against the official code, each in its own process, alternating. The engine is :mod:`mobilesam.bench`."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
examples:
  mobilesam benchmark                                            torch and onnxruntime on mobile_sam.pt
  mobilesam benchmark --vs-official --backends torch,torch-bf16,onnxruntime,onnxruntime-int8
  mobilesam benchmark --model my_sam.pt --image bus.jpg --rounds 5 --out results.md
  mobilesam benchmark --random-weights --vs-official             no weights at hand: random vit_t
  mobilesam benchmark --peers --vs-official --backends torch,openvino,openvino-bf16,openvino-int8
                                  also the official graph exported the plain way on ONNX Runtime and OpenVINO

Backends: every registered one (mobilesam.backends.available_backends()); built in: torch (fp32, default),
torch-bf16 (encoder under bf16 autocast; fast on CPUs with AMX/AVX512-BF16), onnxruntime (fp32),
onnxruntime-int8 (int8 encoder, fp32 decoder; needs VNNI to be fast), openvino (fp32), openvino-bf16,
openvino-int8 (NNCF int8 encoder); official (the official code); and with --peers peer:onnxruntime,
peer:openvino (OpenVINO's own default precision), peer:openvino-f32: the official graph exported the plain
way a user would (torch.onnx.export / ov.convert_model, default settings).
Ratios are against the official code measured in the same run. Numbers vary with other load on the
machine: rerun with more --rounds on a quiet machine for figures to publish.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..bench import BATCH, DEFAULT_BACKENDS  # mobilesam.bench imports only numpy at its top

    p = subparsers.add_parser(
        "benchmark",
        help="time the image encoder and the prompt decoder of each backend (and the official code)",
        description="Image-encoder latency, decoder latency per prompt (to a full-size mask), image-to-first-"
        "mask latency, a 64-prompt batch, peak memory (RSS high-water mark) and mask IoU between backends. "
        "Each backend runs in its own process; processes alternate over --rounds rounds; medians are shown.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="mobile_sam.pt",
                   help="checkpoint file or known weights name (default: %(default)s); e.g. --model my_sam.pt")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                   help="comma-separated registered backends, or official (default: %(default)s); "
                        "e.g. --backends torch,torch-bf16,onnxruntime-int8")
    p.add_argument("--vs-official", action="store_true",
                   help="also time the official code (mobile_sam / segment_anything) in its own process; "
                        "e.g. --vs-official")
    p.add_argument("--image", default=None,
                   help="image file to time on (default: a synthetic 1280x853 image); e.g. --image bus.jpg")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds, one process per backend per round (default: %(default)s); e.g. --rounds 5")
    p.add_argument("--runs", type=int, default=3,
                   help="encoder passes per process (default: %(default)s); e.g. --runs 5")
    p.add_argument("--prompts", type=int, default=10,
                   help="single-point prompts timed per process (default: %(default)s); e.g. --prompts 20")
    p.add_argument("--no-batch", action="store_true",
                   help=f"skip the {BATCH}-prompt batch (time and peak memory); e.g. --no-batch")
    p.add_argument("--random-weights", action="store_true",
                   help="if the checkpoint is not available, time a randomly initialised vit_t; e.g. --random-weights")
    p.add_argument("--peers", action="store_true",
                   help="also time the official graph exported the plain way on ONNX Runtime and OpenVINO (default "
                        "settings) in the same rounds, and SAM-b, SAM2-t/b, FastSAM-s, YOLOv8n-seg, YOLO11n-seg "
                        "through Ultralytics when installed and their weights are present; e.g. --peers")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for every backend, the official code included (default: each "
                        "runtime's own default); on a busy machine 1 gives steadier ratios; e.g. --threads 1")
    p.add_argument("--table", choices=["brief"], default=None,
                   help="print the brief's comparison table instead: size, parameters and CPU ms per image of "
                        "SAM-b, SAM2-b, SAM2-t and MobileSAM (random weights where files are absent), through "
                        "Ultralytics too when installed, beside the brief's figures; e.g. --table brief")
    p.add_argument("--table-models", default="",
                   help="with --table brief: the rows to time (default: all), among "
                        "sam_b,sam2_b,sam2_t,mobile_sam,fastsam_s,yolov8n_seg,yolo11n_seg; e.g. --table-models sam2_t")
    p.add_argument("--points-per-side", type=int, default=32,
                   help="with --table brief: our segment-everything grid (default: %(default)s, Ultralytics' grid); "
                        "e.g. --points-per-side 16")
    p.add_argument("--out", default=None, help="also write the markdown report to this file; e.g. --out bench.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import bench
    from . import CLIError

    if args.table == "brief":
        return _run_brief_table(args)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.vs_official:
        backends.append(bench.OFFICIAL)
    try:
        bench.check_options(backends, args.rounds, args.runs, args.prompts)
    except ValueError as e:  # its message starts with the parameter's name: the option without "--"
        raise CLIError(f"--{e}", 2) from None
    if args.out and args.image and Path(args.out).resolve() == Path(args.image).resolve():
        raise CLIError(f"--out: '{args.out}' is the --image input; choose another file for the report", 2)
    report = bench.run_benchmark(
        args.model,
        backends,
        image=args.image,
        rounds=args.rounds,
        runs=args.runs,
        prompts=args.prompts,
        batch=not args.no_batch,
        random_weights=args.random_weights,
        peers=args.peers,
        threads=args.threads,
        command=" ".join(["mobilesam benchmark", *getattr(args, "command_argv", [])]),
    )
    print(report)
    if args.out:
        from ..io import atomic_write_text

        atomic_write_text(args.out, report + "\n")
    return 0


def _run_brief_table(args: argparse.Namespace) -> int:
    from .. import bench_brief
    from . import CLIError

    keys = [k.strip() for k in args.table_models.split(",") if k.strip()]
    try:
        bench_brief.check_rows(keys)
        report = bench_brief.run_brief_table(
            table_models=keys, image=args.image, rounds=args.rounds, runs=args.runs,
            points_per_side=args.points_per_side, threads=args.threads,
            command=" ".join(["mobilesam benchmark", *getattr(args, "command_argv", [])]),
        )
    except ValueError as e:  # its message starts with the parameter's name: the option without "--"
        name, _, rest = str(e).partition(":")
        raise CLIError(f"--{name.replace('_', '-')}:{rest}", 2) from None
    print(report)
    if args.out:
        from ..io import atomic_write_text

        atomic_write_text(args.out, report + "\n")
    return 0
