"""The FastAPI app behind ``mobilesam serve``: JSON endpoints for images, prompts and labels, plus the page."""

from __future__ import annotations

import base64
import binascii
import gzip
import importlib.util
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__
from ..backends import create_predictor, get_backend, is_exported_model
from ..cache import DiskFeatureCache
from .engine import EncoderBusy, Engine, EverythingUnavailable, PredictorLike, Slot
from .images import (
    DecodedImage,
    ImageFolder,
    ImageInputError,
    decode_image,
    read_limited,
)
from .labels import (
    LabelError,
    LabelObject,
    LabelStore,
    check_class_name,
    class_list,
    mask_from_rle,
    mask_payload,
    safe_stem,
    to_coco,
    to_png_zip,
    to_yolo,
)
from ..export.web_decoder import NoWebDecoder, WebDecoder, web_decoder_for

STATIC_DIR = Path(__file__).parent / "static"
ORT_DIR = STATIC_DIR / "ort"  # onnxruntime-web, vendored (scripts/vendor_onnxruntime_web.py)
ORT_WASM = "ort-wasm-simd-threaded.wasm"
DECODE_MODES = ("auto", "browser", "server")
EMBEDDING_DTYPES = ("float16", "float32")
LOW_RES = 256  # side of the decoder's low-resolution logits (mask input and output)
logger = logging.getLogger("mobilesam")
MAX_POINTS = 64
MAX_OBJECTS = 2000
MAX_EVERYTHING_MASKS = 512
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


# -- request bodies ----------------------------------------------------------------------------------------


class Prompts(BaseModel):
    """One object's prompts in original-image pixels."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    points: list[tuple[float, float]] = Field(default_factory=list, max_length=MAX_POINTS)
    labels: list[int] = Field(default_factory=list, max_length=MAX_POINTS)
    box: tuple[float, float, float, float] | None = None


class PredictBody(Prompts):
    multimask: bool | None = None  # None: three candidates for a lone point (ambiguous), else one
    # Logits of an earlier mask of this object (refinement): base64 of LOW_RES x LOW_RES little-endian
    # float32, as returned in "low_res" when ``return_low_res`` is set.
    mask_input: str | None = Field(default=None, max_length=4 * LOW_RES * LOW_RES * 4 // 3 + 8)
    return_low_res: bool = False


class ObjectBody(Prompts):
    class_name: str
    rle: dict[str, Any]
    score: float | None = None


class ObjectsBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    objects: list[ObjectBody] = Field(max_length=MAX_OBJECTS)
    classes: list[str] | None = Field(default=None, max_length=MAX_OBJECTS)


class OpenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


# -- state -------------------------------------------------------------------------------------------------


@dataclass
class ImageRecord:
    id: str
    name: str
    size: tuple[int, int]  # (h, w)
    key: str
    data: bytes | None = None  # an upload's bytes (kept to re-embed after cache eviction)
    path: Path | None = None  # an image of the folder


class Registry:
    """Open images by random id; bounded by count and by the bytes of uploads kept."""

    def __init__(self, max_images: int, max_bytes: int) -> None:
        self.max_images, self.max_bytes = max_images, max_bytes
        self._items: OrderedDict[str, ImageRecord] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, rec: ImageRecord) -> None:
        with self._lock:
            self._items[rec.id] = rec
            while len(self._items) > self.max_images or (
                len(self._items) > 1 and sum(len(r.data or b"") for r in self._items.values()) > self.max_bytes
            ):
                self._items.popitem(last=False)

    def get(self, image_id: str) -> ImageRecord:
        with self._lock:
            rec = self._items.get(image_id) if _ID_RE.match(image_id) else None
            if rec is None:
                raise HTTPException(404, f"image id: {image_id[:80]!r} is unknown or expired; open the image again")
            self._items.move_to_end(image_id)
            return rec

    def __len__(self) -> int:
        return len(self._items)


# -- middleware --------------------------------------------------------------------------------------------


class GuardMiddleware:
    """Request body limit, same-origin check for state-changing requests, and security headers."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data: blob:; script-src 'self' 'wasm-unsafe-eval'; "
            b"worker-src 'self' blob:; style-src 'self'; "
            b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        # Cross-origin isolation: SharedArrayBuffer, so onnxruntime-web decodes with several threads.
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-embedder-policy", b"require-corp"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def _reply(self, send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + self.HEADERS,
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != headers.get("host"):
                await self._reply(send, 403, f"cross-origin request from {origin!r} refused")
                return
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            await self._reply(send, 400, f"content-length: expected a number of bytes, got {length[:40]!r}")
            return
        if length is not None and int(length) > self.max_body:
            await self._reply(send, 413, f"request body: {length} bytes is more than the limit of {self.max_body:,}")
            return
        received = 0
        started = cut = False

        # A body without a Content-Length (chunked) is counted as it arrives. Past the limit the 413 is
        # sent from here and the app is told the client left: an exception raised into the app would be
        # caught by the body parser and answered as a 400 parse error.
        async def limited_receive() -> Message:
            nonlocal received, cut
            if cut:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_body:
                    cut = True
                    if not started:
                        await self._reply(
                            send, 413, f"request body: more than the limit of {self.max_body:,} bytes"
                        )
                    return {"type": "http.disconnect"}
            return msg

        async def send_with_headers(msg: Message) -> None:
            nonlocal started
            if cut:
                return  # the 413 went out; the app's answer to the cut-off body is dropped
            if msg["type"] == "http.response.start":
                started = True
                msg = dict(msg)
                msg["headers"] = list(msg.get("headers", [])) + self.HEADERS
            await send(msg)

        await self.app(scope, limited_receive, send_with_headers)


