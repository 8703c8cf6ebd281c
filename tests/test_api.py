"""The high-level API: ``SAM(...).predict`` with the brief's prompt forms, sources, caching, info."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilesam import SAM, Results, SamPredictor
from mobilesam.masks import encode_rle
from mobilesam.model import parse_prompts
from mobilesam.sources import LoadedImage

W, H = 1280, 720  # the size of the brief's zidane.jpg, so its coordinates are used unchanged


@pytest.fixture(scope="module")
def zidane(tmp_path_factory, images) -> Path:
    """The cat photo stretched to 1280 x 720, saved as zidane.jpg."""
    path = tmp_path_factory.mktemp("assets") / "zidane.jpg"
    Image.fromarray(images["photo"]).resize((W, H), Image.BILINEAR).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def model(vit_t_pair) -> SAM:
    return SAM(vit_t_pair[1], device="cpu")


@pytest.fixture(scope="module")
def ref(vit_t_pair, zidane) -> SamPredictor:
    """The low-level predictor on the same image, with its own (independent) image embedding."""
    pred = SamPredictor(vit_t_pair[1])
    pred.set_image(np.asarray(Image.open(zidane).convert("RGB")))
    return pred


_REF_CACHE: dict[str, tuple] = {}


def ref_masks(ref: SamPredictor, objects: list[dict], multimask: bool = False):
    """SamPredictor's masks, scores and logits for each object, one call per object (memoised)."""
    out = []
    for o in objects:
        key = repr(sorted((k, np.asarray(v).tolist()) for k, v in o.items())) + str(multimask)
        if key not in _REF_CACHE:
            _REF_CACHE[key] = ref.predict(**o, multimask_output=multimask)
        out.append(_REF_CACHE[key])
    return (np.concatenate([m for m, _, _ in out]), np.concatenate([s for _, s, _ in out]),
            np.concatenate([lr for _, _, lr in out]))


def assert_same(result: Results, expected, n: int) -> None:
    masks, scores, _ = expected
    assert len(result) == n and result.masks.data.shape == (n, H, W) and result.masks.data.dtype == torch.bool
    got = result.masks.data.numpy()
    for i in range(n):
        differ = int((got[i] != masks[i]).sum())
        # Batched and single decoding may differ by float rounding; a flipped pixel needs a logit at ~0.
        assert differ <= 2, f"mask {i}: {differ} pixels differ from SamPredictor's"
    np.testing.assert_allclose(result.boxes.conf.numpy(), scores, atol=1e-5)


# The brief's examples, verbatim, and the objects SamPredictor is given for each (one call per object).
BRIEF = {
    "point": (dict(points=[900, 370], labels=[1]), [dict(point_coords=[[900, 370]], point_labels=[1])]),
    "multiple_points": (
        dict(points=[[400, 370], [900, 370]], labels=[1, 1]),
        [dict(point_coords=[[400, 370]], point_labels=[1]), dict(point_coords=[[900, 370]], point_labels=[1])],
    ),
    "points_per_object": (
        dict(points=[[[400, 370], [900, 370]]], labels=[[1, 1]]),
        [dict(point_coords=[[400, 370], [900, 370]], point_labels=[1, 1])],
    ),
    "positive_negative": (
        dict(points=[[[400, 370], [900, 370]]], labels=[[1, 0]]),
        [dict(point_coords=[[400, 370], [900, 370]], point_labels=[1, 0])],
    ),
    "box": (dict(bboxes=[439, 437, 524, 709]), [dict(box=np.array([439, 437, 524, 709]))]),
}


@pytest.mark.parametrize("case", list(BRIEF))
def test_brief_examples_match_sam_predictor(model, ref, zidane, case) -> None:
    kwargs, objects = BRIEF[case]
    results = model.predict(str(zidane), **kwargs)
    assert isinstance(results, list) and len(results) == 1
    r = results[0]
    assert r.path == str(zidane) and r.orig_shape == (H, W)
    assert_same(r, ref_masks(ref, objects), len(objects))
    assert r.boxes.cls.tolist() == list(range(len(objects)))  # mask i answers prompt i
    assert r.low_res_logits.shape == (len(objects), 256, 256)


