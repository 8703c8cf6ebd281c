"""The graphs exported for phones and edge boards (ExecuTorch, LiteRT, Core ML): static shapes only.

Those runtimes compile a graph for fixed tensor shapes (LiteRT's converter and Core ML's neural engine
need them; XNNPACK in ExecuTorch takes at most one dynamic dimension per reshape), so the two graphs of
the ONNX export are given fixed-size inputs here:

- the image encoder takes the square padded image (1, 3, S, S): RGB 0-255, resized so the longest side
  is S, padded bottom/right with the pixel mean, which the in-graph normalisation turns into SAM's zero
  padding (:class:`~mobilesam.export.graphs.EncoderGraph` unchanged: its own padding adds nothing);
- the prompt decoder takes a fixed number of point slots, ``max_points``. SAM attends over all its
  prompt tokens, so padding a prompt with extra tokens would change its masks; a slot labelled
  ``LABEL_UNUSED`` (-2) is masked out of the two attentions whose keys are prompt tokens (token
  self-attention and image-to-token attention; every other step treats tokens one by one), which gives
  the masks of the prompt without that slot, to float rounding. Label -1 stays SAM's own "not a point"
  token, which SAM appends when there is no box. Batch 1: one object per call.
- the upscaling of the 256x256 low-res logits to the image stays out of the graph: its output size
  depends on the image (a shape from input values, which none of these runtimes compiles), and an app
  shows masks at screen size anyway. The app does it (bilinear to S x S, crop to the resized image, bilinear
  to the original size), or thresholds the low-res logits and scales the bitmap.

A model family plugs in with one entry in :data:`EDGE_GRAPHS`: a function that returns its
:class:`EdgeGraphs` (the modules, example inputs, and the names, shapes and meaning of every input and
output, which go into the manifest and are checked against the README). SAM's are here; SAM 2's
(three feature maps, SAM 2's slot order, object scores) are in :mod:`.sam2_graphs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..modeling import Sam
from ..modeling.transformer import Attention, TwoWayTransformer
from .graphs import LABEL_PAD, DecoderGraph, EncoderGraph

LABEL_UNUSED = -2  # a point slot that is not part of the prompt (masked out of attention)
DEFAULT_MAX_POINTS = 10
MAX_POINTS_RANGE = (2, 64)
_MASKED = -1.0e4  # additive attention bias of an unused slot: exp underflows to 0, finite in fp16


@dataclass(frozen=True)
class GraphPart:
    """One exported graph: the module, example inputs (in order) and the manifest's description of its
    inputs and outputs (name -> shape, dtype, description), in the graph's order."""

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)


@dataclass(frozen=True)
class EdgeGraphs:
    """What one model family exports for the edge runtimes, and what the app needs to feed it.

    The encoder's outputs are the decoder's first inputs, in order. ``check_images``: further encoder inputs,
    beside the encoder's example input, that the export's reduced-precision gate measures masks on.
    """

    parts: dict[str, GraphPart]
    family: str = "sam"
    preprocessing: dict[str, Any] = field(default_factory=dict)
    prompt: dict[str, Any] = field(default_factory=dict)
    postprocessing: str = ("outside the graphs: low_res_masks bilinear to image_size x image_size, crop to the "
                           "resized image, bilinear to the original size, threshold at mask_threshold")
    check_images: tuple[torch.Tensor, ...] = ()

    @property
    def feature_names(self) -> list[str]:
        """The encoder's outputs: what an app keeps per image and feeds the decoder."""
        return self.parts["encoder"].output_names


def _attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
    """``attn(q, k, v)`` with an additive bias on the keys' logits (1, 1, 1, Nk)."""
    qh, kh, vh = attn._heads(attn.q_proj(q)), attn._heads(attn.k_proj(k)), attn._heads(attn.v_proj(v))
    scores = (qh @ kh.transpose(-1, -2)) * (qh.shape[-1] ** -0.5) + key_bias
    out = scores.softmax(dim=-1) @ vh
    b, _, n, _ = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, attn.internal_dim))


