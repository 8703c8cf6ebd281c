"""Core ML export (.mlpackage): produced and validated as far as Linux allows (coremltools loads the
package back; its spec has the manifest's inputs, shapes, types and outputs); on macOS it also runs."""

from __future__ import annotations

import sys

import pytest
from edge_helpers import require, small_sam, small_sam2

require("coremltools", env="MOBILESAM_COREML_TESTS")

from mobilesam.export import ExportError, export_model  # noqa: E402
from mobilesam.export.coreml_export import describe_spec, validate  # noqa: E402
from mobilesam.export.edge_export import edge_file  # noqa: E402
from mobilesam.export.edge_graphs import edge_graphs  # noqa: E402

pytestmark = pytest.mark.slow  # four conversions through coremltools' pass pipelines


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    sam = small_sam(seed=1)
    out = tmp_path_factory.mktemp("coreml") / "small"
    return sam, out, export_model(sam, out, "coreml", quantize="fp16", max_points=4, progress=False)


def test_packages_validated(exported):
    sam, out, manifest = exported
    assert set(manifest["files"]) == {"encoder", "decoder", "encoder_fp16", "decoder_fp16"}
    graphs = edge_graphs(sam, max_points=4)
    for key in manifest["files"]:
        part = graphs.parts[key.split("_")[0]]
        path = edge_file(manifest, out, key)  # a folder, its files' SHA-256 verified
        assert path.is_dir() and path.suffix == ".mlpackage"
        spec = describe_spec(path)
        assert {n: v["shape"] for n, v in spec["inputs"].items()} == {n: v["shape"] for n, v in part.inputs.items()}
        assert list(spec["outputs"]) == part.output_names and spec["operations"] > 50
        if sys.platform != "darwin":
            assert "predictions need macOS" in manifest["checks"][key]["validated"]
    assert "coremltools" in manifest["versions"]


def test_validation_can_fail(exported):
    sam, out, manifest = exported
    other = edge_graphs(sam, max_points=5).parts["decoder"]  # 5 point slots, not 4
    with pytest.raises(ExportError, match="expected float32 inputs"):
        validate(out / manifest["files"]["decoder"]["path"], other)


def test_sam2_packages_validated(tmp_path):
    """SAM 2.1's encoder (three feature maps) and slot decoder (object scores too) convert, and their specs
    have the manifest's tensors."""
    sam = small_sam2(seed=1)
    manifest = export_model(sam, tmp_path / "sam2", "coreml", max_points=4, progress=False)
    graphs = edge_graphs(sam, max_points=4)
    assert manifest["family"] == "sam2" and set(manifest["files"]) == {"encoder", "decoder"}
    for key, entry in manifest["files"].items():
        part = graphs.parts[key]
        spec = describe_spec(edge_file(manifest, tmp_path / "sam2", key))
        assert {n: v["shape"] for n, v in spec["inputs"].items()} == {n: v["shape"] for n, v in part.inputs.items()}
        assert list(spec["outputs"]) == part.output_names and entry["outputs"] == part.outputs
