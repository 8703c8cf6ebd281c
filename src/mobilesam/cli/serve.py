"""``mobilesam serve``: the labelling web app (FastAPI + uvicorn, from the ``serve`` extra)."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from typing import Any

from ..allocator import tune_allocator
from . import (
    CLIError,
    add_backend_argument,
    add_embedding_cache_arguments,
    add_model_argument,
    check_backend,
    embedding_cache_options,
)

EXAMPLES = """examples:
  mobilesam serve --images data/images               label the images of a folder (labels saved beside them)
  mobilesam serve --model mobile_sam.pt --port 8080  upload images from the browser
  mobilesam serve --host 0.0.0.0 --images data       reachable from other machines (no authentication!)
  mobilesam serve --images data --decode server      every click decoded on the server (no WebAssembly needed)
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="label images in the browser: click, shift-click and drag for masks; export COCO / YOLO / PNG",
        description="Start the labelling web app and print its address. Needs: pip install 'mobilesam[serve]'.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(p)
    add_backend_argument(p)
    p.add_argument(
        "--images",
        metavar="DIR",
        default=None,
        help="folder of images to pick from; labels are saved beside them (e.g. --images data/images)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; e.g. --host 0.0.0.0)",
    )
    p.add_argument(
        "--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one; e.g. --port 8080)"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda, then mps, then cpu; e.g. --device cpu)")
    add_embedding_cache_arguments(p, batch=False)
    p.add_argument(
        "--cache-size",
        type=int,
        default=16,
        help="image embeddings kept in memory, about 4 MB each (default: %(default)s; e.g. --cache-size 64)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=32.0,
        help="largest image file accepted, in MB (default: %(default)s; e.g. --max-upload-mb 64)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="largest image accepted, in pixels (default: %(default)s; e.g. --max-pixels 100000000)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=8,
        help="images opened or uploaded and still waiting for the image encoder; more are refused with HTTP 503 "
        "until it catches up (default: %(default)s; e.g. --max-queue 32)",
    )
    p.add_argument(
        "--decode",
        choices=["auto", "browser", "server"],
        default="auto",
        help="where clicks are decoded: 'browser' (the page runs the prompt decoder with onnxruntime-web on an "
        "embedding it downloads once per image; the server only encodes images), 'server' (one request per "
        "click), 'auto' (default: the browser where the model has an exported decoder, SAM and MobileSAM; "
        "the page itself falls back to the server without WebAssembly); e.g. --decode server",
    )
    p.add_argument(
        "--decoder-precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="the decoder the page runs: fp32 (default, the server's masks) or int8 (4x smaller download; "
        "refused unless its masks stay within IoU 0.99 of fp32, measured at export); e.g. --decoder-precision int8",
    )
    p.add_argument(
        "--embedding-dtype",
        choices=["float16", "float32"],
        default="float16",
        help="image embeddings sent to the page as float16 (default, 2 MB for SAM) or float32 (4 MB); "
        "e.g. --embedding-dtype float32",
    )
    from .convert import add_simplify_argument

    add_simplify_argument(p)  # the saved YOLO polygons
    p.set_defaults(func=run)


def _listen_socket(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CLIError(f"--host: cannot resolve {host!r} ({e})", 2) from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise CLIError(f"--port: cannot listen on {host}:{port} ({e.strerror or e}); try another --port") from None
    sock.listen(128)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    # The server owns its process and embeds image after image: keep the encoder's memory between passes
    # (see mobilesam.allocator; main() has done it already unless run() is called directly).
    tune_allocator()
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port: expected 0 to 65535, got {args.port}", 2)
    if args.cache_size < 1:
        raise CLIError(f"--cache-size: expected at least 1, got {args.cache_size}", 2)
    if args.max_queue < 1:
        raise CLIError(f"--max-queue: expected at least 1, got {args.max_queue}", 2)
    if not args.max_upload_mb > 0 or args.max_pixels < 1:
        raise CLIError("--max-upload-mb, --max-pixels: expected positive limits", 2)
    cache_options = embedding_cache_options(args)
    try:
        import uvicorn

        from ..server import create_app
    except ModuleNotFoundError as e:
        raise CLIError(f"serve needs the 'serve' extra ({e.name} is missing): pip install 'mobilesam[serve]'") from None
    loopback = _is_loopback(args.host)
    sock = _listen_socket(args.host, args.port)  # first: a busy port fails before the model is loaded
    try:
        app = create_app(
            args.model,
            args.images,
            args.cache_size,
            device=args.device,
            backend=check_backend(args.backend),
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            max_pixels=args.max_pixels,
            max_queue=args.max_queue,
            **cache_options,
            # Against DNS rebinding: on loopback only local host names are accepted.
            allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]", args.host] if loopback else None,
            decode=args.decode,
            decoder_precision=args.decoder_precision,
            embedding_dtype=args.embedding_dtype,
            simplify=args.simplify,
        )
    except ValueError as e:
        sock.close()
        msg = str(e)
        for name in ("decode", "decoder_precision", "embedding_dtype"):
            if msg.startswith(f"{name}:"):
                raise CLIError("--" + name.replace("_", "-") + msg[len(name) :], 2) from None
        raise
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"mobilesam serve: http://{shown}:{port}  (Ctrl+C to stop)", flush=True)
    if not loopback:
        print(
            "mobilesam serve: warning: listening beyond this machine with no authentication; anyone who can reach "
            "it can open images and write labels",
            file=sys.stderr,
            flush=True,
        )
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
