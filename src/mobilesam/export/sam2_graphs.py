"""The two SAM 2 modules that are exported to ONNX: the image encoder with its normalisation, and the
prompt encoder + mask decoder. Thin wrappers over :class:`mobilesam.modeling.sam2.Sam2` (the reference
computation); traced, so nothing depends on Python control flow over input values.

The decoder interface follows SAM's official ONNX decoder where SAM 2 allows it (point labels, padding
point, ``mask_input`` / ``has_mask_input``, four outputs with the single-mask one first) and adds what
SAM 2 needs: the two high-resolution feature maps as inputs, and the object-score logit as an output.
Upscaling to the image (and SAM 2's hole filling) is left to the caller, which knows the image size.

The phone and edge-board exports (ExecuTorch, LiteRT, Core ML) take the same encoder and a fixed-slot
decoder, :class:`Sam2SlotDecoderGraph` (static shapes: see :mod:`.edge_graphs`), through
:func:`sam2_edge_graphs`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..backends.torch_fast import optimize_for_export
from ..modeling.sam2 import FEATURE_NAMES, Sam2
from .edge_graphs import (
    _MASKED,
    DEFAULT_MAX_POINTS,
    LABEL_UNUSED,
    EdgeGraphs,
    GraphPart,
    _masked_transformer,
    check_pattern,
    slot_prompt,
)

ENCODER_INPUTS = ["image"]
ENCODER_OUTPUTS = list(FEATURE_NAMES)  # image_embed, high_res_feats_0, high_res_feats_1
DECODER_INPUTS = [*FEATURE_NAMES, "point_coords", "point_labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["low_res_masks", "iou_predictions", "object_score_logits"]


class Sam2EncoderGraph(nn.Module):
    """RGB image stretched to ``image_size`` x ``image_size`` (1, 3, S, S), float 0-255 -> the decoder's
    three feature maps (``no_mem_embed`` already added to ``image_embed``). ImageNet mean/std inside."""

    def __init__(self, sam: Sam2, pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...]) -> None:
        super().__init__()
        self.sam = sam
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.sam.image_features((image - self.pixel_mean) / self.pixel_std)
        return tuple(features[name] for name in FEATURE_NAMES)


def bicubic_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in): ``F.interpolate(..., mode="bicubic")`` along one axis as a matrix (the resize is linear
    and separable, so resizing X (n_in, n_in) is ``M @ X @ M.T``)."""
    basis = torch.eye(n_in).view(n_in, 1, n_in, 1)  # one unit impulse per input position
    return F.interpolate(basis, size=(n_out, 1), mode="bicubic")[:, 0, :, 0].T.contiguous()


