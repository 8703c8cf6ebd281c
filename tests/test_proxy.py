"""The benchmark stand-in (``benchmarks/proxy.py``): its training path must be the inference path.

The proxy is trained through its own decoding function (one embedding per prompt, any grid size) and
benchmarked through the official modules; if the two ever differ, the benchmark measures a model that
was never trained. These tests pin them together on random weights.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import proxy  # noqa: E402

from mobilesam.modeling import build_model  # noqa: E402


@pytest.fixture(scope="module")
def official_model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return proxy.to_official(proxy.set_colour_encoder(build_model("vit_t")))


@torch.no_grad()
def test_training_decode_is_the_official_decoder(official_model):
    """At the real 64x64 grid, ``proxy.decode`` gives the official MaskDecoder's outputs, for points
    and boxes."""
    sam = official_model
    proxy.warm_start_attention(sam, 1.5, seed=0)  # non-default attention weights, as in training
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(3, 256, 64, 64, generator=gen)
    points = torch.tensor([[100.0, 200.0], [512.0, 40.0], [900.0, 1000.0]])
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [500.0, 10.0, 700.0, 90.0], [0.0, 0.0, 1023.0, 1023.0]])
    for is_box in (False, True):
        masks, iou = proxy.decode(sam, emb, points, boxes, torch.full((3,), is_box))
        for i in range(3):
            if is_box:
                sparse, dense = sam.prompt_encoder(points=None, boxes=boxes[i : i + 1], masks=None)
            else:
                sparse, dense = sam.prompt_encoder(
                    points=(points[i : i + 1, None], torch.ones(1, 1, dtype=torch.int)), boxes=None, masks=None
                )
            ref_masks, ref_iou = sam.mask_decoder(
                image_embeddings=emb[i : i + 1], image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
            )
            torch.testing.assert_close(masks[i, 1:], ref_masks[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(iou[i, 1:], ref_iou[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_set_encoder_is_the_colour_cell_shortcut(official_model):
    """The TinyViT with set weights computes what training feeds the decoder (``cells_to_embedding``)."""
    assert proxy.check_encoder(official_model, torch.device("cpu")) < 0.1


def test_coarse_grid_scene_is_the_same_scene():
    """A training scene at grid 16 is the grid-64 scene seen 4x coarser: same instances, same layout."""
    coarse, fine = proxy.prepare_train_scene(7, grid=16), proxy.prepare_train_scene(7, grid=64)
    assert coarse.cells.shape == (48, 16, 16) and fine.cells.shape == (48, 64, 64)
    assert coarse.low.shape == (64, 64) and fine.low.shape == (256, 256)
    assert np.array_equal(np.unique(coarse.low), np.unique(fine.low))
    # Boxes are in each grid's own frame (16G pixels): 4x apart, to within a low-res cell or two.
    present = np.diff(coarse.starts)[1:] > 0
    assert np.abs(coarse.boxes[1:][present] * 4 - fine.boxes[1:][present]).max() <= 2 * 16
