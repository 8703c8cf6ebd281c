"""ONNX export, the int8 variants, the manifest and the ONNX Runtime predictor."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from conftest import trained_like  # noqa: E402

from mobilesam.export import ExportError, OnnxSamPredictor, export_onnx  # noqa: E402
from mobilesam.export.graphs import DecoderGraph  # noqa: E402
from mobilesam.export.manifest import MANIFEST_NAME, sha256_file  # noqa: E402
from mobilesam.export.runtime import import_onnxruntime, make_session  # noqa: E402
from mobilesam.predictor import SamPredictor  # noqa: E402

EMB_RTOL = 1e-4
LOGIT_ATOL = 1e-3


_model = trained_like  # non-trivial BatchNorm statistics and biases, as a trained model has


@pytest.fixture(scope="module")
def vit_t_export(vit_t_onnx_export):
    return vit_t_onnx_export  # (model, folder, manifest), exported once per session (conftest)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A non-square image (the encoder's dynamic height/width and the crop of the padding are exercised)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:370]
    img = np.stack([(xx * 0.7) % 255, (yy * 1.1) % 255, 128 + 60 * np.sin(xx / 9.0)], axis=-1)
    img[60:170, 100:260] = (220, 40, 40)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def predictors(vit_t_export, image):
    sam, out, _ = vit_t_export
    ours, ort = SamPredictor(sam), OnnxSamPredictor(out)
    ours.set_image(image)
    ort.set_image(image)
    return ours, ort


def _prompts(h: int, w: int) -> dict[str, dict]:
    pts = np.array([[w * 0.5, h * 0.5], [w * 0.2, h * 0.3], [w * 0.8, h * 0.7], [w * 0.4, h * 0.9], [w * 0.6, h * 0.1]])
    box = np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.75])
    return {
        "1 point": dict(point_coords=pts[:1], point_labels=np.array([1])),
        "2 points": dict(point_coords=pts[:2], point_labels=np.array([1, 0])),
        "5 points": dict(point_coords=pts, point_labels=np.array([1, 0, 1, 1, 0])),
        "box": dict(box=box),
        "box + 2 points": dict(box=box, point_coords=pts[:2], point_labels=np.array([1, 0])),
    }


def _assert_same(tag, ref, got) -> None:
    (r_logits, r_iou, r_low), (o_logits, o_iou, o_low) = ref, got
    assert r_logits.shape == o_logits.shape and r_low.shape == o_low.shape, tag
    assert np.abs(r_low - o_low).max() <= LOGIT_ATOL, f"{tag}: low-res logits"
    assert np.abs(r_iou - o_iou).max() <= LOGIT_ATOL, f"{tag}: iou predictions"
    differ = (r_logits > 0) != (o_logits > 0)
    assert not (differ & (np.abs(r_logits) > LOGIT_ATOL)).any(), f"{tag}: masks differ away from the threshold"


def test_manifest_and_files(vit_t_export) -> None:
    _, out, manifest = vit_t_export
    on_disk = json.loads((out / MANIFEST_NAME).read_text())
    assert on_disk == manifest
    assert manifest["model_type"] == "vit_t" and manifest["opset"] == 17 and manifest["image_size"] == 1024
    assert manifest["pixel_mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert set(manifest["files"]) == {"encoder", "decoder", "encoder_int8", "decoder_int8"}
    for entry in manifest["files"].values():
        path = out / entry["path"]
        assert sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
        onnx.checker.check_model(str(path))
    files = manifest["files"]
    assert files["encoder_int8"]["bytes"] < 0.6 * files["encoder"]["bytes"]
    assert files["decoder_int8"]["bytes"] < 0.6 * files["decoder"]["bytes"]
    dec = onnx.load(str(out / files["decoder"]["path"]))
    assert [i.name for i in dec.graph.input] == [
        "image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"
    ]
    assert [o.name for o in dec.graph.output] == ["masks", "iou_predictions", "low_res_masks"]
    assert not list(out.glob(".export-*")), "the staging folder is removed"


def test_ort_matches_pytorch(predictors, image) -> None:
    ours, ort = predictors
    ref, got = ours.get_image_embedding(), ort.get_image_embedding()
    assert got.shape == (1, 256, 64, 64)
    assert (ref - got).abs().max() <= EMB_RTOL * ref.abs().max()
    for tag, prompt in _prompts(*image.shape[:2]).items():
        for multimask in (True, False):
            r = ours.predict(**prompt, multimask_output=multimask, return_logits=True)
            o = ort.predict(**prompt, multimask_output=multimask, return_logits=True)
            _assert_same(f"{tag}/multimask={multimask}", r, o)
        best = r[2][np.argmax(r[1])][None]
        r = ours.predict(**prompt, mask_input=best, multimask_output=False, return_logits=True)
        o = ort.predict(**prompt, mask_input=best, multimask_output=False, return_logits=True)
        _assert_same(f"{tag}/mask_input", r, o)
    masks, scores, low = ort.predict(point_coords=[[100, 80]], point_labels=[1])
    assert masks.dtype == bool and masks.shape == (3, *image.shape[:2]) and scores.shape == (3,)


def test_ort_batched_and_embedding_reuse(predictors, image) -> None:
    """predict_torch with several boxes in one pass, and set_embedding, as with SamPredictor."""
    ours, ort = predictors
    boxes = np.array([[10, 20, 200, 150], [100, 50, 360, 230], [0, 0, 369, 239]], dtype=float)
    t_boxes = torch.as_tensor(ort.transform.apply_boxes(boxes, image.shape[:2]), dtype=torch.float)
    r = ours.predict_torch(None, None, boxes=t_boxes, multimask_output=False, return_logits=True)
    o = ort.predict_torch(None, None, boxes=t_boxes, multimask_output=False, return_logits=True)
    assert o[0].shape == (3, 1, *image.shape[:2])
    _assert_same("3 boxes", [t.numpy() for t in r], [t.numpy() for t in o])

    other = OnnxSamPredictor(ort.model_dir)
    other.set_embedding(ort.get_image_embedding(), image.shape[:2])
    prompt = dict(point_coords=[[50, 60]], point_labels=[1])
    assert np.array_equal(other.predict(**prompt)[2], ort.predict(**prompt)[2])
    with pytest.raises(ValueError, match="features"):
        other.set_embedding(torch.zeros(1, 256, 32, 32), image.shape[:2])
    with pytest.raises(ValueError, match="point_labels"):
        ort.predict(point_coords=[[1, 2]], point_labels=[3])


def test_exported_decoder_any_prompt(vit_t_export, predictors) -> None:
    """The raw decoder graph: 1, 2 and 5 points, with and without a box and a mask input."""
    sam, out, manifest = vit_t_export
    session = make_session(out / manifest["files"]["decoder"]["path"])
    graph = DecoderGraph(sam).eval()
    emb = predictors[0].get_image_embedding().numpy()
    rng = np.random.default_rng(2)
    orig = np.array([480.0, 740.0], np.float32)
    for n in (1, 2, 5):
        for with_box in (False, True):
            for with_mask in (False, True):
                coords = rng.uniform(0, 660, (1, n, 2)).astype(np.float32)
                labels = rng.integers(0, 2, (1, n)).astype(np.float32)
                if with_box:
                    coords = np.concatenate([coords, [[[50, 60], [500, 400]]]], axis=1).astype(np.float32)
                    labels = np.concatenate([labels, [[2, 3]]], axis=1).astype(np.float32)
                else:
                    coords = np.concatenate([coords, np.zeros((1, 1, 2), np.float32)], axis=1)
                    labels = np.concatenate([labels, -np.ones((1, 1), np.float32)], axis=1)
                feeds = {
                    "image_embeddings": emb,
                    "point_coords": coords,
                    "point_labels": labels,
                    "mask_input": rng.normal(0, 3, (1, 1, 256, 256)).astype(np.float32),
                    "has_mask_input": np.array([float(with_mask)], np.float32),
                    "orig_im_size": orig,
                }
                masks, iou, low = session.run(None, feeds)
                assert masks.shape == (1, 4, 480, 740) and iou.shape == (1, 4) and low.shape == (1, 4, 256, 256)
                with torch.no_grad():
                    ref = graph(*(torch.from_numpy(np.asarray(v)) for v in feeds.values()))
                tag = f"{n} points, box={with_box}, mask={with_mask}"
                _assert_same(tag, (ref[0].numpy(), ref[1].numpy(), ref[2].numpy()), (masks, iou, low))


def test_int8_round_trip(vit_t_export, predictors, image) -> None:
    _, out, manifest = vit_t_export
    fp32 = predictors[1]
    int8 = OnnxSamPredictor(out, precision="int8")
    int8.set_image(image)
    ref, got = fp32.get_image_embedding(), int8.get_image_embedding()
    err = ((ref - got).abs().max() / ref.abs().max()).item()
    assert 0 < err < 0.25, f"int8 embedding relative error {err}"
    masks, scores, low = int8.predict(point_coords=[[150, 100]], point_labels=[1], multimask_output=False)
    assert masks.shape == (1, *image.shape[:2]) and np.isfinite(low).all()
    checks = manifest["checks"]
    assert checks["encoder_int8"]["embedding_max_abs_diff"] > checks["encoder"]["embedding_max_abs_diff"]


def test_vit_b_decoder_export(tmp_path) -> None:
    """A decoder-only export of ViT-B: ORT from a given embedding equals SamPredictor."""
    sam = _model("vit_b", 1)
    manifest = export_onnx(sam, tmp_path, parts=("decoder",), progress=False)
    assert set(manifest["files"]) == {"decoder"} and manifest["model_type"] == "vit_b"
    ort = OnnxSamPredictor(tmp_path)
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(3))
    ours = SamPredictor(sam)
    for p in (ours, ort):
        p.set_embedding(emb, (300, 500))
    for tag, prompt in _prompts(300, 500).items():
        r = ours.predict(**prompt, return_logits=True)
        o = ort.predict(**prompt, return_logits=True)
        _assert_same(tag, r, o)
    with pytest.raises(ExportError, match="no image encoder"):
        ort.set_image(np.zeros((10, 10, 3), np.uint8))


def test_broken_and_foreign_files(vit_t_export, tmp_path) -> None:
    _, out, manifest = vit_t_export
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not a protobuf at all" * 50)
    with pytest.raises(ExportError, match="cannot load .*garbage.onnx.* as an ONNX model"):
        make_session(garbage)

    # A folder whose decoder file was truncated: the checksum catches it.
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    dec = broken / manifest["files"]["decoder"]["path"]
    dec.write_bytes(dec.read_bytes()[:1000])
    with pytest.raises(ExportError, match="SHA-256"):
        OnnxSamPredictor(broken)
    with pytest.raises(ExportError, match="cannot load"):
        OnnxSamPredictor(broken, verify=False)

    # A valid ONNX file of another model in the decoder's place.
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "foreign",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(dec))
    with pytest.raises(ExportError, match="is not a MobileSAM prompt decoder.*got inputs \\['a', 'b'\\]"):
        OnnxSamPredictor(broken, verify=False)

    with pytest.raises(FileNotFoundError, match="mobilesam export"):
        OnnxSamPredictor(tmp_path)
    fp32_only = _subset(out, tmp_path / "fp32_only", ["encoder", "decoder"])
    with pytest.raises(ExportError, match="no 'encoder_int8'"):
        OnnxSamPredictor(fp32_only, precision="int8")
    with pytest.raises(ExportError, match="no 'decoder_int8'"):
        OnnxSamPredictor(fp32_only, decoder_precision="int8")
    with pytest.raises(ValueError, match="precision"):
        OnnxSamPredictor(fp32_only, precision="fp16")


def _subset(out, folder, keys):
    """A copy of the export folder that lists (and holds) only ``keys``."""
    folder.mkdir()
    m = json.loads((out / MANIFEST_NAME).read_text())
    m["files"] = {k: m["files"][k] for k in keys}
    for entry in m["files"].values():
        shutil.copy(out / entry["path"], folder)
    (folder / MANIFEST_NAME).write_text(json.dumps(m))
    return folder


def test_without_onnxruntime(monkeypatch, vit_t_export) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ImportError, match='pip install "mobilesam\\[onnx\\]"'):
        import_onnxruntime()
    with pytest.raises(ImportError, match='pip install "mobilesam\\[onnx\\]"'):
        OnnxSamPredictor(vit_t_export[1])


def test_cli_export_decoder(tiny_checkpoint, tmp_path, capsys) -> None:
    from mobilesam.cli import main

    out = tmp_path / "cli"
    assert main(["export", "--model", str(tiny_checkpoint), "--format", "onnx", "--parts", "decoder", "--out", str(out),
                 "--no-check"]) == 0
    printed = capsys.readouterr().out
    assert "vit_t_decoder.onnx" in printed and "MB" in printed
    assert json.loads((out / MANIFEST_NAME).read_text())["source"]["checkpoint"] == tiny_checkpoint.name
    assert main(["export", "--model", str(tiny_checkpoint), "--parts", "neck", "--out", str(out)]) == 2
    assert "--parts" in capsys.readouterr().err


def test_high_level_sam_on_an_exported_folder(vit_t_export, image) -> None:
    """``SAM(DIR)`` runs the exported files on ONNX Runtime and gives the same masks as ``SAM(sam)``."""
    from mobilesam import SAM

    sam, out, _ = vit_t_export
    bgr = np.ascontiguousarray(image[..., ::-1])
    ort, ref = SAM(out), SAM(sam)
    assert ort.backend == "onnxruntime" and ort.model is None and ort.model_type == "vit_t"
    got = ort.predict(bgr, points=[[60, 40], [200, 120]], labels=[1, 1], verbose=False)[0]
    want = ref.predict(bgr, points=[[60, 40], [200, 120]], labels=[1, 1], verbose=False)[0]
    assert got.masks.data.shape == want.masks.data.shape == (2, 240, 370)
    assert (got.masks.data != want.masks.data).float().mean() < 1e-3
    with pytest.raises(ValueError, match="info\\(\\) needs a PyTorch checkpoint"):
        ort.info(verbose=False)
    with pytest.raises(ValueError, match="backend: expected one of"):
        SAM(sam, backend="tensorrt")


def test_export_format_registry_is_the_one_dispatch(tiny_checkpoint, tmp_path, capsys) -> None:
    """A format registered from outside runs through the CLI, ``SAM.export`` and ``export_model``; an
    option it does not take is refused by name, not ignored."""
    from mobilesam import SAM
    from mobilesam.cli import main
    from mobilesam.export import available_export_formats, export_model, register_export_format, unregister_export_format

    calls = []

    def fake(model, out, *, check=True, progress=True, level=1):
        calls.append((type(model).__name__, str(out), check, level))
        return {"model_type": "vit_t", "files": {"encoder": {"path": "enc.bin", "bytes": 1000, "precision": "fp32"}}}

    register_export_format("fake", fake, options=("level",), folder_suffix="fake_dir")
    try:
        assert "fake" in available_export_formats() and available_export_formats()[0] == "onnx"
        with pytest.raises(ValueError, match="already registered"):
            register_export_format("fake", fake)
        assert main(["export", "--model", str(tiny_checkpoint), "--format", "fake", "--out", str(tmp_path / "a"),
                     "--no-check"]) == 0
        assert calls[-1] == ("str", str(tmp_path / "a"), False, 1) and "enc.bin" in capsys.readouterr().out
        assert main(["export", "--model", str(tiny_checkpoint), "--format", "fake", "--opset", "18"]) == 2
        assert "--opset: not an option of --format fake" in capsys.readouterr().err
        with pytest.raises(ValueError, match="quantize: not an option of the 'fake' export format \\(it takes: level\\)"):
            export_model(str(tiny_checkpoint), tmp_path / "b", "fake", quantize="int8")
        out = SAM(str(tiny_checkpoint)).export(format="fake", out=tmp_path / "c", level=3)
        assert out == tmp_path / "c" and calls[-1] == ("Sam", str(tmp_path / "c"), True, 3)
    finally:
        unregister_export_format("fake")
    with pytest.raises(ValueError, match="format: expected one of \\['onnx'"):
        export_model(str(tiny_checkpoint), tmp_path / "d", "fake")
