"""Turning a ``source`` argument into images: paths, folders, globs, lists, PIL images, arrays and URLs.

Numpy arrays are taken as BGR by default, as ``cv2.imread`` gives them (the Ultralytics convention).
A folder is walked by the rule of :func:`mobilesam.io.walk_images` (recursive, sorted, hidden entries
skipped), the rule of every command that takes a folder.
Files named one by one must be readable; files found by expanding a folder or a glob that cannot be
read are reported (logged and passed to ``on_skip``) and skipped, so one bad file does not stop a run.
A video file (``VIDEO_SUFFIXES``, read with OpenCV's ``VideoCapture``) gives one image per frame
(every ``vid_stride``-th frame), each carrying its frame number (from 1), the frame count and the fps.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from .io import IMAGE_SUFFIXES, array_to_rgb, is_url, load_image, read_image, read_url, walk_images

logger = logging.getLogger("mobilesam")

Source = Union[str, os.PathLike, Image.Image, np.ndarray, list, tuple]
SkipHandler = Callable[[str, str], None]

_ACCEPTED = (
    "a file path (image or video), a folder, a glob pattern, an http(s) URL, a PIL image, a numpy array (BGR) or a "
    "list of these"
)
# Video files read frame by frame: Ultralytics' VID_FORMATS less .gif, which stays an image here (its first frame).
VIDEO_SUFFIXES = (".asf", ".avi", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".wmv", ".webm")


@dataclass
class LoadedImage:
    """One image of a source: ``image`` HxWx3 uint8 RGB; ``path`` the file/URL or ``imageN.jpg`` for in-memory."""

    image: np.ndarray
    path: str
    mode: str = "image"  # "image", or "video" for a frame of a video file
    frame: int = 0  # the frame number in its video, from 1 (0 for an image)
    frames: int = 0  # the number of frames of its video (0 for an image, or when the container does not say)
    fps: float = 0.0  # the video's frame rate (0 for an image)


@dataclass(frozen=True)
class Entry:
    """One image (or video) to read: ``kind`` is "file", "video", "url", "pil" or "array"."""

    kind: str
    obj: Any
    name: str
    skippable: bool = False  # found by expanding a folder or glob: report and skip on failure
    vid_stride: int = 1  # a video: every vid_stride-th frame


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _file_entry(path: Path, vid_stride: int, skippable: bool) -> Entry:
    kind = "video" if is_video(path) else "file"
    return Entry(kind, path, str(path), skippable=skippable, vid_stride=vid_stride)


def _expand_files(files: list[Path], vid_stride: int = 1) -> list[Entry]:
    return [_file_entry(f, vid_stride, True) for f in sorted(files, key=lambda p: str(p)) if f.is_file()]


def _entries(source: Any, counter: list[int], vid_stride: int = 1) -> list[Entry]:
    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("source: the list of sources is empty")
        out: list[Entry] = []
        for item in source:
            if isinstance(item, (list, tuple)):
                raise TypeError(f"source: expected {_ACCEPTED}; nested lists are not accepted")
            out.extend(_entries(item, counter, vid_stride))
        return out
    if isinstance(source, np.ndarray):
        counter[0] += 1
        return [Entry("array", source, f"image{counter[0] - 1}.jpg")]
    if isinstance(source, Image.Image):
        counter[0] += 1
        name = getattr(source, "filename", "") or f"image{counter[0] - 1}.jpg"
        return [Entry("pil", source, str(name))]
    if isinstance(source, os.PathLike) or isinstance(source, str):
        raw = os.fspath(source)
        if not raw:
            raise ValueError(f"source: expected {_ACCEPTED}, got an empty string")
        if is_url(raw):
            return [Entry("url", raw, raw)]
        path = Path(raw).expanduser()
        if path.is_dir():
            # Every file the folder rule finds, images or not: the others are reported as skipped.
            entries = _expand_files([path / rel for rel in walk_images(path, suffixes=None)], vid_stride)
            if not any(e.obj.suffix.lower() in IMAGE_SUFFIXES or e.kind == "video" for e in entries):
                raise FileNotFoundError(
                    f"source: folder '{raw}' holds no image or video files (looked for "
                    f"{', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})"
                )
            return entries
        if path.is_file():
            return [_file_entry(path, vid_stride, False)]
        if _has_magic(raw):
            entries = _expand_files([Path(p) for p in _glob.glob(os.path.expanduser(raw), recursive=True)], vid_stride)
            if not entries:
                raise FileNotFoundError(f"source: the pattern '{raw}' matches no file")
            return entries
        raise FileNotFoundError(f"source: file '{raw}' not found")
    raise TypeError(f"source: expected {_ACCEPTED}, got {type(source).__name__}")


def resolve_sources(source: Source, vid_stride: int = 1) -> list[Entry]:
    """Expand folders and globs and check that every named file exists, before any image is read.

    ``vid_stride``: of a video file, read every ``vid_stride``-th frame (1: all)."""
    if source is None:
        raise ValueError(f"source: expected {_ACCEPTED}, got None")
    if isinstance(vid_stride, bool) or not isinstance(vid_stride, int) or vid_stride < 1:
        raise ValueError(f"vid_stride: expected an int >= 1 (read every N-th frame of a video), got {vid_stride!r}")
    return _entries(source, [0], vid_stride)


def _load(entry: Entry, image_format: str) -> np.ndarray:
    if entry.kind == "array":
        return array_to_rgb(entry.obj, f"source '{entry.name}'", image_format)
    if entry.kind == "pil":
        return load_image(entry.obj)
    if entry.kind == "url":
        return read_url(entry.obj)
    if entry.skippable and entry.obj.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"not an image file (suffix {entry.obj.suffix or 'none'!r})")
    return read_image(entry.obj)


def _log_skip(path: str, reason: str) -> None:
    logger.warning("mobilesam: skipped '%s': %s", path, reason)


def iter_images(
    source: Source, image_format: str = "BGR", on_skip: SkipHandler | None = None
) -> Iterator[LoadedImage]:
    """Yield the images of ``source`` one by one, read lazily.

    ``image_format`` ("BGR" or "RGB") is the channel order of numpy arrays. Files found through a
    folder or glob that cannot be read are logged, passed to ``on_skip(path, reason)`` and skipped.
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format: expected 'BGR' (as cv2.imread gives) or 'RGB', got {image_format!r}")
    entries = resolve_sources(source)
    return iter_entries(entries, image_format, on_skip)


