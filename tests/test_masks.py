"""Mask conversions: boxes, polygons (and joining multi-part masks), COCO RLE."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mobilesam.masks import (
    decode_rle,
    encode_rle,
    join_polygons,
    mask_to_polygons,
    masks_to_boxes,
    polygons_to_mask,
)


def test_masks_to_boxes_inclusive_and_empty() -> None:
    m = torch.zeros(2, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:9] = True
    assert masks_to_boxes(m).tolist() == [[3, 2, 8, 4], [0, 0, 0, 0]]


def test_polygons_cover_the_mask() -> None:
    m = np.zeros((60, 80), bool)
    m[5:25, 5:30] = True
    m[35:55, 40:75] = True
    parts = mask_to_polygons(m, "all")
    assert len(parts) == 2 and len(mask_to_polygons(m, "largest")) == 1
    filled = polygons_to_mask([join_polygons(parts)], m.shape)
    assert (filled & m).sum() / (filled | m).sum() > 0.95
    with pytest.raises(ValueError, match="strategy: expected 'largest' or 'all'"):
        mask_to_polygons(m, "biggest")


def test_join_is_fast_and_lossless_on_speckle() -> None:
    """A speckled mask (hundreds of parts): every point kept, the fill covers every part, quickly."""
    rng = np.random.default_rng(0)
    m = rng.random((200, 300)) > 0.8
    m = np.kron(m, np.ones((2, 2), bool))
    parts = mask_to_polygons(m, "all")
    assert len(parts) > 300
    start = time.perf_counter()
    ring = join_polygons(parts)
    elapsed = time.perf_counter() - start
    assert len(ring) == sum(len(p) for p in parts) + 2 * (len(parts) - 1)
    assert {tuple(p) for p in ring.tolist()} == {tuple(p) for part in parts for p in part.tolist()}
    filled = polygons_to_mask([ring], m.shape)
    covered = polygons_to_mask(parts, m.shape)
    assert (covered & ~filled).sum() <= 0.02 * covered.sum()
    assert elapsed < 2.0, f"join took {elapsed:.2f} s"


def test_rle_round_trip_and_validation() -> None:
    m = np.random.default_rng(1).random((23, 31)) > 0.5
    rle = encode_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [23, 31]
    assert np.array_equal(decode_rle(rle), m)
    with pytest.raises(ValueError, match="runs cover 0 pixels, expected 4 x 5 = 20"):
        decode_rle({"size": [4, 5], "counts": ""})
    assert np.array_equal(decode_rle({"size": [2, 2], "counts": [1, 2, 1]}), np.array([[0, 1], [1, 0]], bool))
