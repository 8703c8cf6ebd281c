"""Pure ``nn.Module``s of MobileSAM and SAM; no file, network or format handling here."""

from .common import LayerNorm2d, MLPBlock
from .configs import MODEL_CONFIGS, ModelConfig, build_model
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

__all__ = [
    "MODEL_CONFIGS",
    "ImageEncoderViT",
    "LayerNorm2d",
    "MLPBlock",
    "MaskDecoder",
    "ModelConfig",
    "PromptEncoder",
    "Sam",
    "TinyViT",
    "TwoWayTransformer",
    "build_model",
]
