"""Segment everything: parity of the exact mode with Meta's generator, the fast mode, options, CLI."""

from __future__ import annotations

import copy
import json
import logging
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobilesam.everything.generator
from mobilesam.everything import SamAutomaticMaskGenerator
from mobilesam.everything.amg import (
    box_iou,
    build_point_grid,
    calculate_stability_score,
    mask_to_rle,
    nms,
    rle_to_mask,
)
from mobilesam.masks import decode_rle
from mobilesam.modeling import Sam


def official():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mobile_sam
        from mobile_sam.modeling import Sam as OfficialSam
    return mobile_sam.SamAutomaticMaskGenerator, OfficialSam


# --------------------------------------------------------------------------- a structured stand-in model
# Random weights give masks that cover most of the image whatever the prompt, which leaves crop-edge
# filtering, NMS between distinct objects and small-region removal untested. These modules are a
# deterministic "model" with the official interfaces: the encoder keeps the colour of every 4x4 cell,
# the decoder returns, for a click, the cells of similar colour near it (3 tolerances = 3 outputs).


class ColourEncoder(nn.Module):
    img_size = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4)  # (1, 3, 256, 256)


class PointPassThrough(nn.Module):
    def forward(self, points, boxes, masks):
        coords, _ = points
        return coords.float(), torch.zeros(coords.shape[0], 1, 1, 1)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, 1, 1, 1)


class ColourDecoder(nn.Module):
    """For a click, the connected region of cells whose colour is within a tolerance of the clicked
    cell's: 4 tolerances give the single output and the 3 multimask outputs."""

    tolerances = (0.5, 0.35, 0.6, 1.0)

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output):
        feat = image_embeddings[0]  # (3, 256, 256)
        xy = sparse_prompt_embeddings[:, 0, :]  # (B, 2) in the 1024 frame
        cx = (xy[:, 0] / 4).long().clamp(0, 255)
        cy = (xy[:, 1] / 4).long().clamp(0, 255)
        # (B, 256, 256); not .norm(dim=1), which is 10x slower on CPU
        dist = ((feat[None] - feat[:, cy, cx].T[:, :, None, None]) ** 2).sum(1).sqrt()
        logits = []
        for tol in self.tolerances:
            near = (dist < tol).numpy().astype(np.uint8)
            region = np.stack([cv2.connectedComponents(m, connectivity=4)[1] for m in near])
            region = region == region[np.arange(len(region)), cy.numpy(), cx.numpy()][:, None, None]
            region = torch.as_tensor(region & (near > 0))
            logits.append(torch.where(region, 3.0 + 8 * (tol - dist), -3.0 - 8 * dist))
        logits = torch.stack(logits, 1)
        wobble = 0.04 * torch.sin(xy[:, :1] * 0.037 + xy[:, 1:] * 0.051)
        iou = torch.tensor([0.9, 0.95, 0.92, 0.86])[None] + wobble
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return logits[:, sl], iou[:, sl]


def colour_models() -> tuple[nn.Module, Sam]:
    _, OfficialSam = official()
    def parts() -> dict[str, nn.Module]:
        return {"image_encoder": ColourEncoder(), "prompt_encoder": PointPassThrough(),
                "mask_decoder": ColourDecoder()}

    return OfficialSam(**parts()).eval(), Sam(**parts()).eval()


