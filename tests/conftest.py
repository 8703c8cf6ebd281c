from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from oracle import reference_model  # noqa: E402

from mobilesam.modeling import Sam, build_model  # noqa: E402

torch.set_num_threads(max(1, torch.get_num_threads()))


def prompt_cases(h: int, w: int) -> dict[str, dict]:
    """Prompts scaled to the image: a point, points with a negative, a box, box + points."""
    return {
        "point": dict(point_coords=np.array([[w * 0.5, h * 0.4]]), point_labels=np.array([1])),
        "points_neg": dict(
            point_coords=np.array([[w * 0.3, h * 0.3], [w * 0.7, h * 0.6], [w * 0.5, h * 0.9]]),
            point_labels=np.array([1, 0, 1]),
        ),
        "box": dict(box=np.array([w * 0.1, h * 0.2, w * 0.8, h * 0.9])),
        "box_points": dict(
            box=np.array([w * 0.05, h * 0.1, w * 0.6, h * 0.7]),
            point_coords=np.array([[w * 0.3, h * 0.4], [w * 0.55, h * 0.65]]),
            point_labels=np.array([1, 0]),
        ),
    }


def parity_images() -> dict[str, np.ndarray]:
    """A real photograph, a wide synthetic greyscale image and a very small one."""
    from skimage import data

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:180, 0:640]
    grey = ((np.sin(xx / 23.0) + np.cos(yy / 17.0)) * 60 + 128 + rng.normal(0, 8, xx.shape)).clip(0, 255)
    grey[40:120, 200:330] = 230  # a bright rectangle: an object to segment
    tiny = rng.integers(0, 256, (19, 27, 3), dtype=np.uint8)
    return {"photo": data.chelsea(), "grey_wide": grey.astype(np.uint8), "tiny": tiny}


@pytest.fixture(scope="session")
def images() -> dict[str, np.ndarray]:
    return parity_images()


_MODELS: dict[str, tuple[torch.nn.Module, Sam]] = {}


def reference_and_ours(model_type: str) -> tuple[torch.nn.Module, Sam]:
    """The perturbed official model and ours loaded (strictly) from its state_dict; cached per session."""
    if model_type not in _MODELS:
        ref = reference_model(model_type, seed=0)
        ours = build_model(model_type)
        ours.load_state_dict(ref.state_dict(), strict=True)
        _MODELS[model_type] = (ref, ours)
    return _MODELS[model_type]


@pytest.fixture(scope="session")
def vit_t_pair() -> tuple[torch.nn.Module, Sam]:
    return reference_and_ours("vit_t")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, vit_t_pair) -> Path:
    """A randomly initialised, perturbed vit_t checkpoint in the official flat format, with an odd name."""
    path = tmp_path_factory.mktemp("ckpt") / "my weights v2.bin"
    torch.save(vit_t_pair[0].state_dict(), path)
    return path


def trained_like(model_type: str, seed: int) -> Sam:
    """A random model with non-trivial BatchNorm statistics and biases, as a trained model has."""
    torch.manual_seed(seed)
    sam = build_model(model_type)
    with torch.no_grad():
        for name, t in sam.state_dict().items():
            if t.is_floating_point() and ("running_var" in name):
                t.copy_(torch.rand_like(t) + 0.5)
            elif t.is_floating_point() and ("bias" in name or "running_mean" in name or "attention_biases" in name):
                t.copy_(torch.randn_like(t) * 0.1)
    return sam


@pytest.fixture(scope="session")
def vit_t_onnx_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sam, Path, dict]:
    """``trained_like("vit_t", 0)`` exported to ONNX with its int8 variants (checked against PyTorch), once
    per session: (model, folder, manifest). The export tests and the web page tests share it."""
    from mobilesam.export import export_onnx

    sam = trained_like("vit_t", 0)
    out = tmp_path_factory.mktemp("onnx") / "vit_t"
    return sam, out, export_onnx(sam, out, quantize="int8", progress=False)


@pytest.fixture(scope="session")
def web_site(tmp_path_factory: pytest.TempPathFactory, vit_t_onnx_export) -> Path:
    """``mobilesam export --format web`` of that ONNX export, once per session: the static page, and in
    ``model/`` the ONNX folder, which ``mobilesam serve --backend onnxruntime`` runs."""
    from mobilesam.export import export_model

    out = tmp_path_factory.mktemp("web") / "site"
    export_model(str(vit_t_onnx_export[1]), out, format="web", progress=False)
    return out
