"""Reading images from paths, PIL images and arrays into HxWx3 uint8 RGB arrays."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm")

# Seconds a whole image download (``read_url``) may take, connection to last byte. The socket timeout
# bounds each read only, so without it a server trickling a byte a second holds a run forever.
URL_DEADLINE = 120.0


def _bomb_reason(e: Image.DecompressionBombError) -> str:
    """PIL's decompression-bomb refusal, with the way out (PIL's own words, then ours)."""
    return (
        f"{type(e).__name__}: {e} PIL refuses images of over twice PIL.Image.MAX_IMAGE_PIXELS "
        f"({Image.MAX_IMAGE_PIXELS:,}) pixels as possible decompression bombs: raise it if you trust the file"
    )


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (and 32-bit integer) greyscale: map the full range down to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if img.mode == "F":
        return array_to_rgb(np.asarray(img), "image")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels keep their colour (alpha dropped), as OpenCV and Ultralytics read them.
        img = img.convert("RGBA").convert("RGB")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, applying its EXIF orientation."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"image: '{p}' is a folder, not an image file")
    if not p.is_file():
        raise FileNotFoundError(f"image: file '{p}' not found")
    try:
        with Image.open(p) as img:
            img = ImageOps.exif_transpose(img)
            return _pil_to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ValueError(f"image: cannot read '{p}' as an image ({_bomb_reason(e)})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image: cannot read '{p}' as an image ({type(e).__name__}: {e})") from None


def array_to_rgb(arr: np.ndarray, name: str = "image", image_format: str = "RGB") -> np.ndarray:
    """Validate and convert an array to HxWx3 uint8 RGB.

    Accepts HxW or HxWx1 (greyscale), HxWx3, HxWx4 (alpha dropped); uint8, uint16 (scaled by 1/257),
    bool, or float in [0, 1] (scaled by 255). ``image_format`` is the channel order of a 3/4-channel
    input, "RGB" or "BGR".
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format: expected 'RGB' or 'BGR', got {image_format!r}")
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"{name}: expected an array of shape HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: image is empty, shape {arr.shape}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))  # big-endian data (from FITS, raw files): same values
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(
                f"{name}: a float image must hold finite values in [0, 1], got range "
                f"[{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}]; pass uint8 for 0-255 data"
            )
        arr = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"{name}: expected dtype uint8, uint16, bool or float in [0, 1], got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    arr = arr[..., :3]
    if image_format == "BGR":
        import cv2

        # cv2's channel swap is several times faster than a strided numpy copy on large images.
        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(arr)


def load_image(source: ImageLike, image_format: str = "RGB") -> np.ndarray:
    """Any supported image source -> HxWx3 uint8 RGB.

    ``image_format`` applies to numpy arrays only (files and PIL images carry their own mode).
    """
    if isinstance(source, np.ndarray):
        return array_to_rgb(source, "image", image_format)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source)
    if isinstance(source, (str, os.PathLike)):
        return read_image(source)
    raise TypeError(
        f"image: expected a file path, a PIL image or an HxWx3 numpy array, got {type(source).__name__}"
    )


def is_url(source: object) -> bool:
    """True for an ``http://`` or ``https://`` address given as a str."""
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


class _Deadline:
    """Shuts the sockets of a download down when ``seconds`` have passed, which ends any read blocked
    on them; ``expired`` tells the reader why its data stopped."""

    def __init__(self, seconds: float) -> None:
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            if self.expired.is_set():
                self._shutdown(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            for sock in self._sockets:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already, or detached into the TLS socket that is watched too

    def opener(self) -> Any:
        """A urllib opener whose http and https connections are watched."""
        import urllib.request

        deadline = self

        class Watched:
            def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
                class Connection(http_class):
                    def __init__(self, *args: Any, **kw: Any) -> None:
                        super().__init__(*args, **kw)
                        # The TCP socket as soon as it exists, so the deadline also covers a proxy's
                        # CONNECT answer (the TLS handshake after it detaches this socket: timeout-bound).
                        create = self._create_connection
                        self._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))

                    def connect(self) -> None:
                        super().connect()
                        deadline.watch(self.sock)

                return super().do_open(Connection, req, **kwargs)

        class HTTP(Watched, urllib.request.HTTPHandler):
            pass

        class HTTPS(Watched, urllib.request.HTTPSHandler):
            pass

        return urllib.request.build_opener(HTTP, HTTPS)