def test_labels_default_to_positive_and_call_equals_predict(model, zidane) -> None:
    a = model.predict(str(zidane), points=[[400, 370], [900, 370]], labels=[1, 1])[0]
    b = model(str(zidane), points=[[400, 370], [900, 370]])[0]
    assert torch.equal(a.masks.data, b.masks.data) and torch.equal(a.boxes.data, b.boxes.data)


def test_boxes_decode_in_one_batched_call(model, ref, zidane, monkeypatch) -> None:
    boxes = np.array([[439, 437, 524, 709], [100, 80, 700, 650], [0, 0, 1279, 719], [800, 100, 1200, 500]])
    calls = []
    original = model.predictor.predict_torch

    def counting(*args, **kwargs):
        calls.append(args[2].shape if len(args) > 2 else kwargs["boxes"].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.predictor, "predict_torch", counting)
    r = model.predict(str(zidane), bboxes=boxes)[0]
    assert calls == [torch.Size([4, 4])]
    assert_same(r, ref_masks(ref, [dict(box=b) for b in boxes]), 4)
    # Boxes are the tight boxes of the masks (inclusive pixel coordinates).
    m = r.masks.data[1].numpy()
    ys, xs = np.nonzero(m)
    if len(xs):
        assert r.boxes.xyxy[1].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_boxes_and_points_pair_per_object(model, ref, zidane) -> None:
    r = model.predict(str(zidane), bboxes=[[100, 80, 700, 650], [800, 100, 1200, 500]],
                      points=[[400, 370], [900, 370]], labels=[1, 0])[0]
    expected = ref_masks(ref, [
        dict(box=np.array([100, 80, 700, 650]), point_coords=[[400, 370]], point_labels=[1]),
        dict(box=np.array([800, 100, 1200, 500]), point_coords=[[900, 370]], point_labels=[0]),
    ])
    assert_same(r, expected, 2)


def test_objects_with_different_numbers_of_points(model, ref, zidane) -> None:
    r = model.predict(str(zidane), points=[[[400, 370], [900, 370]], [[640, 200]]], labels=[[1, 0], [1]])[0]
    expected = ref_masks(ref, [dict(point_coords=[[400, 370], [900, 370]], point_labels=[1, 0]),
                               dict(point_coords=[[640, 200]], point_labels=[1])])
    assert_same(r, expected, 2)
    assert r.prompts["points"][1].tolist() == [[640, 200]]


def test_multimask_output_keeps_prompt_order(model, ref, zidane) -> None:
    r = model.predict(str(zidane), points=[[400, 370], [900, 370]], multimask_output=True)[0]
    expected = ref_masks(ref, [dict(point_coords=[[400, 370]], point_labels=[1]),
                               dict(point_coords=[[900, 370]], point_labels=[1])], multimask=True)
    assert_same(r, expected, 6)
    assert r.boxes.cls.tolist() == [0, 0, 0, 1, 1, 1]


def test_masks_refine_with_low_res_logits(model, ref, zidane) -> None:
    first = model.predict(str(zidane), points=[[400, 370], [900, 370]])[0]
    r = model.predict(str(zidane), points=[[400, 370], [900, 370]], masks=first.low_res_logits)[0]
    expected = ref_masks(ref, [
        dict(point_coords=[[400, 370]], point_labels=[1], mask_input=first.low_res_logits[0:1].numpy()),
        dict(point_coords=[[900, 370]], point_labels=[1], mask_input=first.low_res_logits[1:2].numpy()),
    ])
    assert_same(r, expected, 2)
    assert not torch.equal(r.low_res_logits, first.low_res_logits)  # the mask prompt was used


def test_no_mask_is_dropped_unless_asked(model, zidane) -> None:
    boxes = [[439, 437, 524, 709], [100, 80, 700, 650], [800, 100, 1200, 500]]
    r = model.predict(str(zidane), bboxes=boxes)[0]
    assert len(r) == 3  # a random model scores low; every prompt keeps its mask anyway
    conf = float(r.boxes.conf.sort().values[1])  # keeps the two best
    kept = model.predict(str(zidane), bboxes=boxes, conf=conf)[0]
    keep = (r.boxes.conf >= conf).nonzero().flatten().tolist()
    assert len(keep) == 2 and kept.boxes.cls.tolist() == keep  # cls still names the prompt
    assert torch.equal(kept.masks.data, r.masks.data[keep])


