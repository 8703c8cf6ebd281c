"""Fine-tuning data: objects of a labelled dataset with SAM-style first prompts, in the model's frame.

For each image (keyed ``(index, epoch)`` by :class:`~mobilesam.train.data.StepSampler`) up to
``objects_per_image`` objects are drawn, and for each a first prompt, as SAM was trained (arXiv
2304.02643, appendix A): with probability ``box_prob`` its box with noise (standard deviation 10% of the
box side, at most 20 pixels of the 1024 frame), else a point drawn uniformly inside its mask. All draws
come from a generator seeded by (seed, epoch, index), so they do not depend on workers, ranks or where a
run was resumed.

Targets are at the decoder's low resolution: the mask resized into the input frame (longest side
1024, padded bottom/right) and averaged over each 4 x 4 cell, a cell being foreground when at least half
covered (the fullest cell is kept for an object too small for any). ``valid`` marks the cells on the
image (the frame's padding is left out of the loss).

The image is given as its stored embedding (frozen encoder: no image augmentation, since that would
change the embedding) or as pixels, optionally mirrored left-right with its masks (``hflip``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..datasets import Instance, SegmentationDataset, image_size
from ..io import read_image
from ..transforms import ResizeLongestSide, preprocess_shape
from .store import EmbeddingStore, image_error

BOX_NOISE, BOX_NOISE_MAX = 0.1, 20.0  # SAM: std 10% of the box side, at most 20 pixels


@dataclass
class TrainImage:
    file: str
    size: tuple[int, int]  # (H, W) of the image as read
    instances: list[Instance]


@dataclass
class Prepared:
    images: list[TrainImage]
    counts: dict[str, int] = field(default_factory=dict)


def prepare(ds: SegmentationDataset, progress: bool = True, desc: str = "finetune: reading masks") -> Prepared:
    """The images with at least one usable object (not crowd, with a mask of some area), and counts of
    what was set aside: crowd, box-only labels, empty masks, images without usable objects."""
    counts = {"crowd": 0, "box_only": 0, "empty_masks": 0, "images_without_objects": 0, "objects": 0}
    images = []
    for entry in tqdm(ds.images, desc=desc, unit="img", disable=not progress):
        usable = []
        size = None
        for inst in entry.instances:
            if inst.iscrowd:
                counts["crowd"] += 1
                continue
            if not inst.has_mask:
                counts["box_only"] += 1
                continue
            if size is None:
                try:
                    size = (entry.height, entry.width) if entry.width is not None else image_size(ds.path(entry))
                except (OSError, ValueError) as e:
                    raise ValueError(f"data: cannot read image '{ds.path(entry)}' ({image_error(ds.path(entry), e)})") from None
            rle = inst.rle(*size)
            if rle is None or int(mask_utils.area(rle)) == 0:
                counts["empty_masks"] += 1
                continue
            usable.append(inst)
        if not usable:
            counts["images_without_objects"] += 1
            continue
        counts["objects"] += len(usable)
        images.append(TrainImage(entry.file, size, usable))
    return Prepared(images, counts)


def low_res_target(mask: np.ndarray, input_size: tuple[int, int], frame: int) -> np.ndarray:
    """Boolean (frame/4, frame/4) target of a (H, W) mask whose image fills ``input_size`` of the frame."""
    rh, rw = input_size
    canvas = np.zeros((frame, frame), np.float32)
    canvas[:rh, :rw] = cv2.resize(mask.astype(np.float32), (rw, rh), interpolation=cv2.INTER_AREA)
    g = frame // 4
    frac = canvas.reshape(g, 4, g, 4).mean((1, 3))
    target = frac >= 0.5
    if not target.any():
        target.flat[int(np.argmax(frac))] = True
    return target


def valid_cells(input_size: tuple[int, int], frame: int) -> np.ndarray:
    g = frame // 4
    valid = np.zeros((g, g), bool)
    valid[: math.ceil(input_size[0] / 4), : math.ceil(input_size[1] / 4)] = True
    return valid


class FinetuneDataset(torch.utils.data.Dataset):
    """Items for :func:`collate`; an unreadable image or embedding gives ``{"error": message}`` (raised
    by the training loop in the main process, as one line)."""

    def __init__(self, ds: SegmentationDataset, images: list[TrainImage], frame: int, *,
                 store: EmbeddingStore | None, objects_per_image: int, box_prob: float, hflip: float,
                 seed: int) -> None:
        self.ds, self.images, self.frame, self.store = ds, images, frame, store
        self.transform = ResizeLongestSide(frame)
        self.objects_per_image, self.box_prob, self.hflip, self.seed = objects_per_image, box_prob, hflip, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        rng = np.random.default_rng([self.seed, epoch, index])
        img = self.images[index]
        h, w = img.size
        input_size = preprocess_shape(h, w, self.frame)
        chosen = rng.permutation(len(img.instances))[: self.objects_per_image]
        flip = bool(self.store is None and rng.random() < self.hflip)
        item: dict = {"key": (index, epoch)}
        path = self.ds.root / img.file
        if self.store is not None:
            try:
                item["embedding"] = torch.from_numpy(self.store.read(img.file))
            except (OSError, ValueError) as e:
                return {"error": str(e)}
        else:
            try:
                rgb = read_image(path)
            except Exception as e:  # noqa: BLE001 - reported by the training loop, naming the file
                return {"error": f"data: cannot read image '{path}' ({image_error(path, e)})"}
            if rgb.shape[:2] != (h, w):
                return {"error": f"data: image '{path}' is {rgb.shape[1]}x{rgb.shape[0]}, its annotations say "
                                 f"{w}x{h} (EXIF rotation or another file?)"}
            if flip:
                rgb = rgb[:, ::-1]
            resized = self.transform.apply_image(np.ascontiguousarray(rgb))
            item["image"] = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
        targets, boxes, points, is_box = [], [], [], []
        sx, sy = input_size[1] / w, input_size[0] / h
        for j in chosen:
            mask = img.instances[j].mask(h, w)
            if flip:
                mask = mask[:, ::-1]
            targets.append(low_res_target(mask, input_size, self.frame))
            ys, xs = np.nonzero(mask)
            box = np.array([xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy])
            side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
            noisy = box + rng.normal(0.0, 1.0, 4) * np.minimum(BOX_NOISE * side, BOX_NOISE_MAX)
            noisy = np.clip(noisy, 0, [input_size[1], input_size[0]] * 2)
            noisy[2:] = np.maximum(noisy[2:], noisy[:2] + 1)
            k = int(rng.integers(len(xs)))
            points.append([xs[k] * sx, ys[k] * sy])
            boxes.append(noisy)
            is_box.append(bool(rng.random() < self.box_prob))
        item.update(
            targets=torch.from_numpy(np.stack(targets)),
            valid=torch.from_numpy(valid_cells(input_size, self.frame)),
            boxes=torch.tensor(np.array(boxes), dtype=torch.float32),
            points=torch.tensor(np.array(points), dtype=torch.float32),
            is_box=torch.tensor(is_box),
        )
        return item


def collate(items: list[dict], seed: int = 0) -> dict:
    """Objects of all images in one batch, boxes first: ``obj_image`` (N,) index of each object's image,
    ``targets`` and ``valid`` (N, g, g), ``boxes`` (N, 4), ``points`` (N, 2), ``is_box`` (N,); the images'
    ``embeddings`` (I, C, E, E) or ``images`` (list of (3, h, w) uint8); ``click_seed`` from the run's
    ``seed`` and the items' keys.
    A batch with an unreadable item is ``{"error": message}`` of the first."""
    for it in items:
        if "error" in it:
            return {"error": it["error"]}
    counts = [len(it["targets"]) for it in items]
    obj_image = torch.repeat_interleave(torch.arange(len(items)), torch.tensor(counts))
    batch = {
        "obj_image": obj_image,
        "targets": torch.cat([it["targets"] for it in items]),
        "valid": torch.stack([it["valid"] for it in items])[obj_image],
        "boxes": torch.cat([it["boxes"] for it in items]),
        "points": torch.cat([it["points"] for it in items]),
        "is_box": torch.cat([it["is_box"] for it in items]),
    }
    order = torch.argsort((~batch["is_box"]).to(torch.uint8), stable=True)  # box prompts first
    batch = {k: v[order] for k, v in batch.items()}
    if "embedding" in items[0]:
        batch["embeddings"] = torch.stack([it["embedding"] for it in items])
    else:
        batch["images"] = [it["image"] for it in items]
    keys = [seed] + [v for it in items for v in it["key"]]
    batch["click_seed"] = int(np.random.SeedSequence(keys).generate_state(1, np.uint64)[0] % 2**63)
    return batch


__all__ = ["FinetuneDataset", "Prepared", "TrainImage", "collate", "low_res_target", "prepare", "valid_cells"]