def read_url(
    url: str, timeout: float = 20.0, max_bytes: int = 100 * 2**20, deadline: float | None = None
) -> np.ndarray:
    """Download an image over http(s) into memory and decode it as HxWx3 uint8 RGB.

    ``timeout`` bounds each network operation, ``deadline`` (default :data:`URL_DEADLINE`, read at call
    time) the whole download. Network failures and a passed deadline raise ``ConnectionError`` naming
    the address; a body that is not an image raises ``ValueError``; bodies over ``max_bytes`` are refused.
    """
    import http.client
    import io as _io
    import urllib.error
    import urllib.request

    limit = URL_DEADLINE if deadline is None else deadline
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
        raise ValueError(f"deadline: expected a number of seconds > 0, got {limit!r}")
    request = urllib.request.Request(url, headers={"User-Agent": "mobilesam"})
    failure: str | None = None
    with _Deadline(limit) as watch:
        try:
            with watch.opener().open(request, timeout=min(timeout, limit)) as response:
                data = response.read(max_bytes + 1)
        except urllib.error.HTTPError as e:
            failure = f"source: '{url}' answered HTTP {e.code} {e.reason}"
        except urllib.error.URLError as e:
            failure = (f"source: cannot download '{url}' ({e.reason}); no network? Download the image and pass "
                       "its file path")
        except (OSError, http.client.HTTPException) as e:
            failure = f"source: downloading '{url}' failed ({type(e).__name__}: {e})"
    # The deadline first: what it cut short can fail in any of the ways above, or end as a short body.
    if watch.expired.is_set():
        raise ConnectionError(
            f"source: downloading '{url}' took longer than the {limit:g} s deadline (a slow or stalled server); "
            "download the image and pass its file path, or raise mobilesam.io.URL_DEADLINE"
        )
    if failure is not None:
        raise ConnectionError(failure)
    if len(data) > max_bytes:
        raise ValueError(f"source: '{url}' is larger than {max_bytes // 2**20} MiB; download it and pass the file path")
    try:
        with Image.open(_io.BytesIO(data)) as img:
            return _pil_to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as e:
        raise ValueError(f"source: cannot read '{url}' as an image ({_bomb_reason(e)})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"source: '{url}' is not an image ({type(e).__name__}: {e})") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a partial one.

    The bytes go to a temporary file in the same folder (so ``os.replace`` stays on one file system),
    are flushed and fsynced, and the file is then moved over ``path``. Missing parent folders are
    created. The file gets the permissions a plain ``open(path, "wb")`` gives (``0o666`` less the
    umask), not ``mkstemp``'s owner-only ``0o600``. On any failure the temporary file is removed and an
    existing ``path`` is left as it was.
    """
    import secrets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    try:
        with open(tmp, "xb") as f:  # "x": never write through a file (or link) that is already there
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def walk_images(folder: str | os.PathLike, suffixes: tuple[str, ...] | None = IMAGE_SUFFIXES) -> list[str]:
    """The image files under ``folder``: the one folder rule of every command that takes a folder.

    - recursive: files in sub-folders are included, at any depth;
    - hidden entries are skipped: a file or folder whose name starts with "." (and all below it);
    - links to folders are not followed (no loops, nothing outside the tree); links to files are kept;
    - an image is a file whose suffix, in any case, is one of ``IMAGE_SUFFIXES``
      (``suffixes=None`` keeps every file, for callers that report the others as skipped);
    - the result is the paths relative to ``folder``, with "/" separators, sorted as strings.

    Raises ``NotADirectoryError`` when ``folder`` is not a folder; an empty list is the caller's to judge.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotADirectoryError(f"folder: '{folder}' is not a folder")
    wanted = None if suffixes is None else tuple(s.lower() for s in suffixes)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or (wanted is not None and not name.lower().endswith(wanted)):
                continue
            path = Path(dirpath, name)
            if path.is_file():  # not a broken link, a socket, ...
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def write_image(path: str | os.PathLike, image: np.ndarray, image_format: str = "RGB") -> Path:
    """Encode an HxW or HxWx3 uint8 image by the file suffix (.png, .jpg, ...) and write it atomically."""
    import cv2

    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format: expected 'RGB' or 'BGR', got {image_format!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES or suffix == ".gif":
        raise ValueError(f"path: cannot write an image with suffix {suffix!r} ('{path}'); use .png or .jpg")
    if image.ndim == 3 and image_format == "RGB":
        image = image[..., ::-1]
    ok, buf = cv2.imencode(suffix, np.ascontiguousarray(image))
    if not ok:
        raise ValueError(f"path: OpenCV could not encode an image as {suffix!r} for '{path}'")
    return atomic_write_bytes(path, buf.tobytes())
