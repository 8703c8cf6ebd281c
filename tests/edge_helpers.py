"""Shared by the edge export tests (ExecuTorch, LiteRT, Core ML): a small model, the runtime gate."""

from __future__ import annotations

import dataclasses
import importlib
import os

import numpy as np

import pytest
import torch

from mobilesam.modeling import Sam, build_model
from mobilesam.modeling.configs import MODEL_CONFIGS, build_image_encoder
from mobilesam.modeling.sam2 import Sam2, build_sam2
from mobilesam.modeling.sam2.configs import SAM2_CONFIGS
from mobilesam.modeling.sam2.hiera import Hiera
from mobilesam.transforms import ResizeLongestSide, ResizeSquare

SMALL = 256  # encoder input of the test models: a full-size encoder export takes minutes on 2 cores
# One block per TinyViT stage: lowering time grows with the graph's size (a full-depth encoder took 38 s of
# XNNPACK lowering at 256 px), and every kind of block is still in the graph.
SHALLOW = dataclasses.replace(MODEL_CONFIGS["vit_t"], depths=(1, 1, 1, 1))


def small_sam(seed: int = 0, img_size: int = SMALL) -> Sam:
    """A perturbed random vit_t with one block per encoder stage, whose encoder takes ``img_size`` pixels
    (embedding img_size / 16); the prompt encoder and mask decoder are the real ones, on that smaller grid."""
    torch.manual_seed(seed)
    sam = build_model("vit_t")
    sam.image_encoder = build_image_encoder(SHALLOW, img_size).eval()
    grid = img_size // 16
    pe = sam.prompt_encoder
    pe.image_embedding_size, pe.input_image_size = (grid, grid), (img_size, img_size)
    pe.mask_input_size = (4 * grid, 4 * grid)
    with torch.no_grad():  # non-trivial BatchNorm statistics and biases, as a trained model has
        for name, t in sam.state_dict().items():
            if not t.is_floating_point():
                continue
            if "running_var" in name:
                t.copy_(torch.rand_like(t) + 0.5)
            elif "bias" in name or "running_mean" in name or "attention_biases" in name:
                t.copy_(torch.randn_like(t) * 0.1)
    return sam.eval()


def small_sam2(seed: int = 0, img_size: int = SMALL) -> Sam2:
    """A perturbed random SAM 2.1 tiny whose Hiera trunk has one block per stage (the third global) and takes
    ``img_size`` pixels; the neck, prompt encoder and mask decoder are the real ones on that smaller grid."""
    torch.manual_seed(seed)
    sam = build_sam2("sam2.1_hiera_tiny")
    cfg = SAM2_CONFIGS["sam2.1_hiera_tiny"]
    sam.image_encoder.trunk = Hiera(embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, stages=(1, 1, 1, 1),
                                    global_att_blocks=(2,),
                                    window_pos_embed_bkg_spatial_size=cfg.window_pos_embed_bkg_spatial_size,
                                    window_spec=cfg.window_spec)
    grid = img_size // 16
    pe = sam.sam_prompt_encoder
    pe.image_embedding_size, pe.input_image_size = (grid, grid), (img_size, img_size)
    pe.mask_input_size = (4 * grid, 4 * grid)
    sam.image_size = img_size
    with torch.no_grad():  # away from the initialisation's zeros and ones, as trained weights are
        for t in sam.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.05)
    return sam.eval()


def small_sam2_predictor(sam: Sam2):
    """The torch backend's SamPredictor on :func:`small_sam2` (the reference), stretching images to its own
    input size (the family's transform stretches to 1024)."""
    from mobilesam.predictor import SamPredictor

    predictor = SamPredictor(sam)
    predictor.transform = ResizeSquare(sam.image_size)
    return predictor


def require(module: str, env: str = "MOBILESAM_EDGE_TESTS") -> object:
    """Import ``module``, or skip; with ``env``=required (set by .ci/run where it installs) fail instead."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get(env) == "required":
            pytest.fail(f"{module} is required here ({env}=required) but cannot be imported: {e}")
        pytest.skip(f"{module} is not installed", allow_module_level=True)


@torch.no_grad()
def reference_predict(sam: Sam, image: np.ndarray, multimask_output: bool = True, **prompt: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks (C, H, W), scores (C,) and the embedding of one RGB image and prompt by ``Sam.forward`` (the
    reference modules, resized to the model's own input size: the torch predictor takes the family's 1024)."""
    resize = ResizeLongestSide(sam.img_size)
    size = image.shape[:2]
    record = {"image": torch.as_tensor(resize.apply_image(image)).permute(2, 0, 1).float(), "original_size": size}
    if "point_coords" in prompt:
        record["point_coords"] = torch.as_tensor(resize.apply_coords(prompt["point_coords"], size), dtype=torch.float)[None]
        record["point_labels"] = torch.as_tensor(prompt["point_labels"])[None]
    if "box" in prompt:
        record["boxes"] = torch.as_tensor(resize.apply_boxes(prompt["box"], size), dtype=torch.float)
    out = sam([record], multimask_output)[0]
    embedding = sam.image_encoder(sam.preprocess(record["image"][None]))
    return out["masks"][0].numpy(), out["iou_predictions"][0].numpy(), embedding
