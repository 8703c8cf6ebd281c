"""What the ExecuTorch and LiteRT backends share: a predictor over the static-shape graphs that
``mobilesam export --format executorch`` / ``--format tflite`` write (see
:mod:`mobilesam.export.edge_graphs`), run by the runtime's desktop Python package, so an export can be
checked on the desktop, with the same ``Results`` API, before it ships.

It does what the app on the phone does (README, "Ship it to a phone"): resize with the family's rule (the
torch backend's code), pad to the square with the pixel mean, run the encoder; put the prompt into the
decoder's point slots (points, SAM's padding point when there is no box, the box corners, the rest
unused) and run it once per object; upscale the low-res logits outside the graph.

:class:`EdgeSam2Predictor` does the same for a SAM 2 export (the square stretch, three feature maps, SAM 2's
slot order, its hole filling); a runtime's module pairs it with its runner (``ExecuTorchSam2Predictor``).
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
from ..transforms import ResizeLongestSide, ResizeSquare
from ..weights import weights_digest
from .base import ExportedPredictor, check_fill_areas
from .onnx_predictor import OnnxSamPredictor
from .onnx_sam2_predictor import OnnxSam2Predictor
from .sam2_api import Sam2PredictorMethods

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
    family_name = "sam"  # the manifest's "family" this class runs
    # family name -> the class of this runtime that runs it (set by each runtime's module)
    family_classes: dict[str, type[EdgeSamPredictor]] = {}

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
        family = manifest.get("family", "sam")
        if family != self.family_name:
            raise ExportError(f"{self.runtime} model: '{folder}' is a {family!r} export, which {type(self).__name__} "
                              f"does not run; open it with create_predictor(folder, {self.backend_name!r})")
        self.manifest, self.model_dir = manifest, folder
        self.precision = precision
        self.backend = self.backend_name if precision == "fp32" else f"{self.backend_name}-{precision}"
        self.model = None  # the official attribute; the graphs hold the weights
        self.model_type = manifest.get("model_type")
        self.img_size = int(manifest["image_size"])
        self.pixel_mean = manifest["pixel_mean"]
        # Exports before SAM 2's (format_version 1 too) name only the SAM embedding's shape.
        layout = manifest.get("feature_layout") or {"image_embeddings": manifest["embedding_shape"]}
        self.feature_layout = {k: tuple(v) for k, v in layout.items()}
        self.embedding_shape = next(iter(self.feature_layout.values()))
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
        super().__init__(self._transform(), float(manifest["mask_threshold"]), max_batch)

    def _transform(self) -> Any:
        return ResizeLongestSide(self.img_size)

    @classmethod
    def open(cls, model: Any, precision: str = "fp32", **options: Any) -> EdgeSamPredictor:
        """The predictor of this runtime for ``model``'s family: an export folder (its manifest's family) or a
        torch model (exported once into the cache, :meth:`from_sam`)."""
        from .registry import is_exported_model

        if is_exported_model(model):
            _, manifest = read_edge_manifest(model, cls.runtime)
            family = manifest.get("family", "sam")
        else:
            from ..hub import family_of

            family = family_of(model).name
        if family not in cls.family_classes:
            raise ValueError(f"model: the {cls.backend_name} backend runs {sorted(cls.family_classes)} models, "
                             f"not {family!r} ones")
        chosen = cls.family_classes[family]
        if is_exported_model(model):
            return chosen(model, precision=precision, **options)
        return chosen.from_sam(model, precision=precision, **options)

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
        model_type = detect_model_type(sam.state_dict()) or cls.family_name
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
        outputs = self.encoder([self._square(image)])
        return {name: torch.from_numpy(a) for name, a in zip(self.feature_layout, outputs)}

    def _square(self, image: np.ndarray) -> np.ndarray:
        return pad_square(image, self.img_size, self.pixel_mean)

    # One (1, 256, 64, 64) embedding, checked against the manifest's shape: the ONNX backend's own steps.
    _embedding_tensors = OnnxSamPredictor._embedding_tensors
    _check_features = OnnxSamPredictor._check_features

    # --- prompts -------------------------------------------------------------------------------------
    # How the family's prompt fills the slots, for the error on a prompt that does not fit.
    slot_rule = "a box takes 2, and without a box SAM adds a padding point"

    def slot_rows(
        self, point_coords: np.ndarray | None, point_labels: np.ndarray | None, box: np.ndarray | None
    ) -> list[tuple[Any, float]]:
        """The (point, label) rows of one object's prompt in the family's order: the points, SAM's padding
        point when there is no box, the box corners."""
        rows: list[tuple[Any, float]] = []
        if point_coords is not None:
            rows += [(p, float(lab)) for p, lab in zip(point_coords, point_labels)]
            if box is None:
                rows.append(((0.0, 0.0), float(LABEL_PAD)))
        if box is not None:
            rows += [(box[:2], float(LABEL_BOX_TOP_LEFT)), (box[2:], float(LABEL_BOX_BOTTOM_RIGHT))]
        return rows

    def prompt_slots(
        self, point_coords: np.ndarray | None, point_labels: np.ndarray | None, box: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One object's prompt in the decoder's slots: (1, P, 2) coordinates and (1, P) labels.

        Points (N, 2) and labels (N,) in the resized frame, box (4,) XYXY or None: the rows of
        :meth:`slot_rows`, then unused slots.
        """
        rows = self.slot_rows(point_coords, point_labels, box)
        if len(rows) > self.max_points:
            raise ValueError(
                f"prompts: the exported decoder takes at most {self.max_points} point slots ({self.slot_rule}), got "
                f"{len(rows)}; re-export with a larger --max-points")
        coords = np.zeros((self.max_points, 2), np.float32)
        labels = np.full(self.max_points, LABEL_UNUSED, np.float32)
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
        feeds = [features.tensors[name].numpy() for name in self.feature_layout]
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
            iou, low = self.decoder([*feeds, coords, labels, np.ascontiguousarray(mask), has_mask])[:2]
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


