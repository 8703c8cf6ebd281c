"""Caches of image features: the bounded in-memory LRU that the ``SAM`` facade and the server share, and
its optional disk tier, which keeps embeddings across sessions and processes.

Keys are whatever identifies an image for the caller (a content hash, plus the device and precision where
those change the features); values are :class:`~mobilesam.backends.ImageFeatures` or anything else the
caller stores. Thread-safe: the server's encoder and request threads use one cache.

The disk tier (:class:`DiskFeatureCache`, ``embedding_cache=DIR`` in Python, ``--embedding-cache DIR`` on
the command line) stores features under string keys made by :func:`feature_key`: the image's pixels, and
the predictor's :meth:`~mobilesam.backends.PredictorBase.feature_identity` (model family and size, a
digest of the weights, backend and precision). One file per image, float16 (half the size; what that
costs in mask IoU is measured in ``benchmarks/RESULTS.md``), written atomically, so processes that share
the folder (``serve``, ``annotate``, ``predict``, ``everything``) never read half a file; the folder is
kept under ``max_bytes`` by removing the least recently used files (a read marks a file as used).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    from .backends.base import ImageFeatures

V = TypeVar("V")
logger = logging.getLogger("mobilesam")

DEFAULT_MAX_BYTES = 4 * 2**30  # about 2000 MobileSAM embeddings (2 MiB each in float16)
_SUFFIX = ".npz"
_STALE_PART_SECONDS = 3600.0  # a temporary file this old belongs to a writer that died: removed on eviction


def image_digest(rgb: np.ndarray) -> str:
    """SHA-256 of an image's pixels and shape (hex, 40 characters): equal pixels, equal digest, whatever
    file or array they came from."""
    arr = np.ascontiguousarray(rgb)
    h = hashlib.sha256(f"{arr.shape}{arr.dtype.str}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:40]


def feature_key(digest: str, identity: str, *extra: Any) -> str:
    """The cache key of an image's features: its :func:`image_digest`, the predictor's feature identity,
    and anything else that changes them (e.g. half precision)."""
    return "|".join([digest, identity, *(str(e) for e in extra)])


class FeatureCache(Generic[V]):
    """At most ``capacity`` entries; ``get`` marks an entry as recently used, ``put`` evicts the oldest.
    A capacity of 0 stores nothing in memory.

    ``disk``: a :class:`DiskFeatureCache` behind the memory: a memory miss on a string key is looked up
    there (and kept in memory), and every ``put`` of a string key is written there too.
    """

    def __init__(self, capacity: int, disk: DiskFeatureCache | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity: expected an int >= 0, got {capacity!r}")
        self.capacity = capacity
        self.disk = disk
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                return value
        if self.disk is not None and isinstance(key, str):
            value = self.disk.get(key)
            if value is not None:
                self._put_memory(key, value)
        return value

    def put(self, key: Hashable, value: V) -> None:
        self._put_memory(key, value)
        if self.disk is not None and isinstance(key, str):
            self.disk.put(key, value)

    def _put_memory(self, key: Hashable, value: V) -> None:
        with self._lock:
            if not self.capacity:
                return
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def keys(self) -> list[Hashable]:
        """Oldest first (the memory tier)."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Forget the entries in memory (the disk tier keeps its files: :meth:`DiskFeatureCache.clear`)."""
        with self._lock:
            self._items.clear()


