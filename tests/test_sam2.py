"""SAM 2 / SAM 2.1: the modules, the checkpoint detection and the predictor against Meta's ``sam2``.

The reference is the official code, seeded and perturbed (``oracle.sam2_reference_model``); ours
loads its state_dict strictly. A Hiera-T image encoder costs about 5 s per image on two cores, so
each (model, image) pair is encoded once per session by each side and the predictors are shared.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import parity_images, prompt_cases
from oracle import sam2_reference_model, save_sam2_checkpoint

from mobilesam.build import build_sam
from mobilesam.hub import SAM2_FAMILY, SAM_FAMILY, detect_family, family_of
from mobilesam.modeling import build_model
from mobilesam.modeling.sam2 import SAM2_CONFIGS, Sam2, build_sam2
from mobilesam.predictor import SamPredictor
from mobilesam.transforms import ResizeSquare, fill_holes_and_sprinkles, transform_for

EMB_RTOL = 1e-4  # max abs difference relative to the feature map's max abs value
LOGIT_ATOL = 1e-3
TINY, TINY_2 = "sam2.1_hiera_tiny", "sam2_hiera_tiny"
BASE_PLUS, BASE_PLUS_2 = "sam2.1_hiera_base_plus", "sam2_hiera_base_plus"

_PAIRS: dict[str, tuple[torch.nn.Module, Sam2]] = {}
_PREDICTORS: dict[tuple[str, str], tuple[object, SamPredictor]] = {}


def pair(model_type: str) -> tuple[torch.nn.Module, Sam2]:
    """The perturbed official SAM2Base and ours loaded (strictly) from its state_dict; once per session."""
    if model_type not in _PAIRS:
        ref = sam2_reference_model(model_type, seed=0)
        ours = build_sam2(model_type)
        ours.load_state_dict(ref.state_dict(), strict=True)
        _PAIRS[model_type] = (ref, ours)
    return _PAIRS[model_type]


def rgb(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)


def predictors(model_type: str, image_name: str):
    """Meta's SAM2ImagePredictor and our SamPredictor, both set on the image; once per session."""
    key = (model_type, image_name)
    if key not in _PREDICTORS:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        ref_model, ours_model = pair(model_type)
        image = parity_images()[image_name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = SAM2ImagePredictor(ref_model)
            ref.set_image(rgb(image))  # Meta's transforms need 3 channels
        ours = SamPredictor(ours_model)
        ours.set_image(image)  # ours converts greyscale itself
        _PREDICTORS[key] = (ref, ours)
    return _PREDICTORS[key]


def _official_object_scores(ref, prompt: dict, mask_input, multimask: bool) -> np.ndarray:
    """Object-score logits of Meta's decoder for one prompt (its predictor drops them)."""
    mask_t, coords, labels, box = ref._prep_prompts(
        prompt.get("point_coords"), prompt.get("point_labels"), prompt.get("box"), mask_input, True
    )
    if box is not None:
        corners = box.reshape(-1, 2, 2)
        corner_labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(len(corners), 1)
        coords = corners if coords is None else torch.cat([corners, coords], dim=1)
        labels = corner_labels if labels is None else torch.cat([corner_labels, labels], dim=1)
    with torch.no_grad():
        sparse, dense = ref.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_t)
        *_, scores = ref.model.sam_mask_decoder(
            image_embeddings=ref._features["image_embed"],
            image_pe=ref.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=ref._features["high_res_feats"],
        )
    return scores.numpy()


def _our_object_scores(ours: SamPredictor, prompt: dict, mask_input, multimask: bool) -> np.ndarray:
    h, w = ours.original_size
    t = ours.transform
    coords = labels = box = mask_t = None
    if "point_coords" in prompt:
        coords = torch.as_tensor(t.apply_coords(prompt["point_coords"], (h, w)), dtype=torch.float)[None]
        labels = torch.as_tensor(prompt["point_labels"], dtype=torch.int)[None]
    if "box" in prompt:
        box = torch.as_tensor(t.apply_boxes(prompt["box"], (h, w)), dtype=torch.float)
    if mask_input is not None:
        mask_t = torch.as_tensor(mask_input)[None]
    with torch.no_grad():
        *_, scores = ours.model.decode_prompts(ours.get_features().tensors, coords, labels, box, mask_t, multimask)
    return scores.numpy()


