"""ExecuTorch export (.pte, XNNPACK) and the executorch backends, on a small vit_t (encoder at 256 px,
the real prompt decoder on its 16x16 grid): the files run in ExecuTorch's Python runtime and their masks
equal PyTorch's; int8 keeps its masks near fp32's."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from edge_helpers import reference_predict, require, small_sam, small_sam2, small_sam2_predictor

require("executorch", env="MOBILESAM_EXECUTORCH_TESTS")

from mobilesam import SAM  # noqa: E402
from mobilesam.backends import create_predictor  # noqa: E402
from mobilesam.export import ExportError, export_model  # noqa: E402
from mobilesam.export.edge_export import edge_file  # noqa: E402
from mobilesam.export.edge_graphs import edge_graphs  # noqa: E402
from mobilesam.masks import mask_iou  # noqa: E402

pytestmark = pytest.mark.slow  # four graphs lowered through XNNPACK: tens of seconds on 2 cores


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    sam = small_sam(seed=0)
    out = tmp_path_factory.mktemp("pte") / "small"
    manifest = export_model(sam, out, "executorch", quantize="int8", max_points=6, progress=False)
    return sam, out, manifest


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:180, 0:300]
    img = np.stack([(xx * 0.7) % 255, (yy * 1.1) % 255, 128 + 60 * np.sin(xx / 9.0)], axis=-1)
    img[40:130, 80:210] = (220, 40, 40)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def _prompts(h: int, w: int) -> list[dict]:
    return [
        dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1])),
        dict(point_coords=np.array([[w * 0.3, h * 0.3], [w * 0.8, h * 0.7]]), point_labels=np.array([1, 0])),
        dict(box=np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.75])),
        dict(box=np.array([w * 0.1, h * 0.1, w * 0.6, h * 0.9]), point_coords=np.array([[w * 0.4, h * 0.5]]),
             point_labels=np.array([1])),
    ]


def test_manifest_describes_verified_files(exported):
    sam, out, manifest = exported
    assert set(manifest["files"]) == {"encoder", "decoder", "encoder_int8"}  # int8: the encoder only
    graphs = edge_graphs(sam, max_points=6)
    for key, entry in manifest["files"].items():
        part = graphs.parts[key.split("_")[0]]
        assert entry["inputs"] == part.inputs and entry["outputs"] == part.outputs
        assert edge_file(manifest, out, key).stat().st_size == entry["bytes"]  # SHA-256 verified too
    assert {"torch", "executorch", "mobilesam"} <= set(manifest["versions"])
    checks = manifest["checks"]
    assert checks["encoder"]["embedding_max_abs_diff"] <= 1e-4 * checks["encoder"]["embedding_max_abs"]
    assert checks["decoder"]["low_res_max_abs_diff"] <= 1e-3
    assert checks["pipeline_int8"]["mask_iou_vs_fp32_mean"] >= 0.95
    # A changed file is refused by its checksum.
    bad = out.parent / "tampered"
    shutil.copytree(out, bad)
    path = bad / manifest["files"]["decoder"]["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="SHA-256"):
        create_predictor(bad, "executorch")


def test_masks_equal_pytorch(exported, image):
    sam, out, _ = exported
    et_pred = create_predictor(out, "executorch")
    et_pred.set_image(image)
    h, w = image.shape[:2]
    for prompt in _prompts(h, w):
        for multimask in (True, False):
            m_ref, s_ref, emb = reference_predict(sam, image, multimask, **prompt)
            m, s, _ = et_pred.predict(**prompt, multimask_output=multimask)
            assert m.shape == m_ref.shape
            assert mask_iou(m_ref, m).min() >= 0.999
            assert np.abs(s - s_ref).max() <= 1e-3
    assert float((emb - et_pred.features).abs().max()) <= 1e-4 * float(emb.abs().max())
    with pytest.raises(ValueError, match="^prompts: the exported decoder takes at most 6"):
        et_pred.predict(point_coords=np.full((6, 2), 10.0), point_labels=np.ones(6))


def test_exports_before_sam2_still_open(exported, image, tmp_path):
    """A folder written before SAM 2's edge exports (no "family", no "feature_layout" in its manifest) opens
    as a MobileSAM export and gives the same masks."""
    import json

    sam, out, manifest = exported
    old = tmp_path / "old"
    shutil.copytree(out, old)
    data = json.loads((old / "manifest.json").read_text())
    for key in ("family", "feature_layout"):
        del data[key]
    (old / "manifest.json").write_text(json.dumps(data))
    now, before = create_predictor(out, "executorch"), create_predictor(old, "executorch")
    for pred in (now, before):
        pred.set_image(image)
    prompt = _prompts(*image.shape[:2])[2]
    assert np.array_equal(now.predict(**prompt)[0], before.predict(**prompt)[0])


def test_sam_facade_and_segment_everything(exported, image):
    sam, out, _ = exported
    model = SAM(out)
    assert model.backend == "executorch"
    h, w = image.shape[:2]
    # (The facade's prompt path keeps 256x256 low-res logits, which this 256-px test model does not make;
    # the full-size exports run it in the benchmark. Its predictor is the one checked above.)
    model.predictor.set_image(image)
    got, _, _ = model.predictor.predict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]),
                                        multimask_output=False)
    ref, _, _ = reference_predict(sam, image, False, point_coords=np.array([[w * 0.5, h * 0.5]]),
                                  point_labels=np.array([1]))
    assert mask_iou(ref, got).min() >= 0.999
    everything = model.predict(image, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                               image_format="RGB", verbose=False)[0]
    assert len(everything.masks) > 0


def test_int8_backend(exported, image):
    sam, out, manifest = exported
    int8 = create_predictor(out, "executorch-int8")
    assert int8.backend == "executorch-int8"
    int8.set_image(image)
    h, w = image.shape[:2]
    ious = [float(mask_iou(reference_predict(sam, image, False, **p)[0], int8.predict(**p, multimask_output=False)[0])[0])
            for p in _prompts(h, w)]
    # The measured value on this random model (recorded by the export on its check image too).
    print(f"executorch int8 vs torch fp32 mask IoU: mean {np.mean(ious):.4f} min {np.min(ious):.4f}; export check "
          f"{manifest['checks']['pipeline_int8']}")
    assert np.mean(ious) >= 0.9


@pytest.fixture(scope="module")
def exported_sam2(tmp_path_factory):
    sam = small_sam2(seed=0)
    out = tmp_path_factory.mktemp("pte2") / "small"
    # fp32 only: the int8 encoder is the same PT2E step as MobileSAM's (tested above), 24 s more of lowering.
    manifest = export_model(sam, out, "executorch", max_points=6, progress=False)
    return sam, out, manifest


def test_sam2_masks_equal_pytorch(exported_sam2, image):
    """A SAM 2.1 export (Hiera encoder, three feature maps; SAM 2's slot order): the executorch backend gives
    the torch backend's features, logits, scores and masks, for clicks and boxes (mask inputs: the export's own
    check against PyTorch, and test_edge_export's slot-decoder test)."""
    from mobilesam.backends.executorch_predictor import ExecuTorchSamPredictor

    sam, out, manifest = exported_sam2
    assert manifest["family"] == "sam2" and set(manifest["files"]) == {"encoder", "decoder"}
    checks = manifest["checks"]
    assert checks["encoder"]["high_res_feats_0_max_abs_diff"] <= 1e-4 * checks["encoder"]["high_res_feats_0_max_abs"]
    ref = small_sam2_predictor(sam)
    pred = create_predictor(out, "executorch")
    assert type(pred).__name__ == "ExecuTorchSam2Predictor"
    with pytest.raises(ExportError, match="is a 'sam2' export, which ExecuTorchSamPredictor does not run"):
        ExecuTorchSamPredictor(out)  # the MobileSAM class, opened directly on a SAM 2 folder
    facade = SAM(out)  # (its prompt path wants 256x256 low-res logits: full size, in benchmarks/bench_edge.py)
    assert facade.backend == "executorch" and type(facade.predictor).__name__ == "ExecuTorchSam2Predictor"
    ref.set_image(image)
    pred.set_image(image)
    for name, t in ref.get_features().tensors.items():
        assert float((pred.get_features().tensors[name] - t).abs().max()) <= 1e-4 * float(t.abs().max()), name
    h, w = image.shape[:2]
    for prompt in _prompts(h, w):
        for multimask in (True, False):
            m_ref, s_ref, low_ref = ref.predict(**prompt, multimask_output=multimask)
            m, s, low = pred.predict(**prompt, multimask_output=multimask)
            assert m.shape == m_ref.shape and mask_iou(m_ref, m).min() >= 0.999
            assert np.abs(s - s_ref).max() <= 1e-3 and np.abs(low - low_ref).max() <= 1e-3
    with pytest.raises(ValueError, match="^prompts: the exported decoder takes at most 6"):
        pred.predict(point_coords=np.full((6, 2), 10.0), point_labels=np.ones(6))
