"""Teacher embeddings on disk: one fp16 ``.npy`` per image, read back by image without loading the rest.

Layout of an embeddings folder ``EMB``::

    EMB/meta.json               teacher, model type, img_size, shape (256, S/16, S/16), dtype float16
    EMB/<image path>.npy        one (256, 64, 64) float16 array per image; <image path> is the image's
                                path relative to the image folder, extension kept (a.jpg -> a.jpg.npy)

Each file is written atomically, so a file that exists is complete: an interrupted ``embed``
resumes by computing only the missing ones. At 1024 px an embedding takes 256*64*64*2 bytes
= 2 MiB (2.1 MB) plus a 128-byte header.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..backends.torch_fast import optimize_for_inference
from ..build import detect_model_type
from ..io import IMAGE_SUFFIXES, atomic_write_bytes, read_image, walk_images
from ..modeling import Sam
from ..modeling.configs import IMAGE_SIZE, PROMPT_EMBED_DIM
from ..transforms import ResizeLongestSide
from . import dist as _dist
from .models import PATCH, check_img_size, load_teacher

FORMAT = "mobilesam-embeddings"
VERSION = 1
META = "meta.json"

logger = logging.getLogger(__name__)


class DamagedEmbeddingError(ValueError):
    """A stored embedding file that is not a complete float16 array of the store's shape."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"embeddings: '{path}' is damaged ({reason}); run 'mobilesam embed' again with the same --data and "
            "--out: it recomputes damaged files"
        )
        self.path, self.reason = path, reason


def image_error(path: str | os.PathLike, e: Exception) -> str:
    """Why the image file ``path`` could not be read, without its path (the caller names the file)."""
    message = str(e)
    prefix = f"image: cannot read '{path}' as an image ("
    if message.startswith(prefix) and message.endswith(")"):
        return message[len(prefix):-1]
    return f"{type(e).__name__}: {message}"  # not read_image's own message (a resize failure, ...)