def compare(
    ref, ours: SamPredictor, prompts: tuple[str, ...] | None = None
) -> tuple[list[str], dict[str, float]]:
    """Every parity check on the image both predictors hold, for the ``prompts`` named (all of
    :func:`prompt_cases` by default; ``()`` checks the features only); returns the failures and the
    max diffs."""
    failures: list[str] = []
    worst: dict[str, float] = {}

    def check(tag: str, kind: str, diff: float, limit: float) -> None:
        worst[kind] = max(worst.get(kind, 0.0), diff)
        if diff > limit:
            failures.append(f"{tag}: {kind} differ by {diff:.3g} > {limit:.3g}")

    r_feats = ref._features
    o_feats = ours.get_features().tensors
    for name, r in (
        ("image_embed", r_feats["image_embed"]),
        ("high_res_feats_0", r_feats["high_res_feats"][0]),
        ("high_res_feats_1", r_feats["high_res_feats"][1]),
    ):
        scale = r.abs().max().item()
        check(name, "features", (r - o_feats[name]).abs().max().item() / scale, EMB_RTOL)

    h, w = ours.original_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, prompt in prompt_cases(h, w).items():
            if prompts is not None and name not in prompts:
                continue
            rounds = [(True, None), (False, None)]
            r_logits, r_iou, r_low = ref.predict(**prompt, multimask_output=True, return_logits=True)
            rounds.append((False, r_low[np.argmax(r_iou)][None]))  # a refinement round
            for multimask, mask_input in rounds:
                tag = f"{name}/mm={multimask}" + ("/mask_input" if mask_input is not None else "")
                r_logits, r_iou, r_low = ref.predict(
                    **prompt, mask_input=mask_input, multimask_output=multimask, return_logits=True
                )
                o_logits, o_iou, o_low = ours.predict(
                    **prompt, mask_input=mask_input, multimask_output=multimask, return_logits=True
                )
                if r_low.shape != o_low.shape or r_logits.shape != o_logits.shape:
                    failures.append(f"{tag}: shapes {r_low.shape}/{r_logits.shape} vs {o_low.shape}/{o_logits.shape}")
                    continue
                check(tag, "low-res logits", float(np.abs(r_low - o_low).max()), LOGIT_ATOL)
                check(tag, "iou predictions", float(np.abs(r_iou - o_iou).max()), LOGIT_ATOL)
                if not multimask:  # the object-score head does not depend on multimask_output
                    r_scores = _official_object_scores(ref, prompt, mask_input, multimask)
                    o_scores = _our_object_scores(ours, prompt, mask_input, multimask)
                    check(tag, "object scores", float(np.abs(r_scores - o_scores).max()), LOGIT_ATOL)
                differ = (r_logits > ref.mask_threshold) != (o_logits > ours.mask_threshold)
                away = int((differ & (np.abs(o_logits) > LOGIT_ATOL)).sum())
                worst["mask pixels"] = max(worst.get("mask pixels", 0), away)
                if away:
                    failures.append(f"{tag}: {away} mask pixels differ away from the 0 threshold")
    return failures, worst


# --- modules and checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize("model_type", sorted(SAM2_CONFIGS))
def test_state_dict_equals_official(model_type: str) -> None:
    """Same keys and shapes as Meta's SAM2Base (video modules included), built on the meta device."""
    ref = sam2_reference_model(model_type, device="meta").state_dict()
    with torch.device("meta"):
        ours = build_sam2(model_type).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert detect_family(ours) == (SAM2_FAMILY, model_type)


def test_sam_2_and_2_1_differ_in_their_keys() -> None:
    with torch.device("meta"):
        v2, v21 = build_sam2(TINY_2).state_dict(), build_sam2(TINY).state_dict()
    assert set(v21) - set(v2) == {"no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias"}
    assert set(v2) <= set(v21)


def test_detection_leaves_other_families_alone() -> None:
    with torch.device("meta"):
        sam_sd = build_model("vit_t").state_dict()
    assert detect_family(sam_sd) == (SAM_FAMILY, "vit_t")
    assert SAM2_FAMILY.detect(sam_sd) is None
    assert SAM2_FAMILY.detect({}) is None
    assert SAM2_FAMILY.detect({"image_encoder.trunk.pos_embed": torch.zeros(3)}) is None


@pytest.mark.parametrize("model_type", [TINY, pytest.param(TINY_2, marks=pytest.mark.slow)])
def test_build_sam_reads_official_checkpoint(model_type: str, tmp_path: Path) -> None:
    """A ``{"model": state_dict}`` file of any name: family and size detected, weights loaded strictly.
    (Detection of all eight from keys and shapes: test_state_dict_equals_official.)"""
    ref, _ = pair(model_type)
    path = tmp_path / "my sam2 weights.pt"
    save_sam2_checkpoint(ref, path)
    model = build_sam(path)
    assert type(model) is Sam2 and not model.training and family_of(model) is SAM2_FAMILY
    sd = model.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in ref.state_dict().items())
    assert SAM2_FAMILY.display_name(model_type).startswith("SAM 2.1" if "2.1" in model_type else "SAM 2 ")


