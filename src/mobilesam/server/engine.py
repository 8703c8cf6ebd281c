"""The model side of the server: embeddings computed once per image in an encoder thread and kept in a
bounded LRU cache; clicks answered by the prompt encoder and mask decoder only, in another thread."""

from __future__ import annotations

import asyncio
import functools
import importlib
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..backends.base import ImageFeatures
from ..cache import DiskFeatureCache, FeatureCache, feature_key, image_digest
from ..masks import decode_rle


class PredictorLike(Protocol):
    """What the server needs of a predictor (every backend's predictor is one)."""

    def set_image(self, image: np.ndarray) -> None: ...
    def get_features(self) -> ImageFeatures: ...
    def set_features(self, features: ImageFeatures) -> None: ...
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def reset_image(self) -> None: ...


class EverythingUnavailable(RuntimeError):
    """Segment-everything cannot run in this installation (HTTP 501)."""


class EncoderBusy(RuntimeError):
    """The queue of encoder passes is full (HTTP 503); ``retry_after`` is a guess in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Slot:
    """A place in the encoder queue, held from before an image is decoded until its encoder pass ends.

    ``submit_embedding`` takes the place over; the caller's ``release()`` (in a ``finally``) then frees
    nothing, so a request that fails before its pass is queued gives its place back, and only then.
    """

    def __init__(self, engine: Engine | None) -> None:
        self._engine = engine

    def take(self) -> Slot:
        """This place, moved to a new holder; this Slot then holds none."""
        engine, self._engine = self._engine, None
        return Slot(engine)

    def release(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine._release()


@dataclass(frozen=True)
class Embedding:
    features: ImageFeatures  # opaque: whatever the backend's decoder needs, with the image's sizes
    seconds: float  # encoder time


def default_generator_factory(model: Any, backend: str = "torch") -> Any:
    """The fast segment-everything generator on ``backend``, imported only when first asked for."""
    if model is None:
        raise EverythingUnavailable("everything: this server runs without a SAM model, segment-everything is off")
    try:
        module = importlib.import_module("mobilesam.everything")
    except ModuleNotFoundError as e:
        if e.name in ("mobilesam.everything", "mobilesam"):
            raise EverythingUnavailable(
                "everything: segment-everything is not available in this installation (module mobilesam.everything "
                "is missing)"
            ) from None
        raise
    return module.automatic_mask_generator(model, backend=backend, mode="fast")  # the family's generator (SAM 2: its own)


class Engine:
    """Embeds images (one encoder thread pool) and decodes prompts (a separate decoder pool).

    The decoder predictor is shared by all requests, so ``set_embedding`` + ``predict`` run under a lock;
    the encoder never takes that lock, so an encoder pass never delays another image's clicks. At most
    ``max_queue`` encoder passes wait or run (see :meth:`reserve`).
    """

    def __init__(
        self,
        predictor_factory: Callable[[], PredictorLike],
        cache_size: int = 16,
        model: Any = None,
        generator_factory: Callable[[Any], Any] | None = None,
        encoder_workers: int = 1,
        decoder_workers: int = 2,
        backend: str = "torch",
        max_queue: int = 8,
        disk_cache: DiskFeatureCache | None = None,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size: expected at least 1 cached embedding, got {cache_size}")
        if max_queue < 1:
            raise ValueError(f"max_queue: expected at least 1 queued encoder pass, got {max_queue}")
        self.max_queue = max_queue
        self._queued = 0  # slots held: images being decoded for, waiting for or in an encoder pass
        self._last_seconds = 1.0  # of an encoder pass, for Retry-After
        self.cache_size = cache_size
        self.model = model
        self._factory = predictor_factory
        self._generator_factory = generator_factory or functools.partial(default_generator_factory, backend=backend)
        self._generator: Any = None
        self._decoder = predictor_factory()
        # Embeddings on disk, shared with other runs and commands: keyed by pixels (not by file bytes, as
        # the memory cache is) and by what the predictor says makes its features.
        DiskFeatureCache.check_predictor(disk_cache, self._decoder)
        self._disk = disk_cache
        self._identity = self._decoder.feature_identity() if disk_cache is not None else None
        self._decoder_lock = threading.Lock()
        self._generator_lock = threading.Lock()
        self._local = threading.local()
        self._cache: FeatureCache[Embedding] = FeatureCache(cache_size)
        self._inflight: dict[str, Future] = {}
        self._inflight_lock = threading.Lock()
        self._encoder_workers = encoder_workers
        self._encoder_pool = ThreadPoolExecutor(encoder_workers, thread_name_prefix="mobilesam-encoder")
        self._decoder_pool = ThreadPoolExecutor(decoder_workers, thread_name_prefix="mobilesam-decoder")
        # Segment-everything takes seconds to minutes on a CPU: its own thread, so opening another image
        # does not queue behind it.
        self._everything_pool = ThreadPoolExecutor(1, thread_name_prefix="mobilesam-everything")
        self.encoder_passes = 0
        # CPU seconds spent by the threads of each kind of work (time.thread_time), for /api/info: with
        # clicks decoded in the browser, the decoder's stays at zero.
        self.cpu_seconds = {"encoder": 0.0, "decoder": 0.0, "everything": 0.0}
        self._cpu_lock = threading.Lock()

    # -- embeddings ---------------------------------------------------------------------------------------

    def cached(self, key: str) -> Embedding | None:
        return self._cache.get(key)

    def cached_keys(self) -> list[str]:
        return self._cache.keys()

    def reserve(self) -> Slot:
        """A place in the encoder queue, or EncoderBusy when ``max_queue`` are taken.

        Taken before an upload is decoded, so a burst of large images is refused before their pixels
        are in memory; the queue holds loaders (bytes or a path), never decoded pixels.
        """
        with self._inflight_lock:
            if self._queued >= self.max_queue:
                wait = max(1, math.ceil(self._last_seconds * self._queued / self._encoder_workers))
                raise EncoderBusy(
                    f"encoder: busy, {self._queued} images are waiting for the image encoder or in it, the limit "
                    f"(mobilesam serve --max-queue); retry in about {wait} s",
                    wait,
                )
            self._queued += 1
        return Slot(self)

    def _release(self) -> None:
        with self._inflight_lock:
            self._queued -= 1

    def _existing(self, key: str) -> Future | None:
        """The cached embedding (as a done future) or the running pass of ``key``; under ``_inflight_lock``."""
        emb = self._cache.get(key)
        if emb is not None:
            done: Future = Future()
            done.set_result(emb)
            return done
        return self._inflight.get(key)

    def submit_embedding(self, key: str, load_rgb: Callable[[], np.ndarray], slot: Slot | None = None) -> Future:
        """Start (or join) the encoder pass for ``key``; ``load_rgb`` runs in the encoder thread.

        A new pass takes over ``slot`` (or reserves one: EncoderBusy when the queue is full) and frees it
        when it ends; a cached or running embedding needs none, and ``slot`` is freed at once.
        """
        with self._inflight_lock:
            fut = self._existing(key)
        if fut is None:
            own = slot.take() if slot is not None else self.reserve()
            with self._inflight_lock:
                fut = self._existing(key)
                if fut is None:
                    try:
                        fut = self._encoder_pool.submit(self._encode, key, load_rgb, own)
                    except BaseException:
                        own.release()
                        raise
                    self._inflight[key] = fut
                    return fut
            own.release()  # another request started the same pass meanwhile
        elif slot is not None:
            slot.release()
        return fut

    async def embedding(self, key: str, load_rgb: Callable[[], np.ndarray]) -> tuple[Embedding, bool]:
        """The embedding of an image, and whether it came from the cache."""
        emb = self.cached(key)
        if emb is not None:
            return emb, True
        return await asyncio.wrap_future(self.submit_embedding(key, load_rgb)), False

    def _encoder_predictor(self) -> PredictorLike:
        pred = getattr(self._local, "predictor", None)
        if pred is None:
            pred = self._local.predictor = self._factory()
        return pred

    def _count_cpu(self, kind: str, since: float) -> None:
        with self._cpu_lock:
            self.cpu_seconds[kind] += time.thread_time() - since

    def _encode(self, key: str, load_rgb: Callable[[], np.ndarray], slot: Slot) -> Embedding:
        cpu = time.thread_time()
        try:
            rgb = load_rgb()
            disk_key = feature_key(image_digest(rgb), self._identity) if self._disk is not None else None
            stored = self._disk.get(disk_key) if disk_key is not None else None
            if stored is not None:
                emb = Embedding(stored, 0.0)
            else:
                pred = self._encoder_predictor()
                t0 = time.perf_counter()
                pred.set_image(rgb)
                emb = Embedding(pred.get_features(), time.perf_counter() - t0)
                pred.reset_image()
                self.encoder_passes += 1
                self._last_seconds = emb.seconds
                if disk_key is not None:
                    self._disk.put(disk_key, emb.features)
            del rgb
            self._cache.put(key, emb)
            return emb
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)
            slot.release()
            self._count_cpu("encoder", cpu)

    # -- prompts ------------------------------------------------------------------------------------------

    def _decode(
        self,
        emb: Embedding,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        multimask: bool,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        cpu = time.thread_time()
        with self._decoder_lock:
            self._decoder.set_features(emb.features)
            masks, scores, low_res = self._decoder.predict(
                points, labels, box, mask_input=mask_input, multimask_output=multimask
            )
            self._decoder.reset_image()
        best = int(np.argmax(scores))
        out = np.asarray(masks[best], dtype=bool), float(scores[best]), np.asarray(low_res[best], np.float32)
        self._count_cpu("decoder", cpu)
        return out

    async def predict(
        self,
        emb: Embedding,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        multimask: bool,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """Best mask (H, W) bool, its predicted IoU and its low-resolution logits (256, 256) for one
        object's prompts (original-image pixels); ``mask_input`` (1, 256, 256): logits of an earlier mask."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._decoder_pool, self._decode, emb, points, labels, box, multimask, mask_input
        )

    async def run_in_decoder_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Short CPU work (mask encoding) off the event loop, on the decoder side (counted as decoder CPU)."""

        def counted() -> Any:
            cpu = time.thread_time()
            try:
                return fn(*args)
            finally:
                self._count_cpu("decoder", cpu)

        return await asyncio.get_running_loop().run_in_executor(self._decoder_pool, counted)

    # -- segment everything -------------------------------------------------------------------------------

    def _everything(self, load_rgb: Callable[[], np.ndarray]) -> list[tuple[np.ndarray, float]]:
        cpu = time.thread_time()
        with self._generator_lock:
            if self._generator is None:
                self._generator = self._generator_factory(self.model)
            records = self._generator.generate(load_rgb())
        out = []
        for r in records:
            seg = r["segmentation"]
            mask = decode_rle(seg) if isinstance(seg, dict) else np.asarray(seg, dtype=bool)
            out.append((mask, float(r.get("predicted_iou", 0.0))))
        self._count_cpu("everything", cpu)
        return out

    async def everything(self, load_rgb: Callable[[], np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """All masks of an image with their predicted IoU (never on the decoder threads: it is slow)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._everything_pool, self._everything, load_rgb)

    def close(self) -> None:
        self._encoder_pool.shutdown(wait=False, cancel_futures=True)
        self._decoder_pool.shutdown(wait=False, cancel_futures=True)
        self._everything_pool.shutdown(wait=False, cancel_futures=True)