def shapes_image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """Ten shapes of distinct colours on a flat background, a ring, a little noise."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (40, 90, 60), np.uint8)
    colours = [(230, 60, 50), (60, 70, 230), (240, 230, 70), (200, 200, 200), (150, 40, 200), (20, 20, 20),
               (250, 150, 30), (30, 200, 220), (120, 60, 20), (250, 120, 200)]
    s = h / 96
    for i, c in enumerate(colours):
        x, y = int(rng.integers(8 * s, w - 8 * s)), int(rng.integers(8 * s, h - 8 * s))
        r = int(rng.integers(6, 16) * s)
        if i % 2:
            cv2.circle(img, (x, y), r, c, -1)
        else:
            cv2.rectangle(img, (x - r, y - r // 2), (x + r, y + r), c, -1)
    cv2.circle(img, (w // 2, h // 2), int(12 * s), (0, 0, 0), max(1, int(3 * s)))
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def assert_same_records(ref: list[dict], ours: list[dict], min_masks: int) -> None:
    """Same number of masks, boxes within 1 px and mask IoU >= 0.99, record by record."""
    assert len(ref) >= min_masks, f"only {len(ref)} masks: the test would prove little"
    assert len(ours) == len(ref), f"{len(ours)} masks, official {len(ref)}"
    for i, (a, b) in enumerate(zip(ref, ours)):
        assert set(b) == set(a)
        assert np.abs(np.array(a["bbox"]) - np.array(b["bbox"])).max() <= 1, (i, a["bbox"], b["bbox"])
        assert mask_iou(a["segmentation"], b["segmentation"]) >= 0.99, i
        assert b["crop_box"] == a["crop_box"]
        assert b["area"] == pytest.approx(a["area"], rel=0.01, abs=2)
        assert b["predicted_iou"] == pytest.approx(a["predicted_iou"], abs=1e-4)
        assert b["stability_score"] == pytest.approx(a["stability_score"], abs=1e-2)
        assert np.allclose(b["point_coords"], a["point_coords"])


# --------------------------------------------------------------------------- exact mode: parity


# Random weights: logits are small (|x| < 0.3) and every mask spans the image, so the thresholds are
# lowered for masks to come out: stability at offset 0.05, with a threshold inside the range of the
# scores (0.6-0.69; it drops 14 of 50) so the filter acts, and NMS off (box IoU never exceeds 1).
# Speckled masks make the per-mask IoU check a sharp test of the numerics. NMS, crops and small
# regions are tested on the structured model below.
RANDOM_KW = dict(points_per_side=5, pred_iou_thresh=0.0, stability_score_thresh=0.63,
                 stability_score_offset=0.05, box_nms_thresh=1.0)


def test_exact_matches_official_on_random_checkpoint(vit_t_pair, images):
    Official, _ = official()
    ref_model, ours_model = vit_t_pair
    image = images["photo"][::4, ::4].copy()
    ref = Official(ref_model, **RANDOM_KW).generate(image)
    ours = SamAutomaticMaskGenerator(ours_model, **RANDOM_KW).generate(image)
    assert_same_records(ref, ours, min_masks=30)


STRUCTURED_KW = dict(points_per_side=8, pred_iou_thresh=0.8, stability_score_thresh=0.6, box_nms_thresh=0.9)


@pytest.fixture(scope="module")
def colour_pair():
    return colour_models()


_OFFICIAL_CACHE: dict[str, list[dict]] = {}


def official_records(model: nn.Module, image: np.ndarray, **kw) -> list[dict]:
    """The official generator's output, computed once per settings (several tests compare to it)."""
    key = repr(sorted(kw.items()))
    if key not in _OFFICIAL_CACHE:
        Official, _ = official()
        _OFFICIAL_CACHE[key] = Official(model, **kw).generate(image)
    return copy.deepcopy(_OFFICIAL_CACHE[key])


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"crop_n_layers": 1, "crop_n_points_downscale_factor": 2},
        {"min_mask_region_area": 30},
        {"output_mode": "coco_rle", "box_nms_thresh": 0.5},
    ],
    ids=["plain", "crops", "min_area", "coco_rle"],
)
def test_exact_matches_official_structured(colour_pair, extra):
    ref_model, ours_model = colour_pair
    image = shapes_image()
    kw = dict(STRUCTURED_KW, **extra)
    ref = official_records(ref_model, image, **kw)
    ours = SamAutomaticMaskGenerator(ours_model, **kw).generate(image)
    if kw.get("output_mode") == "coco_rle":
        assert [r["segmentation"] for r in ours] == [r["segmentation"] for r in ref]
        for r in ref + ours:
            r["segmentation"] = decode_rle(r["segmentation"])
    assert_same_records(ref, ours, min_masks=10)
    if "crop_n_layers" in extra:
        assert len({tuple(r["crop_box"]) for r in ours}) > 1, "no mask came from a crop"


