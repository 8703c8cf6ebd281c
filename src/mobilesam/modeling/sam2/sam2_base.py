"""The ``Sam2`` module: SAM 2's image encoder, prompt encoder and mask decoder, the video modules
(memory attention, memory encoder, object pointers), and the image-prediction steps.

Its state_dict equals the official ``SAM2Base``'s, key for key, so Meta's checkpoints
(``{"model": state_dict}``) load with strict loading. The video tracking logic is not here yet: the
video modules hold their weights and compute their forward passes, for a video predictor to use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoder
from .mask_decoder import Sam2MaskDecoder
from .memory_attention import MemoryAttention
from .memory_encoder import MemoryEncoder
from .mlp import MLP
from .prompt_encoder import BOX_CORNER_LABELS, Sam2PromptEncoder

# Names of the image features, as the family's feature_layout lists them: the stride-16 embedding the
# decoder's transformer reads, then the projected stride-4 and stride-8 maps its upscaling adds.
FEATURE_NAMES = ("image_embed", "high_res_feats_0", "high_res_feats_1")


class Sam2(nn.Module):
    """Segment Anything 2 (and 2.1) on images: (B, 3, S, S) normalised images -> features -> masks.

    ``no_obj_embed_spatial`` and ``proj_tpos_enc_in_obj_ptrs`` are SAM 2.1's additions (they only add
    weights); the other video settings of the official configs are not needed for images.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    # SAM 2's predictor hands back low-resolution logits clipped to this range (safe to feed back as
    # mask_input); the full-size masks are computed from the unclipped logits.
    low_res_logit_limit: float = 32.0

    def __init__(
        self,
        image_encoder: ImageEncoder,
        memory_attention: MemoryAttention,
        memory_encoder: MemoryEncoder,
        sam_prompt_encoder: Sam2PromptEncoder,
        sam_mask_decoder: Sam2MaskDecoder,
        *,
        num_maskmem: int = 7,
        image_size: int = 1024,
        backbone_stride: int = 16,
        directly_add_no_mem_embed: bool = True,
        no_obj_embed_spatial: bool = False,
        proj_tpos_enc_in_obj_ptrs: bool = False,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        self.image_size = image_size
        self.backbone_stride = backbone_stride
        self.num_maskmem = num_maskmem
        self.directly_add_no_mem_embed = directly_add_no_mem_embed
        hidden = image_encoder.neck.d_model
        out_proj = getattr(memory_encoder.out_proj, "weight", None)
        mem_dim = out_proj.shape[0] if out_proj is not None else hidden
        self.hidden_dim, self.mem_dim = hidden, mem_dim
        # Turns a mask prompt into stride-4 logits, for an object pointer from a mask-only frame.
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, hidden))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, hidden))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim)) if no_obj_embed_spatial else None
        self.obj_ptr_proj = MLP(hidden, hidden, hidden, 3)
        self.obj_ptr_tpos_proj = nn.Linear(hidden, mem_dim) if proj_tpos_enc_in_obj_ptrs else nn.Identity()
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, self.no_obj_ptr, self.no_obj_embed_spatial):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    @property
    def img_size(self) -> int:
        return self.image_size

    def forward_image(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The official backbone output of normalised (B, 3, S, S) images, with the two high-resolution
        levels already projected by the decoder's ``conv_s0`` / ``conv_s1``."""
        out = self.image_encoder(images)
        fpn = list(out["backbone_fpn"])
        fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
        fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return {**out, "backbone_fpn": fpn}

    def image_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised (B, 3, S, S) images -> the decoder's features, named as :data:`FEATURE_NAMES`:
        ``image_embed`` (B, 256, S/16, S/16) with ``no_mem_embed`` added (an image is a video frame
        without memories), ``high_res_feats_0`` (B, 32, S/4, S/4), ``high_res_feats_1`` (B, 64, S/8, S/8)."""
        return self.features_of_levels(self.image_encoder.fpn(images))

    def features_of_levels(self, levels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`image_features` from the image encoder's FPN levels."""
        s0, s1, embed = levels[-3:]
        if self.directly_add_no_mem_embed:
            embed = embed + self.no_mem_embed.reshape(1, -1, 1, 1)
        decoder = self.sam_mask_decoder
        return dict(zip(FEATURE_NAMES, (embed, decoder.conv_s0(s0), decoder.conv_s1(s1))))

    def decode_prompts(
        self,
        features: dict[str, torch.Tensor],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompts in the S x S input frame -> low-res logits (B, M, S/4, S/4), IoU scores (B, M) and
        object-score logits (B, 1).

        point_coords (B, N, 2), point_labels (B, N), boxes (B, 4) XYXY, mask_input (B, 1, S/4, S/4);
        features from :meth:`image_features` for one image (batch 1, shared by the B prompts) or B.
        A box becomes two corner points (labels 2, 3) ahead of the clicks, as SAM 2 was trained.
        """
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor(BOX_CORNER_LABELS, dtype=torch.int, device=boxes.device).expand(len(corners), 2)
            if point_coords is not None:
                point_coords = torch.cat([corners, point_coords], dim=1)
                point_labels = torch.cat([corner_labels, point_labels.to(torch.int)], dim=1)
            else:
                point_coords, point_labels = corners, corner_labels
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        low_res, iou, _, object_score_logits = self.sam_mask_decoder(
            image_embeddings=features["image_embed"],
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            high_res_features=[features["high_res_feats_0"], features["high_res_feats_1"]],
        )
        return low_res, iou, object_score_logits

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Low-res logits (B, M, 256, 256) -> logits at the original image size (B, M, H, W).

        The input frame is the whole image stretched to a square, so there is no padding to crop:
        ``input_size`` is accepted for the common signature and not needed.
        """
        return F.interpolate(masks.float(), tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003 - as the official module, no single forward
        raise NotImplementedError(
            "Sam2: use SamPredictor(model) (set_image, predict) for images, or image_features() and "
            "decode_prompts() directly"
        )