def test_empty_prompt_lists_are_an_error(model, zidane) -> None:
    # Issue 13, item 16: an empty prompt array is an error (it used to give empty results), unless no
    # prompt at all is given (which segments everything).
    with pytest.raises(ValueError, match="bboxes: the prompt array is empty"):
        model.predict(str(zidane), bboxes=np.zeros((0, 4)))
    with pytest.raises(ValueError, match="points: the prompt array is empty"):
        model.predict(str(zidane), points=[])


def test_embedding_computed_once_per_image(vit_t_pair, zidane) -> None:
    model = SAM(vit_t_pair[1], device="cpu")
    calls = []
    handle = model.model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        bgr = np.asarray(Image.open(zidane).convert("RGB"))[..., ::-1].copy()
        a = model.predict(str(zidane), points=[900, 370])[0]
        b = model.predict(bgr, points=[[400, 370], [900, 370]])[0]  # same pixels as an array (BGR)
        c = model.predict(Image.open(zidane), bboxes=[100, 80, 700, 650])[0]  # and as a PIL image
    finally:
        handle.remove()
    assert len(calls) == 1
    # Same prompt, decoded alone and in a batch of two: equal up to float rounding at logits ~0.
    assert int((a.masks.data[0] != b.masks.data[1]).sum()) <= 2
    assert len(c) == 1 and b.path == "image0.jpg"
    assert np.array_equal(a.orig_img, bgr) and np.array_equal(b.orig_img, bgr)


