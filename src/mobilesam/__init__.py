"""MobileSAM: Segment Anything with a 5.7M-parameter TinyViT image encoder."""

__version__ = "0.1.0"
