"""The PyTorch backend: ``SamPredictor``, API-compatible with the official one.

The model given is the reference (``mobilesam.modeling``); the predictor runs
``optimize_for_inference(model)``, the same weights with the CPU fast paths, under ``torch.no_grad``.
Pre-processing (resize rule, mean/std, padding) comes from the model's family in ``mobilesam.hub``.

One predictor serves every family. A family whose features are several tensors (SAM 2: an
embedding and two high-resolution levels) provides them through its module: ``image_features(x)``
returns the feature dict named as the family's ``feature_layout``, and ``decode_prompts(features,
...)`` runs its prompt encoder and mask decoder on them. SAM's ``Sam`` is driven through its parts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..hub import family_of
from ..modeling.mask_decoder import MaskDecoder
from ..transforms import fill_holes_and_sprinkles, transform_for
from .base import ImageFeatures, PredictorBase, check_fill_areas
from .sam2_api import Sam2PredictorMethods
from .torch_fast import optimize_for_inference

ENCODER_PRECISIONS = ("fp32", "bf16")


class SamPredictor(Sam2PredictorMethods, PredictorBase):
    """Computes an image embedding once and predicts masks for prompts on it, with PyTorch.

    Mirrors ``segment_anything.SamPredictor``: same methods, arguments and outputs.
    ``max_batch`` bounds how many prompts ``predict_torch`` decodes at once: a larger batch is split
    into chunks (same results, bounded memory: full-size masks are thresholded chunk by chunk).
    ``encoder_precision="bf16"`` runs the image encoder under bfloat16 autocast (about 2x faster on CPUs
    with AMX or AVX512-BF16, and on GPUs; embeddings within about 2% of fp32); the decoder stays fp32.
    ``encoder_batch``: images per encoder pass in ``set_images`` / ``encode_prepared`` (one pass for a batch:
    the images are padded to the square input, as one image is).
    ``max_hole_area`` / ``max_sprinkle_area``: as SAM 2's predictor, background regions (holes) and
    foreground regions (sprinkles) of at most that many low-resolution pixels are flipped before the
    masks are upscaled (:func:`mobilesam.transforms.fill_holes_and_sprinkles`); 0 (default) is off.
    """

    backend = "torch"

    def __init__(
        self,
        sam_model: nn.Module,
        max_batch: int = 16,
        encoder_precision: str = "fp32",
        encoder_batch: int = 4,
        *,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
    ) -> None:
        if not isinstance(sam_model, nn.Module):
            raise TypeError(f"sam_model: expected a Sam module (build_sam(...)), got {type(sam_model).__name__}")
        if encoder_precision not in ENCODER_PRECISIONS:
            raise ValueError(f"encoder_precision: expected 'fp32' or 'bf16', got {encoder_precision!r}")
        self.max_hole_area, self.max_sprinkle_area = check_fill_areas(max_hole_area, max_sprinkle_area)
        family = family_of(sam_model)
        self.model = sam_model
        self.family = family
        self.encoder_precision = encoder_precision
        if encoder_precision == "bf16":
            self.backend = "torch-bf16"
        pre = family.preprocessing
        self._mean = torch.tensor(pre.pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(pre.pixel_std, dtype=torch.float32).view(-1, 1, 1)
        self._fast = optimize_for_inference(sam_model)
        # Families with several feature tensors bring their own encode / decode steps (see the module doc).
        self._multi_level = hasattr(sam_model, "image_features") and hasattr(sam_model, "decode_prompts")
        self.low_res_limit = getattr(sam_model, "low_res_logit_limit", None)
        self._batch_features: list[ImageFeatures] | None = None
        self._identity: str | None = None
        super().__init__(transform_for(pre), sam_model.mask_threshold, max_batch, encoder_batch)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __repr__(self) -> str:
        return f"SamPredictor(backend={self.backend!r}, device={str(self.device)!r}, max_batch={self.max_batch})"

    def _normalise(self, transformed_image: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) 0-255 -> normalised and zero-padded bottom/right to (1, 3, S, S)."""
        dev = self.device
        x = transformed_image.to(dev, torch.float32)
        x = (x - self._mean.to(dev)) / self._std.to(dev)
        size = self.transform.target_length
        return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))

    def _features_of(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._multi_level:
            return self._fast.image_features(x)
        return {"image_embeddings": self._fast.image_encoder(x)}

    def _run_encoder(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised images (B, 3, S, S) -> the family's features, each with batch B."""
        if self.encoder_precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return {k: v.float() for k, v in self._features_of(x).items()}
        return self._features_of(x)

    def _encode(self, transformed_image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._run_encoder(self._normalise(transformed_image))

    def _check_features(self, features: ImageFeatures) -> None:
        expected = list(self.family.feature_layout)
        if sorted(features.tensors) != sorted(expected):
            raise ValueError(
                f"features: expected the tensors {expected} of the {self.family.title} family, "
                f"got {list(features.tensors)}"
            )

    def _embedding_tensors(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(self.family.feature_layout) > 1:
            raise ValueError(
                f"set_embedding: a {self.family.title} model decodes from {list(self.family.feature_layout)}, "
                "not one embedding tensor; keep and restore all of them with get_features() / set_features()"
            )
        return super()._embedding_tensors(embedding)

    def _encode_batch(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """One encoder pass for all ``images`` (each normalised and zero-padded to the square input)."""
        features = self._run_encoder(torch.cat([self._normalise(x) for x in images]))
        return [{k: v[i : i + 1] for k, v in features.items()} for i in range(len(images))]

    def feature_identity(self) -> str:
        """``family/size/weights digest/backend/device type`` (the weights are hashed once per predictor:
        an in-place change of them afterwards is not seen)."""
        if self._identity is None:
            from ..hub import detect_family
            from ..weights import weights_digest

            sd = self.model.state_dict()
            found = detect_family(sd)
            size = found[1] if found else "unknown"
            self._identity = (f"{self.family.name}/{size}/{weights_digest(self.model)[:32]}/{self.backend}/"
                              f"{self.device.type}")
        return self._identity

    @torch.no_grad()
    def decode_low_res(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._require_image()
        if self._multi_level:
            low_res, iou, _ = self._fast.decode_prompts(
                features.tensors, point_coords, point_labels, boxes, mask_input, multimask_output
            )
            return low_res, iou
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self._fast.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self._fast.mask_decoder(
            image_embeddings=features.tensors["image_embeddings"],
            image_pe=self._fast.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    @torch.no_grad()
    def decode_low_res_above(
        self, point_coords: torch.Tensor, point_labels: torch.Tensor, multimask_output: bool, min_iou: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See ``PredictorBase.decode_low_res_above``: the transformer and IoU head for every prompt (about
        60% of a decode on CPU), the mask upscaling only for the prompts that keep an output."""
        # SAM 2 decodes through its own module; any other decoder (a subclass with its own forward) whole.
        dec = None if self._multi_level else self._fast.mask_decoder
        if dec is None or not (
            isinstance(dec, MaskDecoder)
            and type(dec).forward is MaskDecoder.forward
            and type(dec).predict_masks is MaskDecoder.predict_masks
        ):
            return super().decode_low_res_above(point_coords, point_labels, multimask_output, min_iou)
        features = self._require_image()
        sparse, dense = self._fast.prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=None)
        hs, src, size = dec.run_transformer(
            features.tensors["image_embeddings"], self._fast.prompt_encoder.get_dense_pe(), sparse, dense
        )
        sl = slice(1, None) if multimask_output else slice(0, 1)
        iou = dec.iou_prediction_head(hs[:, 0, :])[:, sl]
        keep = (iou > min_iou).any(1)
        low = iou.new_full((len(iou), iou.shape[1], 4 * size[0], 4 * size[1]), float("-inf"))
        if bool(keep.any()):
            low[keep] = dec.masks_from_tokens(hs[keep], src[keep], size)[:, sl]
        return low, iou, keep

    @torch.no_grad()
    def postprocess_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        self._require_image()
        low_res = fill_holes_and_sprinkles(low_res, self.mask_threshold, self.max_hole_area, self.max_sprinkle_area)
        return self._fast.postprocess_masks(low_res, self.input_size, self.original_size)

