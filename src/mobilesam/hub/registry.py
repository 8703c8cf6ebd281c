"""The registry of model families, and the flat index of every family's known weights.

Families are tried in registration order; the first whose ``detect`` recognises a state_dict wins.
The weights index (:func:`known_weights`, :func:`weights_aliases`) is kept in step with the
registry, so ``mobilesam.weights`` resolves the weights of a family registered at run time too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn

from .family import ModelFamily, WeightsEntry

__all__ = [
    "Match",
    "closest_architecture",
    "detect_family",
    "families",
    "family_for_size",
    "family_of",
    "find_weights",
    "get_family",
    "known_sizes",
    "known_weights",
    "register_family",
    "unregister_family",
    "weights_aliases",
]

logger = logging.getLogger(__name__)

_FAMILIES: dict[str, ModelFamily] = {}
# The index is one dict object for the life of the process: mobilesam.weights hands it out as WEIGHTS
# and ALIASES, and callers (tests) may patch single entries in it.
_WEIGHTS: dict[str, WeightsEntry] = {}
_ALIASES: dict[str, str] = {}
_SIGNATURES: dict[tuple[ModelFamily, str], dict[str, tuple[int, ...]]] = {}

# Below this share of common keys (with equal shapes) a state_dict is not called "close" to a size.
_CLOSE_ENOUGH = 0.5


def register_family(family: ModelFamily, *, replace: bool = False) -> None:
    """Add ``family``; with ``replace`` a family of the same name is swapped out.

    Its weights join the index; a file name or alias already known for another family is refused.
    """
    if not isinstance(family, ModelFamily):
        raise TypeError(f"family: expected a ModelFamily, got {type(family).__name__}")
    old = _FAMILIES.get(family.name)
    if old is not None and not replace:
        raise ValueError(f"family: {family.name!r} is already registered; pass replace=True to swap it")
    ignored = set(_weights_names(old)) if old is not None else set()
    taken = (set(_WEIGHTS) | set(_ALIASES)) - ignored
    clashes = sorted(set(_weights_names(family)) & taken)
    if clashes:
        raise ValueError(f"family {family.name!r}: weights names {clashes} are already known for another family")
    if old is not None:
        unregister_family(old.name)
    _FAMILIES[family.name] = family
    for entry in family.weights:
        _WEIGHTS[entry.name] = entry
        for alias in entry.aliases:
            _ALIASES[alias] = entry.name


def unregister_family(name: str) -> ModelFamily:
    """Remove the family called ``name`` and its weights; return it."""
    family = get_family(name)
    del _FAMILIES[name]
    for entry in family.weights:
        _WEIGHTS.pop(entry.name, None)
        for alias in entry.aliases:
            _ALIASES.pop(alias, None)
    for key in [k for k in _SIGNATURES if k[0] is family]:
        del _SIGNATURES[key]
    return family


def families() -> tuple[ModelFamily, ...]:
    """The registered families, in registration (= detection) order."""
    return tuple(_FAMILIES.values())


def get_family(name: str) -> ModelFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"family: expected one of {list(_FAMILIES)}, got {name!r}") from None


def known_sizes() -> list[str]:
    """Every size name of every family, in registration order (duplicates once)."""
    return list(dict.fromkeys(size for f in _FAMILIES.values() for size in f.sizes))


def family_for_size(size: str, prefer: ModelFamily | None = None) -> ModelFamily:
    """The family that has ``size``: ``prefer`` if it has it, else the first registered that does."""
    if prefer is not None and size in prefer.sizes:
        return prefer
    for family in _FAMILIES.values():
        if size in family.sizes:
            return family
    raise ValueError(f"model_type: expected one of {sorted(known_sizes())}, got {size!r}")


def family_of(model: nn.Module) -> ModelFamily:
    """The family whose ``model_class`` ``model`` is an instance of (the most derived one if several)."""
    mro = type(model).__mro__
    matches = [f for f in _FAMILIES.values() if isinstance(model, f.model_class)]
    if not matches:
        known = ", ".join(f"{f.name}: {f.model_class.__name__}" for f in _FAMILIES.values())
        raise TypeError(f"model: expected a module of a registered family ({known}), got {type(model).__name__}")
    return min(matches, key=lambda f: mro.index(f.model_class))


def detect_family(state_dict: Mapping[str, torch.Tensor]) -> tuple[ModelFamily, str] | None:
    """(family, size) whose key signature ``state_dict`` has, or None."""
    for family in _FAMILIES.values():
        size = family.detect(state_dict)
        if size is not None:
            return family, size
    return None


class Match(NamedTuple):
    """What :func:`closest_architecture` found; ``score`` is the share of common keys, in [0, 1]."""

    family: ModelFamily
    size: str
    score: float


def closest_architecture(state_dict: Mapping[str, torch.Tensor]) -> Match | None:
    """The (family, size) sharing the most keys with equal shapes, when it shares at least half.

    Meant for error messages, when :func:`detect_family` found nothing (a key the signature needs is
    missing, say): it builds each size once on the meta device, so it costs a second or two the
    first time and nothing is allocated.
    """
    best: Match | None = None
    for family in _FAMILIES.values():
        for size in family.sizes:
            reference = _signature(family, size)
            if reference is None:
                continue
            same = sum(1 for k, shape in reference.items() if k in state_dict and tuple(state_dict[k].shape) == shape)
            score = same / len(reference.keys() | state_dict.keys())
            if best is None or score > best.score:
                best = Match(family, size, score)
    return best if best is not None and best.score >= _CLOSE_ENOUGH else None


def known_weights() -> dict[str, WeightsEntry]:
    """The live index file name -> entry, over every registered family."""
    return _WEIGHTS


def weights_aliases() -> dict[str, str]:
    """The live index alias -> file name, over every registered family."""
    return _ALIASES


def find_weights(name: str) -> WeightsEntry | None:
    """The entry for a file name or alias, or None."""
    return _WEIGHTS.get(_ALIASES.get(name, name))


def _weights_names(family: ModelFamily) -> list[str]:
    return [n for e in family.weights for n in (e.name, *e.aliases)]


def _signature(family: ModelFamily, size: str) -> dict[str, tuple[int, ...]] | None:
    """Keys and shapes of ``family.build(size)``, built on the meta device; None if that fails."""
    key = (family, size)
    if key not in _SIGNATURES:
        try:
            with torch.device("meta"):
                state = family.build(size).state_dict()
        except Exception as exc:  # noqa: BLE001 - only diagnostics depend on it
            logger.debug("cannot build %s %s on the meta device: %s", family.name, size, exc)
            return None
        _SIGNATURES[key] = {k: tuple(v.shape) for k, v in state.items()}
    return _SIGNATURES[key]