# -- helpers -----------------------------------------------------------------------------------------------


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def check_prompts(
    p: Prompts, size: tuple[int, int], where: str = ""
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Prompts as predictor arrays, checked against the image size (h, w); raises HTTP 422 with a message."""
    h, w = size
    if len(p.labels) != len(p.points):
        raise HTTPException(422, f"{where}labels: expected one label per point ({len(p.points)}), got {len(p.labels)}")
    for i, (x, y) in enumerate(p.points):
        if not (0 <= x <= w and 0 <= y <= h):
            raise HTTPException(
                422, f"{where}points[{i}]: ({x:g}, {y:g}) is outside the image (x in [0, {w}], y in [0, {h}])"
            )
    for i, lab in enumerate(p.labels):
        if lab not in (0, 1):
            raise HTTPException(422, f"{where}labels[{i}]: expected 1 (object) or 0 (background), got {lab}")
    box = None
    if p.box is not None:
        x1, y1, x2, y2 = p.box
        if not (0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h):
            raise HTTPException(
                422, f"{where}box: expected x1 <= x2 in [0, {w}] and y1 <= y2 in [0, {h}], got {list(p.box)}"
            )
        box = np.array(p.box, np.float64)
    if not p.points and box is None:
        raise HTTPException(422, f"{where}points, box: give at least one point or a box")
    if not p.points:
        return None, None, box
    return np.array(p.points, np.float64), np.array(p.labels, np.int64), box


def _mask_input(text: str) -> np.ndarray:
    """The ``mask_input`` of a predict body: (1, LOW_RES, LOW_RES) float32 logits; HTTP 422 otherwise."""
    want = LOW_RES * LOW_RES * 4
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, "mask_input: expected base64 of little-endian float32 logits") from None
    if len(raw) != want:
        raise HTTPException(
            422, f"mask_input: expected {want} bytes ({LOW_RES}x{LOW_RES} float32 logits), got {len(raw)}"
        )
    arr = np.frombuffer(raw, "<f4").reshape(1, LOW_RES, LOW_RES).astype(np.float32)
    if not np.isfinite(arr).all():
        raise HTTPException(422, "mask_input: expected finite logits, got NaN or infinity")
    return arr


def _prompts_dict(p: Prompts) -> dict[str, Any]:
    return {"points": [list(xy) for xy in p.points], "labels": list(p.labels), "box": list(p.box) if p.box else None}


def _objects(body: ObjectsBody, rec: ImageRecord) -> tuple[list[LabelObject], list[str] | None]:
    objs = []
    for i, o in enumerate(body.objects):
        where = f"objects[{i}]."
        name = check_class_name(o.class_name, where + "class_name")
        if o.points or o.box:
            check_prompts(o, rec.size, where)
        objs.append(LabelObject(name, mask_from_rle(o.rle, rec.size, where + "rle"), o.score, _prompts_dict(o)))
    known = [check_class_name(c, f"classes[{i}]") for i, c in enumerate(body.classes)] if body.classes else None
    return objs, known


def _saved_objects(objects: list[LabelObject], size: tuple[int, int]) -> list[dict[str, Any]]:
    out = []
    for o in objects:
        prompts = {}
        try:  # prompts are a convenience for editing; ones that do not check out are dropped
            p = Prompts(**{k: o.prompts.get(k) or ([] if k != "box" else None) for k in ("points", "labels", "box")})
            check_prompts(p, size)
            prompts = _prompts_dict(p)
        except Exception:  # noqa: BLE001
            pass
        out.append({"class_name": o.class_name, **prompts, **mask_payload(o.mask, o.score)})
    return out


# -- the app -----------------------------------------------------------------------------------------------


def create_app(
    model: Any = None,
    images_dir: str | os.PathLike | None = None,
    cache_size: int = 16,
    *,
    device: str | None = None,
    backend: str = "torch",
    predictor_factory: Callable[[], PredictorLike] | None = None,
    generator_factory: Callable[[Any], Any] | None = None,
    max_upload_bytes: int = 32 * 1024 * 1024,
    max_pixels: int = 40_000_000,
    max_images: int = 64,
    max_queue: int = 8,
    allowed_hosts: list[str] | None = None,
    decode: str = "auto",
    decoder_precision: str = "fp32",
    embedding_dtype: str = "float16",
    embedding_cache: str | os.PathLike | None = None,
    embedding_cache_bytes: int | None = None,
    simplify: float | None = None,
) -> FastAPI:
    """The web app. ``model`` is a ``Sam``, a checkpoint (path or known name, built with ``build_sam``) or,
    for a backend that runs them, a folder written by ``mobilesam export``.

    ``images_dir``: a folder whose images can be opened and labelled (labels are written beside them).
    ``cache_size``: image embeddings kept (about 4 MB each). ``backend``: a name from
    ``mobilesam.backends.available_backends()``; ``predictor_factory`` makes predictors instead (default
    ``create_predictor(model, backend)``); ``generator_factory(model)`` makes the segment-everything
    generator (default: the fast generator on ``backend``).
    ``max_queue``: images opened or uploaded whose encoder pass has not ended; more get HTTP 503 with
    Retry-After (each holds its file's bytes, not its pixels, until the encoder needs them).
    ``allowed_hosts``: Host header values accepted (against DNS rebinding); None accepts any.
    ``decode``: where clicks are decoded. "browser": the page runs the prompt decoder with
    onnxruntime-web on embeddings it downloads once per image (``embedding_dtype`` on the wire), and the
    server only encodes images; "server": every click is a request; "auto" (default): the browser where
    the model has an exported decoder (SAM / MobileSAM, or an export folder), the server otherwise (and
    the page falls back to the server by itself where WebAssembly is missing). ``decoder_precision``:
    "fp32", or "int8" where its masks stay within IoU 0.99 of fp32 (measured at export).
    ``embedding_cache``: a folder of image embeddings kept across sessions (:class:`~mobilesam.cache.
    DiskFeatureCache`, at most ``embedding_cache_bytes``): reopening an image costs no encoder pass.
    ``simplify``: tolerance in pixels of the saved YOLO polygons (None: ``mobilesam.masks.DEFAULT_SIMPLIFY``;
    0 keeps every contour point).
    """
    for name, value, least in (
        ("max_upload_bytes", max_upload_bytes, 1024),
        ("max_pixels", max_pixels, 1),
        ("max_images", max_images, 1),
        ("max_queue", max_queue, 1),
        ("cache_size", cache_size, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name}: expected an integer >= {least}, got {value!r}")
    from ..masks import DEFAULT_SIMPLIFY, check_simplify

    simplify = DEFAULT_SIMPLIFY if simplify is None else check_simplify(simplify)
    get_backend(backend)  # an unknown name fails before a slow model load
    for name, value, allowed in (
        ("decode", decode, DECODE_MODES),
        ("decoder_precision", decoder_precision, ("fp32", "int8")),
        ("embedding_dtype", embedding_dtype, EMBEDDING_DTYPES),
    ):
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
    disk = DiskFeatureCache.open(embedding_cache, embedding_cache_bytes)
    folder = ImageFolder(images_dir) if images_dir is not None else None  # checked before a slow model load
    if model is not None and not hasattr(model, "image_encoder") and not is_exported_model(model):
        from ..build import build_sam
        from ..device import select_device

        model = build_sam(model, device=select_device(device))
    if predictor_factory is None:
        if model is None:
            raise ValueError("create_app: give a model (a Sam or a checkpoint) or a predictor_factory")

        def predictor_factory() -> PredictorLike:
            return create_predictor(model, backend)

    web: WebDecoder | None = None
    decode_reason = "started with --decode server" if decode == "server" else ""
    if decode != "server":
        try:
            if model is None:
                raise NoWebDecoder("decoder: no model was given (a predictor factory only), so the server decodes")
            web = web_decoder_for(model, decoder_precision)
        except NoWebDecoder as e:
            if decode == "browser":
                raise ValueError(f"decode: cannot decode in the browser: {e}") from None
            decode_reason = str(e)
            logger.info("mobilesam serve: clicks are decoded on the server: %s", e)
    decoder_url = f"/api/decoder/{web.sha256[:16]}.onnx" if web else None
    ort_version = json.loads((ORT_DIR / "VERSION.json").read_text())["version"]

    store = LabelStore(folder.root) if folder else None
    engine = Engine(
        predictor_factory,
        cache_size,
        model=model,
        generator_factory=generator_factory,
        backend=backend,
        max_queue=max_queue,
        disk_cache=disk,
    )
    registry = Registry(max_images, max_bytes=16 * max_upload_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(
        title="mobilesam serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.engine, app.state.registry, app.state.folder = engine, registry, folder
    app.add_middleware(GuardMiddleware, max_body=max_upload_bytes + (1 << 20))
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = []
        for e in exc.errors()[:5]:
            if e.get("type") == "json_invalid":
                err = (e.get("ctx") or {}).get("error", "cannot parse")
                msgs.append(f"body: invalid JSON ({err}) at character {e.get('loc', ('', '?'))[-1]}")
            else:
                msgs.append(f"{_loc(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(msgs)}, status_code=422)

    @app.exception_handler(ImageInputError)
    @app.exception_handler(LabelError)
    async def _input(request: Request, exc: ImageInputError | LabelError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(EncoderBusy)
    async def _busy(request: Request, exc: EncoderBusy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"retry-after": str(exc.retry_after)})

    @app.exception_handler(EverythingUnavailable)
    async def _unavailable(request: Request, exc: EverythingUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=501)

    def read_folder_image(name: str) -> tuple[Path, bytes]:
        """The path and bytes of image ``name`` of the folder as it is now (a 4xx naming it, if it is gone)."""
        assert folder is not None
        path = folder.resolve(name)  # each time: the file may since have been replaced by a link out of the folder
        try:
            return path, read_limited(path, max_upload_bytes)
        except (FileNotFoundError, NotADirectoryError):
            raise ImageInputError(f"name: no image {name!r} in the images folder (deleted or moved?)", 404) from None
        except OSError as e:
            raise ImageInputError(f"image: cannot read '{name}' ({type(e).__name__}: {e.strerror or e})", 403) from None

    def loader(rec: ImageRecord) -> Callable[[], np.ndarray]:
        """Decodes the image when called: pixels exist only while they are used."""

        def load() -> np.ndarray:
            if rec.data is not None:
                return decode_image(rec.data, rec.name, max_pixels).rgb
            try:
                data = read_folder_image(rec.name)[1]
            except ImageInputError as e:
                if e.status != 404:
                    raise
                raise ImageInputError(
                    f"image: '{rec.name}' is no longer in the images folder (deleted or moved since it was opened); "
                    "pick another image",
                    404,
                ) from None
            img = decode_image(data, rec.name, max_pixels)
            if img.key != rec.key:  # its masks and embedding would belong to another picture
                raise ImageInputError(f"image: '{rec.name}' changed on disk since it was opened; open it again", 409)
            return img.rgb

        return load

    def register(img: DecodedImage, name: str, data: bytes | None, path: Path | None, slot: Slot) -> ImageRecord:
        rec = ImageRecord(secrets.token_urlsafe(24), name, img.size, img.key, data, path)
        registry.add(rec)
        # Start the encoder now (the first click is then fast) with a loader, not img.rgb: a queued pass
        # holds the file's bytes, not its pixels.
        engine.submit_embedding(rec.key, loader(rec), slot)
        return rec

    def describe(rec: ImageRecord) -> dict[str, Any]:
        return {
            "id": rec.id,
            "name": rec.name,
            "height": rec.size[0],
            "width": rec.size[1],
            "folder": rec.path is not None,
        }

    # -- page ----------------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    wasm_gz: list[bytes] = []  # read once, on first request

    @app.get(f"/static/ort/{ORT_WASM}", include_in_schema=False)
    async def ort_wasm(request: Request) -> Response:
        # Stored gzip-compressed (3.8 MB instead of 14.8): sent as it is to browsers that take gzip.
        if not wasm_gz:
            wasm_gz.append(await run_in_threadpool((ORT_DIR / f"{ORT_WASM}.gz").read_bytes))
        headers = {"cache-control": "public, max-age=86400", "vary": "accept-encoding"}
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            return Response(wasm_gz[0], media_type="application/wasm", headers={**headers, "content-encoding": "gzip"})
        return Response(await run_in_threadpool(gzip.decompress, wasm_gz[0]), media_type="application/wasm",
                        headers=headers)

    @app.get("/api/decoder/{name}", include_in_schema=False)
    async def decoder_file(name: str) -> FileResponse:
        if web is None or decoder_url != f"/api/decoder/{name}":
            raise HTTPException(404, f"decoder: no decoder {name[:80]!r} here (see /api/info for this server's)")
        return FileResponse(
            web.path, media_type="application/octet-stream", headers={"cache-control": "public, max-age=31536000, immutable"}
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # -- images --------------------------------------------------------------------------------------------

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        has_everything = generator_factory is not None or (
            model is not None and importlib.util.find_spec("mobilesam.everything") is not None
        )
        return {
            "version": __version__,
            "folder": folder is not None,
            "classes": store.classes() if store else [],
            "everything": has_everything,
            "cache_size": cache_size,
            "max_upload_bytes": max_upload_bytes,
            "max_pixels": max_pixels,
            "max_queue": max_queue,
            "decode": "browser" if web else "server",
            "decode_reason": decode_reason,
            "decoder": web.describe(decoder_url) if web else None,
            "embedding_dtype": embedding_dtype,
            "onnxruntime_web": ort_version,
            "encoder_passes": engine.encoder_passes,
            "cpu_seconds": {k: round(v, 3) for k, v in engine.cpu_seconds.items()},
        }

    @app.get("/api/images")
    async def list_images() -> dict[str, Any]:
        if folder is None:
            raise HTTPException(404, "images: no images folder; start the server with --images DIR")
        return {"images": await run_in_threadpool(folder.list)}

    @app.post("/api/images/upload")
    async def upload(file: UploadFile = File(...)) -> dict[str, Any]:
        name = os.path.basename((file.filename or "upload").replace("\\", "/"))[:200] or "upload"
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise ImageInputError(
                f"file: '{name}' is more than the limit of {max_upload_bytes:,} bytes "
                "(mobilesam serve --max-upload-mb)",
                413,
            )
        if not data:
            raise ImageInputError(f"file: '{name}' is empty")
        slot = engine.reserve()  # before decoding: a full queue refuses the upload before its pixels exist
        try:
            img = await run_in_threadpool(decode_image, data, name, max_pixels)
            return describe(register(img, name, data, None, slot))
        finally:
            slot.release()  # a no-op once the encoder pass holds it

    @app.post("/api/images/open")
    async def open_image(body: OpenBody) -> dict[str, Any]:
        if folder is None or store is None:
            raise HTTPException(404, "open: no images folder; start the server with --images DIR, or upload the image")

        def work() -> tuple[ImageRecord, list[dict[str, Any]], str | None]:
            slot = engine.reserve()
            try:
                path, data = read_folder_image(body.name)
                name = folder.relative(path)
                img = decode_image(data, name, max_pixels)
                rec = register(img, name, None, path, slot)
            finally:
                slot.release()
            try:
                return rec, _saved_objects(store.load(path, img.size), img.size), None
            except LabelError as e:
                return rec, [], str(e)

        rec, objects, error = await run_in_threadpool(work)
        return {**describe(rec), "objects": objects, "labels_error": error}

    @app.get("/api/images/{image_id}/image")
    async def image_file(image_id: str) -> Response:
        rec = registry.get(image_id)

        def encode() -> bytes:
            import cv2

            ok, buf = cv2.imencode(".jpg", loader(rec)()[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            assert ok
            return buf.tobytes()

        return Response(
            await run_in_threadpool(encode), media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"}
        )

    @app.post("/api/images/{image_id}/embed")
    async def embed(image_id: str) -> dict[str, Any]:
        rec = registry.get(image_id)
        t0 = time.perf_counter()
        emb, cached = await engine.embedding(rec.key, loader(rec))
        return {
            "id": rec.id,
            "cached": cached,
            "encoder_ms": round(emb.seconds * 1000, 1),
            "wait_ms": round((time.perf_counter() - t0) * 1000, 1),
        }

    @app.get("/api/images/{image_id}/embedding")
    async def embedding(image_id: str, dtype: Literal["float16", "float32"] | None = Query(None)) -> Response:
        """The image embedding as raw little-endian floats, for the page's decoder (computed if needed)."""
        if web is None:
            raise HTTPException(409, f"embedding: this server decodes clicks itself ({decode_reason}); use /predict")
        rec = registry.get(image_id)
        t0 = time.perf_counter()
        emb, cached = await engine.embedding(rec.key, loader(rec))
        tensors = emb.features.tensors
        wire = dtype or embedding_dtype
        arr = next(iter(tensors.values())).detach().cpu().numpy()
        if len(tensors) != 1 or tuple(arr.shape) != web.embedding_shape:
            got = {k: tuple(v.shape) for k, v in tensors.items()}
            raise HTTPException(500, f"embedding: the encoder gave {got}, the decoder takes {web.embedding_shape}")
        data = await run_in_threadpool(lambda: arr.astype("<f2" if wire == "float16" else "<f4").tobytes())
        (h, w), (ih, iw) = emb.features.original_size, emb.features.input_size
        return Response(
            data,
            media_type="application/octet-stream",
            headers={
                "cache-control": "private, max-age=3600",
                "x-embedding-dtype": wire,
                "x-embedding-shape": ",".join(str(d) for d in arr.shape),
                "x-original-size": f"{h},{w}",
                "x-input-size": f"{ih},{iw}",
                "x-embedding-cached": "1" if cached else "0",
                "x-encoder-ms": f"{emb.seconds * 1000:.1f}",
                "x-wait-ms": f"{(time.perf_counter() - t0) * 1000:.1f}",
            },
        )

    # -- prompts -------------------------------------------------------------------------------------------

    @app.post("/api/images/{image_id}/predict")
    async def predict(image_id: str, body: PredictBody) -> dict[str, Any]:
        rec = registry.get(image_id)
        points, labels, box = check_prompts(body, rec.size)
        multimask = body.multimask if body.multimask is not None else (box is None and len(body.points) == 1)
        mask_input = _mask_input(body.mask_input) if body.mask_input is not None else None
        emb, cached = await engine.embedding(rec.key, loader(rec))
        t0 = time.perf_counter()
        mask, score, low_res = await engine.predict(emb, points, labels, box, multimask, mask_input)
        decode_ms = (time.perf_counter() - t0) * 1000
        payload = await engine.run_in_decoder_pool(mask_payload, mask, score)
        if body.return_low_res:
            payload["low_res"] = base64.b64encode(low_res.astype("<f4").tobytes()).decode("ascii")
        return {**payload, "decode_ms": round(decode_ms, 1), "embedding_cached": cached}

    @app.post("/api/images/{image_id}/everything")
    async def everything(image_id: str) -> dict[str, Any]:
        rec = registry.get(image_id)
        t0 = time.perf_counter()
        results = await engine.everything(loader(rec))
        results.sort(key=lambda r: -int(r[0].sum()))  # large first, so small masks are drawn on top
        masks = [await engine.run_in_decoder_pool(mask_payload, m, s) for m, s in results[:MAX_EVERYTHING_MASKS]]
        return {
            "masks": masks,
            "ms": round((time.perf_counter() - t0) * 1000, 1),
            "truncated": len(results) > MAX_EVERYTHING_MASKS,
        }

    # -- labels --------------------------------------------------------------------------------------------

    @app.post("/api/images/{image_id}/export")
    async def export(
        image_id: str, body: ObjectsBody, format: Literal["coco", "yolo", "png"] = Query("coco")
    ) -> Response:  # noqa: A002
        rec = registry.get(image_id)
        objects, known = await run_in_threadpool(_objects, body, rec)
        classes = class_list(objects, known)
        stem = safe_stem(Path(rec.name).stem)
        if format == "coco":
            doc = await run_in_threadpool(to_coco, objects, rec.name, rec.size, classes)
            data, media, fname = json.dumps(doc).encode(), "application/json", f"{stem}.json"
        elif format == "yolo":
            text = await run_in_threadpool(to_yolo, objects, rec.size, classes, simplify)
            data, media, fname = text.encode(), "text/plain; charset=utf-8", f"{stem}.txt"
        else:
            data = await run_in_threadpool(to_png_zip, objects, stem)
            media, fname = "application/zip", f"{stem}_masks.zip"
        return Response(
            data,
            media_type=media,
            headers={
                "content-disposition": f'attachment; filename="{fname}"',
                "x-classes": json.dumps(classes, ensure_ascii=True),
            },
        )

    @app.post("/api/images/{image_id}/save")
    async def save(image_id: str, body: ObjectsBody) -> dict[str, Any]:
        rec = registry.get(image_id)
        if rec.path is None or store is None or folder is None:
            raise HTTPException(
                400, "save: this image was uploaded, not opened from the images folder; use export instead"
            )
        objects, _ = await run_in_threadpool(_objects, body, rec)

        def write() -> list[Path]:
            try:
                return store.save(rec.path, objects, rec.size)
            except OSError as e:
                raise LabelError(
                    f"save: cannot write labels beside '{rec.name}' ({type(e).__name__}: {e})", 403
                ) from None

        written = await run_in_threadpool(write)
        return {"saved": [folder.relative(p) for p in written], "classes": store.classes()}

    return app
