"""build_sam: architecture detection, checkpoint layouts, and the errors a user meets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilesam import CheckpointError, build_sam, detect_model_type, sam_model_registry
from mobilesam.modeling import MODEL_CONFIGS, build_model


def _embedding_of(sam, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sam.image_encoder(x)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    return torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))


def test_any_file_name_loads_and_matches(tiny_checkpoint, vit_t_pair, probe) -> None:
    sam = build_sam(tiny_checkpoint)
    _, ours = vit_t_pair
    assert isinstance(sam.image_encoder, type(ours.image_encoder))
    assert torch.equal(_embedding_of(sam, probe), _embedding_of(ours, probe))
    assert not sam.training


@pytest.mark.parametrize("wrap", ["model", "state_dict"])
def test_wrapped_state_dicts_load(tmp_path, vit_t_pair, wrap) -> None:
    ref, _ = vit_t_pair
    path = tmp_path / f"wrapped_{wrap}.pth"
    torch.save({wrap: ref.state_dict(), "epoch": 3}, path)
    sam = build_sam(path)
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(sam.state_dict()[key], ref.state_dict()[key])


def test_detect_model_type_for_every_config() -> None:
    for name in MODEL_CONFIGS:
        with torch.device("meta"):
            sd = build_model(name).state_dict()
        assert detect_model_type(sd) == name
    assert detect_model_type({"foo.weight": torch.zeros(1)}) is None


def test_explicit_model_type_of_another_architecture(tiny_checkpoint) -> None:
    with pytest.raises(CheckpointError) as e:
        build_sam(tiny_checkpoint, model_type="vit_b")
    msg = str(e.value)
    assert str(tiny_checkpoint) in msg and "vit_b" in msg
    assert "missing keys: image_encoder." in msg and "unexpected keys: image_encoder." in msg


def test_unknown_model_type_is_rejected(tiny_checkpoint) -> None:
    with pytest.raises(ValueError, match="model_type: expected one of .*got 'vit_x'"):
        build_sam(tiny_checkpoint, model_type="vit_x")


def test_state_dict_of_something_else(tmp_path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a SAM / MobileSAM / SAM 2 checkpoint.*conv1.weight"):
        build_sam(path)


def test_shape_mismatch_is_reported(tmp_path, vit_t_pair) -> None:
    sd = dict(vit_t_pair[0].state_dict())
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "bad_shape.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"other shapes.*mask_decoder.iou_token.weight \(1, 128\) vs \(1, 256\)"):
        build_sam(path)


def test_missing_file_message(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        build_sam(tmp_path / "nope.pt")


def test_registry_drop_in(tiny_checkpoint, probe, vit_t_pair) -> None:
    sam = sam_model_registry["vit_t"](checkpoint=tiny_checkpoint)
    assert torch.equal(_embedding_of(sam, probe), _embedding_of(vit_t_pair[1], probe))
    assert sam_model_registry["default"].__name__ == "build_sam_vit_h"


def test_random_weights_need_a_model_type() -> None:
    with pytest.raises(ValueError, match="give a checkpoint"):
        build_sam()
    assert sum(p.numel() for p in build_sam(model_type="vit_t").parameters()) == 10_130_092


def test_official_code_loads_our_saved_state_dict(tmp_path, vit_t_pair, probe) -> None:
    """The other direction: a state_dict saved from ours loads in the official package."""
    from mobile_sam import sam_model_registry as official

    _, ours = vit_t_pair
    path = tmp_path / "ours.pt"
    torch.save(ours.state_dict(), path)
    ref = official["vit_t"](checkpoint=str(path))
    ref.eval()  # refresh the official TinyViT's cached attention biases
    got = _embedding_of(ref, probe)
    want = _embedding_of(ours, probe)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert np.isfinite(got.numpy()).all()
