"""Many images through one predictor: read and pre-processed on a background thread while the encoder
runs, embedded ``batch`` per encoder call, and looked up in / stored into a feature cache (memory, and disk
with ``embedding_cache``). ``SAM.predict`` over several images, ``auto_annotate`` and ``mobilesam
everything`` use it; any backend works (one that cannot batch encodes one image per call).

    for item in embed_stream(predictor, paths, load_image, batch=4, cache=cache):
        predictor.set_features(item.features)
        predictor.predict(point_coords=..., point_labels=...)
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from .backends.base import ImageFeatures, PreparedImage, check_batch
from .cache import FeatureCache, feature_key, image_digest

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterable[T], fn: Callable[[T], U], depth: int = 2) -> Iterator[U]:
    """``fn(item)`` for each of ``items``, in order, computed on one background thread at most ``depth``
    items ahead of the caller. An exception (of ``fn`` or of the iteration) is raised here, where its
    item would have come; closing the generator early stops the thread."""
    check_batch(depth, "depth")
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def send(value: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if stop.is_set() or not send(fn(item)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            send(_Failure(e))
            return
        send(_DONE)

    thread = threading.Thread(target=work, name="mobilesam-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = out.get()
            if value is _DONE:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value
    finally:
        stop.set()
        thread.join()


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of ``size`` consecutive items (the last may be shorter)."""
    check_batch(size, "batch")
    group: list[T] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


@dataclass
class Pending:
    """An image read and made ready on the background thread: the caller's item, its pixels, its cache
    key, its features when the cache had them, else the resized image for the encoder."""

    item: Any
    image: np.ndarray
    key: Hashable | None
    features: ImageFeatures | None
    prepared: PreparedImage | None
    cached: bool = False

    def __post_init__(self) -> None:
        self.cached = self.features is not None

    @classmethod
    def of(cls, predictor: Any, item: Any, image: np.ndarray, cache: FeatureCache | None,
           key_of: Callable[[np.ndarray], Hashable] | None) -> Pending:
        """The background thread's work on one image: its key, a cache lookup (disk reads happen here
        too), and on a miss the resize for the encoder (``prepared`` stays None for a predictor without
        ``prepare_image``: :func:`encode_pending` then calls its ``set_image``)."""
        key = key_of(image) if cache is not None and key_of is not None else None
        hit = cache.get(key) if key is not None else None
        prepared = predictor.prepare_image(image) if hit is None and hasattr(predictor, "prepare_image") else None
        return cls(item, image, key, hit, prepared)


@dataclass
class Embedded(Generic[T]):
    """An item of :func:`embed_stream`: the caller's item, its RGB image, its features and whether they
    came from the cache (no encoder pass)."""

    item: T
    image: np.ndarray
    features: ImageFeatures
    cached: bool
    seconds: float = 0.0  # this image's share of its encoder call (0 when cached)


def cache_key_maker(predictor: Any, *extra: Any) -> Callable[[np.ndarray], Hashable]:
    """``image -> key`` for a cache of ``predictor``'s features: a string (disk-cacheable) when the
    predictor names its features, else a tuple kept in memory only."""
    identity = predictor.feature_identity() if hasattr(predictor, "feature_identity") else None
    if identity is None:
        return lambda rgb: (image_digest(rgb), id(predictor), *extra)
    return lambda rgb: feature_key(image_digest(rgb), identity, *extra)


def encode_pending(predictor: Any, group: Sequence[Pending], cache: FeatureCache | None) -> list[ImageFeatures]:
    """The features of every image of ``group``: the cached ones as they are, the others from one
    encoder call (``predictor.encode_prepared``; one ``set_image`` each for a predictor without it), then
    stored in ``cache``. The predictor's current image is not changed, except by ``set_image``."""
    todo = [p for p in group if p.features is None]
    if todo:
        if hasattr(predictor, "encode_prepared"):
            computed = predictor.encode_prepared([p.prepared for p in todo], batch=len(todo))
        else:
            computed = []
            for p in todo:
                predictor.set_image(p.image)
                computed.append(predictor.get_features())
        for p, features in zip(todo, computed):
            p.features = features
            if cache is not None and p.key is not None:
                cache.put(p.key, features)
    return [p.features for p in group]


def embed_stream(
    predictor: Any,
    items: Iterable[T],
    image_of: Callable[[T], np.ndarray],
    *,
    batch: int = 1,
    cache: FeatureCache | None = None,
    key_of: Callable[[np.ndarray], Hashable] | None = None,
    depth: int | None = None,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Iterator[Embedded[T]]:
    """The features of each item's image, in order: ``image_of(item)`` (RGB uint8, e.g. reading a file)
    and the resize run on a background thread, ``batch`` images per encoder call, ``cache`` consulted
    first and filled after (keys from ``key_of``, default :func:`cache_key_maker`). ``depth``: images
    made ready ahead (default ``2 * batch``). ``context()`` is entered around each encoder call (e.g.
    autocast)."""
    check_batch(batch, "batch")
    if cache is not None and key_of is None:
        key_of = cache_key_maker(predictor)

    def ready(item: T) -> Pending:
        return Pending.of(predictor, item, image_of(item), cache, key_of)

    for group in chunks(prefetch(items, ready, depth or 2 * batch), batch):
        t0 = time.perf_counter()
        with context():
            features = encode_pending(predictor, group, cache)
        share = (time.perf_counter() - t0) / max(1, sum(not p.cached for p in group))
        for p, f in zip(group, features):
            yield Embedded(p.item, p.image, f, p.cached, 0.0 if p.cached else share)
