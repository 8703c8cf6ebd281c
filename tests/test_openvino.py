"""The OpenVINO backends: f32 parity with the torch backend, the conversion cache, threads, batches (and
the onnxruntime backend's batches, from the same export), the front ends, ``mobilesam export --format
openvino``, the bf16 refusal, int8 calibration, and the error when openvino is not installed.

One conversion for the module (``ov_cache``): every predictor here, whichever way it is made, reuses it. It
skips the conversion's own comparison with PyTorch (``check=False``): ``test_f32_matches_torch`` makes it,
with the same tolerances, and ``test_conversion_checks_refuse_a_difference`` shows those checks can fail.
NNCF itself is stood in for in the int8 test (its statistics passes at 1024 px cost tens of seconds);
what its quantization does to the masks is measured by ``benchmarks/bench_openvino.py``.
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("onnx")  # the conversion goes through our ONNX export
pytest.importorskip("onnxruntime")

import openvino as ov  # noqa: E402

from mobilesam import SAM  # noqa: E402
from mobilesam.backends import create_predictor  # noqa: E402
from mobilesam.backends import openvino_predictor as ovp  # noqa: E402
from mobilesam.backends.openvino_predictor import OpenVinoSamPredictor  # noqa: E402
from mobilesam.backends.torch_predictor import SamPredictor  # noqa: E402
from mobilesam.export import openvino_export as ove  # noqa: E402
from mobilesam.export.manifest import ExportError  # noqa: E402

# The ONNX backend's parity tolerances (tests/test_export.py), which the f32 backend must meet too.
EMB_RTOL = 1e-4
LOGIT_ATOL = 1e-3


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory, vit_t_pair):
    """The model converted once into a fresh ``$MOBILESAM_HOME``, which the whole module uses."""
    home = tmp_path_factory.mktemp("ov_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOBILESAM_HOME", str(home))
        pred = OpenVinoSamPredictor.from_sam(vit_t_pair[1], check=False)
        yield pred, home


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Non-square, so the padding of the square encoder input and the crop of the masks are exercised."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:370]
    img = np.stack([(xx * 0.7) % 255, (yy * 1.1) % 255, 128 + 60 * np.sin(xx / 9.0)], axis=-1)
    img[60:170, 100:260] = (220, 40, 40)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def predictors(ov_cache, vit_t_pair, image):
    ours, ovino = SamPredictor(vit_t_pair[1]), ov_cache[0]
    ours.set_image(image)
    ovino.set_image(image)
    return ours, ovino


def _assert_same(tag, ref, got) -> None:
    (r_logits, r_iou, r_low), (o_logits, o_iou, o_low) = ref, got
    assert r_logits.shape == o_logits.shape and r_low.shape == o_low.shape, tag
    assert np.abs(r_low - o_low).max() <= LOGIT_ATOL, f"{tag}: low-res logits"
    assert np.abs(r_iou - o_iou).max() <= LOGIT_ATOL, f"{tag}: iou predictions"
    differ = (r_logits > 0) != (o_logits > 0)
    assert not (differ & (np.abs(r_logits) > LOGIT_ATOL)).any(), f"{tag}: masks differ away from the threshold"


def test_f32_matches_torch(predictors, image) -> None:
    ours, ovino = predictors
    ref, got = ours.get_image_embedding(), ovino.get_image_embedding()
    assert got.shape == (1, 256, 64, 64) and ovino.input_size == ours.input_size == (664, 1024)
    assert (ref - got).abs().max() <= EMB_RTOL * ref.abs().max()
    h, w = image.shape[:2]
    pts = np.array([[w * 0.5, h * 0.5], [w * 0.2, h * 0.3], [w * 0.8, h * 0.7]])
    box = np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.75])
    prompts = {
        "1 point": dict(point_coords=pts[:1], point_labels=np.array([1])),
        "3 points": dict(point_coords=pts, point_labels=np.array([1, 0, 1])),
        "box": dict(box=box),
        "box + 2 points": dict(box=box, point_coords=pts[:2], point_labels=np.array([1, 0])),
    }
    for tag, prompt in prompts.items():
        for multimask in (True, False):
            r = ours.predict(**prompt, multimask_output=multimask, return_logits=True)
            _assert_same(f"{tag}/multimask={multimask}", r,
                         ovino.predict(**prompt, multimask_output=multimask, return_logits=True))
        best = r[2][np.argmax(r[1])][None]
        _assert_same(f"{tag}/mask_input", ours.predict(**prompt, mask_input=best, multimask_output=False),
                     ovino.predict(**prompt, mask_input=best, multimask_output=False))
    masks, scores, _ = ovino.predict(point_coords=pts[:1], point_labels=[1])
    assert masks.dtype == bool and masks.shape == (3, h, w) and scores.shape == (3,)
    # A batch of boxes in one decoder pass (the decoder IR has a dynamic batch).
    boxes = torch.as_tensor(ovino.transform.apply_boxes(np.array([[10, 20, 200, 150], [100, 50, 360, 230]]), (h, w)),
                            dtype=torch.float)
    r = ours.predict_torch(None, None, boxes=boxes, multimask_output=False, return_logits=True)
    o = ovino.predict_torch(None, None, boxes=boxes, multimask_output=False, return_logits=True)
    assert o[0].shape == (2, 1, h, w)
    _assert_same("2 boxes", [t.numpy() for t in r], [t.numpy() for t in o])


def test_cache_is_reused_and_threads_and_precision_are_explicit(ov_cache, vit_t_pair, monkeypatch) -> None:
    first, home = ov_cache
    calls = []
    monkeypatch.setattr(ovp, "convert_openvino", lambda *a, **k: calls.append(a) or pytest.fail("converted again"))
    monkeypatch.setenv("MOBILESAM_HOME", str(home))
    pred = create_predictor(vit_t_pair[1], "openvino", threads=1)
    assert calls == [] and pred.model_dir == first.model_dir and pred.backend == "openvino"
    digest = ove.weights_digest(vit_t_pair[1])
    assert pred.model_dir == home / "openvino" / f"vit_t-{digest[:16]}-ov{ove.openvino_release()}"
    assert pred.manifest["weights_sha256"] == digest and pred.manifest["converted_from"] == "onnx"
    # Converted from the onnxruntime backend's export, which it left in the cache for that backend.
    assert (home / "onnx" / f"vit_t-{digest[:16]}" / "manifest.json").is_file()
    for runner in (pred.encoder, pred.decoder):
        assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert first.threads == torch.get_num_threads() and "threads=1" in repr(pred)
    # The disk cache of embeddings tells this model, backend and precision apart from others.
    assert pred.feature_identity() == f"sam/vit_t/{digest[:32]}/openvino"
    # A changed weight is another model: another folder.
    weight = vit_t_pair[1].mask_decoder.iou_token.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] += 1.0
        try:
            assert ove.default_folder(vit_t_pair[1]) != pred.model_dir
        finally:
            weight.copy_(saved)
    assert ove.default_folder(vit_t_pair[1]) == pred.model_dir


@pytest.mark.slow
def test_set_images_batches_the_encoder(ov_cache, predictors, vit_t_pair, image, monkeypatch) -> None:
    """Images of different shapes share one encoder pass (square padded inputs), on OpenVINO and on ONNX
    Runtime (same export), with the features of one ``set_image`` each; the fixture's predictor has
    ``image`` set already."""
    from mobilesam.backends.onnx_predictor import OnnxSamPredictor, cache_folder

    ovino = predictors[1]
    current = ovino.get_features()
    single = current.embedding
    wide = np.ascontiguousarray(image[:120].transpose(1, 0, 2))  # another size and aspect ratio
    ort = OnnxSamPredictor(cache_folder(vit_t_pair[1], ov_cache[1] / "onnx"), encoder_batch=2)
    wide_features = []
    for pred in (ovino, ort):
        batches = []
        run = pred.encoder.run

        def counted(names, feeds, run=run, batches=batches):
            batches.append(feeds["image"].shape)
            return run(names, feeds)

        monkeypatch.setattr(pred.encoder, "run", counted)
        feats = pred.set_images([image, wide], batch=2)
        assert batches == [(2, 3, 1024, 1024)] and [f.original_size for f in feats] == [(240, 370), (370, 120)]
        assert pred.original_size == (370, 120) and feats[0].input_size == current.input_size
        assert feats[1].input_size == (1024, 332)
        # In a batch, padded with the pixel mean; alone (torch, and ONNX Runtime's unpadded input): zero padding.
        assert (feats[0].embedding - single).abs().max() <= EMB_RTOL * single.abs().max(), pred.backend
        wide_features.append(feats[1].embedding)
    assert (wide_features[0] - wide_features[1]).abs().max() <= EMB_RTOL * wide_features[0].abs().max()
    ovino.set_features(current)  # as the other tests expect it
    # encoder_batch per pass; the last chunk is smaller (shapes only: no need to run the network).
    sizes = []

    def fake(names, feeds):
        sizes.append(len(feeds["image"]))
        return [np.zeros((len(feeds["image"]), 256, 64, 64), np.float32)]

    monkeypatch.setattr(ort.encoder, "run", fake)
    assert len(ort.set_images([image] * 5)) == 5 and sizes == [2, 2, 1]
    sizes.clear()
    assert len(ort.set_images([image] * 3, batch=3)) == 3 and sizes == [3]


@pytest.mark.slow
def test_front_ends_run_on_openvino(ov_cache, predictors, vit_t_pair, image, monkeypatch) -> None:
    from mobilesam.everything import SamAutomaticMaskGenerator

    monkeypatch.setenv("MOBILESAM_HOME", str(ov_cache[1]))
    monkeypatch.setattr(ovp, "convert_openvino", lambda *a, **k: pytest.fail("converted again"))
    model = SAM(vit_t_pair[1], backend="openvino")
    assert model.backend == "openvino" and isinstance(model.predictor, OpenVinoSamPredictor)
    points = [[60, 40], [200, 120]]
    got = model.predict(np.ascontiguousarray(image[..., ::-1]), points=points, labels=[1, 1], verbose=False)[0]
    assert got.masks.data.shape == (2, 240, 370)
    for i, point in enumerate(points):  # one object per point, one mask each: what the torch backend gives
        logits = predictors[0].predict(np.array([point]), np.array([1]), multimask_output=False, return_logits=True)[0]
        differ = got.masks.data[i].cpu().numpy() != (logits[0] > 0)
        assert not (differ & (np.abs(logits[0]) > LOGIT_ATOL)).any()
    # Several images, two per encoder call: the masks of one at a time (float rounding apart).
    images = [np.ascontiguousarray(image[:120].transpose(1, 0, 2)), np.ascontiguousarray(image[::-1, :200]), image]
    calls = []
    encode = model.predictor._encode_batch
    monkeypatch.setattr(model.predictor, "_encode_batch", lambda images: calls.append(len(images)) or encode(images))
    one = SAM(vit_t_pair[1], backend="openvino", cache_size=0)
    encode_one = one.predictor._encode_batch
    monkeypatch.setattr(one.predictor, "_encode_batch", lambda images: calls.append(-len(images)) or encode_one(images))
    kw = dict(points=[[60, 40]], image_format="RGB", verbose=False)
    batched, single = model.predict(images, batch=2, **kw), one.predict(images, **kw)
    assert calls == [2, -1, -1, -1]  # two new images in one call (the third is cached); one by one: 3 calls
    for a, b in zip(batched, single):
        assert a.orig_shape == b.orig_shape and (a.low_res_logits - b.low_res_logits).abs().max() <= LOGIT_ATOL
        assert int((a.masks.data != b.masks.data).sum()) <= 2
    everything = model.predict(image, points_per_side=2, image_format="RGB", pred_iou_thresh=-10.0,
                               stability_score_thresh=-10.0, verbose=False)[0]  # the cached features
    assert len(everything) and everything.masks.data.shape[1:] == image.shape[:2]
    gen = SamAutomaticMaskGenerator(model.predictor, points_per_side=2, mode="exact")
    assert gen.predictor.backend == "openvino" and isinstance(gen.generate(image), list)


def test_bf16_is_refused_without_cpu_support(ov_cache, vit_t_pair, monkeypatch) -> None:
    monkeypatch.setenv("MOBILESAM_HOME", str(ov_cache[1]))
    if "BF16" in ove.cpu_capabilities():  # a CPU with bf16: it runs, close to f32
        pred = create_predictor(vit_t_pair[1], "openvino-bf16")
        assert pred.backend == "openvino-bf16"
        assert pred.encoder.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        assert pred.decoder.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    monkeypatch.setattr(ovp, "cpu_capabilities", lambda: ["FP32", "INT8"])
    monkeypatch.setattr(ovp, "convert_openvino", lambda *a, **k: pytest.fail("converted before refusing"))
    with pytest.raises(ValueError, match="precision: 'bf16' needs a CPU with bfloat16 support .* FP32, INT8; use the "
                                         "'openvino' backend"):
        create_predictor(vit_t_pair[1], "openvino-bf16")
    with pytest.raises(ValueError, match="precision: 'bf16' needs"):
        OpenVinoSamPredictor(ov_cache[0].model_dir, precision="bf16")


def test_bad_options_and_files(ov_cache, vit_t_pair, tmp_path) -> None:
    folder = ov_cache[0].model_dir
    with pytest.raises(ValueError, match=r"precision: expected one of \['fp32', 'bf16', 'int8'\], got 'fp16'"):
        OpenVinoSamPredictor(folder, precision="fp16")
    with pytest.raises(ValueError, match="threads: expected an int >= 1 or None"):
        OpenVinoSamPredictor(folder, threads=0)
    with pytest.raises(ValueError, match="calibration: only the int8 encoder is calibrated"):
        OpenVinoSamPredictor.from_sam(vit_t_pair[1], calibration=tmp_path, cache=tmp_path)
    with pytest.raises(TypeError, match="sam: expected a SAM / MobileSAM model"):
        OpenVinoSamPredictor.from_sam(torch.nn.Linear(2, 2), cache=tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a converted folder"):
        OpenVinoSamPredictor(tmp_path)
    with pytest.raises(ValueError, match="calibration: expected a folder of images, got .* with no image files"):
        ove.calibration_set(tmp_path, 4)
    with pytest.raises(ValueError, match="calibration_size: expected an int >= 1, got 0"):
        ove.calibration_set(None, 0)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    decoder_bin = broken / ov_cache[0].manifest["files"]["decoder"]["bin"]
    decoder_bin.write_bytes(decoder_bin.read_bytes()[:1000])
    with pytest.raises(ExportError, match="does not match the SHA-256 in manifest.json"):
        OpenVinoSamPredictor(broken)


def test_without_openvino(monkeypatch, ov_cache, vit_t_pair) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    hint = 'pip install "mobilesam\\[openvino\\]"'
    with pytest.raises(ImportError, match="the openvino backends need the openvino package: " + hint):
        ove.import_openvino()
    with pytest.raises(ImportError, match='pip install "mobilesam\\[openvino\\]"'):
        create_predictor(vit_t_pair[1], "openvino")
    with pytest.raises(ImportError, match='pip install "mobilesam\\[openvino\\]"'):
        OpenVinoSamPredictor(ov_cache[0].model_dir)
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ImportError, match='openvino-int8 backend needs the nncf package: pip install "mobilesam'):
        ove.import_nncf()


class _NNCFStandIn:
    """Stands in for nncf: records what ``quantize`` is given and returns the model unchanged (the real
    quantizer's statistics passes cost tens of seconds at 1024 px; its effect on masks is benchmarked)."""

    class ModelType:
        TRANSFORMER = "transformer"

    class Dataset:
        def __init__(self, items, transform) -> None:
            self.items, self.transform = items, transform

    calls: list = []

    @classmethod
    def quantize(cls, model, dataset, **options):
        cls.calls.append(([dataset.transform(item) for item in dataset.items], options))
        return model


def test_int8_encoder_calibrated_on_a_folder(ov_cache, predictors, vit_t_pair, image, tmp_path, monkeypatch,
                                            caplog) -> None:
    """int8 encoder calibrated on the user's images (the decoder stays f32); quantized once per calibration
    set; the manifest and info() say which set."""
    from PIL import Image

    folder = tmp_path / "calibration"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(image).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(image[::-1, ::-1])).save(folder / "sub" / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    cache = tmp_path / "openvino"
    shutil.copytree(ov_cache[0].model_dir, cache / ov_cache[0].model_dir.name, copy_function=os.link)  # converted
    monkeypatch.setattr(ovp, "convert_openvino", lambda *a, **k: pytest.fail("converted again"))
    monkeypatch.setattr(ove, "import_nncf", lambda: _NNCFStandIn)
    _NNCFStandIn.calls.clear()
    int8 = OpenVinoSamPredictor.from_sam(vit_t_pair[1], "int8", cache=cache, calibration=folder, calibration_size=2,
                                         check=False)
    (samples, options), = _NNCFStandIn.calls
    # Each calibration image as the encoder IR takes it: resized, padded with the pixel mean to 1024 x 1024.
    assert [x.shape for x in samples] == [(1, 3, 1024, 1024)] * 2 and options["subset_size"] == 2
    assert np.allclose(samples[0][0, :, -1, -1], ov_cache[0].pixel_mean) and samples[0].std() > 10
    assert options["model_type"] == "transformer"
    assert int8.backend == "openvino-int8" and int8.model_dir == cache / ov_cache[0].model_dir.name
    assert f"calibration=\"folder '{folder.resolve()}' (2 images)\"" in repr(int8)
    info = int8.info()
    assert info["calibration"] == f"folder '{folder.resolve()}' (2 images)" and info["decoder_precision"] == "fp32"
    assert int8.manifest["files"]["encoder_int8"]["calibration"]["source"] == "folder"
    assert int8.encoder.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32  # the float rest: f32
    assert int8.feature_identity().startswith("sam/vit_t/") and "/openvino-int8/" in int8.feature_identity()

    # The same calibration set: reused; another one (the built-in synthetic images): quantized again.
    again = OpenVinoSamPredictor.from_sam(vit_t_pair[1], "int8", cache=cache, calibration=folder, calibration_size=2,
                                          check=False)
    assert len(_NNCFStandIn.calls) == 1 and again.calibration == int8.calibration
    with caplog.at_level("WARNING", logger="mobilesam"):
        synthetic = OpenVinoSamPredictor.from_sam(vit_t_pair[1], "int8", cache=cache, calibration_size=2, check=False)
    assert len(_NNCFStandIn.calls) == 2 and synthetic.info()["calibration"] == "synthetic (2 images)"
    assert "made without the check, so its masks were never compared with f32's" in caplog.text
    assert synthetic.feature_identity() != int8.feature_identity()  # other calibration, other features


class _NNCFNegating(_NNCFStandIn):
    """A quantizer that ruins the encoder: its embedding comes out negated."""

    calls: list = []

    @classmethod
    def quantize(cls, model, dataset, **options):
        import openvino.opset13 as ops

        cls.calls.append(options)
        result = model.get_results()[0]
        negated = ops.multiply(result.input_value(0), ops.constant(np.float32(-1.0)))
        result.input(0).replace_source_output(negated.output(0))
        return model


def test_int8_is_offered_only_where_its_masks_stay_near_f32(ov_cache, vit_t_pair, tmp_path, monkeypatch) -> None:
    """The int8 gate: masks of the int8 encoder against the f32 encoder's, measured with the model's own weights.
    A quantizer that ruins the embedding is refused (nothing added, the refusal kept, so the next request fails
    at once); one that keeps it is offered with its IoU in the manifest."""
    cache = tmp_path / "openvino"
    shutil.copytree(ov_cache[0].model_dir, cache / ov_cache[0].model_dir.name, copy_function=os.link)
    folder = cache / ov_cache[0].model_dir.name
    monkeypatch.setattr(ove, "import_nncf", lambda: _NNCFNegating)
    _NNCFNegating.calls.clear()
    with pytest.raises(ExportError, match=r"calibrated on synthetic \(1 images\) gives masks at IoU 0\.\d+ of the f32 "
                                          r"encoder's .*at least 0\.95 needed.*calibration=DIR.*'openvino'") as refused:
        OpenVinoSamPredictor.from_sam(vit_t_pair[1], "int8", cache=cache, calibration_size=1)
    manifest = ove.read_openvino_manifest(folder)[1]
    assert "encoder_int8" not in manifest["files"] and not list(folder.glob("*int8*"))
    (verdict,) = manifest["int8_refused"].values()
    assert verdict["mask_iou_vs_f32_mean"] < 0.95 and verdict["images"] == 2
    with pytest.raises(ExportError) as again:
        OpenVinoSamPredictor.from_sam(vit_t_pair[1], "int8", cache=cache, calibration_size=1)
    assert len(_NNCFNegating.calls) == 1 and str(again.value) == str(refused.value)

    monkeypatch.setattr(ove, "import_nncf", lambda: _NNCFStandIn)  # leaves the encoder as it is
    int8 = OpenVinoSamPredictor.from_sam(vit_t_pair[1], "int8", cache=cache, calibration_size=2)
    gate = int8.info()["checks"]["encoder_int8"]
    assert gate["mask_iou_vs_f32_mean"] == gate["mask_iou_vs_f32_min"] == 1.0
    assert gate["masks_compared"] == 2 * 4 * ove.INT8_GATE_GRID**2 and gate["embedding_max_abs_diff"] < 1e-3


@pytest.mark.slow
def test_export_format_openvino(ov_cache, predictors, tiny_checkpoint, image, tmp_path, monkeypatch, capsys) -> None:
    """mobilesam export --format openvino writes the IR with its manifest (here a copy of the backend's
    conversion of the same weights in the cache); SAM(folder) runs it on the openvino backend; format options
    are checked by name."""
    from mobilesam.cli import main

    monkeypatch.setenv("MOBILESAM_HOME", str(ov_cache[1]))
    monkeypatch.setattr(ove, "import_nncf", lambda: _NNCFStandIn)
    monkeypatch.setattr(ove, "convert_openvino", lambda *a, **k: pytest.fail("converted again"))
    out = tmp_path / "exported"
    argv = ["export", "--model", str(tiny_checkpoint), "--format", "openvino", "--out", str(out), "--no-check"]
    assert main([*argv, "--quantize", "int8", "--calibration-size", "1"]) == 0
    printed = capsys.readouterr().out
    assert "exported vit_t as openvino" in printed and "vit_t_encoder.int8.xml" in printed
    manifest = ove.read_openvino_manifest(out)[1]
    assert set(manifest["files"]) == {"encoder", "decoder", "encoder_int8"}
    assert manifest["files"]["encoder_int8"]["calibration"]["source"] == "synthetic"
    model = SAM(out)
    assert model.backend == "openvino" and model.predictor.model_dir == out
    points = np.array([[150.0, 100.0]])
    got = model.predictor
    got.set_image(image)
    low = got.predict(points, np.array([1]), return_logits=True)[2]
    assert np.abs(low - predictors[1].predict(points, np.array([1]), return_logits=True)[2]).max() <= LOGIT_ATOL
    assert SAM(out, backend="openvino-int8").predictor.precision == "int8"
    assert main([*argv[:-1], "--calibration", str(tmp_path)]) == 2
    assert "--calibration: only the int8 encoder is calibrated" in capsys.readouterr().err
    assert main(["export", "--model", str(tiny_checkpoint), "--calibration", str(tmp_path)]) == 2
    assert "--calibration: not an option of --format onnx" in capsys.readouterr().err


def test_conversion_checks_refuse_a_difference() -> None:
    """The comparisons that a conversion with check=True makes fail on a difference beyond the tolerances."""
    image = np.full((1, 3, 4, 6), 100.0, np.float32)
    ref = np.ones((1, 256, 2, 2), np.float32)
    ok = ove._check_encoder(lambda _, feeds: [ref + 1e-6], image, ref, 8, [0.0] * 3, True, "encoder")
    assert ok["embedding_max_abs_diff"] < 1e-5
    with pytest.raises(ExportError, match="OpenVINO's encoder differs from PyTorch: embedding max abs diff"):
        ove._check_encoder(lambda _, feeds: [ref * 1.01], image, ref, 8, [0.0] * 3, True, "encoder")
    masks, iou, low = np.full((1, 4, 5, 5), 3.0, np.float32), np.zeros((1, 4), np.float32), np.zeros((1, 4, 8, 8))
    refs = [({}, [masks, iou, low])]
    assert ove._check_decoder(lambda _, feeds: [masks, iou, low], refs, "decoder")["low_res_max_abs_diff"] == 0
    with pytest.raises(ExportError, match="5 mask pixels away from the threshold"):
        flipped = masks.copy()
        flipped[0, 0, 0] = -3.0
        ove._check_decoder(lambda _, feeds: [flipped, iou, low], refs, "decoder")


def test_synthetic_calibration_images_are_deterministic_and_varied() -> None:
    items, info = ove.calibration_set(None, 3)
    assert items == [0, 1, 2] and info == {"source": "synthetic", "images": 3, "digest": "synthetic-v1-3"}
    assert ove.describe_calibration(info) == "synthetic (3 images)"
    a, b = ove.synthetic_calibration_image(0), ove.synthetic_calibration_image(1)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert np.array_equal(a, ove.synthetic_calibration_image(0)) and not (a.shape == b.shape and np.array_equal(a, b))
    assert a.std() > 20  # structure, not a flat field


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the signal-stack leak is Linux's")
def test_openvino_calls_leave_the_threads_signal_stack_as_it_was() -> None:
    """OpenVINO installs a signal stack on the compiling thread and frees it with the model while installed;
    a later signal (Ctrl-C, a DataLoader's SIGCHLD) then killed the test process with SIGSEGV."""
    import gc
    import signal

    from mobilesam.export.signal_stack import current_signal_stack, keeps_signal_stack

    param = ov.opset13.parameter([1, 3], np.float32)
    before = current_signal_stack()
    runner = ove.InferRunner(ove.compile_model(ov.Model([ov.opset13.relu(param)], [param])))
    assert runner.run(None, {runner.compiled.inputs[0].any_name: -np.ones((1, 3), np.float32)})[0].max() == 0
    assert current_signal_stack() == before
    del runner
    gc.collect()
    handled = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: handled.append(True))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert handled == [True]
    # The check can fail: unwrapped, OpenVINO's compile leaves its own stack on this thread.

    @keeps_signal_stack
    def unwrapped_compile_changes_the_stack() -> bool:
        raw = ov.Core().compile_model(ov.Model([ov.opset13.relu(param)], [param]), "CPU")
        changed = current_signal_stack() != before
        del raw
        return changed

    assert unwrapped_compile_changes_the_stack()
    assert current_signal_stack() == before