def iter_entries(entries: list[Entry], image_format: str, on_skip: SkipHandler | None) -> Iterator[LoadedImage]:
    """Read ``entries`` in order; the unreadable ones found by a folder or glob are logged, passed to
    ``on_skip`` and skipped, and named together once more at the end."""
    skipped: list[str] = []
    for entry in entries:
        if entry.kind == "video":
            try:
                frames = iter_video(entry.obj, entry.vid_stride)
                first = next(frames, None)
            except (ValueError, OSError) as e:
                if not entry.skippable:
                    raise
                _log_skip(entry.name, str(e))
                skipped.append(entry.name)
                if on_skip is not None:
                    on_skip(entry.name, str(e))
                continue
            if first is not None:
                yield first
                yield from frames
            continue
        try:
            rgb = _load(entry, image_format)
        except (ValueError, OSError) as e:
            if not entry.skippable:
                raise
            reason = str(e).replace(f"image: cannot read '{entry.name}' as an image ", "").strip()
            _log_skip(entry.name, reason)
            skipped.append(entry.name)
            if on_skip is not None:
                on_skip(entry.name, reason)
            continue
        yield LoadedImage(rgb, entry.name)
    if skipped:
        # The warnings above scroll away on a long run: the list again, where the run ends.
        logger.warning("mobilesam: skipped %d of %d files, which could not be read: %s", len(skipped), len(entries),
                       _few(skipped))


def iter_video(path: str | os.PathLike, vid_stride: int = 1) -> Iterator[LoadedImage]:
    """The frames of a video file as RGB ``LoadedImage`` s (mode "video", frame numbers from 1), every
    ``vid_stride``-th one; a file OpenCV cannot open is a ValueError naming it."""
    import cv2

    cap = cv2.VideoCapture(os.fspath(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"video: cannot open '{path}' with OpenCV (not a video, or a codec OpenCV lacks)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        count = 0
        read_any = False
        while True:
            ok = cap.grab()
            if not ok:
                break
            count += 1
            if (count - 1) % vid_stride:
                continue
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                break
            read_any = True
            yield LoadedImage(np.ascontiguousarray(bgr[..., ::-1]), str(path), "video", count, max(total, count), fps)
        if not read_any:
            raise ValueError(f"video: '{path}' has no frame OpenCV can decode")
    finally:
        cap.release()


def _few(names: list[str], most: int = 10) -> str:
    return ", ".join(names[:most]) + (f" (+{len(names) - most} more)" if len(names) > most else "")
