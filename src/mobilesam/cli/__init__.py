"""The ``mobilesam`` command line: a thin layer over the Python API.

Each sub-command lives in its own module of this package, which defines ``register(subparsers)``;
the parser it adds sets ``func`` (called with the parsed args, returning an exit code).
Errors print one line; ``--debug`` shows the traceback.

``mobilesam --help`` and argument errors must stay fast: command modules import nothing heavy (torch,
OpenCV, ...) at their top, only inside the function that runs the command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..allocator import tune_allocator

# Sub-command modules, in the order --help lists them.
COMMAND_MODULES = [
    "predict",
    "everything",
    "info",
    "export",
    "benchmark",
    "annotate",
    "convert",
    "embed",
    "train",
    "assemble",
    "val",
    "finetune",
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


def add_embedding_cache_arguments(parser: argparse.ArgumentParser, batch: bool = True) -> None:
    """``--embedding-cache DIR`` (image embeddings kept on disk across runs and commands) and, for the
    commands that run over folders, ``--batch N`` (images per image-encoder call)."""
    parser.add_argument(
        "--embedding-cache", default=None, metavar="DIR",
        help="keep image embeddings in this folder (float16, keyed by image content, weights, backend and "
        "precision; shared by predict, everything, annotate and serve): an image seen before costs no encoder "
        "pass; e.g. --embedding-cache ~/.cache/mobilesam/embeddings",
    )
    parser.add_argument(
        "--embedding-cache-gb", type=float, default=4.0, metavar="GB",
        help="size bound of --embedding-cache, least recently used embeddings out (default: %(default)s); "
        "e.g. --embedding-cache-gb 10",
    )
    if batch:
        parser.add_argument(
            "--batch", type=int, default=1, metavar="N",
            help="images per image-encoder call (the next images are read meanwhile; on a CPU with few cores 1 is "
            "as fast; default: %(default)s); e.g. --batch 4",
        )


def embedding_cache_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Python API's ``embedding_cache`` / ``embedding_cache_bytes`` from the options above (usage errors
    name the option)."""
    if getattr(args, "batch", 1) < 1:
        raise CLIError(f"--batch: expected an integer >= 1, got {args.batch}", 2)
    if not args.embedding_cache_gb > 0:
        raise CLIError(f"--embedding-cache-gb: expected a positive size, got {args.embedding_cache_gb}", 2)
    if args.embedding_cache is None:
        return {"embedding_cache": None, "embedding_cache_bytes": None}
    return {"embedding_cache": args.embedding_cache,
            "embedding_cache_bytes": max(1, int(args.embedding_cache_gb * 2**30))}


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


def add_save_dir_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--save-dir`` and ``--exist-ok``, shared by the commands that write results per image."""
    parser.add_argument(
        "--save-dir",
        default=None,
        help=f"output folder (default: {default}, or {default}2, ... if that is not empty): --save-dir out/",
    )
    parser.add_argument(
        "--exist-ok",
        action="store_true",
        help="allow replacing the results of an earlier run in --save-dir (refused otherwise; inputs are "
        "never overwritten): --exist-ok",
    )


def input_files(entries: Iterable[Any]) -> set[Path]:
    """The resolved paths of the local files among resolved source entries (what outputs must not replace)."""
    return {Path(e.obj).resolve() for e in entries if getattr(e, "kind", None) == "file"}


def planned_stems(entries: Iterable[Any]) -> set[str]:
    """The output stems a run over ``entries`` will use if no image is skipped (files the folder walk found
    that are not images are skipped, so they take none)."""
    from ..io import IMAGE_SUFFIXES

    taken: set[str] = set()
    for e in entries:
        if e.kind == "url" or (e.kind == "file" and (not e.skippable or Path(e.name).suffix.lower() in IMAGE_SUFFIXES)):
            unique_stem(e.name, taken)
    return taken


def unique_stem(name: str, taken: set[str]) -> str:
    """The file stem of ``name`` (``image`` if none), with ``_2``, ``_3``, ... if already in ``taken``; added to it."""
    stem = Path(name).stem or "image"
    unique, k = stem, 1
    while unique in taken:
        k += 1
        unique = f"{stem}_{k}"
    taken.add(unique)
    return unique


def overlay_path(save_dir: Path, stem: str, inputs: set[Path]) -> Path:
    """``SAVE_DIR/STEM.png``, or ``STEM_overlay.png`` when that file is one of the inputs: an output never
    replaces an input (e.g. ``predict shot.png --save-dir .``)."""
    path = save_dir / f"{stem}.png"
    return path.with_name(f"{stem}_overlay.png") if path.resolve() in inputs else path


def check_outputs(paths: Iterable[Path], inputs: set[Path], exist_ok: bool, save_dir: Path) -> None:
    """Refuse (one line, before anything is written) to write over an input, into a folder that holds an
    input, or, without ``--exist-ok``, over the results of an earlier run."""
    for path in paths:
        resolved = path.resolve()
        if resolved in inputs or any(resolved in p.parents for p in inputs):
            raise CLIError(
                f"--save-dir: '{path}' would replace an input of this run; choose another --save-dir", exit_code=2
            )
        if path.exists() and not exist_ok:
            raise CLIError(
                f"--save-dir: '{save_dir}' already holds results ('{path}' exists); pass --exist-ok to replace "
                "them, or choose another --save-dir",
                exit_code=2,
            )


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, so that a result is committed whole; re-raised after it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or _held:
        yield  # another thread (no signals there), or inside a block that already holds Ctrl-C
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    _held.append(True)
    try:
        yield
    finally:
        _held.pop()
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


_held: list[bool] = []


def write_folder(folder: Path, write: Callable[[Path], None], result_names: str) -> Path:
    """Fill ``folder`` through ``write(tmp)`` in a hidden sibling folder, then swap it in for the old one.

    An interruption (Ctrl-C, an error) while writing leaves the old folder as it was and no temporary
    folder; the swap itself runs with Ctrl-C held. So a result folder is always one run's, whole. An old
    folder holding anything whose name does not match the regex ``result_names`` is not replaced.
    """
    import re
    import secrets
    import shutil

    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise CLIError(f"--save-dir: '{folder}' is a link or a file; refusing to replace it with a results folder")
    if folder.is_dir():
        foreign = [p.name for p in folder.iterdir() if not (p.is_file() and re.fullmatch(result_names, p.name))]
        if foreign:
            raise CLIError(
                f"--save-dir: '{folder}' holds '{sorted(foreign)[0]}', not a result of this command; "
                "refusing to replace it (move it away, or choose another --save-dir)"
            )

    token = secrets.token_hex(6)
    tmp = folder.with_name(f".{folder.name}.{token}.part")
    old = folder.with_name(f".{folder.name}.{token}.old")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        write(tmp)
        with deferred_interrupt():
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


class _Parser(argparse.ArgumentParser):
    """argparse with a hint for the usual cause of stray arguments: a glob the shell expanded."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            extras = message.split(":", 1)[1].split()
            if any(os.path.exists(x) for x in extras):
                message += (
                    " (the shell expanded a glob into several files? quote the pattern, e.g. 'images/*.jpg', "
                    "or pass the folder)"
                )
        return super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    for command in sub.choices.values():  # --debug also after the command name: mobilesam predict x.jpg --debug
        if "--debug" not in command._option_string_actions:
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show full tracebacks on errors")
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
