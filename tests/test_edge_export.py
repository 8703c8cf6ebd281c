"""The edge graphs (fixed point slots), the shared export driver, the registry entries and the README's
"Ship it to a phone" tensors; no edge runtime needed (those are in test_executorch, test_litert,
test_coreml)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from edge_helpers import small_sam, small_sam2

from mobilesam.export import ExportError, available_export_formats, export_model
from mobilesam.export.edge_export import EdgeRuntime, export_edge, read_edge_manifest
from mobilesam.export.edge_graphs import LABEL_PAD, LABEL_UNUSED, SlotDecoderGraph, edge_graphs
from mobilesam.export.graphs import DecoderGraph
from mobilesam.export.sam2_graphs import Sam2DecoderGraph, Sam2EncoderGraph, Sam2SlotDecoderGraph
from mobilesam.export.registry import backend_for_export
from mobilesam.modeling import build_model
from mobilesam.modeling.configs import PIXEL_MEAN, PIXEL_STD

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def sam():
    return small_sam(seed=3)


@pytest.fixture(scope="module")
def sam2():
    return small_sam2(seed=3)


def _slots(points, labels, max_points, rng, unused=LABEL_UNUSED):
    coords = torch.from_numpy(rng.uniform(0, 256, (1, max_points, 2)).astype(np.float32))
    lab = torch.full((1, max_points), float(unused))
    coords[0, : len(labels)] = torch.tensor(points, dtype=torch.float32)
    lab[0, : len(labels)] = torch.tensor(labels, dtype=torch.float32)
    return coords, lab


@pytest.mark.parametrize("points,labels,with_mask", [
    ([[100.0, 80.0], [0.0, 0.0]], [1, LABEL_PAD], False),
    ([[30.0, 40.0], [200.0, 180.0]], [2, 3], False),
    ([[10.0, 20.0], [120.0, 30.0], [50.0, 200.0], [0.0, 0.0]], [1, 0, 1, LABEL_PAD], True),
])
def test_unused_slots_change_nothing(sam, points, labels, with_mask):
    """The slot decoder equals the official-interface decoder on the prompt without its unused slots."""
    rng = np.random.default_rng(0)
    emb = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.randn(1, 1, 64, 64) if with_mask else torch.zeros(1, 1, 64, 64)
    has = torch.ones(1) if with_mask else torch.zeros(1)
    ref = DecoderGraph(sam).eval()
    with torch.no_grad():
        _, iou_ref, low_ref = ref(emb, torch.tensor([points]), torch.tensor([labels], dtype=torch.float32), mask,
                                  has, torch.tensor([256.0, 256.0]))
        slot = SlotDecoderGraph(sam).eval()
        iou, low = slot(emb, *_slots(points, labels, 10, rng), mask, has)
        # The control: the same slots attended (labelled as SAM's padding point) give other masks.
        _, low_attended = slot(emb, *_slots(points, labels, 10, rng, unused=LABEL_PAD), mask, has)
    assert float((low - low_ref).abs().max()) < 1e-4
    assert float((iou - iou_ref).abs().max()) < 1e-4
    assert float((low_attended - low_ref).abs().max()) > 1e-3


@pytest.mark.parametrize("points,labels,with_mask", [
    ([[100.0, 80.0], [0.0, 0.0]], [1, LABEL_PAD], False),
    ([[30.0, 40.0], [200.0, 180.0], [0.0, 0.0]], [2, 3, LABEL_PAD], False),
    ([[30.0, 40.0], [200.0, 180.0], [120.0, 30.0], [50.0, 200.0], [0.0, 0.0]], [2, 3, 1, 0, LABEL_PAD], True),
])
def test_sam2_unused_slots_change_nothing(sam2, points, labels, with_mask):
    """SAM 2's slot decoder equals its ONNX decoder graph (the reference interface, checked against SAM 2's
    predictor in test_sam2) on the prompt without its unused slots, object scores included."""
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(1)
    features = [torch.randn(1, 256, 16, 16, generator=g), torch.randn(1, 32, 64, 64, generator=g),
                torch.randn(1, 64, 32, 32, generator=g)]
    mask = torch.randn(1, 1, 64, 64) if with_mask else torch.zeros(1, 1, 64, 64)
    has = torch.ones(1) if with_mask else torch.zeros(1)
    with torch.no_grad():
        low_ref, iou_ref, obj_ref = Sam2DecoderGraph(sam2).eval()(
            *features, torch.tensor([points]), torch.tensor([labels], dtype=torch.float32), mask, has)
        slot = Sam2SlotDecoderGraph(sam2).eval()
        iou, low, obj = slot(*features, *_slots(points, labels, 10, rng), mask, has)
        _, low_attended, _ = slot(*features, *_slots(points, labels, 10, rng, unused=LABEL_PAD), mask, has)
    assert float((low - low_ref).abs().max()) < 1e-4
    assert float((iou - iou_ref).abs().max()) < 1e-4 and float((obj - obj_ref).abs().max()) < 1e-4
    assert float((low_attended - low_ref).abs().max()) > 1e-3


def test_sam2_fixed_size_encoder_equals_the_reference(sam2):
    """The edge encoder (Hiera's bicubic position resize as two matrices) gives Sam2EncoderGraph's features."""
    graphs = edge_graphs(sam2)
    enc = graphs.parts["encoder"].module
    ref = Sam2EncoderGraph(sam2, graphs.preprocessing["pixel_mean"], graphs.preprocessing["pixel_std"]).eval()
    with torch.no_grad():
        for image in (graphs.parts["encoder"].example_inputs[0], *graphs.check_images):
            for got, want in zip(enc(image), ref(image)):
                assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
        assert enc.pos_rows.numel() + enc.pos_cols.numel() < 1000  # matrices, not the resized embedding


def test_sam2_graph_descriptions(sam2):
    graphs = edge_graphs(sam2, max_points=6)
    enc, dec = graphs.parts["encoder"], graphs.parts["decoder"]
    assert graphs.family == "sam2" and graphs.feature_names == ["image_embed", "high_res_feats_0", "high_res_feats_1"]
    assert dec.input_names[:3] == graphs.feature_names  # the encoder's outputs feed the decoder, in order
    assert graphs.preprocessing["resize"] == "square" and graphs.prompt["label_pad"] == LABEL_PAD
    with torch.no_grad():
        assert [list(t.shape) for t in enc.module(*enc.example_inputs)] == [v["shape"] for v in enc.outputs.values()]
        assert [list(t.shape) for t in dec.module(*dec.example_inputs)] == [v["shape"] for v in dec.outputs.values()]
        for image in (enc.example_inputs[0], *graphs.check_images):
            assert list(image.shape) == enc.inputs["image"]["shape"] and 0 <= float(image.min()) < float(image.max()) <= 255


def test_graph_descriptions(sam):
    graphs = edge_graphs(sam, max_points=6)
    enc, dec = graphs.parts["encoder"], graphs.parts["decoder"]
    assert enc.inputs["image"]["shape"] == [1, 3, 256, 256]
    assert dec.inputs["point_coords"]["shape"] == [1, 6, 2]
    assert dec.outputs["low_res_masks"]["shape"] == [1, 4, 64, 64]
    with torch.no_grad():  # the descriptions are the modules' real shapes
        assert list(enc.module(*enc.example_inputs).shape) == enc.outputs["image_embeddings"]["shape"]
        assert [list(t.shape) for t in dec.module(*dec.example_inputs)] == [v["shape"] for v in dec.outputs.values()]
    for bad in (1, 65, 3.0, True):
        with pytest.raises(ValueError, match="^max_points"):
            edge_graphs(sam, max_points=bad)


class _Fake:
    """An EdgeRuntime whose 'file' is a copy of the graph run by PyTorch, optionally perturbed."""

    def __init__(self, perturb: float = 0.0, broken: str | None = None) -> None:
        self.perturb = perturb
        self.broken = broken  # a file name suffix the runtime fails to prepare, as LiteRT did with ViT-B's int8

    def runtime(self) -> EdgeRuntime:
        def convert(part, path, precision):
            path.write_bytes(f"{part.input_names} {precision}".encode())

        def load(path, part):
            def run(inputs):
                if self.broken and path.name.endswith(self.broken):
                    raise RuntimeError("tflite/kernels/batch_matmul.cc:352 Node number 36 (BATCH_MATMUL) failed to prepare")
                with torch.no_grad():
                    out = part.module(*(torch.from_numpy(a) for a in inputs))
                out = out if isinstance(out, tuple) else (out,)
                return [o.numpy() + self.perturb for o in out]
            return run

        return EdgeRuntime("fake", "Fake", ".bin", ("int8",), convert, load, lambda: {"fake": "1"}, backend="")


def test_driver_checks_and_publishes(sam, tmp_path):
    manifest = export_edge(_Fake().runtime(), sam, tmp_path / "ok", quantize="int8", progress=False)
    assert set(manifest["files"]) == {"encoder", "decoder", "encoder_int8", "decoder_int8"}
    assert manifest["checks"]["decoder"]["low_res_max_abs_diff"] == 0.0
    assert manifest["checks"]["pipeline_int8"]["mask_iou_vs_fp32_min"] == 1.0
    folder, read = read_edge_manifest(tmp_path / "ok", "fake")
    assert read == manifest and sorted(p.name for p in folder.iterdir()) == sorted(
        [*(e["path"] for e in manifest["files"].values()), "manifest.json"])
    # A runtime whose outputs differ from PyTorch's is refused, and nothing is left behind.
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_edge(_Fake(perturb=0.01).runtime(), sam, tmp_path / "bad", progress=False)
    assert [p.name for p in (tmp_path / "bad").iterdir()] == []
    with pytest.raises(ValueError, match="^quantize"):
        export_edge(_Fake().runtime(), sam, tmp_path / "q", quantize="fp16", progress=False)
    # A file the runtime cannot run is named in an ExportError, not a traceback from inside the runtime.
    with pytest.raises(ExportError, match=r"the Fake encoder \(int8\) \(vit_t_encoder\.int8\.bin\) was written but does "
                                          r"not run in its runtime: RuntimeError: .*BATCH_MATMUL"):
        export_edge(_Fake(broken="encoder.int8.bin").runtime(), sam, tmp_path / "broken", quantize="int8",
                    progress=False)
    assert [p.name for p in (tmp_path / "broken").iterdir()] == []


def test_driver_exports_sam2(sam2, tmp_path):
    """The same driver for SAM 2: three encoder outputs checked, the features feed the decoder, the gate
    measures the int8 pair on every check image; a perturbed decoder is refused."""
    manifest = export_edge(_Fake().runtime(), sam2, tmp_path / "ok", quantize="int8", max_points=6, progress=False)
    assert manifest["family"] == "sam2" and "embedding_shape" not in manifest
    assert list(manifest["feature_layout"]) == ["image_embed", "high_res_feats_0", "high_res_feats_1"]
    assert {"embedding_max_abs_diff", "high_res_feats_0_max_abs_diff", "high_res_feats_1_max_abs_diff"} <= set(
        manifest["checks"]["encoder"])
    gate = manifest["checks"]["pipeline_int8"]
    # 4 prompt cases + a 4x4 click grid on the example input, a 4x4 grid on the second check image; 4 masks each.
    assert gate["images"] == 2 and gate["masks_compared"] == 4 * (4 + 16 + 16) and gate["mask_iou_vs_fp32_min"] == 1.0
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_edge(_Fake(perturb=0.01).runtime(), sam2, tmp_path / "bad", parts=("decoder",), progress=False)


def test_reduced_gate_refuses_a_pair_far_from_fp32(sam, tmp_path):
    """A reduced-precision encoder whose features are wrong is refused, naming the measured IoU, and nothing is
    written; --no-check keeps it with the measurement recorded."""
    fake = _Fake()
    runtime = fake.runtime()
    load = runtime.load

    def negated(path, part):
        run = load(path, part)
        return (lambda inputs: [-o for o in run(inputs)]) if path.name.endswith("encoder.int8.bin") else run

    bad = EdgeRuntime("fake", "Fake", ".bin", ("int8",), runtime.convert, negated, runtime.versions)
    with pytest.raises(ExportError, match=r"int8 Fake files give masks at IoU 0\.\d+ of fp32's on average .*"
                                          r"masks on 2 check images"):
        export_edge(bad, sam, tmp_path / "refused", quantize="int8", progress=False)
    assert [p.name for p in (tmp_path / "refused").iterdir()] == []
    kept = export_edge(bad, sam, tmp_path / "kept", quantize="int8", check=False, progress=False)
    assert kept["checks"]["pipeline_int8"]["mask_iou_vs_fp32_mean"] < 0.95


def test_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="mobilesam export"):
        read_edge_manifest(tmp_path, "executorch")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "mobilesam-onnx", "files": {"a": {}}}))
    with pytest.raises(ExportError, match="not a mobilesam executorch export"):
        read_edge_manifest(tmp_path, "executorch")
    assert backend_for_export(tmp_path) == "onnxruntime"
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "mobilesam-tflite", "files": {"a": {}}}))
    assert backend_for_export(tmp_path) == "litert"
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "mobilesam-coreml", "files": {"a": {}}}))
    with pytest.raises(ValueError, match="^model: .* is a coreml export, which no backend"):
        backend_for_export(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    assert backend_for_export(tmp_path) is None


def test_registry_entries(sam, tmp_path):
    assert {"executorch", "tflite", "coreml"} <= set(available_export_formats())
    with pytest.raises(ValueError, match="^opset: not an option of the 'executorch'"):
        export_model(sam, tmp_path, "executorch", opset=17)


def _readme_tensors(prefix: str = "") -> dict[str, dict[str, list]]:
    """An input/output table of the README's phone section (rows whose graph is ``prefix`` + encoder or
    decoder): graph -> tensor name -> shape."""
    text = README.read_text()
    section = text[text.index("## Ship it to a phone"):]
    section = section[: section.index("\n## ", 5)]
    rows = re.findall(rf"^\| {re.escape(prefix)}(encoder|decoder) \| (in|out) \| `(\w+)` \| `\[([\d, ]+)\]` \|",
                      section, re.M)
    table: dict[str, dict[str, list]] = {}
    for graph, _, name, shape in rows:
        table.setdefault(graph, {})[name] = [int(v) for v in shape.split(",")]
    return table


@pytest.mark.parametrize("model_type", ["vit_t", "vit_b"])
def test_readme_phone_section_matches_the_graphs(model_type):
    """The README's tensor table is what the exporters write into the manifest (inputs then outputs, in
    order) for the full-size models at the default number of point slots."""
    with torch.device("meta"):  # shapes only: no weights are allocated
        sam = build_model(model_type)
    for name, values in (("pixel_mean", PIXEL_MEAN), ("pixel_std", PIXEL_STD)):  # constants, read as numbers
        sam.register_buffer(name, torch.tensor(values).view(-1, 1, 1), persistent=False)
    graphs = edge_graphs(sam)
    table = _readme_tensors()
    for part in ("encoder", "decoder"):
        g = graphs.parts[part]
        want = {n: v["shape"] for n, v in {**g.inputs, **g.outputs}.items()}
        assert list(table[part].items()) == list(want.items()), part


@pytest.mark.parametrize("model_type", ["sam2_hiera_tiny", "sam2.1_hiera_large"])
def test_readme_sam2_table_matches_the_graphs(model_type):
    """The README's SAM 2 table is what the exporters write for the full-size models (every size alike)."""
    from mobilesam.modeling.sam2 import build_sam2

    with torch.device("meta"):
        sam = build_sam2(model_type)
    graphs = edge_graphs(sam)
    table = _readme_tensors("SAM 2 ")
    assert graphs.family == "sam2"
    for part in ("encoder", "decoder"):
        g = graphs.parts[part]
        want = {n: v["shape"] for n, v in {**g.inputs, **g.outputs}.items()}
        assert list(table[part].items()) == list(want.items()), part
