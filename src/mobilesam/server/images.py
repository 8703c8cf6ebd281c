"""Images for the server: decoding uploads and files within limits, and paths confined to ``--images DIR``."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..io import IMAGE_SUFFIXES, load_image, walk_images

# PIL formats we decode (what IMAGE_SUFFIXES names); anything else is refused before decoding.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM"})
MAX_LISTED = 10_000


class ImageInputError(ValueError):
    """A request named or sent something that is not an acceptable image; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, EXIF orientation applied
    key: str  # content hash: equal images share one cached embedding

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, name: str, max_pixels: int) -> DecodedImage:
    """Decode image bytes to RGB, refusing non-images and images over ``max_pixels`` before decoding pixels."""
    accepted = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ALLOWED_FORMATS:
                raise ImageInputError(f"image: '{name}' is a {img.format} file; accepted formats: {accepted}", 415)
            w, h = img.size
            # Checked on the header, before any pixel is decoded: no decompression bombs.
            if w * h > max_pixels:
                raise ImageInputError(
                    f"image: '{name}' has {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels:,} "
                    "(mobilesam serve --max-pixels)",
                    413,
                )
            if w < 1 or h < 1:
                raise ImageInputError(f"image: '{name}' is empty ({w}x{h})")
            rgb = load_image(ImageOps.exif_transpose(img))
    except ImageInputError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"image: '{name}' is too large to decode safely ({e})", 413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageInputError(
            f"image: '{name}' is not a readable image file ({type(e).__name__}: {e}); accepted formats: {accepted}", 415
        ) from None
    return DecodedImage(np.ascontiguousarray(rgb), content_key(data))


def read_limited(path: Path, max_bytes: int) -> bytes:
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageInputError(
            f"image: '{path.name}' is {size:,} bytes, more than the limit of {max_bytes:,} "
            "(mobilesam serve --max-upload-mb)",
            413,
        )
    return path.read_bytes()


class ImageFolder:
    """The ``--images DIR`` folder: lists its images and resolves names so nothing outside it is touched."""

    def __init__(self, root: str | os.PathLike) -> None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise NotADirectoryError(f"images: '{root}' is not a folder")
        self.root = path.resolve()

    def _inside(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root)
        except (ValueError, OSError, RuntimeError):
            return False
        return True

    def list(self) -> list[str]:
        """Relative POSIX names of the image files under the folder, by the folder rule of
        :func:`mobilesam.io.walk_images`, without links that lead outside it; at most ``MAX_LISTED``."""
        inside = (n for n in walk_images(self.root) if self._inside(self.root / n))
        return list(islice(inside, MAX_LISTED))

    def resolve(self, name: str) -> Path:
        """The path of image ``name`` (relative to the folder), refusing '..', absolute paths and escaping links."""
        if not isinstance(name, str) or not name or len(name) > 4096 or "\x00" in name or "\\" in name:
            raise ImageInputError(f"name: expected a relative path of an image in the images folder, got {name!r}", 400)
        rel = PurePosixPath(name)
        if rel.is_absolute() or any(part in ("", "..", ".") for part in name.split("/")) or name.startswith("~"):
            raise ImageInputError(
                f"name: expected a path relative to the images folder without '..' or a leading '/', got {name!r}", 400
            )
        path = self.root.joinpath(*rel.parts)
        if not self._inside(path) or not self._inside(path.parent):
            raise ImageInputError(f"name: {name!r} leads outside the images folder", 403)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ImageInputError(
                f"name: {name!r} is not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})", 415
            )
        if not path.is_file():
            raise ImageInputError(f"name: no image {name!r} in the images folder", 404)
        return path

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()
