"""The ``mobilesam`` command line: a thin layer over the Python API.

Each sub-command lives in its own module of this package, which defines ``register(subparsers)``;
the parser it adds sets ``func`` (called with the parsed args, returning an exit code).
Errors print one line; ``--debug`` shows the traceback.

``mobilesam --help`` and argument errors must stay fast: command modules import nothing heavy (torch,
OpenCV, ...) at their top, only inside the function that runs the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Sequence

from ..allocator import tune_allocator

# Sub-command modules, in the order --help lists them.
COMMAND_MODULES = [
    "predict",
    "everything",
    "info",
    "export",
    "benchmark",
    "annotate",
    "embed",
    "train",
    "assemble",
    "val",
    "serve",
]


class CLIError(Exception):
    """An error meant for the user: printed as one line, exit code 1 (2 for usage errors)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--model`` option every model-running command shares."""
    parser.add_argument(
        "--model",
        default="mobile_sam.pt",
        help="checkpoint file or known weights name, downloaded on first use (default: %(default)s); "
        "e.g. --model weights/my_sam.pth",
    )


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--backend`` option every model-running command shares (checked against the registry when the
    command runs, so ``--help`` needs no torch)."""
    parser.add_argument(
        "--backend",
        default="torch",
        help="predictor backend: torch (exact), torch-bf16, onnxruntime, onnxruntime-int8 (exported once into "
        "the cache; needs mobilesam[onnx]), or one registered with mobilesam.backends.register_backend "
        "(default: %(default)s); --model may then also be an exported folder",
    )


def check_backend(name: str) -> str:
    """``name`` if a backend of that name is registered; a usage error naming ``--backend`` otherwise."""
    from ..backends import available_backends

    if name not in available_backends():
        raise CLIError(f"--backend: expected one of {', '.join(available_backends())}, got {name!r}", exit_code=2)
    return name


def next_free_dir(base: str | Path) -> Path:
    """``base``, or ``base2``, ``base3``, ... : the first that does not exist or is empty (as Ultralytics)."""
    base = Path(base)
    path, k = base, 1
    while path.exists() and any(path.iterdir()):
        k += 1
        path = base.with_name(f"{base.name}{k}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobilesam",
        description="MobileSAM / SAM from the command line. Run 'mobilesam COMMAND --help' for each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue  # a command not built in this version
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # The sub-command's own arguments (only --debug may come before its name), e.g. for a report to quote.
    args.command_argv = argv[argv.index(args.command) + 1 :]
    tune_allocator()  # the command line owns its process (see mobilesam.allocator)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mobilesam: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's one place that turns errors into one line
        if debug:
            raise
        code = e.exit_code if isinstance(e, CLIError) else 1
        msg = str(e) or type(e).__name__
        print(f"mobilesam {args.command}: error: {msg}", file=sys.stderr)
        return code
