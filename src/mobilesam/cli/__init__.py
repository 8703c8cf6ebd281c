"""The ``mobilesam`` command line: a thin layer over the Python API.

Each sub-command lives in its own module of this package, which defines ``register(subparsers)``;
the parser it adds sets ``func`` (called with the parsed args, returning an exit code).
Errors print one line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Sequence

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