def test_video_modules_match_official() -> None:
    """Memory encoder and memory attention (RoPE, object-pointer tokens left unrotated) on small inputs."""
    ref, ours = pair(TINY)
    g = torch.Generator().manual_seed(0)
    pix, mask = torch.randn(1, 256, 16, 16, generator=g), torch.randn(1, 1, 256, 256, generator=g)
    curr, curr_pos = torch.randn(256, 1, 256, generator=g), torch.randn(256, 1, 256, generator=g)
    memory, memory_pos = torch.randn(2 * 256 + 4, 1, 64, generator=g), torch.randn(2 * 256 + 4, 1, 64, generator=g)
    with torch.no_grad():
        r_mem, o_mem = ref.memory_encoder(pix, mask), ours.memory_encoder(pix, mask)
        r_att = ref.memory_attention([curr], memory, [curr_pos], memory_pos, num_obj_ptr_tokens=4)
        o_att = ours.memory_attention([curr], memory, [curr_pos], memory_pos, num_obj_ptr_tokens=4)
    r, o = r_mem["vision_features"], o_mem["vision_features"]
    assert (r - o).abs().max() <= EMB_RTOL * r.abs().max()
    assert torch.equal(r_mem["vision_pos_enc"][0], o_mem["vision_pos_enc"][0])
    assert (r_att - o_att).abs().max() <= EMB_RTOL * r_att.abs().max()


def test_dynamic_multimask_matches_official() -> None:
    """The single-mask output falls back to the best multimask output exactly when Meta's does."""
    ref, ours = pair(TINY)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, 32, 32, generator=g)
    logits[:3, 0] = torch.where(logits[:3, 0] > 0, 5.0, -5.0)  # stable single masks
    scores = torch.rand(6, 4, generator=g)
    r = ref.sam_mask_decoder._dynamic_multimask_via_stability(logits, scores)
    o = ours.sam_mask_decoder._dynamic_multimask_via_stability(logits, scores)
    assert torch.equal(r[0], o[0]) and torch.equal(r[1], o[1])
    assert torch.equal(o[0][:3], logits[:3, :1]) and not torch.equal(o[0][3:], logits[3:, :1])


# --- transforms and post-processing -----------------------------------------------------------


@pytest.mark.parametrize("shape", [(1300, 1500), (300, 451), (17, 23), (1024, 1024)])
def test_square_transform_matches_sam2transforms(shape: tuple[int, int]) -> None:
    """Image (down- and upscaling, already square) and coordinates as the official SAM2Transforms."""
    from sam2.utils.transforms import SAM2Transforms

    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official = SAM2Transforms(resolution=1024, mask_threshold=0.0)
    expected = official(image)
    transform = transform_for(SAM2_FAMILY.preprocessing)
    assert isinstance(transform, ResizeSquare)
    pre = SAM2_FAMILY.preprocessing
    got = torch.from_numpy(transform.apply_image(image)).permute(2, 0, 1)
    got = (got - torch.tensor(pre.pixel_mean).view(3, 1, 1)) / torch.tensor(pre.pixel_std).view(3, 1, 1)
    assert got.shape == expected.shape == (3, 1024, 1024)
    assert (got - expected).abs().max() < 1e-4
    coords = np.array([[0.0, 0.0], [shape[1] * 0.3, shape[0] * 0.8], [shape[1], shape[0]]])
    ref = official.transform_coords(torch.tensor(coords, dtype=torch.float), normalize=True, orig_hw=shape)
    assert np.abs(transform.apply_coords(coords, shape) - ref.numpy()).max() < 1e-3
    box = np.array([1.0, 2.0, shape[1] - 3.0, shape[0] - 1.0])
    ref_box = official.transform_boxes(torch.tensor(box, dtype=torch.float), normalize=True, orig_hw=shape)
    assert np.abs(transform.apply_boxes(box, shape) - ref_box.reshape(-1, 4).numpy()).max() < 1e-3
    assert transform.get_preprocess_shape(*shape, 1024) == (1024, 1024)