def test_embedding_cache_is_bounded_lru(vit_t_pair, monkeypatch) -> None:
    model = SAM(vit_t_pair[1], device="cpu", cache_size=2)
    encoded = []

    def fake_encode(images):  # no encoder pass: only the cache logic is tested
        encoded.extend(int(x[0, 0, 0, 0]) for x in images)
        return [{"image_embeddings": torch.full((1, 256, 64, 64), float(x[0, 0, 0, 0]))} for x in images]

    monkeypatch.setattr(model.predictor, "_encode_batch", fake_encode)
    imgs = [np.full((20, 30, 3), v, np.uint8) for v in (10, 20, 30)]
    hits = [emb.cached for i in (0, 1, 0, 2, 0, 1)
            for emb in model._embedded(iter([LoadedImage(imgs[i], "x.png")]), half=False, batch=1)]
    # LRU of 2: 0 hit, 2 evicts 1, 0 hit, 1 evicts 2
    assert encoded == [10, 20, 30, 20] and hits == [False, False, True, False, True, False]
    assert len(model._cache) == 2
    emb = next(model._embedded(iter([LoadedImage(imgs[0], "x.png")]), half=False, batch=1))
    model.predictor.set_features(emb.features)  # a hit restores that image's embedding and size
    assert emb.cached and model.predictor.get_image_embedding()[0, 0, 0, 0] == 10
    assert model.predictor.original_size == (20, 30)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(points=[[400, 370], [900, 370]], labels=[[1, 0]]), r"labels: expected labels of shape \(2,\).*nest them"),
        (dict(points=[1, 2, 3]), r"points: got shape \(3,\); accepted forms: points=\[x, y\]"),
        (dict(points=[[[1, 2, 3]]]), r"points: got shape \(1, 1, 3\); accepted forms"),
        (dict(points=[[[1, 2], [3, 4]], [[5]]]), r"points\[1\]: expected shape \(n, 2\)"),
        (dict(points=[900, 370], labels=[2]), r"labels: expected 1 \(foreground\) or 0"),
        (dict(points=[[1, 2], [3, 4]], bboxes=[[0, 0, 5, 5]] * 3), r"different numbers of objects.*'bboxes': 3"),
        (dict(bboxes=[10, 10, 5, 20]), r"bboxes: expected x1 <= x2"),
        (dict(bboxes=[1, 2, 3]), r"bboxes: expected shape \(4,\) or \(B, 4\)"),
        (dict(labels=[1]), "labels: given without points"),
        (dict(masks=np.zeros((2, 64, 64))), r"masks: expected low-resolution logits.*\(2, 64, 64\)"),
        (dict(points=[[np.nan, 3]]), "points: all values must be finite"),
        (dict(points="900,370"), "points: expected numbers"),
    ],
)
def test_bad_prompts_raise_clear_errors(kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        parse_prompts(**kwargs)


def test_bad_arguments(model, zidane) -> None:
    with pytest.raises(ValueError, match="half: float16 inference runs on CUDA only"):
        model.predict(str(zidane), points=[900, 370], half=True)
    with pytest.raises(ValueError, match=r"backend: expected one of \[.*'onnxruntime'.*'torch'.*\], got 'tensorrt'"):
        SAM(model.model, backend="tensorrt")
    with pytest.raises(ValueError, match="conf: expected a number in"):
        model.predict(str(zidane), points=[900, 370], conf=2)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['sav'\]"):
        model.predict(str(zidane), points=[900, 370], sav=True)
    with pytest.raises(ValueError, match="augment: an Ultralytics argument that has no meaning for SAM"):
        model.predict(str(zidane), points=[900, 370], augment=True)
    with pytest.raises(FileNotFoundError, match="source: file 'nope.jpg' not found"):
        model.predict("nope.jpg", points=[900, 370])
    with pytest.raises(TypeError, match="source: expected a file path"):
        model.predict(12, points=[900, 370])
    with pytest.raises(ValueError, match="checkpoint"):
        SAM(str(zidane))  # an image is not a checkpoint


def test_sources_folder_glob_list_and_skipped_files(model, zidane, tmp_path, caplog) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(zidane.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="mobilesam"):
        results = model.predict(folder, points=[900, 370])
    assert [Path(r.path).name for r in results] == ["a.jpg"]
    assert sorted(Path(p).name for p, _ in model.skipped) == ["broken.jpg", "notes.txt"]
    assert "broken.jpg" in caplog.text and "notes.txt" in caplog.text

    stream = model.predict(str(folder / "*.jpg"), points=[900, 370], stream=True)
    assert not isinstance(stream, list)
    assert [Path(r.path).name for r in stream] == ["a.jpg"]
    results = model.predict([zidane, str(folder / "a.jpg")], points=[900, 370])
    assert len(results) == 2 and torch.equal(results[0].masks.data, results[1].masks.data)

    # A file named explicitly must be readable: its error names it.
    with pytest.raises(ValueError, match="broken.jpg"):
        model.predict(folder / "broken.jpg", points=[900, 370])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        model.predict(str(tmp_path / "*.png"), points=[900, 370])


def test_url_source_offline_error(model) -> None:
    # Port 9 on the loopback interface: nothing listens, so the connection is refused at once.
    with pytest.raises(ConnectionError, match=r"cannot download 'http://127\.0\.0\.1:9/zidane\.jpg'"):
        model.predict("http://127.0.0.1:9/zidane.jpg", points=[900, 370])


def test_info_counts(model, capsys) -> None:
    info = model.info()
    line = capsys.readouterr().out.strip()
    assert info.parameters == 10_130_092 == sum(p.numel() for p in model.model.parameters())
    assert info.layers == sum(1 for m in model.model.modules() if not list(m.children()))
    assert abs(info.size_mb - 40.7) < 0.05
    assert 75 < info.gflops < 90  # TinyViT at 1024 x 1024 is 77.5 GFLOPs
    assert line == (f"MobileSAM (vit_t) summary: {info.layers} layers, 10,130,092 parameters, "
                    f"10,130,092 gradients, {info.gflops:.1f} GFLOPs, 40.7 MB")
    # The mask decoder's FLOPs, checked against a hand count of its largest layer family: the output
    # upscaling's two transposed convolutions (256->64 on 64x64, 64->32 on 128x128; k=2, s=2), 2 FLOPs a MAC.
    enc, dec = model._gflops_parts
    upscaling = 2 * (256 * 64 * 4 * 64 * 64 + 64 * 32 * 4 * 128 * 128) / 1e9
    assert upscaling < dec < 5 * upscaling and enc + dec == pytest.approx(info.gflops)


class _StubGenerator:
    """Stands in for SamAutomaticMaskGenerator: records its arguments, returns fixed records."""

    calls: list = []

    def __init__(self, model, mode="exact", **kwargs) -> None:
        self.calls.append((model, mode, kwargs))
        self.output_mode = kwargs.get("output_mode", "binary_mask")

    def generate(self, image, features=None):
        h, w = image.shape[:2]
        small, large = np.zeros((h, w), bool), np.zeros((h, w), bool)
        small[5:10, 5:15] = True
        large[20:60, 30:90] = True
        records = []
        for m, iou in ((small, 0.8), (large, 0.95)):  # smallest first: SAM must sort by area
            ys, xs = np.nonzero(m)
            seg = encode_rle(m) if self.output_mode == "coco_rle" else m
            records.append(dict(segmentation=seg, area=int(m.sum()), predicted_iou=iou, stability_score=0.97,
                                bbox=[int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())],
                                point_coords=[[0.0, 0.0]], crop_box=[0, 0, w, h]))
        return records


