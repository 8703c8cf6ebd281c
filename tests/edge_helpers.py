"""Shared by the edge export tests (ExecuTorch, LiteRT, Core ML): a small model, the runtime gate."""

from __future__ import annotations

import importlib
import os

import numpy as np

import pytest
import torch

from mobilesam.modeling import Sam, build_model
from mobilesam.transforms import ResizeLongestSide
from mobilesam.modeling.configs import MODEL_CONFIGS, build_image_encoder

SMALL = 256  # encoder input of the test models: a full-size encoder export takes minutes on 2 cores


def small_sam(seed: int = 0, img_size: int = SMALL) -> Sam:
    """A perturbed random vit_t whose encoder takes ``img_size`` pixels (embedding img_size / 16); the
    prompt encoder and mask decoder are the real ones, on that smaller grid."""
    torch.manual_seed(seed)
    sam = build_model("vit_t")
    sam.image_encoder = build_image_encoder(MODEL_CONFIGS["vit_t"], img_size).eval()
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