def _scipy_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in for Meta's CUDA ``get_connected_components``, independent of OpenCV: (N, 1, H, W)
    8-connected labels and per-pixel component areas (0 on the background)."""
    from scipy import ndimage

    labels = np.zeros(mask.shape, dtype=np.int32)
    areas = np.zeros(mask.shape, dtype=np.int32)
    for i, m in enumerate(mask[:, 0].cpu().numpy().astype(bool)):
        lab, _ = ndimage.label(m, structure=np.ones((3, 3)))
        counts = np.bincount(lab.ravel())
        counts[0] = 0
        labels[i, 0], areas[i, 0] = lab, counts[lab]
    return torch.from_numpy(labels), torch.from_numpy(areas)


def _spotty_logits() -> torch.Tensor:
    """(2, 3, 64, 64) logits with holes and sprinkles of 1 to 40 pixels, some touching the border."""
    g = torch.Generator().manual_seed(0)
    x = torch.where(torch.rand(2, 3, 64, 64, generator=g) > 0.97, 3.0, -3.0)  # sprinkles
    x[:, :, 10:50, 10:50] = 4.0
    for y, x0, size in ((15, 15, 1), (20, 30, 3), (40, 15, 6), (30, 40, 7)):
        x[:, :, y : y + size, x0 : x0 + size] = -2.0  # holes of 1, 9, 36 and 49 pixels
    x[0, 1, 0:2, 0:2] = 5.0  # a sprinkle in the corner
    return x


@pytest.mark.parametrize("hole, sprinkle", [(10, 0), (0, 4), (40, 8), (0, 0)])
def test_holes_and_sprinkles_match_official(monkeypatch, hole: float, sprinkle: float) -> None:
    """Ours (OpenCV) equals SAM2Transforms.postprocess_masks with its connected components available."""
    import sam2.utils.misc
    from sam2.utils.transforms import SAM2Transforms

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", _scipy_connected_components)
    logits = _spotty_logits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official = SAM2Transforms(1024, 0.0, max_hole_area=hole, max_sprinkle_area=sprinkle)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official code warns when it skips the step
        expected = official.postprocess_masks(logits, (100, 130))
    filled = fill_holes_and_sprinkles(logits, 0.0, hole, sprinkle)
    got = F.interpolate(filled, (100, 130), mode="bilinear", align_corners=False)
    assert torch.equal(got, expected)
    assert (hole == sprinkle == 0) == torch.equal(filled, logits)


def test_predictor_fills_holes_as_official(monkeypatch) -> None:
    """SamPredictor(max_hole_area, max_sprinkle_area) against SAM2ImagePredictor on the same features."""
    import sam2.utils.misc
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", _scipy_connected_components)
    ref_set, ours_set = predictors(TINY, "photo")
    ref_model, ours_model = pair(TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SAM2ImagePredictor(ref_model, max_hole_area=30, max_sprinkle_area=30)
    ref._features, ref._orig_hw, ref._is_image_set = ref_set._features, ref_set._orig_hw, True
    ours = SamPredictor(ours_model, max_hole_area=30, max_sprinkle_area=30)
    ours.set_features(ours_set.get_features())
    h, w = ours.original_size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r_masks, _, _ = ref.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
    o_masks, _, _ = ours.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
    plain, _, _ = ours_set.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
    assert (r_masks.astype(bool) != o_masks).sum() <= 0.001 * o_masks.size  # pixels at the 0 threshold
    assert (plain != o_masks).any(), "the clean-up changed nothing: make the test image spottier"
    with pytest.raises(ValueError, match="max_hole_area: expected a number of pixels >= 0"):
        SamPredictor(ours_model, max_hole_area=-1)


# --- parity with SAM2ImagePredictor -----------------------------------------------------------

# SAM 2 and SAM 2.1 share the image path (2.1 only adds video weights): SAM 2.1 is checked on the three
# images, SAM 2 on the photograph (its own weights through the same code), both in tiny and base+.
_FAST = [(TINY, "photo"), (TINY, "grey_wide"), (TINY, "tiny")]
_SLOW = [(BASE_PLUS, "photo"), (BASE_PLUS, "grey_wide"), (BASE_PLUS, "tiny"), (TINY_2, "photo"), (BASE_PLUS_2, "photo")]


@pytest.mark.parametrize(
    "model_type, image_name", _FAST + [pytest.param(*case, marks=pytest.mark.slow) for case in _SLOW]
)
def test_predictor_parity(model_type: str, image_name: str, record_property) -> None:
    failures, worst = compare(*predictors(model_type, image_name))
    record_property("max_diffs", worst)
    print(model_type, image_name, {k: f"{v:.3g}" for k, v in worst.items()})
    assert not failures, "\n".join(failures)


def test_parity_check_can_fail() -> None:
    """One perturbed weight of ours (a hypernetwork MLP of the decoder) breaks the comparison, and so
    does a perturbed feature map. (Features are reused: a second Hiera run would cost seconds.)"""
    ref, ours = predictors(TINY, "photo")
    broken_model = copy.deepcopy(ours.model)
    with torch.no_grad():
        broken_model.sam_mask_decoder.output_hypernetworks_mlps[1].layers[0].weight[0, 0] += 0.5
    broken = SamPredictor(broken_model)
    broken.set_features(ours.get_features())
    failures, _ = compare(ref, broken, prompts=("point",))
    assert any("low-res logits differ" in f for f in failures)
    assert not any(f.startswith("image_embed") for f in failures)

    features = ours.get_features()
    shifted = {k: v + 1e-3 * v.abs().max() if k == "high_res_feats_1" else v for k, v in features.tensors.items()}
    moved = SamPredictor(ours.model)
    moved.set_features(type(features)(shifted, features.original_size, features.input_size))
    failures, _ = compare(ref, moved, prompts=())
    assert any(f.startswith("high_res_feats_1: features differ") for f in failures)


# --- predictor API ----------------------------------------------------------------------------


def test_predictor_features_and_prompt_forms() -> None:
    _, ours = predictors(TINY, "photo")
    features = ours.get_features()
    assert {k: tuple(v.shape[1:]) for k, v in features.tensors.items()} == dict(SAM2_FAMILY.feature_layout)
    assert ours.input_size == (1024, 1024) and ours.get_image_embedding().shape == (1, 256, 64, 64)
    h, w = ours.original_size
    point, label = np.array([[w * 0.4, h * 0.6]]), np.array([1])
    masks, iou, low = ours.predict(point, label)
    rel, rel_iou, rel_low = ours.predict(point / (w, h), label, normalize_coords=False)
    assert np.abs(low - rel_low).max() < 1e-4 and np.abs(iou - rel_iou).max() < 1e-5
    assert masks.shape == (3, h, w) and masks.dtype == bool and np.abs(low).max() <= 32

    boxes = np.array([[10, 20, 200, 150], [100, 50, 400, 280]], dtype=float)
    t_boxes = torch.as_tensor(ours.transform.apply_boxes(boxes, (h, w)), dtype=torch.float)
    b_masks, b_iou, b_low = ours.predict_torch(None, None, boxes=t_boxes, multimask_output=False)
    assert b_masks.shape == (2, 1, h, w)
    for i, box in enumerate(boxes):
        _, s, lr = ours.predict(box=box, multimask_output=False)
        assert np.abs(lr - b_low[i].numpy()).max() < 1e-4 and np.abs(s - b_iou[i].numpy()).max() < 1e-5

    with pytest.raises(ValueError, match="set_embedding: a SAM 2 model decodes from"):
        ours.set_embedding(features.embedding, (h, w))
    sam_features = type(features)({"image_embeddings": features.embedding}, (h, w), (1024, 1024))
    with pytest.raises(ValueError, match=r"features: expected the tensors \['image_embed'"):
        ours.set_features(sam_features)
    ours.set_features(features)  # the cached predictor stays usable


@pytest.mark.slow
def test_set_image_batch_and_predict_batch() -> None:
    """SAM 2's batch API: the same masks as one predictor per image (batched encoder, float rounding)."""
    names = ("photo", "tiny")
    singles = [predictors(TINY, name)[1] for name in names]
    images = [parity_images()[name] for name in names]
    pred = SamPredictor(pair(TINY)[1])
    pred.set_image_batch(images)
    points = [np.array([[im.shape[1] * 0.5, im.shape[0] * 0.5]]) for im in images]
    labels = [np.array([1]) for _ in images]
    boxes = [None, np.array([2.0, 3.0, images[1].shape[1] - 2, images[1].shape[0] - 4])]
    masks, ious, lows = pred.predict_batch(points, labels, boxes, multimask_output=False)
    assert len(masks) == len(ious) == len(lows) == 2
    for single, p, l, b, m, s, lr in zip(singles, points, labels, boxes, masks, ious, lows):
        m1, s1, lr1 = single.predict(p, l, b, multimask_output=False)
        assert m.shape == m1.shape and np.abs(lr - lr1).max() < 1e-3 and np.abs(s - s1).max() < 1e-4
    with pytest.raises(ValueError, match=r"box_batch: expected one entry per image \(2\), got 1"):
        pred.predict_batch(points, labels, [None])
    with pytest.raises(RuntimeError, match="set_image_batch"):
        SamPredictor(pair(TINY)[1]).predict_batch(points, labels)


