"""Training data: images with their stored teacher embeddings, a resumable sampler, and flips.

Flips and padding. The official preprocessing resizes the longest side to S (1024) and pads the
bottom and right with zeros (after normalisation). A stored embedding is the teacher's output for the
*unflipped* padded image, so a flip must move image pixels and embedding cells alike. Mirroring the
whole S x S input would move the image to the right/bottom edge and the padding to the left/top,
while mirroring the whole embedding grid would not line up with the content unless the image fills
that axis. We therefore mirror only the span of embedding cells that covers the image
(``ceil(w / 16)`` columns for a horizontal flip) and the same span of input pixels (``16 * ceil(w / 16)``,
which holds the image plus fewer than 16 padding pixels). Every embedding cell then sees exactly the
mirrored pixels of its source cell. The image is shifted right by the ``16 * ceil(w / 16) - w``
(< 16) padding pixels it had, so the student sees a thin zero strip on the left: a small departure
from the official layout, exact when w is a multiple of 16 (e.g. w = 1024 for landscape images).

Flips remain an approximation for a reason no geometry fixes: the target is the mirror of the
teacher's embedding of the original image, not the teacher's embedding of the mirrored image, and
SAM's ViT is not exactly mirror-equivariant (its channels may encode orientation). Flips are off by
default; use them when the data set is small.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..io import read_image
from ..transforms import ResizeLongestSide
from .store import EmbeddingStore, image_error


class DistillDataset(torch.utils.data.Dataset):
    """Images and their teacher embeddings.

    An item is keyed by ``(index, epoch)`` (see :class:`StepSampler`) and is a dict with ``image``
    (3, h, w) uint8 resized by ``ResizeLongestSide``, ``target`` (256, E, E) float16, ``input_size``
    (h, w), and the flip decisions ``hflip``/``vflip``, drawn from (seed, epoch, index) so they do
    not depend on the number of workers or ranks, nor on where a run was resumed. An image or
    embedding that cannot be read gives ``{"error": message}`` instead: the training loop raises it
    in the main process, as one line (raised in a loader worker, it would arrive wrapped in a traceback).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        rels: list[str],
        store: EmbeddingStore,
        img_size: int,
        hflip: float = 0.0,
        vflip: float = 0.0,
        seed: int = 0,
    ) -> None:
        for name, p in (("hflip", hflip), ("vflip", vflip)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
        self.root = Path(root).expanduser()
        self.rels = rels
        self.store = store
        self.transform = ResizeLongestSide(img_size)
        self.hflip, self.vflip, self.seed = hflip, vflip, seed

    def __len__(self) -> int:
        return len(self.rels)

    def flips(self, index: int, epoch: int) -> tuple[bool, bool]:
        u = np.random.default_rng([self.seed, epoch, index]).random(2)
        return bool(u[0] < self.hflip), bool(u[1] < self.vflip)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        rel = self.rels[index]
        path = self.root / rel
        try:
            resized = self.transform.apply_image(read_image(path))
        except Exception as e:  # noqa: BLE001 - reported by the training loop, naming the file
            return {"error": f"data: cannot read image '{path}' ({image_error(path, e)}); replace the file, or "
                             "move it out of the image folder and start a new run"}
        try:
            target = self.store.read(rel)
        except (OSError, ValueError) as e:
            return {"error": str(e)}
        hflip, vflip = self.flips(index, epoch)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1),
            "target": torch.from_numpy(target),
            "input_size": (resized.shape[0], resized.shape[1]),
            "hflip": hflip,
            "vflip": vflip,
        }


def collate(items: list[dict]) -> dict:
    """Images stay a list (their sizes differ until ``Sam.preprocess`` pads them); targets are stacked.
    A batch with an unreadable item is ``{"error": message}`` of the first."""
    for it in items:
        if "error" in it:
            return {"error": it["error"]}
    return {
        "images": [it["image"] for it in items],
        "targets": torch.stack([it["target"] for it in items]),
        "input_sizes": [it["input_size"] for it in items],
        "hflip": [it["hflip"] for it in items],
        "vflip": [it["vflip"] for it in items],
    }


def flip_pair(
    x: torch.Tensor, y: torch.Tensor, input_size: tuple[int, int], horizontal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror one padded input (3, S, S) and its embedding (C, E, E) over the cells covering the image.

    ``input_size`` (h, w) is the resized image before padding. See the module docstring for why
    only ``ceil(w / 16)`` cells (and their 16-pixel spans) are mirrored.
    """
    patch = x.shape[-1] // y.shape[-1]
    n = input_size[1] if horizontal else input_size[0]
    cells = min(math.ceil(n / patch), y.shape[-1])
    dim = -1 if horizontal else -2
    x, y = x.clone(), y.clone()
    xs = x.narrow(dim, 0, cells * patch)
    xs.copy_(xs.flip(dim))
    ys = y.narrow(dim, 0, cells)
    ys.copy_(ys.flip(dim))
    return x, y


def apply_flips(x: torch.Tensor, y: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the batch's flip decisions to inputs (B, 3, S, S) and targets (B, C, E, E)."""
    if not any(batch["hflip"]) and not any(batch["vflip"]):
        return x, y
    xs, ys = list(x), list(y)
    for i, size in enumerate(batch["input_sizes"]):
        if batch["hflip"][i]:
            xs[i], ys[i] = flip_pair(xs[i], ys[i], size, horizontal=True)
        if batch["vflip"][i]:
            xs[i], ys[i] = flip_pair(xs[i], ys[i], size, horizontal=False)
    return torch.stack(xs), torch.stack(ys)


class StepSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches of ``(index, epoch)`` keys, from optimizer step ``start`` to ``total``.

    Epoch e visits the images in the order of ``randperm(N)`` seeded by (seed, e); optimizer step j
    of the epoch takes the global batch ``perm[j*B:(j+1)*B]`` (an incomplete last batch is dropped).
    That batch is cut into ``accumulate * world_size`` micro-batches of ``B / (accumulate * world_size)``;
    micro-step k of rank r takes piece ``k * world_size + r``. The order depends only on the seed,
    so a resumed run and a run on another number of ranks see the same global batches.
    """

    def __init__(
        self, num_images: int, batch_size: int, accumulate: int, world_size: int, rank: int,
        seed: int, start: int, total: int,
    ) -> None:
        self.n, self.batch, self.accumulate = num_images, batch_size, accumulate
        self.world, self.rank, self.seed, self.start, self.total = world_size, rank, seed, start, total
        self.micro = batch_size // (accumulate * world_size)
        self.steps_per_epoch = num_images // batch_size

    def __len__(self) -> int:
        return (self.total - self.start) * self.accumulate

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, perm = -1, None
        for step in range(self.start, self.total):
            e, j = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            glob = perm[j * self.batch : (j + 1) * self.batch].tolist()
            for k in range(self.accumulate):
                piece = k * self.world + self.rank
                yield [(i, e) for i in glob[piece * self.micro : (piece + 1) * self.micro]]
