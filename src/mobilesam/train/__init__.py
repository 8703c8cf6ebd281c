"""Training MobileSAM's image encoder by decoupled distillation (arXiv 2306.14289).

1. :func:`embed_folder` stores the teacher's embedding of every image (fp16, one file each);
2. :func:`train` teaches a student image encoder to reproduce them (MSE), on one or many processes;
3. :func:`assemble` puts the student encoder and the teacher's prompt encoder and mask decoder
   into one checkpoint in the official flat format;
4. :func:`validate` compares student and teacher masks on the same seeded prompts (mIoU).

Fine-tuning on labelled masks (:func:`finetune`, ``mobilesam finetune``) shares the training loop,
checkpoints, logs and torchrun handling (:mod:`.loop`).
"""

from .assemble import assemble
from .data import DistillDataset, StepSampler, flip_pair
from .finetuner import FinetuneConfig, finetune
from .models import build_distill_sam, build_encoder
from .store import EmbeddingStore, embed_folder, list_images
from .trainer import TrainConfig, lr_factor, train
from .val import sample_prompts, validate

__all__ = [
    "DistillDataset",
    "EmbeddingStore",
    "FinetuneConfig",
    "StepSampler",
    "TrainConfig",
    "assemble",
    "build_distill_sam",
    "build_encoder",
    "embed_folder",
    "finetune",
    "flip_pair",
    "list_images",
    "lr_factor",
    "sample_prompts",
    "train",
    "validate",
]