def test_optimized_model_passes_sam2_through() -> None:
    """optimize_for_inference keeps the Hiera encoder as it is and views SAM's transformer blocks."""
    from mobilesam.backends.torch_fast import optimize_for_inference

    _, ours = pair(TINY)
    fast = optimize_for_inference(ours)
    assert isinstance(fast, Sam2) and fast.image_encoder is ours.image_encoder
    assert fast.state_dict().keys() == ours.state_dict().keys()


@pytest.mark.slow
def test_sam_facade_predicts_with_a_sam2_checkpoint(tmp_path: Path) -> None:
    """``SAM("sam2.1_t.pt")`` (a local file under Ultralytics' name) with every prompt form of the brief
    (one point; several objects of one point; one object of several points, with a negative one; boxes;
    box + points), each object equal to SamPredictor on the same weights; no prompt is segment
    everything, equal to Sam2AutomaticMaskGenerator on the same features; info() counts SAM 2."""
    from PIL import Image

    from mobilesam import SAM
    from mobilesam.everything import Sam2AutomaticMaskGenerator

    ref, _ = pair(TINY)
    path = tmp_path / "sam2.1_t.pt"
    save_sam2_checkpoint(ref, path)
    model = SAM(str(path))
    assert isinstance(model.model, Sam2) and model.model_type == TINY
    _, single = predictors(TINY, "photo")
    image = parity_images()["photo"]
    h, w = image.shape[:2]
    p1, p2, p3 = [w * 0.5, h * 0.4], [w * 0.25, h * 0.6], [w * 0.7, h * 0.3]
    b1, b2 = [w * 0.1, h * 0.2, w * 0.8, h * 0.9], [w * 0.3, h * 0.1, w * 0.6, h * 0.5]

    def one(points=None, labels=None, box=None) -> dict:
        out = {} if box is None else {"box": np.array(box)}
        if points is not None:
            out.update(point_coords=np.array(points), point_labels=np.array(labels))
        return out

    cases = {  # facade arguments -> one SamPredictor.predict per object
        "point": (dict(points=p1, labels=[1]), [one([p1], [1])]),
        "points, one object each": (dict(points=[p1, p2], labels=[1, 1]), [one([p1], [1]), one([p2], [1])]),
        "one object, two points": (dict(points=[[p1, p2]], labels=[[1, 1]]), [one([p1, p2], [1, 1])]),
        "positive and negative": (dict(points=[[p1, p3]], labels=[[1, 0]]), [one([p1, p3], [1, 0])]),
        "box": (dict(bboxes=b1), [one(box=b1)]),
        "boxes": (dict(bboxes=[b1, b2]), [one(box=b1), one(box=b2)]),
        "box + points": (dict(bboxes=[b1], points=[[p2, p3]], labels=[[1, 0]]), [one([p2, p3], [1, 0], b1)]),
    }
    for name, (facade, objects) in cases.items():
        result = model.predict(Image.fromarray(image), **facade)[0]  # numpy sources are BGR, as Ultralytics
        got = result.masks.data.cpu().numpy()
        assert got.shape == (len(objects), h, w), name
        for i, direct in enumerate(objects):
            masks, scores, _ = single.predict(**direct, multimask_output=False)
            assert (got[i] != masks[0]).sum() <= 0.001 * masks[0].size, name  # pixels at the 0 threshold
            assert abs(float(result.boxes.conf[i]) - float(scores[0])) < 1e-4, name

    options = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    everything = model.predict(Image.fromarray(image), mode="exact", verbose=False, **options)[0]
    cached = SamPredictor(pair(TINY)[1])
    _with_features(cached, lambda: cached.set_features(single.get_features()))
    records = Sam2AutomaticMaskGenerator(cached, progress=False, **options).generate(image)
    records = sorted(records, key=lambda r: -r["area"])  # the facade orders by area
    assert len(everything.masks) == len(records) == 12
    for got, rec in zip(everything.masks.data.cpu().numpy(), records):
        assert (got != rec["segmentation"]).sum() <= 0.001 * got.size
    assert np.allclose(everything.boxes.conf.cpu().numpy(), [r["predicted_iou"] for r in records], atol=1e-5)
    info = model.info(verbose=False)
    assert info.parameters == sum(p.numel() for p in model.model.parameters()) and 250 < info.gflops < 350


