"""SAM 2 and SAM 2.1 (Hiera image encoder), with the official parameter names; pure ``nn.Module``s."""

from .configs import SAM2_CONFIGS, Sam2Config, build_sam2
from .hiera import Hiera
from .image_encoder import FpnNeck, ImageEncoder
from .mask_decoder import Sam2MaskDecoder
from .memory_attention import MemoryAttention, MemoryAttentionLayer
from .memory_encoder import MemoryEncoder
from .prompt_encoder import Sam2PromptEncoder
from .sam2_base import FEATURE_NAMES, Sam2

__all__ = [
    "FEATURE_NAMES",
    "SAM2_CONFIGS",
    "FpnNeck",
    "Hiera",
    "ImageEncoder",
    "MemoryAttention",
    "MemoryAttentionLayer",
    "MemoryEncoder",
    "Sam2",
    "Sam2Config",
    "Sam2MaskDecoder",
    "Sam2PromptEncoder",
    "build_sam2",
]