class EdgeSam2Predictor(Sam2PredictorMethods, EdgeSamPredictor):
    """:class:`EdgeSamPredictor` for a SAM 2 / SAM 2.1 export, with ``SAM2ImagePredictor``'s methods: the
    image stretched to the square (no padding), three feature maps, SAM 2's slot order (box corners,
    clicks, one padding point), its hole and sprinkle filling (``max_hole_area`` / ``max_sprinkle_area``,
    0 = off) before the upscaling. A runtime's module makes the class: ``class
    ExecuTorchSam2Predictor(EdgeSam2Predictor, ExecuTorchSamPredictor)``."""

    family_name = "sam2"

    def __init__(self, model_dir: str | os.PathLike, precision: str = "fp32", threads: int | None = None,
                 verify: bool = True, max_batch: int = 16, *, max_hole_area: float = 0.0,
                 max_sprinkle_area: float = 0.0) -> None:
        from ..hub import SAM2_FAMILY

        self.family = SAM2_FAMILY
        self.max_hole_area, self.max_sprinkle_area = check_fill_areas(max_hole_area, max_sprinkle_area)
        super().__init__(model_dir, precision, threads, verify, max_batch)
        self.low_res_limit = float(self.manifest["prompt"].get("low_res_logit_limit", 32.0))

    def _transform(self) -> Any:
        return ResizeSquare(self.img_size)  # the export's size (tests export small models)

    def _square(self, image: np.ndarray) -> np.ndarray:
        return image  # the transform already stretched it to S x S

    slot_rule = "a box takes 2, and SAM 2 adds a padding point"

    def slot_rows(
        self, point_coords: np.ndarray | None, point_labels: np.ndarray | None, box: np.ndarray | None
    ) -> list[tuple[Any, float]]:
        """SAM 2's order: box corners, clicks, one padding point (always)."""
        rows: list[tuple[Any, float]] = []
        if box is not None:
            rows += [(box[:2], float(LABEL_BOX_TOP_LEFT)), (box[2:], float(LABEL_BOX_BOTTOM_RIGHT))]
        if point_coords is not None:
            rows += [(p, float(lab)) for p, lab in zip(point_coords, point_labels)]
        return rows + [((0.0, 0.0), float(LABEL_PAD))]

    # Several feature maps, SAM 2's hole filling and upscaling: the ONNX Runtime SAM 2 backend's own steps.
    _check_features = OnnxSam2Predictor._check_features
    _embedding_tensors = OnnxSam2Predictor._embedding_tensors
    postprocess_masks = OnnxSam2Predictor.postprocess_masks