# --- segment everything: Meta's SAM2AutomaticMaskGenerator ------------------------------------


def _with_features(predictor, set_features) -> None:
    """Make ``predictor.set_image`` restore features computed once (each generator would otherwise run
    the Hiera encoder again on the same image): the generators' decisions are what is compared."""
    predictor.set_image = lambda image, *args, **kwargs: set_features()


def _official_generator_records(kw: dict) -> list[dict]:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    ref_set, _ = predictors(TINY, "photo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen = SAM2AutomaticMaskGenerator(pair(TINY)[0], **kw)

        def restore() -> None:
            gen.predictor.reset_predictor()
            gen.predictor._features, gen.predictor._orig_hw = ref_set._features, ref_set._orig_hw
            gen.predictor._is_image_set = True

        _with_features(gen.predictor, restore)
        return gen.generate(parity_images()["photo"])


def _our_generator_records(kw: dict) -> list[dict]:
    from mobilesam.everything import Sam2AutomaticMaskGenerator

    _, ours_set = predictors(TINY, "photo")
    pred = SamPredictor(pair(TINY)[1])
    _with_features(pred, lambda: pred.set_features(ours_set.get_features()))
    return Sam2AutomaticMaskGenerator(pred, progress=False, **kw).generate(parity_images()["photo"])


def _record_differences(ref: list[dict], ours: list[dict]) -> list[str]:
    if len(ref) != len(ours):
        return [f"{len(ours)} masks, official {len(ref)}"]
    out = []
    for i, (a, b) in enumerate(zip(ref, ours)):
        inter = (a["segmentation"] & b["segmentation"]).sum()
        iou = inter / max((a["segmentation"] | b["segmentation"]).sum(), 1)
        if set(a) != set(b) or iou < 0.999 or not np.array_equal(a["bbox"], b["bbox"]) or a["crop_box"] != b["crop_box"]:
            out.append(f"record {i}: mask IoU {iou:.4f}, bbox {b['bbox']} vs {a['bbox']}")
        if abs(a["predicted_iou"] - b["predicted_iou"]) > 1e-4 or abs(a["stability_score"] - b["stability_score"]) > 1e-3:
            out.append(f"record {i}: scores {b['predicted_iou']:.5f}/{b['stability_score']:.4f} vs "
                       f"{a['predicted_iou']:.5f}/{a['stability_score']:.4f}")
        if not np.allclose(a["point_coords"], b["point_coords"]):
            out.append(f"record {i}: point {b['point_coords']} vs {a['point_coords']}")
    return out


# Random weights give small logits: the stability offset is lowered so the scores spread (0.35-0.89 on
# 27 masks) and the thresholds are set inside the ranges, so that every filter removes some masks. Every
# mask of this model spans the image (same box), so box NMS is off (it would keep one); NMS is SAM's code,
# checked against Meta's in test_everything.py.
_AMG_CASES = {
    "multimask": dict(points_per_side=3, pred_iou_thresh=0.5, stability_score_offset=0.05,
                      stability_score_thresh=0.6, box_nms_thresh=1.0),
    "single mask, m2m, holes": dict(points_per_side=3, pred_iou_thresh=0.5575, stability_score_offset=0.05,
                                    stability_score_thresh=0.62, mask_threshold=0.01, multimask_output=False,
                                    use_m2m=True, min_mask_region_area=20, box_nms_thresh=1.0, points_per_batch=4),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_AMG_CASES))
