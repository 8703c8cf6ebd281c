"""What the package knows about one model family: sizes, builder, key signature, pre-processing, weights.

A family is data plus two functions (``build`` and ``detect``); nothing here touches files or the
network, so the registry can be imported without the download and format code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

RESIZE_RULES = ("longest_side", "square")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor.

    ``resize``: ``"longest_side"`` scales so the longest side is ``image_size`` and pads bottom/right
    to a square (SAM); ``"square"`` stretches to ``image_size`` x ``image_size`` (SAM 2).
    ``pixel_mean`` / ``pixel_std`` are per RGB channel on the 0-255 scale.
    """

    resize: str
    image_size: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize: expected one of {list(RESIZE_RULES)}, got {self.resize!r}")
        if not isinstance(self.image_size, int) or self.image_size <= 0:
            raise ValueError(f"image_size: expected a positive int, got {self.image_size!r}")
        for name in ("pixel_mean", "pixel_std"):
            value = getattr(self, name)
            try:
                floats = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{name}: expected 3 numbers (R, G, B), got {value!r}") from None
            if len(floats) != 3:
                raise ValueError(f"{name}: expected 3 numbers (R, G, B), got {value!r}")
            object.__setattr__(self, name, floats)  # lists become tuples: the dataclass stays hashable
        if min(self.pixel_std) <= 0:
            raise ValueError(f"pixel_std: expected positive values, got {self.pixel_std!r}")


@dataclass(frozen=True)
class WeightsEntry:
    """One known checkpoint.

    ``name`` is the file name (also the cache file name and the registry key); ``model_type`` is the
    size of ``family`` it holds; ``size_mb`` is the approximate size in megabytes (10**6 bytes);
    ``aliases`` are other names that resolve to it (short names, Ultralytics' file names).
    ``sha256`` is None when no hash is published for the file: it then downloads unverified, and says so.
    """

    name: str
    model_type: str
    url: str
    sha256: str | None
    size_mb: float
    description: str
    aliases: tuple[str, ...] = ()
    family: str = ""  # filled in by the ModelFamily that lists the entry


@dataclass(frozen=True, eq=False)  # eq=False: families hash by identity (their fields hold dicts)
class ModelFamily:
    """One model family and everything needed to recognise, build and feed it.

    ``build(size)`` returns a randomly initialised module in eval mode; it must honour an enclosing
    ``with torch.device("meta")`` so that shapes can be read without allocating weights.
    ``detect(state_dict)`` returns the size whose architecture the keys and shapes describe, or None;
    it must accept any state_dict (another family's, a partial one) without raising.
    ``feature_layout`` names the image features the encoder produces and their shapes (C, H, W).
    ``size_titles`` gives the product name per size for :meth:`display_name` (default: ``title``).
    """

    name: str
    title: str
    model_class: type[nn.Module]
    sizes: Mapping[str, Any]
    build: Callable[[str], nn.Module]
    detect: Callable[[Mapping[str, torch.Tensor]], str | None]
    preprocessing: Preprocessing
    feature_layout: Mapping[str, tuple[int, ...]]
    weights: tuple[WeightsEntry, ...] = ()
    size_titles: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError(f"family {self.name!r}: sizes: expected at least one size, got none")
        if not isinstance(self.preprocessing, Preprocessing):
            raise TypeError(
                f"family {self.name!r}: preprocessing: expected a Preprocessing, got {type(self.preprocessing).__name__}"
            )
        if not self.feature_layout:
            raise ValueError(f"family {self.name!r}: feature_layout: expected at least one named feature, got none")
        unknown = sorted({e.model_type for e in self.weights} - set(self.sizes))
        unknown += sorted(set(self.size_titles) - set(self.sizes))
        if unknown:
            raise ValueError(f"family {self.name!r}: sizes {unknown} are not among {list(self.sizes)}")
        foreign = [e.name for e in self.weights if e.family not in ("", self.name)]
        if foreign:
            raise ValueError(f"family {self.name!r}: weights {foreign} name another family")
        # Each entry says which family it belongs to, so the flat weights index needs no back-reference.
        object.__setattr__(
            self, "weights", tuple(dataclasses.replace(e, family=self.name) for e in self.weights)
        )

    def display_name(self, size: str) -> str:
        """Human name of one size, e.g. ``"MobileSAM (vit_t)"``."""
        if size not in self.sizes:
            raise ValueError(f"size: expected one of {list(self.sizes)} for family {self.name!r}, got {size!r}")
        return f"{self.size_titles.get(size, self.title)} ({size})"

    def __repr__(self) -> str:
        return f"ModelFamily(name={self.name!r}, sizes={list(self.sizes)}, model_class={self.model_class.__name__})"