def list_images(root: str | os.PathLike) -> list[str]:
    """Image files under ``root`` by the folder rule of :func:`mobilesam.io.walk_images` (recursive,
    hidden entries skipped), as sorted POSIX paths relative to it."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"data: '{root}' is not a folder of images")
    found = walk_images(base)
    if not found:
        raise FileNotFoundError(f"data: folder '{root}' holds no image files (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """SHA-256 of an image encoder's weights (names, dtypes, shapes and bytes of its state_dict, in order)."""
    import hashlib

    digest = hashlib.sha256()
    for name, t in encoder.state_dict().items():
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def embedding_shape(img_size: int) -> tuple[int, int, int]:
    return (PROMPT_EMBED_DIM, img_size // PATCH, img_size // PATCH)


class EmbeddingStore:
    """An embeddings folder: ``meta`` (dict), ``has``/``read``/``write`` by relative image path."""

    def __init__(self, root: str | os.PathLike, meta: dict[str, Any]) -> None:
        self.root = Path(root).expanduser()
        self.meta = meta
        self.shape = tuple(int(s) for s in meta["shape"])
        buf = io.BytesIO()
        np.save(buf, np.zeros(self.shape, np.float16), allow_pickle=False)
        self.file_bytes = len(buf.getvalue())  # the size of every file this numpy writes for the store

    @classmethod
    def open(cls, root: str | os.PathLike) -> EmbeddingStore:
        """Open an existing folder written by ``embed``."""
        path = Path(root).expanduser() / META
        if not path.is_file():
            raise FileNotFoundError(
                f"embeddings: '{root}' is not an embeddings folder (no {META}); create it with 'mobilesam embed'"
            )
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"embeddings: cannot read '{path}' ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"embeddings: '{path}' is not a {FORMAT} file")
        if meta.get("version") != VERSION:
            raise ValueError(f"embeddings: '{path}' has format version {meta.get('version')}, this code reads {VERSION}")
        return cls(root, meta)

    @classmethod
    def create(cls, root: str | os.PathLike, teacher: str, model_type: str, img_size: int,
               encoder_sha256: str | None = None) -> EmbeddingStore:
        """Open ``root`` for writing, creating meta.json; an existing folder must hold the same teacher setup.

        ``encoder_sha256``: :func:`encoder_fingerprint` of the encoder that writes the embeddings, kept in
        meta.json so that a user of the store (``finetune``) can tell whether its own encoder wrote them.
        """
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "teacher": teacher,
            "model_type": model_type,
            "img_size": img_size,
            "shape": list(embedding_shape(img_size)),
            "dtype": "float16",
        }
        if encoder_sha256 is not None:
            meta["encoder_sha256"] = encoder_sha256
        base = Path(root).expanduser()
        if (base / META).is_file():
            old = cls.open(base).meta
            diff = [f"{k}: {old.get(k)!r} there, {meta[k]!r} now" for k in ("model_type", "img_size", "shape")
                    if old.get(k) != meta[k]]
            if old.get("encoder_sha256") not in (None, encoder_sha256) and encoder_sha256 is not None:
                diff.append("encoder_sha256: another encoder's weights")
            if diff:
                raise ValueError(
                    f"embeddings: '{root}' already holds embeddings of another teacher setup ({'; '.join(diff)}); "
                    "use another --out or --overwrite"
                )
            return cls(base, old)
        base.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(base / META, (json.dumps(meta, indent=2) + "\n").encode())
        return cls(base, meta)

    def path_for(self, rel: str) -> Path:
        return self.root / (rel + ".npy")

    def has(self, rel: str) -> bool:
        return self.path_for(rel).is_file()

    def missing(self, rels: Iterable[str]) -> list[str]:
        return [r for r in rels if not self.has(r)]

    def damaged(self, rels: Iterable[str]) -> list[tuple[str, str]]:
        """``(rel, reason)`` for the stored files among ``rels`` that :meth:`read` refuses.

        One ``stat`` per file: a file of the expected size is taken as complete (each was written
        atomically; a truncated copy or a full disk changes the size); only the others are read.
        """
        bad = []
        for rel in rels:
            try:
                if self.path_for(rel).stat().st_size == self.file_bytes:
                    continue
            except FileNotFoundError:
                continue  # missing, not damaged: see missing()
            try:
                self.read(rel)
            except DamagedEmbeddingError as e:
                bad.append((rel, e.reason))
        return bad

    def read(self, rel: str) -> np.ndarray:
        """The stored float16 embedding of image ``rel``: (256, E, E)."""
        path = self.path_for(rel)
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"embeddings: no embedding for image '{rel}' ({path} is missing); run 'mobilesam embed' again "
                "on the same folders to compute the missing ones"
            ) from None
        except (OSError, ValueError, EOFError) as e:
            size = path.stat().st_size if path.is_file() else 0
            cut = f"truncated: {size} of {self.file_bytes} bytes; " if size < self.file_bytes else ""
            raise DamagedEmbeddingError(path, f"{cut}not a readable .npy file: {e}") from None
        if arr.shape != self.shape or arr.dtype != np.float16:
            raise DamagedEmbeddingError(path, f"holds {arr.dtype} {arr.shape}, expected float16 {self.shape}")
        return arr

    def write(self, rel: str, embedding: np.ndarray | torch.Tensor) -> Path:
        """Store one embedding (256, E, E) as float16, atomically."""
        if isinstance(embedding, torch.Tensor):
            embedding = embedding.detach().float().cpu().numpy()
        if tuple(embedding.shape) != self.shape:
            raise ValueError(f"embedding: expected shape {self.shape}, got {tuple(embedding.shape)} for '{rel}'")
        half = embedding.astype(np.float16)
        if not np.isfinite(half).all():
            # fp16 tops out at 65504; SAM embeddings come out of a LayerNorm and are far below that.
            raise ValueError(f"embedding of '{rel}' is not finite in float16 (max |x| = {np.abs(embedding).max():.4g})")
        buf = io.BytesIO()
        np.save(buf, half, allow_pickle=False)
        return atomic_write_bytes(self.path_for(rel), buf.getvalue())


class ResizedImages(torch.utils.data.Dataset):
    """Images resized by the official ``ResizeLongestSide``: item -> (index, (3, h, w) uint8 tensor, None),
    or (index, None, why) for a file that cannot be read: one bad image must not stop the others (an
    exception in a loader worker would reach the main process as a traceback)."""

    def __init__(self, root: str | os.PathLike, rels: list[str], img_size: int) -> None:
        self.root = Path(root).expanduser()
        self.rels = rels
        self.transform = ResizeLongestSide(img_size)

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        path = self.root / self.rels[i]
        try:
            resized = self.transform.apply_image(read_image(path))
        except Exception as e:  # noqa: BLE001 - any unreadable file is this image's problem only
            return i, None, image_error(path, e)
        return i, torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1), None


def preprocess_batch(sam: Sam, images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Resized uint8 images (3, h, w) -> the model input (B, 3, S, S), through the official ``Sam.preprocess``."""
    return torch.cat([sam.preprocess(img.to(device, non_blocking=True)[None].float()) for img in images])


def _autocast(device: torch.device, precision: str):
    if precision == "fp32" or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _collate(batch: list) -> tuple[list[int], list[torch.Tensor], list[tuple[int, str]]]:
    """Indices and images of the readable items; ``(index, why)`` of the others."""
    good = [b for b in batch if b[1] is not None]
    return [b[0] for b in good], [b[1] for b in good], [(b[0], b[2]) for b in batch if b[1] is None]


def default_workers(most: int = 4) -> int:
    """``most`` loader processes, or as many as this process may use CPUs if fewer (torch warns above that)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(most, cpus))