def test_everything_matches_official_sam2_generator(case: str, monkeypatch) -> None:
    """Sam2AutomaticMaskGenerator against Meta's SAM2AutomaticMaskGenerator on the perturbed SAM 2.1
    tiny, record for record (masks, boxes, scores, points), with its SAM 2 options. Meta's hole filling
    needs its CUDA extension: it gets the independent stand-in, as in test_predictor_fills_holes_as_official."""
    import sam2.utils.misc

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", _scipy_connected_components)
    kw = _AMG_CASES[case]
    ref = _official_generator_records(kw)
    ours = _our_generator_records(kw)
    candidates = kw["points_per_side"] ** 2 * (3 if kw.get("multimask_output", True) else 1)
    assert 2 <= len(ref) < candidates, f"{len(ref)} masks of {candidates}: the filters must keep some, remove some"
    assert not _record_differences(ref, ours)
    if case == "multimask":  # the comparison can fail: another threshold gives other records
        assert _record_differences(ref, _our_generator_records(dict(kw, stability_score_thresh=0.65)))


def test_everything_sam2_options_are_checked() -> None:
    from mobilesam.everything import Sam2AutomaticMaskGenerator, automatic_mask_generator

    _, single = predictors(TINY, "photo")
    assert type(automatic_mask_generator(single)) is Sam2AutomaticMaskGenerator
    assert automatic_mask_generator(single).pred_iou_thresh == 0.8  # Meta's SAM 2 default
    with pytest.raises(ValueError, match="use_m2m: mode='fast' decodes with the defaults"):
        Sam2AutomaticMaskGenerator(single, mode="fast", use_m2m=True)
    with pytest.raises(ValueError, match="mask_threshold: expected a finite number"):
        Sam2AutomaticMaskGenerator(single, mask_threshold=float("nan"))
    with pytest.raises(TypeError, match="multimask_output: expected True or False"):
        Sam2AutomaticMaskGenerator(single, multimask_output="yes")
    fast = Sam2AutomaticMaskGenerator(single, mode="fast", points_per_side=3, pred_iou_thresh=0.5,
                                      stability_score_offset=0.05, stability_score_thresh=0.6, progress=False)
    features = single.get_features()
    _with_features(single, lambda: single.set_features(features))
    try:
        records = fast.generate(parity_images()["photo"])
    finally:  # the shared predictor gets its own set_image and the photo back
        del single.set_image
        single.set_features(features)
    assert records and all(r["segmentation"].shape == parity_images()["photo"].shape[:2] for r in records)


# --- the other front ends -----------------------------------------------------------------------


