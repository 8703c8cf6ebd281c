"""Parity with the official code (``mobile_sam`` for vit_t, ``segment_anything`` for vit_b)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import parity_images, prompt_cases, reference_and_ours
from oracle import reference_model

from mobilesam.modeling import build_model
from mobilesam.predictor import SamPredictor

EMB_RTOL = 1e-4  # max abs difference relative to the embedding's max abs value
LOGIT_ATOL = 1e-3


def compare_predictors(ref_model: torch.nn.Module, ours_model: torch.nn.Module, image: np.ndarray) -> list[str]:
    """Every parity check on one image; returns the failures (empty when all pass)."""
    from segment_anything import SamPredictor as RefPredictor  # same predictor code as mobile_sam's

    failures: list[str] = []
    ref, ours = RefPredictor(ref_model), SamPredictor(ours_model)
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    ref.set_image(rgb)
    ours.set_image(image)  # ours converts greyscale itself
    scale = ref.features.abs().max().item()
    emb_diff = (ref.features - ours.features).abs().max().item()
    if emb_diff > EMB_RTOL * scale:
        failures.append(f"embedding: max abs diff {emb_diff:.3g} > {EMB_RTOL} x {scale:.3g}")

    h, w = rgb.shape[:2]
    for name, prompt in prompt_cases(h, w).items():
        for multimask in (True, False):
            r_masks, r_iou, r_low = ref.predict(**prompt, multimask_output=multimask)
            o_logits, o_iou, o_low = ours.predict(**prompt, multimask_output=multimask, return_logits=True)
            failures += _compare_outputs(f"{name}/mm={multimask}", r_masks, r_iou, r_low, o_logits, o_iou, o_low)
        # A refinement round: the best low-res mask fed back as mask_input.
        best = r_low[np.argmax(r_iou)][None]
        r_masks, r_iou, r_low = ref.predict(**prompt, mask_input=best, multimask_output=False)
        o_logits, o_iou, o_low = ours.predict(**prompt, mask_input=best, multimask_output=False, return_logits=True)
        failures += _compare_outputs(f"{name}/mask_input", r_masks, r_iou, r_low, o_logits, o_iou, o_low)
    return failures


def _compare_outputs(tag, r_masks, r_iou, r_low, o_logits, o_iou, o_low) -> list[str]:
    out = []
    if r_low.shape != o_low.shape or r_masks.shape != o_logits.shape:
        return [f"{tag}: shapes {r_low.shape}/{r_masks.shape} vs {o_low.shape}/{o_logits.shape}"]
    d = np.abs(r_low - o_low).max()
    if d > LOGIT_ATOL:
        out.append(f"{tag}: low-res logits differ by {d:.3g}")
    d = np.abs(r_iou - o_iou).max()
    if d > LOGIT_ATOL:
        out.append(f"{tag}: iou predictions differ by {d:.3g}")
    differ = r_masks != (o_logits > 0)
    if (differ & (np.abs(o_logits) > LOGIT_ATOL)).any():
        out.append(f"{tag}: {int(differ.sum())} mask pixels differ away from the 0 threshold")
    return out


# vit_t on every image shape; vit_b on the photograph only. The image shapes exercise the pre- and
# post-processing (resize, padding, greyscale, crop back), which is the same code for both encoders,
# while a ViT-B pass at 1024 costs about 8 s a side on the 2-core CI machine.
PARITY_CASES = [("vit_t", "photo"), ("vit_t", "grey_wide"), ("vit_t", "tiny"), ("vit_b", "photo")]


@pytest.mark.parametrize("model_type, image_name", PARITY_CASES)
def test_predictor_parity(model_type: str, image_name: str, images) -> None:
    ref, ours = reference_and_ours(model_type)
    failures = compare_predictors(ref, ours, images[image_name])
    assert not failures, "\n".join(failures)


def test_parity_check_can_fail(vit_t_pair, images) -> None:
    """One perturbed weight of ours (the neck's first conv, before a LayerNorm) breaks the comparison."""
    ref, ours = vit_t_pair
    broken = copy.deepcopy(ours)
    with torch.no_grad():
        broken.image_encoder.neck[0].weight[0, 0] += 0.5
    failures = compare_predictors(ref, broken, images["photo"])
    assert any(f.startswith("embedding") for f in failures)
    assert any("logits differ" in f for f in failures)


def test_batched_boxes_match_single_calls(vit_t_pair, images) -> None:
    """predict_torch with several boxes in one decoder pass equals one predict call per box."""
    _, ours = vit_t_pair
    pred = SamPredictor(ours)
    img = images["photo"]
    pred.set_image(img)
    boxes = np.array([[10, 20, 200, 150], [100, 50, 400, 280], [0, 0, 450, 299]], dtype=float)
    t_boxes = torch.as_tensor(pred.transform.apply_boxes(boxes, img.shape[:2]), dtype=torch.float)
    masks, iou, low = pred.predict_torch(None, None, boxes=t_boxes, multimask_output=False)
    assert masks.shape == (3, 1, *img.shape[:2])
    for i, box in enumerate(boxes):
        m, s, lr = pred.predict(box=box, multimask_output=False)
        assert np.abs(lr - low[i].numpy()).max() < 1e-4
        assert np.abs(s - iou[i].numpy()).max() < 1e-5


def test_official_batched_forward(vit_t_pair, images) -> None:
    """``Sam.forward(batched_input, multimask_output)`` matches the official batched forward."""
    ref, ours = vit_t_pair
    pred = SamPredictor(ours)
    batch = []
    for name in ("photo", "tiny"):
        img = images[name]
        resized = pred.transform.apply_image(img)
        h, w = img.shape[:2]
        pts = pred.transform.apply_coords(np.array([[[w / 2, h / 2], [w / 4, h / 3]]]), (h, w))
        batch.append(
            {
                "image": torch.as_tensor(resized).permute(2, 0, 1).contiguous(),
                "original_size": (h, w),
                "point_coords": torch.as_tensor(pts, dtype=torch.float),
                "point_labels": torch.tensor([[1, 0]]),
                "boxes": torch.as_tensor(pred.transform.apply_boxes(np.array([[2, 3, w - 4, h - 2]]), (h, w))).float(),
            }
        )
    with torch.no_grad():
        r_out = ref(batch, multimask_output=True)
    o_out = ours(batch, multimask_output=True)
    for r, o in zip(r_out, o_out):
        assert (r["low_res_logits"] - o["low_res_logits"]).abs().max() <= LOGIT_ATOL
        assert (r["iou_predictions"] - o["iou_predictions"]).abs().max() <= LOGIT_ATOL
        assert r["masks"].shape == o["masks"].shape and r["masks"].dtype == o["masks"].dtype == torch.bool


def test_weights_loaded_after_eval_take_effect(vit_t_pair, images) -> None:
    """Ours has no cached-bias trap: loading weights into a model already in eval mode takes effect.

    The official TinyViT caches its attention biases on ``eval()``; loaded after that, they are ignored
    until ``eval()`` is called again. The reference below shows the trap exists there.
    """
    ref, _ = vit_t_pair
    sd = ref.state_dict()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref.image_encoder(x)

    ours = build_model("vit_t")  # already in eval mode
    ours.load_state_dict(sd)
    with torch.no_grad():
        got = ours.image_encoder(x)
    assert (got - expected).abs().max() <= EMB_RTOL * expected.abs().max()

    stale = reference_model("vit_t", seed=5)  # official: eval() before loading, as its builder does
    stale.load_state_dict(sd)
    with torch.no_grad():
        trapped = stale.image_encoder(x)
    assert (trapped - expected).abs().max() > 1e-3, "the official trap no longer exists; update this test"


@pytest.mark.parametrize("model_type", ["vit_l", "vit_h"])
def test_large_models_keys_and_shapes(model_type: str) -> None:
    """vit_l and vit_h: same state_dict keys and shapes as segment_anything, without allocating weights."""
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        ours = build_model(model_type).state_dict()
        ref = sam_model_registry[model_type]().state_dict()
    assert set(ours) == set(ref)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


def test_vit_t_parameter_count() -> None:
    assert sum(p.numel() for p in build_model("vit_t").parameters()) == 10_130_092


def test_parity_images_are_varied() -> None:
    shapes = {k: v.shape for k, v in parity_images().items()}
    assert len({s[0] / s[1] for s in shapes.values()}) == 3
    assert shapes["grey_wide"] == (180, 640) and min(shapes["tiny"][:2]) < 32