def test_segment_everything_when_no_prompt(model, monkeypatch) -> None:
    # The facade asks automatic_mask_generator for its family's generator: SAM's, for this vit_t.
    family_pick = pytest.importorskip("mobilesam.everything.sam2_generator")
    monkeypatch.setattr(family_pick, "SamAutomaticMaskGenerator", _StubGenerator)
    _StubGenerator.calls.clear()
    img = np.zeros((70, 100, 3), np.uint8)
    for output_mode in ("binary_mask", "coco_rle"):
        r = model.predict(img, points_per_side=8, output_mode=output_mode)[0]
        assert len(r) == 2 and r.masks.data.shape == (2, 70, 100) and r.low_res_logits is None
        assert r.masks.data.flatten(1).sum(1).tolist() == [2400, 50]  # largest first
        assert r.boxes.data.tolist() == [[30, 20, 89, 59, pytest.approx(0.95), 0], [5, 5, 14, 9, pytest.approx(0.8), 1]]
    # The generator runs on the facade's own predictor, so it uses the backend the SAM was made with.
    assert _StubGenerator.calls[0][0] is model.predictor and _StubGenerator.calls[0][1] == "fast"  # default mode
    # progress (a bar over the grid points) follows verbose unless given.
    assert _StubGenerator.calls[0][2] == {"progress": True, "points_per_side": 8, "output_mode": "binary_mask"}
    model.predict(img, mode="exact")
    assert _StubGenerator.calls[-1][1:] == ("exact", {"progress": True})
    model.predict(img, verbose=False)
    assert _StubGenerator.calls[-1][2] == {"progress": False}
    model.predict(img, verbose=False, progress=True)
    assert _StubGenerator.calls[-1][2] == {"progress": True}
    with pytest.raises(ValueError, match="mode: expected 'fast' or 'exact'"):
        model.predict(img, mode="quick")


def test_segment_everything_runs_the_real_generator(model, zidane) -> None:
    pytest.importorskip("mobilesam.everything")
    r = model.predict(str(zidane), mode="exact", points_per_side=2, pred_iou_thresh=-10.0,
                      stability_score_thresh=-10.0)[0]
    assert len(r) > 0 and r.masks.data.shape[1:] == (H, W) and r.masks.data.dtype == torch.bool
    areas = r.masks.data.flatten(1).sum(1)
    assert (areas[:-1] >= areas[1:]).all()
    m = r.masks.data[0].numpy()
    ys, xs = np.nonzero(m)
    assert r.boxes.xyxy[0].tolist() == pytest.approx([xs.min(), ys.min(), xs.max(), ys.max()], abs=1)
    with pytest.raises((TypeError, ValueError), match="points_per_side"):
        model.predict(str(zidane), points_per_side=0)
