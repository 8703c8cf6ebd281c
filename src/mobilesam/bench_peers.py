"""The baselines of ``mobilesam benchmark --peers``: the *official* MobileSAM / SAM graph exported the plain
way a user would, run on ONNX Runtime and OpenVINO with their default settings.

"Plain" means: the official model built as its README does (``sam_model_registry[type](checkpoint=...)``),
the image encoder exported with ``torch.onnx.export(sam.image_encoder, example)`` (torch's default exporter;
the TorchScript one when the default fails, as a user would then do) and converted with
``ov.convert_model(sam.image_encoder, example_input=...)`` + ``ov.save_model`` (its defaults: weights stored
as fp16), the decoder with the official ``SamOnnxModel`` as the official ``scripts/export_onnx_model.py``
exports it (OpenVINO reads that ONNX file), sessions and compiled models with default options (OpenVINO then picks its own inference
precision: bf16 on CPUs that have it, which the report names), pre-processing by the official transform and
``Sam.preprocess`` in torch. Only ``peer:openvino-f32`` sets one option, ``INFERENCE_PRECISION_HINT=f32``,
to show plain OpenVINO at exact precision. Exports are made once per checkpoint into the cache.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "peer:"
PEERS = (f"{PREFIX}onnxruntime", f"{PREFIX}openvino", f"{PREFIX}openvino-f32")


def _official_sam(checkpoint: str) -> tuple[Any, Any]:
    """The official model of the checkpoint (built as its README does) and its package."""
    from .bench import official_model

    return official_model(checkpoint)


def _decoder_module(sam: Any, package: Any) -> Any:
    import importlib

    return importlib.import_module(f"{package.__name__}.utils.onnx").SamOnnxModel(sam, return_single_mask=False)


def ensure_peer_exports(checkpoint: str | os.PathLike) -> Path:
    """The plain exports of ``checkpoint``'s official model (made once, in ``$MOBILESAM_HOME/peers``)."""
    import torch

    from .export.manifest import sha256_file, write_json_atomic
    from .weights import cache_dir

    folder = cache_dir() / "peers" / sha256_file(checkpoint)[:16]
    info_path = folder / "peers.json"
    if info_path.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    print(f"exporting the official graph of {Path(checkpoint).name} the plain way into {folder} (once)",
          file=sys.stderr)
    sam, package = _official_sam(str(checkpoint))
    size = sam.image_encoder.img_size
    example = torch.randn(1, 3, size, size)
    info: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(sam.image_encoder, (example,), str(folder / "encoder.onnx"))
            info["encoder_exporter"] = "torch.onnx.export, default exporter"
        except Exception as e:  # noqa: BLE001 - a user would fall back to the TorchScript exporter
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(sam.image_encoder, (example,), str(folder / "encoder.onnx"), **legacy)
            info["encoder_exporter"] = f"torch.onnx.export(dynamo=False) (the default failed: {type(e).__name__})"
        # The decoder as the official scripts/export_onnx_model.py exports it (TorchScript exporter, opset 17).
        decoder = _decoder_module(sam, package)
        embed = sam.prompt_encoder.embed_dim
        grid = sam.prompt_encoder.image_embedding_size
        mask_size = [4 * x for x in grid]
        dummy = {
            "image_embeddings": torch.randn(1, embed, *grid, dtype=torch.float),
            "point_coords": torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
            "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
            "mask_input": torch.randn(1, 1, *mask_size, dtype=torch.float),
            "has_mask_input": torch.tensor([1], dtype=torch.float),
            "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
        }
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(
            decoder, tuple(dummy.values()), str(folder / "decoder.onnx"), **legacy, export_params=True, verbose=False,
            opset_version=17, do_constant_folding=True, input_names=list(dummy),
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )
        try:
            import openvino as ov

            ov.save_model(ov.convert_model(sam.image_encoder, example_input=example), str(folder / "encoder.xml"))
            ov.save_model(ov.convert_model(str(folder / "decoder.onnx")), str(folder / "decoder.xml"))
            info["openvino"] = ("encoder: ov.convert_model(sam.image_encoder, example_input=...), decoder: "
                                "ov.convert_model('decoder.onnx'); ov.save_model defaults (weights stored as fp16)")
        except ImportError:
            info["openvino"] = None
    write_json_atomic(info_path, info)
    return folder


class PeerPredictor:
    """The official graph on a runtime, driven as a user's script would: official pre-processing in torch,
    the encoder and the official ONNX decoder on the runtime. Just what the benchmark's worker calls."""

    def __init__(self, checkpoint: str, runtime: str, folder: Path, threads: int | None = None) -> None:
        import torch

        import importlib

        self.sam, package = _official_sam(checkpoint)
        transforms = importlib.import_module(f"{package.__name__}.utils.transforms")
        self.transform = transforms.ResizeLongestSide(self.sam.image_encoder.img_size)
        self.runtime = runtime
        self.precision = "f32"
        if runtime == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            enc = ort.InferenceSession(str(folder / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
            dec = ort.InferenceSession(str(folder / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
            self._encode = lambda x: enc.run(None, {enc.get_inputs()[0].name: x})[0]
            self._decode = lambda feeds: dec.run(None, feeds)
        else:
            import openvino as ov

            core = ov.Core()
            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"} if runtime == "openvino-f32" else {}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            enc = core.compile_model(str(folder / "encoder.xml"), "CPU", config)
            dec = core.compile_model(str(folder / "decoder.xml"), "CPU", config)
            self.precision = str(enc.get_property("INFERENCE_PRECISION_HINT"))
            enc_req, dec_req = enc.create_infer_request(), dec.create_infer_request()
            self._encode = lambda x: enc_req.infer([x], share_outputs=False)[0]
            self._decode = lambda feeds: list(dec_req.infer(list(feeds.values()), share_outputs=False).values())
        self._torch = torch
        self.original_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray) -> None:
        torch = self._torch
        resized = self.transform.apply_image(image)
        x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float()
        with torch.no_grad():
            x = self.sam.preprocess(x).numpy()
        self.embedding = np.ascontiguousarray(self._encode(x), dtype=np.float32)
        self.original_size = image.shape[:2]

    def predict(self, point_coords: Any = None, point_labels: Any = None, box: Any = None,
                multimask_output: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coords, labels = [], []
        if point_coords is not None:
            coords.append(np.asarray(point_coords, np.float32).reshape(-1, 2))
            labels.append(np.asarray(point_labels, np.float32).reshape(-1))
        if box is not None:
            coords.append(np.asarray(box, np.float32).reshape(2, 2))
            labels.append(np.array([2, 3], np.float32))
        else:
            coords.append(np.zeros((1, 2), np.float32))
            labels.append(np.array([-1], np.float32))
        c = self.transform.apply_coords(np.concatenate(coords), self.original_size).astype(np.float32)[None]
        grid = self.sam.prompt_encoder.image_embedding_size
        feeds = {
            "image_embeddings": self.embedding,
            "point_coords": c,
            "point_labels": np.concatenate(labels)[None],
            "mask_input": np.zeros((1, 1, 4 * grid[0], 4 * grid[1]), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(self.original_size, np.float32),
        }
        masks, iou, low = self._decode(feeds)[:3]
        pick = slice(1, None) if multimask_output else slice(0, 1)
        return masks[0, pick] > 0.0, iou[0, pick], low[0, pick]


def describe(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "peers.json").read_text())
