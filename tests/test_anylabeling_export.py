"""``mobilesam export --format onnx --layout anylabeling``: the files samexporter and X-AnyLabeling load, run the
way their inference code runs them (``SegmentAnythingONNX`` of each: encoder input ``input_image`` H x W x 3
RGB float, official decoder inputs with a padding point, masks[0][0]); with their own code when installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")

from mobilesam import SAM  # noqa: E402
from mobilesam.export import export_model  # noqa: E402
from mobilesam.export.graphs import EncoderGraph  # noqa: E402
from mobilesam.formats.data_yaml import parse_data_yaml  # noqa: E402


@pytest.fixture(scope="module")
def folder(vit_t_pair, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("anylabeling")
    export_model(vit_t_pair[1], out, "onnx", layout="anylabeling", check=False, progress=False)
    return out


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """A 300 x 400 RGB picture with a bright square: an object to click on."""
    rng = np.random.default_rng(0)
    img = rng.integers(40, 90, (300, 400, 3), dtype=np.uint8)
    img[80:220, 120:280] = (230, 200, 40)
    return img


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _their_encode(session, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """samexporter's encode(): PIL bilinear resize to longest side 1024, HWC float32, the first input's name."""
    h, w = rgb.shape[:2]
    s = 1024 / max(h, w)
    size = (int(h * s + 0.5), int(w * s + 0.5))
    resized = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR)).astype(np.float32)
    return session.run(None, {session.get_inputs()[0].name: resized})[0], size


def test_files_config_and_interface(folder) -> None:
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["anylabeling_config.yaml", "manifest.json", "vit_t.decoder.onnx", "vit_t.encoder.onnx"]
    config = parse_data_yaml((folder / "anylabeling_config.yaml").read_text())
    assert config["type"] == "segment_anything" and config["input_size"] == 1024
    assert (folder / config["encoder_model_path"]).is_file() and (folder / config["decoder_model_path"]).is_file()
    enc = _session(folder / "vit_t.encoder.onnx")
    (inp,), (out,) = enc.get_inputs(), enc.get_outputs()
    assert (inp.name, len(inp.shape), inp.shape[2], out.name) == ("input_image", 3, 3, "image_embeddings")
    dec = _session(folder / "vit_t.decoder.onnx")
    assert [i.name for i in dec.get_inputs()] == ["image_embeddings", "point_coords", "point_labels", "mask_input",
                                                  "has_mask_input", "orig_im_size"]


@pytest.mark.slow
def test_runs_as_samexporter_and_x_anylabeling_run_it(folder, vit_t_pair, picture) -> None:
    enc, dec = _session(folder / "vit_t.encoder.onnx"), _session(folder / "vit_t.decoder.onnx")
    embedding, size = _their_encode(enc, picture)
    # The embedding equals PyTorch's encoder on the same resized image.
    resized = np.asarray(Image.fromarray(picture).resize((size[1], size[0]), Image.BILINEAR)).astype(np.float32)
    with torch.no_grad():
        ref = EncoderGraph(vit_t_pair[1])(torch.from_numpy(resized.transpose(2, 0, 1).copy())[None]).numpy()
    assert np.abs(embedding - ref).max() <= 1e-4 * np.abs(ref).max()
    # Their decoder call: one click plus the padding point, coords in the resized frame, single mask out.
    click = np.array([[200.0, 150.0]])
    coords = np.concatenate([click, [[0.0, 0.0]]])[None] * (size[1] / 400, size[0] / 300)
    feeds = {"image_embeddings": embedding, "point_coords": coords.astype(np.float32),
             "point_labels": np.array([[1, -1]], np.float32), "mask_input": np.zeros((1, 1, 256, 256), np.float32),
             "has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array([300, 400], np.float32)}
    masks, scores, _ = dec.run(None, feeds)
    assert masks.shape == (1, 1, 300, 400) and scores.shape == (1, 1)
    # The same folder through mobilesam's own ONNX backend gives the same mask (best of the three outputs).
    r = SAM(folder).predict(picture, points=[200, 150], multimask_output=True, image_format="RGB", verbose=False)[0]
    best = int(np.argmax(r.boxes.conf.numpy()))
    agree = (masks[0, 0] > 0) == r.masks.data[best].numpy()
    assert agree.mean() > 0.999


def _load(module_path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_their_own_code_when_installed(folder, picture) -> None:
    sx = pytest.importorskip("samexporter.sam_onnx")
    model = sx.SegmentAnythingONNX(str(folder / "vit_t.encoder.onnx"), str(folder / "vit_t.decoder.onnx"))
    emb = model.encode(np.ascontiguousarray(picture[..., ::-1]))  # samexporter takes BGR
    masks = model.predict_masks(emb, [{"type": "point", "data": [200, 150], "label": 1}])
    assert masks.shape[-2:] == (300, 400) and (masks[0, 0] > 0).any()
    xa = importlib.util.find_spec("anylabeling")
    if xa is not None:  # X-AnyLabeling's SegmentAnythingONNX (its module needs only cv2 and onnxruntime)
        path = Path(xa.submodule_search_locations[0]) / "services" / "auto_labeling" / "sam_onnx.py"
        ax = _load(path, "xanylabeling_sam_onnx").SegmentAnythingONNX(
            str(folder / "vit_t.encoder.onnx"), str(folder / "vit_t.decoder.onnx"))
        emb = ax.encode(picture)  # X-AnyLabeling passes RGB
        masks = ax.predict_masks(emb, [{"type": "point", "data": [200, 150], "label": 1}])
        assert masks.shape[-2:] == (300, 400) and (masks[0][0] > 0).any()


def test_cli_layout_option(tiny_checkpoint, tmp_path) -> None:
    from mobilesam.cli import build_parser

    args = build_parser().parse_args(["export", "--model", str(tiny_checkpoint), "--layout", "anylabeling"])
    assert args.layout == "anylabeling"
    with pytest.raises(ValueError, match=r"layout: expected one of \['mobilesam', 'anylabeling'\]"):
        export_model(str(tiny_checkpoint), tmp_path / "e", "onnx", layout="cvat", parts=("decoder",), check=False,
                     progress=False)
