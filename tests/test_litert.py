"""LiteRT export (.tflite with litert-torch, int8 with ai-edge-quantizer) and the litert backends, on a
small vit_t (encoder at 256 px, the real prompt decoder on its 16x16 grid). CI runs this file in its own
venv (.ci/run: litert-torch pins an older pydantic than the server's)."""

from __future__ import annotations

import numpy as np
import pytest
from edge_helpers import reference_predict, require, small_sam, small_sam2, small_sam2_predictor

require("litert_torch", env="MOBILESAM_LITERT_TESTS")

from mobilesam import SAM  # noqa: E402
from mobilesam.backends import create_predictor  # noqa: E402
from mobilesam.export import export_model  # noqa: E402
from mobilesam.export.edge_export import edge_file  # noqa: E402
from mobilesam.export.edge_graphs import edge_graphs  # noqa: E402
from mobilesam.masks import mask_iou  # noqa: E402

pytestmark = pytest.mark.slow  # four graphs through litert-torch and the LiteRT quantizer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    sam = small_sam(seed=2)
    out = tmp_path_factory.mktemp("tflite") / "small"
    return sam, out, export_model(sam, out, "tflite", quantize="int8", max_points=6, progress=False)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:150]
    img = np.stack([(xx * 1.3) % 255, (yy * 0.9) % 255, 128 + 60 * np.cos(yy / 7.0)], axis=-1)
    img[50:150, 30:110] = (40, 200, 60)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def test_manifest_and_signature_names(exported):
    sam, out, manifest = exported
    graphs = edge_graphs(sam, max_points=6)
    for key, entry in manifest["files"].items():
        part = graphs.parts[key.split("_")[0]]
        assert entry["inputs"] == part.inputs and entry["outputs"] == part.outputs
        edge_file(manifest, out, key)  # SHA-256 verified
    assert manifest["checks"]["decoder"]["low_res_max_abs_diff"] <= 1e-3
    assert manifest["checks"]["pipeline_int8"]["mask_iou_vs_fp32_mean"] >= 0.95
    assert manifest["files"]["decoder_int8"]["bytes"] < 0.5 * manifest["files"]["decoder"]["bytes"]
    from ai_edge_litert.interpreter import Interpreter

    names = Interpreter(model_path=str(out / manifest["files"]["decoder"]["path"])).get_signature_list()
    assert sorted(names["serving_default"]["inputs"]) == sorted(graphs.parts["decoder"].input_names)


def test_masks_equal_pytorch(exported, image):
    sam, out, _ = exported
    model = SAM(out)
    assert model.backend == "litert"
    lite = model.predictor
    lite.set_image(image)
    h, w = image.shape[:2]
    prompts = [dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1])),
               dict(box=np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.75]), point_coords=np.array([[w * 0.4, h * 0.5]]),
                    point_labels=np.array([0]))]
    for prompt in prompts:
        m_ref, s_ref, emb = reference_predict(sam, image, **prompt)
        m, s, _ = lite.predict(**prompt)
        assert mask_iou(m_ref, m).min() >= 0.999 and np.abs(s - s_ref).max() <= 1e-3
    assert lite.features.shape == emb.shape
    everything = model.predict(image, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                               image_format="RGB", verbose=False)[0]
    assert len(everything.masks) > 0
    int8 = create_predictor(out, "litert-int8")
    int8.set_image(image)
    iou = float(mask_iou(reference_predict(sam, image, False, **prompts[1])[0],
                         int8.predict(**prompts[1], multimask_output=False)[0])[0])
    print(f"litert int8 vs torch fp32 mask IoU: {iou:.4f}")
    assert iou >= 0.9


def test_sam2_masks_equal_pytorch(tmp_path, image):
    """A SAM 2.1 export through litert-torch (fp32: the int8 recipe is MobileSAM's, tested above): the litert
    backend gives the torch backend's features, scores and masks."""
    sam = small_sam2(seed=1)
    manifest = export_model(sam, tmp_path / "sam2", "tflite", max_points=6, progress=False)
    assert manifest["family"] == "sam2" and manifest["checks"]["decoder"]["low_res_max_abs_diff"] <= 1e-3
    ref = small_sam2_predictor(sam)
    lite = create_predictor(tmp_path / "sam2", "litert")
    assert type(lite).__name__ == "LiteRtSam2Predictor"
    ref.set_image(image)
    lite.set_image(image)
    for name, t in ref.get_features().tensors.items():
        assert float((lite.get_features().tensors[name] - t).abs().max()) <= 1e-4 * float(t.abs().max()), name
    h, w = image.shape[:2]
    for prompt in (dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1])),
                   dict(box=np.array([w * 0.2, h * 0.2, w * 0.8, h * 0.75]), point_coords=np.array([[w * 0.4, h * 0.5]]),
                        point_labels=np.array([0]))):
        m_ref, s_ref, _ = ref.predict(**prompt)
        m, s, _ = lite.predict(**prompt)
        assert mask_iou(m_ref, m).min() >= 0.999 and np.abs(s - s_ref).max() <= 1e-3