def test_parity_detects_a_changed_threshold(colour_pair):
    """The comparison above is not vacuous: a slightly different threshold changes the output."""
    ref_model, ours_model = colour_pair
    image = shapes_image()
    kw = STRUCTURED_KW
    ref = official_records(ref_model, image, **kw)
    ours = SamAutomaticMaskGenerator(ours_model, **dict(kw, box_nms_thresh=0.8)).generate(image)
    with pytest.raises(AssertionError):
        assert_same_records(ref, ours, min_masks=10)


# --------------------------------------------------------------------------- fast mode


def test_fast_mode_finds_the_exact_masks(colour_pair):
    _, model = colour_pair
    image = shapes_image(144, 192, seed=1)
    kw = dict(points_per_side=16, pred_iou_thresh=0.8, stability_score_thresh=0.6)
    exact = SamAutomaticMaskGenerator(model, **kw).generate(image)
    fast_gen = SamAutomaticMaskGenerator(model, mode="fast", **kw)
    calls = []
    decoder = model.mask_decoder
    original_forward = decoder.forward
    decoder.forward = lambda *a, **k: calls.append(k["sparse_prompt_embeddings"].shape[0]) or original_forward(*a, **k)
    try:
        fast = fast_gen.generate(image)
    finally:
        del decoder.forward
    assert len(exact) >= 5
    found = [max((mask_iou(e["segmentation"], f["segmentation"]) for f in fast), default=0) >= 0.9 for e in exact]
    assert np.mean(found) >= 0.95, f"fast mode found {np.mean(found):.2f} of the exact masks"
    # Every point is decoded where the answers change from point to point (edges, small shapes: much of
    # this small busy image); the rest is skipped.
    assert sum(calls) < 0.6 * 16 * 16, f"fast mode decoded {sum(calls)} of 256 points"
    assert set(fast[0]) == set(exact[0])
    for r in fast:
        assert r["predicted_iou"] > 0.8 and r["stability_score"] >= 0.6
        seg = r["segmentation"]
        ys, xs = np.nonzero(seg)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert r["area"] == seg.sum()


@pytest.mark.parametrize(
    "extra",
    [{"crop_n_layers": 1, "crop_n_points_downscale_factor": 2}, {"min_mask_region_area": 30}],
    ids=["crops", "min_area"],
)
def test_fast_mode_with_crops_and_small_regions(colour_pair, extra):
    """Against the official output (= exact mode, by the parity tests), computed once for both."""
    ref_model, model = colour_pair
    image = shapes_image()
    kw = dict(STRUCTURED_KW, **extra)
    exact = official_records(ref_model, image, **kw)
    fast = SamAutomaticMaskGenerator(model, mode="fast", **dict(kw, output_mode="coco_rle")).generate(image)
    f_masks = [decode_rle(r["segmentation"]) for r in fast]
    found = [max((mask_iou(e["segmentation"], f) for f in f_masks), default=0) >= 0.9 for e in exact]
    assert len(exact) >= 10 and np.mean(found) >= 0.9
    assert {tuple(r["crop_box"]) for r in fast} == {tuple(r["crop_box"]) for r in exact}


# --------------------------------------------------------------------------- utilities and options


def test_nms_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(0)
    xy = torch.randint(0, 80, (300, 2), generator=g).float()
    wh = torch.randint(1, 60, (300, 2), generator=g).float()
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.randint(0, 5, (300,), generator=g).float()  # many ties: order must be stable
    for t in (0.3, 0.7, 0.95):
        assert nms(boxes, scores, t).tolist() == tv.ops.nms(boxes, scores, t).tolist()
    assert torch.allclose(box_iou(boxes[:5]).diagonal(), torch.ones(5))