def embed_folder(
    teacher: str | os.PathLike | Sam,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    img_size: int = IMAGE_SIZE,
    batch_size: int = 1,
    workers: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    overwrite: bool = False,
    teacher_name: str | None = None,
    progress: bool = True,
    images: list[str] | None = None,
) -> dict[str, Any]:
    """Compute and store the teacher embedding of every image under ``data`` that ``out`` does not hold yet.

    Under torchrun the images are split between ranks (image i goes to rank i % world_size), so
    every rank computes a fixed share whatever was already done. ``precision`` is "fp32", "bf16" or
    "fp16" (autocast on CUDA only). ``workers`` (loader processes): None takes :func:`default_workers`,
    4 or the number of usable CPUs if fewer. Returns counts and timing for this process.

    An image that cannot be read is logged (``embed: skipped 'NAME': why``) and counted in ``failed``,
    with ``failed_files`` listing ``(NAME, why)``; the others are embedded. A stored file that is
    damaged (see :meth:`EmbeddingStore.damaged`) is recomputed. ``images_per_s`` is None when this
    process computed nothing. ``images``: only these paths relative to ``data`` (e.g. a dataset's images).
    """
    check_img_size(img_size)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    if workers is None:
        workers = default_workers()
    if workers < 0:
        raise ValueError(f"workers: expected 0 or more, got {workers}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision: expected 'fp32', 'bf16' or 'fp16', got {precision!r}")
    rels = list_images(data) if images is None else sorted(set(images))
    info = _dist.setup(device)
    sam = load_teacher(teacher, img_size).to(info.device)
    enc_sd = {"image_encoder." + k: v for k, v in sam.image_encoder.state_dict().items()}
    model_type = detect_model_type(enc_sd) or "unknown"
    name = teacher_name or (str(teacher) if not isinstance(teacher, Sam) else f"{model_type} (in-memory model)")
    if overwrite and info.is_main and (Path(out) / META).is_file():
        (Path(out) / META).unlink()
    _dist.barrier(info)
    store = EmbeddingStore.create(out, name, model_type, img_size, encoder_fingerprint(sam.image_encoder)) \
        if info.is_main else None
    _dist.barrier(info)
    if store is None:
        store = EmbeddingStore.open(out)
    mine = rels[info.rank :: info.world_size]
    damaged = [] if overwrite else store.damaged(mine)
    if damaged:
        logger.warning("embed: %d stored embedding(s) are damaged and will be recomputed (first: '%s': %s)",
                       len(damaged), store.path_for(damaged[0][0]), damaged[0][1])
    redo = {rel for rel, _ in damaged}
    todo = mine if overwrite else [r for r in mine if r in redo or not store.has(r)]
    loader = torch.utils.data.DataLoader(
        ResizedImages(data, todo, img_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=info.device.type == "cuda",
    )
    start = time.perf_counter()
    # Sized to this process's work; an unreadable image counts as done, so the bar ends at 100%.
    bar = tqdm(total=len(todo), desc="embed" if not info.distributed else f"embed (rank 0 of {info.world_size})",
               unit="img", disable=not progress or not info.is_main)
    failed: list[tuple[str, str]] = []
    encoder = optimize_for_inference(sam).image_encoder  # the teacher only infers: the CPU fast paths apply
    try:
        with torch.inference_mode():
            for idxs, images, errors in loader:
                for i, why in errors:
                    failed.append((todo[i], why))
                    with tqdm.external_write_mode():  # the line goes above the bar, not into it
                        logger.warning("embed: skipped '%s': %s", todo[i], why)
                if images:
                    x = preprocess_batch(sam, images, info.device)
                    with _autocast(info.device, precision):
                        emb = encoder(x)
                    for i, e in zip(idxs, emb.float().cpu()):
                        store.write(todo[i], e)
                bar.update(len(idxs) + len(errors))
                if failed:
                    bar.set_postfix(failed=len(failed), refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    _dist.barrier(info)
    computed = len(todo) - len(failed)
    return {
        "images": len(rels),
        "this_rank": len(mine),
        "computed": computed,
        "skipped": len(mine) - len(todo),
        "failed": len(failed),
        "failed_files": failed,
        "seconds": seconds,
        "images_per_s": computed / seconds if seconds > 0 and computed else None,
        "rank": info.rank,
        "world_size": info.world_size,
        "out": str(store.root),
        "model_type": model_type,
    }