@pytest.mark.slow
def test_server_and_auto_annotate_run_sam2(tmp_path: Path) -> None:
    """``mobilesam serve --model sam2.1_t.pt`` decodes clicks on the server with SAM 2 (the same masks as
    SamPredictor) and segments everything with SAM 2's generator (its default; a 4x4 grid here);
    ``auto_annotate(sam_model=...)`` takes the SAM 2 checkpoint too. On the very small image: one Hiera
    pass each."""
    import io as _io

    from fastapi.testclient import TestClient
    from PIL import Image

    from mobilesam.annotate import auto_annotate
    from mobilesam.masks import decode_rle
    from mobilesam.server import create_app

    path = tmp_path / "sam2.1_t.pt"
    save_sam2_checkpoint(pair(TINY)[0], path)
    _, single = predictors(TINY, "tiny")
    image = parity_images()["tiny"]
    buf = _io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    from mobilesam.everything import Sam2AutomaticMaskGenerator, automatic_mask_generator
    from mobilesam.server.engine import default_generator_factory

    assert type(default_generator_factory(pair(TINY)[1])) is Sam2AutomaticMaskGenerator  # serve's default
    small_grid = lambda model: automatic_mask_generator(model, mode="fast", points_per_side=4)  # noqa: E731
    with TestClient(create_app(str(path), cache_size=2, generator_factory=small_grid)) as client:
        up = client.post("/api/images/upload", files={"file": ("tiny.png", buf.getvalue(), "image/png")}).json()
        got = client.post(f"/api/images/{up['id']}/predict", json={"points": [[13, 9]], "labels": [1]}).json()
        masks, scores, _ = single.predict(np.array([[13.0, 9.0]]), np.array([1]))
        best = int(np.argmax(scores))
        assert (decode_rle(got["rle"]) != masks[best]).mean() < 0.01 and got["score"] == pytest.approx(scores[best], abs=1e-3)
        everything = client.post(f"/api/images/{up['id']}/everything", json={})
        assert everything.status_code == 200, everything.text

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(image).save(images / "a.png")

    def detector(rgb: np.ndarray):  # one box over most of the image, class 0
        h, w = rgb.shape[:2]
        return np.array([[1.0, 1.0, w - 2.0, h - 2.0]]), np.array([0]), np.array([0.9])

    auto_annotate(data=images, det_model=detector, sam_model=str(path), output_dir=tmp_path / "labels")
    lines = (tmp_path / "labels" / "a.txt").read_text().split()
    assert lines and lines[0] == "0" and len(lines) >= 7  # class id, then at least three x y points


@pytest.mark.slow
def test_onnx_export_and_runtime_match_pytorch(tmp_path: Path) -> None:
    """``mobilesam export --format onnx`` of a SAM 2.1 model (encoder and decoder, checked against PyTorch
    at export time), run by the ONNX Runtime backend: the same features, and the same logits and IoUs as
    SamPredictor for every prompt case, multimask on and off, and a mask-input round."""
    from mobilesam import SAM
    from mobilesam.backends import create_predictor
    from mobilesam.backends.onnx_sam2_predictor import OnnxSam2Predictor
    from mobilesam.export import export_model

    _, ours = predictors(TINY, "photo")
    manifest = export_model(pair(TINY)[1], tmp_path / "onnx", "onnx", progress=False)
    assert manifest["family"] == "sam2" and manifest["model_type"] == TINY
    assert set(manifest["files"]) == {"encoder", "decoder"}
    assert manifest["checks"]["decoder"]["low_res_max_abs_diff"] < LOGIT_ATOL
    pred = create_predictor(tmp_path / "onnx", "onnxruntime")
    assert isinstance(pred, OnnxSam2Predictor) and pred.family is SAM2_FAMILY
    pred.set_image(parity_images()["photo"])
    for name, t in ours.get_features().tensors.items():
        got = pred.get_features().tensors[name]
        assert (got - t).abs().max() <= EMB_RTOL * t.abs().max(), name
    pred.set_features(ours.get_features())  # the decoder on identical features
    h, w = ours.original_size
    for name, prompt in prompt_cases(h, w).items():
        for multimask in (True, False):
            _, r_iou, r_low = ours.predict(**prompt, multimask_output=multimask)
            _, o_iou, o_low = pred.predict(**prompt, multimask_output=multimask)
            assert np.abs(r_low - o_low).max() < LOGIT_ATOL and np.abs(r_iou - o_iou).max() < LOGIT_ATOL, name
        _, r_iou, r_refined = ours.predict(**prompt, mask_input=r_low, multimask_output=False)
        _, o_iou, o_refined = pred.predict(**prompt, mask_input=r_low, multimask_output=False)
        assert np.abs(r_refined - o_refined).max() < LOGIT_ATOL, f"{name}/mask_input"
    model = SAM(str(tmp_path / "onnx"))  # an exported folder: the facade runs it on ONNX Runtime
    assert isinstance(model.predictor, OnnxSam2Predictor) and model.model_type == TINY