class DiskFeatureCache:
    """Image features in a folder: one float16 ``.npz`` file per key, at most about ``max_bytes`` in all.

    Safe for several processes and threads at once: files are written to a temporary name and renamed
    (a reader sees a whole file or none), each file holds its key (a file that is not the one asked for,
    or cannot be read, is a miss and is removed), and eviction runs under an exclusive lock on
    ``.lock`` in the folder. A hit updates the file's modification time; eviction removes the oldest
    files until the folder holds at most 90% of ``max_bytes``. Values are
    :class:`~mobilesam.backends.ImageFeatures`; they come back as float32 CPU tensors.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"embedding_cache_bytes: expected an int >= 1 (bytes), got {max_bytes!r}")
        path = Path(root).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"embedding_cache: expected a folder, got '{root}' (a file)")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"embedding_cache: cannot create the folder '{root}' ({e.strerror})") from None
        self.root = path
        self.max_bytes = max_bytes
        self.hits = self.misses = self.writes = 0
        self._lock = threading.Lock()
        self._estimate: int | None = None  # bytes in the folder, as last counted plus this process's writes
        self._writes_since_scan = 0

    def __repr__(self) -> str:
        return f"DiskFeatureCache('{self.root}', max_bytes={self.max_bytes})"

    @classmethod
    def open(cls, root: str | os.PathLike | None, max_bytes: int | None = None) -> DiskFeatureCache | None:
        """The cache in ``root`` (None: no disk cache); ``max_bytes`` None takes ``DEFAULT_MAX_BYTES``."""
        if root is None:
            if max_bytes is not None:
                raise ValueError("embedding_cache_bytes: given without embedding_cache (the folder to bound)")
            return None
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise ValueError(f"embedding_cache: expected a folder path, got {root!r}")
        return cls(root, DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)

    @staticmethod
    def check_predictor(disk: DiskFeatureCache | None, predictor: Any) -> None:
        """Refuse a disk cache for a predictor that cannot name its features (a user's backend without
        ``feature_identity``): its embeddings could be mistaken for another model's."""
        if disk is None:
            return
        identity = predictor.feature_identity() if hasattr(predictor, "feature_identity") else None
        if not identity:
            raise ValueError(
                f"embedding_cache: the {getattr(predictor, 'backend', '?')!r} backend does not name its features "
                "(feature_identity() gives None), so they cannot be stored on disk; leave out embedding_cache"
            )

    def path_for(self, key: str) -> Path:
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.root / name[:2] / f"{name}{_SUFFIX}"

    # --- reading ------------------------------------------------------------------------------------
    def get(self, key: str) -> ImageFeatures | None:
        """The features stored under ``key``, or None."""
        path = self.path_for(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        try:
            features = _decode(data, key)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a miss, and goes
            logger.warning("embedding cache: removing '%s', which cannot be read (%s)", path, e)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        if features is None:  # another key's file under this name: never returned
            self.misses += 1
            return None
        with contextlib.suppress(OSError):  # removed meanwhile by another process's eviction: still a hit
            os.utime(path)
        self.hits += 1
        return features

    # --- writing ------------------------------------------------------------------------------------
    def put(self, key: str, features: ImageFeatures) -> None:
        """Store ``features`` under ``key`` (replacing what was there); features not finite in float16
        are not stored (logged)."""
        from .io import atomic_write_bytes

        data = _encode(key, features)
        if data is None:
            logger.warning("embedding cache: features not stored: they do not fit float16 (|x| > 65504)")
            return
        atomic_write_bytes(self.path_for(key), data)
        self.writes += 1
        with self._lock:
            self._writes_since_scan += 1
            if self._estimate is not None:
                self._estimate += len(data)
            # Other processes write too: count again now and then, not only when this one's sum is over.
            due = self._estimate is None or self._estimate > self.max_bytes or self._writes_since_scan >= 64
        if due:
            self.evict()

    def evict(self) -> int:
        """Remove the least recently used files until the folder holds at most 90% of ``max_bytes`` (when
        it holds more than ``max_bytes``); returns how many were removed."""
        with self._folder_lock():
            files, total = self._scan()
            removed = 0
            if total > self.max_bytes:
                files.sort(key=lambda f: f[0])  # oldest modification (= last use) first
                for _, size, path in files:
                    if total <= 0.9 * self.max_bytes:
                        break
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
                    total -= size
            with self._lock:
                self._estimate, self._writes_since_scan = total, 0
        return removed

    def _scan(self) -> tuple[list[tuple[float, int, Path]], int]:
        """(mtime, size, path) of every entry file, and their total size; stale temporary files go."""
        files: list[tuple[float, int, Path]] = []
        now = time.time()
        for shard in _subfolders(self.root):
            for entry in _entries(shard):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.name.endswith(_SUFFIX) and not entry.name.startswith("."):
                    files.append((st.st_mtime, st.st_size, Path(entry.path)))
                elif entry.name.endswith(".part") and now - st.st_mtime > _STALE_PART_SECONDS:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
        return files, sum(f[1] for f in files)

    @contextlib.contextmanager
    def _folder_lock(self) -> Iterator[None]:
        """An exclusive lock on the folder between processes (``fcntl``; on systems without it, none: two
        evictions at once then only remove a little more than needed)."""
        try:
            import fcntl
        except ImportError:  # Windows
            yield
            return
        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # --- the folder ---------------------------------------------------------------------------------
    def size_bytes(self) -> int:
        return self._scan()[1]

    def __len__(self) -> int:
        return len(self._scan()[0])

    def clear(self) -> None:
        """Remove every stored entry."""
        with self._folder_lock():
            for _, _, path in self._scan()[0]:
                path.unlink(missing_ok=True)
            with self._lock:
                self._estimate, self._writes_since_scan = 0, 0


def _subfolders(root: Path) -> list[os.DirEntry]:
    return [e for e in _entries(root) if e.is_dir(follow_symlinks=False) and len(e.name) == 2]


def _entries(folder: Path | os.DirEntry) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _encode(key: str, features: ImageFeatures) -> bytes | None:
    """The ``.npz`` bytes of one entry: its key, the sizes, and each tensor as float16 (never pickled)."""
    arrays: dict[str, np.ndarray] = {
        "key": np.array(key),
        "original_size": np.asarray(features.original_size, np.int64),
        "input_size": np.asarray(features.input_size, np.int64),
        "names": np.array(list(features.tensors)),
    }
    for i, tensor in enumerate(features.tensors.values()):
        half = tensor.detach().float().cpu().numpy().astype(np.float16)
        if not np.isfinite(half).all():
            return None
        arrays[f"tensor{i}"] = half
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _decode(data: bytes, key: str) -> ImageFeatures | None:
    """The features of one entry's bytes, or None when the file holds another key."""
    import torch

    from .backends.base import ImageFeatures

    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        if str(npz["key"]) != key:
            return None
        names = [str(n) for n in npz["names"]]
        tensors = {n: torch.from_numpy(npz[f"tensor{i}"].astype(np.float32)) for i, n in enumerate(names)}
        original = tuple(int(v) for v in npz["original_size"])
        input_size = tuple(int(v) for v in npz["input_size"])
    return ImageFeatures(tensors, original, input_size)