def test_rle_roundtrip_and_stability():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(5, 13, 17, generator=g) > 0.5
    masks[0] = False
    masks[1] = True
    for m, rle in zip(masks, mask_to_rle(masks)):
        assert np.array_equal(rle_to_mask(rle), m.numpy())
        assert sum(rle["counts"]) == 13 * 17
    logits = torch.full((1, 10, 10), -5.0)
    logits[0, 2:8, 2:8] = 5.0
    logits[0, 2, 2:8] = 0.5  # between the two thresholds: in the low one only
    assert calculate_stability_score(logits, 0.0, 1.0).item() == pytest.approx(30 / 36)
    grid = build_point_grid(4)
    assert grid.shape == (16, 2) and grid.min() == 0.125 and grid.max() == 0.875


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_grids=[build_point_grid(4)]), "exactly one"),
        (dict(points_per_side=None), "exactly one"),
        (dict(output_mode="polygons"), "output_mode"),
        (dict(mode="turbo"), "mode"),
        (dict(pred_iou_thresh=1.5), "pred_iou_thresh"),
        (dict(stability_score_thresh=2), "stability_score_thresh"),
        (dict(box_nms_thresh=-0.1), "box_nms_thresh"),
        (dict(points_per_batch=0), "points_per_batch"),
        (dict(points_per_side=0), "points_per_side"),
        (dict(crop_n_layers=-1), "crop_n_layers"),
        (dict(min_mask_region_area=-5), "min_mask_region_area"),
        (dict(points_per_side=None, point_grids=[np.array([[0.5, 1.5]])]), "point_grids"),
        (dict(points_per_side=None, point_grids=[build_point_grid(2)], crop_n_layers=1), "point_grids"),
    ],
)
def test_bad_options_raise_clear_errors(colour_pair, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SamAutomaticMaskGenerator(colour_pair[1], **kwargs)


def test_output_modes_and_explicit_grid(colour_pair):
    _, model = colour_pair
    image = shapes_image()
    grid = build_point_grid(4)
    base = SamAutomaticMaskGenerator(model, points_per_side=None, point_grids=[grid],
                                     stability_score_thresh=0.6).generate(image)
    assert base
    for mode in ("uncompressed_rle", "coco_rle"):
        recs = SamAutomaticMaskGenerator(model, points_per_side=None, point_grids=[grid],
                                         stability_score_thresh=0.6, output_mode=mode).generate(image)
        json.dumps([r["segmentation"] for r in recs])
        for a, b in zip(base, recs):
            seg = b["segmentation"]
            mask = rle_to_mask(seg) if mode == "uncompressed_rle" else decode_rle(seg)
            assert np.array_equal(mask, a["segmentation"])


# --------------------------------------------------------------------------- command line

CLI_LOW = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
           "--box-nms-thresh", "1.0", "--device", "cpu"]


def test_cli_writes_the_official_layout_and_rle(tmp_path, tiny_checkpoint, images):
    from PIL import Image

    from mobilesam.cli import main

    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(images["photo"][::4, ::4]).save(src / "cat.png")
    Image.fromarray(shapes_image()).save(src / "shapes.jpg")
    out = tmp_path / "out"
    args = ["everything", str(src), "--model", str(tiny_checkpoint), "--mode", "exact", "--save-dir", str(out)]
    assert main(args + CLI_LOW) == 0
    for stem in ("cat", "shapes"):
        rows = (out / stem / "metadata.csv").read_text().splitlines()
        assert rows[0].split(",") == ["id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "point_input_x",
                                      "point_input_y", "predicted_iou", "stability_score", "crop_box_x0",
                                      "crop_box_y0", "crop_box_w", "crop_box_h"]
        assert len(rows) > 1
        pngs = sorted(out.glob(f"{stem}/*.png"), key=lambda p: int(p.stem))
        assert [p.stem for p in pngs] == [str(i) for i in range(len(rows) - 1)]
        mask = np.array(Image.open(pngs[0]))
        assert set(np.unique(mask)) <= {0, 255}
        assert int(rows[1].split(",")[1]) == (mask > 0).sum()
        assert Image.open(out / f"{stem}.png").size == Image.open(next(src.glob(f"{stem}.*"))).size
    rle_args = ["everything", str(src / "cat.png"), "--model", str(tiny_checkpoint), "--mode", "exact",
                "--save-dir", str(out), "--rle", "--exist-ok"]  # replaces cat.png, the overlay
    assert main(rle_args + CLI_LOW) == 0
    recs = json.loads((out / "cat.json").read_text())
    rows = (out / "cat" / "metadata.csv").read_text().splitlines()
    assert len(recs) == len(rows) - 1
    first = decode_rle(recs[0]["segmentation"])
    assert np.array_equal(first, np.array(Image.open(out / "cat" / "0.png")) > 0)


