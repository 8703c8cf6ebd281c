"""The one registry of predictor backends. Every front end (``SAM``, segment everything, ``auto_annotate``,
the server, validation, the benchmark and the CLI) makes its predictors through :func:`create_predictor`,
so a backend registered here, by this package or by a user's own code, works everywhere.

    from mobilesam.backends import register_backend, create_predictor
    register_backend("mine", lambda sam, **options: MyPredictor(sam, **options))
    SAM("mobile_sam.pt", backend="mine").predict("photo.jpg", points=[900, 370])
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry itself needs no torch: listing and checking names stays fast
    from .base import Predictor


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend: ``factory(model, **options) -> Predictor``.

    ``model`` is a torch ``Sam`` module, or, for a backend with ``exported=True``, also a folder written
    by ``mobilesam export``.
    """

    name: str
    factory: Callable[..., Predictor]
    description: str = ""
    exported: bool = False


_BACKENDS: dict[str, BackendEntry] = {}
_LOCK = threading.Lock()


def register_backend(
    name: str,
    factory: Callable[..., Predictor],
    *,
    description: str = "",
    exported: bool = False,
    replace: bool = False,
) -> None:
    """Make ``factory`` available as ``backend=name`` everywhere. Re-registering a name needs ``replace``."""
    if not isinstance(name, str) or not name.strip() or name != name.strip() or "," in name:
        raise ValueError(f"name: expected a non-empty backend name without spaces at the ends or commas, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable factory(model, **options) -> predictor, got {type(factory).__name__}")
    with _LOCK:
        if name in _BACKENDS and not replace:
            raise ValueError(f"name: backend {name!r} is already registered; pass replace=True to replace it")
        _BACKENDS[name] = BackendEntry(name, factory, description, exported)


def unregister_backend(name: str) -> None:
    """Remove a backend (a user's, usually in a test's clean-up)."""
    with _LOCK:
        if _BACKENDS.pop(name, None) is None:
            raise ValueError(f"name: no backend {name!r} is registered; registered: {available_backends()}")


def available_backends() -> list[str]:
    """The registered backend names, in registration order (built-in ones first)."""
    return list(_BACKENDS)


def get_backend(name: str) -> BackendEntry:
    """The entry of ``name``; a ValueError listing the registered ones otherwise."""
    entry = _BACKENDS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"backend: expected one of {sorted(_BACKENDS)}, got {name!r}")
    return entry


class _FactoryView(Mapping):
    """Read-only ``name -> factory`` view of the registry (the old ``mobilesam.model.BACKENDS`` dict)."""

    def __getitem__(self, name: str) -> Callable[..., Predictor]:
        return _BACKENDS[name].factory

    def __iter__(self) -> Iterator[str]:
        return iter(list(_BACKENDS))

    def __len__(self) -> int:
        return len(_BACKENDS)


BACKENDS: Mapping[str, Callable[..., Predictor]] = _FactoryView()


def is_exported_model(model: Any) -> bool:
    """True for a folder written by ``mobilesam export`` (or its manifest file)."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    return os.path.isdir(model) or os.path.basename(os.fspath(model)) == "manifest.json"


def create_predictor(model: Any, backend: str = "torch", *, device: Any = None, **options: Any) -> Predictor:
    """A predictor of ``backend`` for ``model``.

    ``model``: a ``Sam`` module (moved to ``device`` when one is given), a checkpoint path or known weights
    name (built with ``build_sam`` on ``device``; None picks CUDA, then MPS, then CPU), or a folder written by ``mobilesam export`` (for backends that run exported files).
    ``options`` go to the backend's factory (for example ``max_batch=16``, or ``threads=2`` for ONNX
    Runtime); a factory that does not know an option raises a TypeError naming it.
    """
    entry = get_backend(backend)
    if is_exported_model(model):
        if not entry.exported:
            exported = [n for n, e in _BACKENDS.items() if e.exported]
            raise ValueError(
                f"backend: {backend!r} needs PyTorch weights, but model is an exported folder ({os.fspath(model)}); "
                f"backends that run exported folders: {exported}"
            )
        return entry.factory(model, **options)
    if isinstance(model, (str, os.PathLike)):
        from ..build import build_sam
        from ..device import select_device

        model = build_sam(model, device=select_device(device))  # None: CUDA, then MPS, then CPU
    elif device is not None and hasattr(model, "to"):
        from ..device import select_device

        model = model.to(select_device(device))
    if hasattr(model, "eval"):
        model.eval()
    return entry.factory(model, **options)