def _masked_transformer(
    tf: TwoWayTransformer, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor, key_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer.forward`` with the prompt tokens of ``key_bias`` < 0 masked out as keys.

    The steps of ``TwoWayAttentionBlock.forward`` in order; only the two attentions whose keys are tokens
    take the bias (a token's own row is computed and never read).
    """
    keys = image.flatten(2).transpose(1, 2)
    key_pe = image_pe.flatten(2).transpose(1, 2)
    queries = tokens
    for layer in tf.layers:
        if layer.skip_first_layer_pe:
            queries = _attend(layer.self_attn, queries, queries, queries, key_bias)
        else:
            q = queries + tokens
            queries = queries + _attend(layer.self_attn, q, q, queries, key_bias)
        queries = layer.norm1(queries)
        q, k = queries + tokens, keys + key_pe
        queries = layer.norm2(queries + layer.cross_attn_token_to_image(q, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q, k = queries + tokens, keys + key_pe
        keys = layer.norm4(keys + _attend(layer.cross_attn_image_to_token, k, q, queries, key_bias))
    attn_out = tf.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
    return tf.norm_final_attn(queries + attn_out), keys


class SlotDecoderGraph(DecoderGraph):
    """SAM's prompt decoder over ``max_points`` fixed point slots, low-res outputs only (module doc).

    Inputs: ``image_embeddings`` (1, 256, 64, 64); ``point_coords`` (1, P, 2) (x, y) in the resized
    frame; ``point_labels`` (1, P) float: 1 positive, 0 negative, 2 / 3 box top-left / bottom-right,
    -1 SAM's padding point, -2 unused slot; ``mask_input`` (1, 1, 256, 256); ``has_mask_input`` (1,).
    Outputs: ``iou_predictions`` (1, 4) and ``low_res_masks`` (1, 4, 256, 256): index 0 is the
    single-mask output, 1-3 the multimask outputs.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__(sam)
        # The reference decoder, not optimize_for_export's view: XNNPACK takes tensors of at most 6
        # dimensions, and the token-layout upscaling of that view reshapes to 8.
        self.mask_decoder = sam.mask_decoder

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        md = self.mask_decoder
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0).unsqueeze(0)
        tokens = torch.cat([output_tokens, sparse], dim=1)
        unused = (point_labels == LABEL_UNUSED).to(tokens.dtype)  # (1, P)
        key_bias = torch.cat([torch.zeros_like(output_tokens[..., 0]), unused], dim=1) * _MASKED
        src = image_embeddings + dense
        hs, src = _masked_transformer(md.transformer, src, self.prompt_encoder.get_dense_pe(), tokens,
                                      key_bias.view(1, 1, 1, -1))
        hyper_in = torch.stack(
            [mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1
        )
        h, w = image_embeddings.shape[-2:]
        return md.iou_prediction_head(hs[:, 0, :]), md._masks(src, hyper_in, h, w)


def sam_edge_graphs(sam: Sam, max_points: int = DEFAULT_MAX_POINTS) -> EdgeGraphs:
    """The SAM family's encoder (square padded image -> embedding) and slot decoder."""
    s = int(sam.image_encoder.img_size)
    pe = sam.prompt_encoder
    emb_shape = [1, pe.embed_dim, *pe.image_embedding_size]
    low = [4 * v for v in pe.image_embedding_size]
    mean = [float(v) for v in sam.pixel_mean.flatten()]
    std = [float(v) for v in sam.pixel_std.flatten()]
    f32 = "float32"
    encoder = GraphPart(
        EncoderGraph(sam).eval(),
        (check_pattern(s, mean),),
        {"image": {"shape": [1, 3, s, s], "dtype": f32,
                   "description": f"RGB 0-255, resized so the longest side is {s}, padded bottom/right with "
                                  "the pixel mean"}},
        {"image_embeddings": {"shape": emb_shape, "dtype": f32}},
    )
    prompt_examples, prompt_inputs = slot_prompt(
        max_points, s, low, f"(x, y) in the resized frame (longest side {s})",
        "1 positive, 0 negative, 2/3 box corners, -1 SAM's padding point, -2 unused slot")
    decoder = GraphPart(
        SlotDecoderGraph(sam).eval(),
        (torch.zeros(emb_shape), *prompt_examples),
        {"image_embeddings": {"shape": emb_shape, "dtype": f32}, **prompt_inputs},
        {
            "iou_predictions": {"shape": [1, 4], "dtype": f32},
            "low_res_masks": {"shape": [1, 4, *low], "dtype": f32,
                              "description": "logits; index 0 single-mask output, 1-3 multimask outputs"},
        },
    )
    return EdgeGraphs(
        parts={"encoder": encoder, "decoder": decoder},
        family="sam",
        preprocessing={"resize": "longest_side", "image_size": s, "pixel_mean": mean, "pixel_std": std,
                       "padding": "bottom/right with pixel_mean (zero after the in-graph normalisation)",
                       "normalisation": "inside the encoder graph: (image - pixel_mean) / pixel_std"},
        prompt={"max_points": max_points, "label_unused": LABEL_UNUSED, "label_pad": LABEL_PAD,
                "low_res_size": low, "mask_threshold": float(sam.mask_threshold),
                "order": "clicks, SAM's padding point (-1) when there is no box, box corners (2, 3), unused slots (-2)"},
        check_images=(check_pattern(s, mean, fill=0.75, seed=1),),
    )


def check_pattern(s: int, mean: list[float], fill: float = 2 / 3, seed: int = 0) -> torch.Tensor:
    """A test input (1, 3, S, S), 0-255: smooth colour fields and a flat rectangle (seed 0), or flat
    rectangles of random colours over textured noise (another seed); right of ``fill`` of the width, the
    pixel mean (SAM's padding of a landscape image; ``fill=1`` for none)."""
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32),
                            indexing="ij")
    if seed == 0:
        img = torch.stack([128 + 90 * torch.sin(xx / 37.0), 128 + 90 * torch.cos(yy / 53.0), (xx + yy) % 256])
        img[:, s // 4 : s // 2, s // 4 : s // 2] = 230.0
    else:
        g = torch.Generator().manual_seed(seed)
        img = 128 + 40 * torch.sin(xx / 11.0 + yy / 7.0).expand(3, s, s) + 25 * torch.randn(3, s, s, generator=g)
        for _ in range(6):
            x0, y0 = (torch.randint(0, 3 * s // 4, (2,), generator=g) for _ in range(2))
            img[:, y0[0] : y0[0] + s // 5 + y0[1] // 4, x0[0] : x0[0] + s // 5 + x0[1] // 4] = (
                torch.rand(3, 1, 1, generator=g) * 255)
        img = img.clamp(0, 255)
    img[:, :, int(s * fill + 1e-9):] = torch.tensor(mean).view(3, 1, 1)
    return img[None]


def slot_prompt(max_points: int, s: int, low: list[int], coords_description: str, labels_description: str
                ) -> tuple[tuple[torch.Tensor, ...], dict[str, dict[str, Any]]]:
    """The slot decoder's inputs after the image features, the same for every family: example values (a box
    and a click, the rest of the slots unused, no mask input) and the manifest's descriptions."""
    coords = torch.zeros(1, max_points, 2)
    labels = torch.full((1, max_points), float(LABEL_UNUSED))
    coords[0, :3] = torch.tensor([[0.2 * s, 0.25 * s], [0.6 * s, 0.55 * s], [0.4 * s, 0.4 * s]])
    labels[0, :3] = torch.tensor([2.0, 3.0, 1.0])
    f32 = "float32"
    return (coords, labels, torch.zeros(1, 1, *low), torch.zeros(1)), {
        "point_coords": {"shape": [1, max_points, 2], "dtype": f32, "description": coords_description},
        "point_labels": {"shape": [1, max_points], "dtype": f32, "description": labels_description},
        "mask_input": {"shape": [1, 1, *low], "dtype": f32},
        "has_mask_input": {"shape": [1], "dtype": f32},
    }


def _sam2_edge_graphs(model: nn.Module, max_points: int = DEFAULT_MAX_POINTS) -> EdgeGraphs:
    from .sam2_graphs import sam2_edge_graphs  # imports this module: bound on first use

    return sam2_edge_graphs(model, max_points=max_points)


# Model family name (mobilesam.hub) -> the function that makes its edge graphs.
EDGE_GRAPHS: dict[str, Callable[..., EdgeGraphs]] = {"sam": sam_edge_graphs, "sam2": _sam2_edge_graphs}


def edge_graphs(model: nn.Module, max_points: int = DEFAULT_MAX_POINTS) -> EdgeGraphs:
    """The edge graphs of ``model``'s family; a ValueError for a family that has none yet."""
    from ..hub import family_of

    if isinstance(max_points, bool) or not isinstance(max_points, int) or not (
            MAX_POINTS_RANGE[0] <= max_points <= MAX_POINTS_RANGE[1]):
        raise ValueError(f"max_points: expected an int from {MAX_POINTS_RANGE[0]} to {MAX_POINTS_RANGE[1]}, "
                         f"got {max_points!r}")
    family = family_of(model).name
    if family not in EDGE_GRAPHS:
        raise ValueError(f"model: the {family!r} family has no edge export yet (families with one: "
                         f"{sorted(EDGE_GRAPHS)})")
    return EDGE_GRAPHS[family](model, max_points=max_points)