def test_cli_rejects_bad_options_before_loading(tmp_path, capsys):
    from mobilesam.cli import main

    img = tmp_path / "a.png"
    cv2.imwrite(str(img), shapes_image())
    code = main(["everything", str(img), "--model", str(tmp_path / "missing.pt"), "--box-nms-thresh", "1.5"])
    assert code == 2
    assert "--box-nms-thresh: expected a value in [0.0, 1.0], got 1.5" in capsys.readouterr().err
    assert main(["everything", str(tmp_path / "nope.png"), "--model", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err
    assert "nope.png" in err and "missing.pt" not in err


# --------------------------------------------------------------------------- progress and 0-masks reason


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_progress_bar_over_the_grid_points(colour_pair, mode, monkeypatch, capsys):
    """Issue 13 item 20: minutes without a word on a slow machine; now a bar over the grid points."""
    monkeypatch.setattr(mobilesam.everything.generator, "PROGRESS_DELAY", 0)
    image = shapes_image()
    gen = SamAutomaticMaskGenerator(colour_pair[1], points_per_side=2, points_per_batch=2, mode=mode,
                                    crop_n_layers=1, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert gen.generate(image)
    err = capsys.readouterr().err
    total = 4 + 4 * 4  # the image and its four crops, 4 points each
    assert "grid points: " in err and f"/{total} [" in err
    SamAutomaticMaskGenerator(colour_pair[1], points_per_side=2, mode=mode, progress=False).generate(image)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress: expected True or False, got 'no'"):
        SamAutomaticMaskGenerator(colour_pair[1], progress="no")


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_zero_masks_are_explained_per_filter(colour_pair, mode, caplog):
    """Issue 13 item 20: "0 masks" came without a reason; now one warning with the count per filter."""
    image = shapes_image()
    kw = dict(points_per_side=4, mode=mode, progress=False)
    caplog.set_level(logging.WARNING, logger="mobilesam")
    gen = SamAutomaticMaskGenerator(colour_pair[1], pred_iou_thresh=0.0, stability_score_thresh=0.0, **kw)
    assert gen.generate(image)
    assert not [r for r in caplog.records if "0 masks" in r.getMessage()]  # masks found: no warning
    best = gen.counts.best_iou

    # The filter is "iou > pred_iou_thresh": at the best IoU of all candidates, none passes.
    gen = SamAutomaticMaskGenerator(colour_pair[1], pred_iou_thresh=best, **kw)
    assert gen.generate(image) == []
    c = gen.counts
    assert c.below_iou == c.candidates > 0 and c.best_iou == best
    got = [r.getMessage() for r in caplog.records if "0 masks" in r.getMessage()]
    assert got == [f"mobilesam: 0 masks: {c.candidates} candidates from {c.points} points, {c.candidates} below "
                   f"pred_iou_thresh={best:g} (best {best:.3g}); lower pred_iou_thresh"]

    # Stability: an offset above every logit leaves no pixel inside the "stable" mask.
    caplog.clear()
    gen = SamAutomaticMaskGenerator(colour_pair[1], pred_iou_thresh=0.0, stability_score_thresh=0.5,
                                    stability_score_offset=100.0, **kw)
    assert gen.generate(image) == []
    c = gen.counts
    assert c.below_stability == c.candidates > 0 and c.below_iou == 0
    got = [r.getMessage() for r in caplog.records if "0 masks" in r.getMessage()]
    assert len(got) == 1 and f"{c.candidates} below stability_score_thresh=0.5 (best 0)" in got[0]
    assert got[0].endswith("; lower stability_score_thresh")