class Sam2FixedSizeEncoderGraph(Sam2EncoderGraph):
    """:class:`Sam2EncoderGraph` for the edge runtimes, the same computation with Hiera's position embedding
    resized by two small matrices instead of a bicubic resize (Core ML's converter has none, and LiteRT and
    ExecuTorch would run it on a constant at every call); storing the resized embedding instead would add
    25 MB to every file."""

    def __init__(self, sam: Sam2, pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...]) -> None:
        super().__init__(sam, pixel_mean, pixel_std)
        trunk = sam.image_encoder.trunk
        grid = int(sam.image_size) // 4  # the patch embedding's stride
        bh, bw = trunk.pos_embed.shape[-2:]
        # Persistent buffers: ExecuTorch 1.5 lost a non-persistent constant in lowering.
        self.register_buffer("pos_rows", bicubic_matrix(bh, grid))
        self.register_buffer("pos_cols", bicubic_matrix(bw, grid).T.contiguous())
        self.grid = grid

    def position_embedding(self) -> torch.Tensor:
        """Hiera's ``_pos_embed(grid, grid)``: (1, grid, grid, C)."""
        trunk = self.sam.image_encoder.trunk
        background = self.pos_rows @ trunk.pos_embed @ self.pos_cols
        win = trunk.pos_embed_window
        return (background + win.tile(1, 1, self.grid // win.shape[-2], self.grid // win.shape[-1])).permute(0, 2, 3, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        encoder = self.sam.image_encoder
        tokens = encoder.trunk.patch_embed((image - self.pixel_mean) / self.pixel_std) + self.position_embedding()
        features = self.sam.features_of_levels(encoder.fpn_of_trunk(encoder.trunk.forward_tokens(tokens)))
        return tuple(features[name] for name in FEATURE_NAMES)


class Sam2DecoderGraph(nn.Module):
    """SAM 2's prompt encoder and mask decoder.

    Inputs: the three feature maps of :class:`Sam2EncoderGraph`; ``point_coords`` (B, N, 2) in the S x S
    input frame; ``point_labels`` (B, N) float: -1 padding point, 0 negative, 1 positive, 2 / 3 box
    top-left / bottom-right. SAM 2's own predictor gives the box corners first, then the clicks, then
    one padding point (always: SAM 2 never passes a box to its prompt encoder). ``mask_input`` (B or 1,
    1, S/4, S/4) and ``has_mask_input`` (1,).
    Outputs: ``low_res_masks`` (B, 4, S/4, S/4) logits and ``iou_predictions`` (B, 4): index 0 is the
    single-mask answer (SAM 2's dynamic choice: the single-mask token where it is stable, else the best
    multimask output), 1-3 the multimask outputs; ``object_score_logits`` (B, 1).
    """

    def __init__(self, sam: Sam2) -> None:
        super().__init__()
        self.prompt_encoder = sam.sam_prompt_encoder
        self.mask_decoder = optimize_for_export(sam.sam_mask_decoder)  # same weights, same values

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pe, decoder = self.prompt_encoder, self.mask_decoder
        sparse = pe._embed_points(point_coords, point_labels, pad=False)
        dense = has_mask_input * pe.mask_downscaling(mask_input)
        dense = dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, iou, _, object_scores = decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            high_res_features=[high_res_feats_0, high_res_feats_1],
            transformer=self._transformer(point_labels),
        )
        single, single_iou = decoder._dynamic_multimask_via_stability(masks, iou)
        return (torch.cat([single, masks[:, 1:]], dim=1), torch.cat([single_iou, iou[:, 1:]], dim=1),
                object_scores)

    def _transformer(self, point_labels: torch.Tensor) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
        """The two-way transformer to run on these prompts (None: the decoder's own)."""
        return None


class Sam2SlotDecoderGraph(Sam2DecoderGraph):
    """SAM 2's prompt encoder and mask decoder over ``max_points`` fixed point slots (see
    :mod:`.edge_graphs`): a slot labelled ``LABEL_UNUSED`` (-2) is masked out of the two attentions whose
    keys are prompt tokens, which gives the masks of the prompt without it.

    Inputs: the three feature maps of :class:`Sam2EncoderGraph`; ``point_coords`` (1, P, 2) in the S x S
    input frame; ``point_labels`` (1, P) float: box corners (2, 3) first, then clicks (1, 0), then SAM 2's
    one padding point (-1), then unused slots (-2); ``mask_input`` (1, 1, S/4, S/4); ``has_mask_input`` (1,).
    Outputs: ``iou_predictions`` (1, 4), ``low_res_masks`` (1, 4, S/4, S/4) (index 0 SAM 2's single-mask
    answer, 1-3 the multimask ones: :class:`Sam2DecoderGraph`'s) and ``object_score_logits`` (1, 1).
    """

    def __init__(self, sam: Sam2) -> None:
        super().__init__(sam)
        # The reference decoder, not optimize_for_export's view: XNNPACK takes tensors of at most 6 dimensions.
        self.mask_decoder = sam.sam_mask_decoder

    def forward(  # the input names are the graph's (LiteRT calls it by keyword)
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        masks, iou, object_scores = super().forward(image_embed, high_res_feats_0, high_res_feats_1, point_coords,
                                                    point_labels, mask_input, has_mask_input)
        return iou, masks, object_scores  # the edge graphs' order (SAM's: iou_predictions, low_res_masks)

    def _transformer(self, point_labels: torch.Tensor) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        decoder = self.mask_decoder
        n_output_tokens = decoder.num_mask_tokens + 1 + int(decoder.pred_obj_scores)
        unused = (point_labels == LABEL_UNUSED).to(point_labels.dtype)  # (1, P)
        key_bias = torch.cat([unused.new_zeros(1, n_output_tokens), unused], dim=1).view(1, 1, 1, -1) * _MASKED

        def masked(src: torch.Tensor, pos_src: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return _masked_transformer(decoder.transformer, src, pos_src, tokens, key_bias)

        return masked


def sam2_edge_graphs(sam: Sam2, max_points: int = DEFAULT_MAX_POINTS) -> EdgeGraphs:
    """The SAM 2 family's encoder (stretched square image -> three feature maps) and slot decoder."""
    from ..hub import SAM2_FAMILY

    pre = SAM2_FAMILY.preprocessing
    s = int(sam.image_size)
    pe = sam.sam_prompt_encoder
    grid = list(pe.image_embedding_size)
    low = [4 * v for v in grid]
    layout = {name: [1, c, *(v * k for v in grid)]
              for name, (c, k) in zip(FEATURE_NAMES, ((pe.embed_dim, 1), (pe.embed_dim // 8, 4), (pe.embed_dim // 4, 2)))}
    mean, std = [float(v) for v in pre.pixel_mean], [float(v) for v in pre.pixel_std]
    f32 = "float32"
    features = {name: {"shape": shape, "dtype": f32} for name, shape in layout.items()}
    encoder = GraphPart(
        Sam2FixedSizeEncoderGraph(sam, pre.pixel_mean, pre.pixel_std).eval(),
        (check_pattern(s, mean, fill=1.0),),
        {"image": {"shape": [1, 3, s, s], "dtype": f32,
                   "description": f"RGB 0-255, the whole image stretched to {s}x{s} (bilinear, no padding)"}},
        features,
    )
    prompt_examples, prompt_inputs = slot_prompt(
        max_points, s, low, f"(x, y) in the {s}x{s} input frame",
        "2/3 box corners first, then 1 positive / 0 negative clicks, then one -1 padding point, then -2 unused slots")
    decoder = GraphPart(
        Sam2SlotDecoderGraph(sam).eval(),
        (*(torch.zeros(shape) for shape in layout.values()), *prompt_examples),
        {**features, **prompt_inputs},
        {
            "iou_predictions": {"shape": [1, 4], "dtype": f32},
            "low_res_masks": {"shape": [1, 4, *low], "dtype": f32,
                              "description": "logits; index 0 SAM 2's single-mask answer, 1-3 multimask answers"},
            "object_score_logits": {"shape": [1, 1], "dtype": f32, "description": "> 0: the object is present"},
        },
    )
    return EdgeGraphs(
        parts={"encoder": encoder, "decoder": decoder},
        family="sam2",
        preprocessing={"resize": "square", "image_size": s, "pixel_mean": mean, "pixel_std": std,
                       "padding": "none: the whole image is stretched to the square",
                       "normalisation": "inside the encoder graph: (image - pixel_mean) / pixel_std"},
        prompt={"max_points": max_points, "label_unused": LABEL_UNUSED, "label_pad": -1, "low_res_size": low,
                "mask_threshold": float(sam.mask_threshold), "low_res_logit_limit": float(sam.low_res_logit_limit),
                "order": "box corners (2, 3), clicks, one padding point (-1, always), unused slots (-2)"},
        postprocessing="outside the graphs: low_res_masks bilinear to the original size (no crop: nothing was "
                       "padded), threshold at mask_threshold",
        check_images=(check_pattern(s, mean, fill=1.0, seed=1),),
    )
