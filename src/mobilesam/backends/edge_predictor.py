"""What the ExecuTorch and LiteRT backends share: a predictor over the static-shape graphs that
``mobilesam export --format executorch`` / ``--format tflite`` write (see
:mod:`mobilesam.export.edge_graphs`), run by the runtime's desktop Python package, so an export can be
checked on the desktop, with the same ``Results`` API, before it ships.

It does what the app on the phone does (README, "Ship it to a phone"): resize with the family's rule (the
torch backend's code), pad to the square with the pixel mean, run the encoder; put the prompt into the
decoder's point slots (points, SAM's padding point when there is no box, the box corners, the rest
unused) and run it once per object; upscale the low-res logits outside the graph.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..export.edge_export import Runner, edge_file, file_key, read_edge_manifest
from ..export.edge_graphs import LABEL_UNUSED
from ..export.graphs import LABEL_BOX_BOTTOM_RIGHT, LABEL_BOX_TOP_LEFT, LABEL_PAD, pad_square
from ..export.manifest import ExportError
from ..transforms import ResizeLongestSide
from ..weights import weights_digest
from .base import ExportedPredictor
from .onnx_predictor import OnnxSamPredictor

logger = logging.getLogger("mobilesam")


class EdgeSamPredictor(ExportedPredictor):
    """Embeds an image once and predicts masks for prompts on it, with an edge runtime's Python package.

    Subclasses set ``runtime`` (the export format: "executorch", "tflite"), ``backend_name`` and
    ``precisions``, and write ``_make_runner(path, inputs, outputs, threads)``. ``model_dir`` is an export
    folder (or its ``manifest.json``); ``precision`` picks the encoder and decoder files ("fp32" or a
    reduced precision the export has); ``threads``: the runtime's threads (None: torch's thread count).
    """

    runtime = "?"
    backend_name = "?"
    precisions: tuple[str, ...] = ("fp32",)

    def __init__(
        self,
        model_dir: str | os.PathLike,
        precision: str = "fp32",
        threads: int | None = None,
        verify: bool = True,
        max_batch: int = 16,
    ) -> None:
        if precision not in self.precisions:
            raise ValueError(f"precision: expected one of {list(self.precisions)}, got {precision!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads: expected an int >= 1 or None (torch's thread count), got {threads!r}")
        folder, manifest = read_edge_manifest(model_dir, self.runtime)
        self.manifest, self.model_dir = manifest, folder
        self.precision = precision
        self.backend = self.backend_name if precision == "fp32" else f"{self.backend_name}-{precision}"
        self.model = None  # the official attribute; the graphs hold the weights
        self.model_type = manifest.get("model_type")
        self.img_size = int(manifest["image_size"])
        self.pixel_mean = manifest["pixel_mean"]
        self.embedding_shape = tuple(manifest["embedding_shape"])
        prompt = manifest["prompt"]
        self.max_points = int(prompt["max_points"])
        self.low_res_size = tuple(prompt["low_res_size"])
        self.threads = threads
        files = manifest["files"]
        self.encoder: Runner | None = None
        if file_key("encoder", precision) in files:  # a decoder-only export works from embeddings
            self.encoder = self._open("encoder", precision, verify)
        # A format may reduce the encoder only (ExecuTorch): its reduced precision pairs with the fp32 decoder.
        self.decoder = self._open("decoder", precision if file_key("decoder", precision) in files else "fp32", verify)
        super().__init__(ResizeLongestSide(self.img_size), float(manifest["mask_threshold"]), max_batch)

    def _open(self, part: str, precision: str, verify: bool) -> Runner:
        key = file_key(part, precision)
        path = edge_file(self.manifest, self.model_dir, key, verify)
        entry = self.manifest["files"][key]
        return self._make_runner(path, list(entry["inputs"]), list(entry["outputs"]), self.threads)

    def _make_runner(self, path: Path, inputs: list[str], outputs: list[str], threads: int | None) -> Runner:
        raise NotImplementedError

    @classmethod
    def _exporter(cls) -> Callable[..., dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    def _runtime_version(cls) -> str:
        raise NotImplementedError

    @classmethod
    def from_sam(cls, sam: torch.nn.Module, precision: str = "fp32", cache: str | os.PathLike | None = None,
                 **kwargs: Any) -> EdgeSamPredictor:
        """Export ``sam`` once into a cache folder keyed by its weights and the runtime's release (reused
        later: a full-size export takes minutes), then load it."""
        from ..build import detect_model_type

        if precision not in cls.precisions:
            raise ValueError(f"precision: expected one of {list(cls.precisions)}, got {precision!r}")
        if cache is None:
            from ..weights import cache_dir

            cache = cache_dir() / cls.runtime
        model_type = detect_model_type(sam.state_dict()) or "sam"
        folder = Path(cache).expanduser() / f"{model_type}-{weights_digest(sam)[:16]}-{cls._runtime_version()}"
        key = file_key("encoder", precision)
        try:
            _, manifest = read_edge_manifest(folder, cls.runtime)
            ready = key in manifest["files"]
        except (FileNotFoundError, ExportError):
            ready = False
        if not ready:
            logger.info("exporting the model to %s in %s (once; minutes for a full-size model)", cls.runtime, folder)
            cls._exporter()(sam, folder, quantize=None if precision == "fp32" else precision)
        return cls(folder, precision=precision, **kwargs)

    # --- image ---------------------------------------------------------------------------------------
    def _encode(self, transformed_image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.encoder is None:
            raise ExportError(f"{self.runtime} model: the export in '{self.model_dir}' has no image encoder; use "
                              "set_embedding(...) or re-export with the encoder")
        image = np.ascontiguousarray(transformed_image.detach().cpu().numpy(), dtype=np.float32)
        embedding = self.encoder([pad_square(image, self.img_size, self.pixel_mean)])[0]
        return {"image_embeddings": torch.from_numpy(embedding)}

    # One (1, 256, 64, 64) embedding, checked against the manifest's shape: the ONNX backend's own steps.
    _embedding_tensors = OnnxSamPredictor._embedding_tensors
    _check_features = OnnxSamPredictor._check_features

    # --- prompts -------------------------------------------------------------------------------------
    def prompt_slots(
        self, point_coords: np.ndarray | None, point_labels: np.ndarray | None, box: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One object's prompt in the decoder's slots: (1, P, 2) coordinates and (1, P) labels.

        Points (N, 2) and labels (N,) in the resized frame, box (4,) XYXY or None: the points, SAM's
        padding point when there is no box, the box corners, then unused slots.
        """
        coords = np.zeros((self.max_points, 2), np.float32)
        labels = np.full(self.max_points, LABEL_UNUSED, np.float32)
        rows: list[tuple[Any, float]] = []
        if point_coords is not None:
            rows += [(p, float(lab)) for p, lab in zip(point_coords, point_labels)]
            if box is None:
                rows.append(((0.0, 0.0), float(LABEL_PAD)))
        if box is not None:
            rows += [(box[:2], float(LABEL_BOX_TOP_LEFT)), (box[2:], float(LABEL_BOX_BOTTOM_RIGHT))]
        if len(rows) > self.max_points:
            raise ValueError(
                f"prompts: the exported decoder takes at most {self.max_points} point slots (a box takes 2, and "
                f"without a box SAM adds a padding point), got {len(rows)}; re-export with a larger --max-points")
        for i, (p, lab) in enumerate(rows):
            coords[i] = p
            labels[i] = lab
        return coords[None], labels[None]

    def decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder run per object (the graph takes one prompt set)."""
        features = self._require_image()
        embedding = features.embedding.numpy()
        batch = next((t.shape[0] for t in (point_coords, boxes, mask_input) if t is not None), 1)
        pc = point_coords.detach().cpu().float().numpy() if point_coords is not None else None
        pl = point_labels.detach().cpu().float().numpy() if point_labels is not None else None
        bx = boxes.detach().cpu().float().numpy() if boxes is not None else None
        mi = mask_input.detach().cpu().float().numpy() if mask_input is not None else None
        no_mask = np.zeros((1, 1, *self.low_res_size), np.float32)
        ious, lows = [], []
        for b in range(batch):
            coords, labels = self.prompt_slots(pc[b] if pc is not None else None, pl[b] if pl is not None else None,
                                               bx[b] if bx is not None else None)
            mask = mi[b : b + 1] if mi is not None else no_mask
            has_mask = np.array([0.0 if mi is None else 1.0], np.float32)
            iou, low = self.decoder([embedding, coords, labels, np.ascontiguousarray(mask), has_mask])
            ious.append(iou)
            lows.append(low)
        iou_t, low_t = torch.from_numpy(np.concatenate(ious)), torch.from_numpy(np.concatenate(lows))
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return low_t[:, sl], iou_t[:, sl]

    # Bilinear to the padded input, crop, bilinear to the image: the ONNX backend's own step.
    postprocess_masks = OnnxSamPredictor.postprocess_masks

    def info(self) -> dict[str, Any]:
        """What runs: backend, precision, the export's versions and the checks measured at export time."""
        return {"backend": self.backend, "precision": self.precision, "model_dir": str(self.model_dir),
                "max_points": self.max_points, "versions": self.manifest.get("versions", {}),
                "checks": self.manifest.get("checks", {})}

