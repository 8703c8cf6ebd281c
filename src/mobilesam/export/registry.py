"""The one registry of export formats. ``mobilesam export --format NAME``, ``SAM.export(format=NAME)`` and
:func:`export_model` all go through it, so a format registered here (by this package or a user's code)
works everywhere.

An exporter is ``fn(model, out_dir, *, check=True, progress=True, **options) -> manifest`` where ``model`` is
a ``Sam`` (or a checkpoint path / weights name) and the manifest is the dict it wrote as ``manifest.json``
(``files``: key -> path, bytes, sha256, precision, inputs, outputs; ``checks``: what was measured against
PyTorch at export time). The registry knows which options each format takes, so an option it does not
take is refused by name instead of being ignored; and which backends run the folder it writes.

The registry imports no exporter (nor torch) until one runs: listing formats stays fast for ``--help``.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExportFormat:
    """A registered export format.

    ``exporter`` is the function, or ``"module:function"`` (a module of this package when it starts with
    a dot) imported on first use. ``options``: the keyword options it takes beyond ``check`` and
    ``progress``. ``backends``: the backends that run its folder (``SAM(folder, backend=...)``).
    ``folder_suffix``: the default output folder is ``<checkpoint stem>_<suffix>``. ``extra``: the pip
    extra it needs, named in errors.
    """

    name: str
    exporter: Callable[..., dict[str, Any]] | str
    description: str = ""
    options: frozenset[str] = field(default_factory=frozenset)
    backends: tuple[str, ...] = ()
    folder_suffix: str = ""
    extra: str = ""

    def load(self) -> Callable[..., dict[str, Any]]:
        if callable(self.exporter):
            return self.exporter
        module, _, attr = self.exporter.partition(":")
        return getattr(importlib.import_module(module, package=__package__), attr)


_FORMATS: dict[str, ExportFormat] = {}
_LOCK = threading.Lock()


def register_export_format(
    name: str,
    exporter: Callable[..., dict[str, Any]] | str,
    *,
    description: str = "",
    options: tuple[str, ...] | frozenset[str] = (),
    backends: tuple[str, ...] = (),
    folder_suffix: str | None = None,
    extra: str = "",
    replace: bool = False,
) -> None:
    """Make ``exporter`` available as ``format=name`` everywhere. Re-registering a name needs ``replace``."""
    if not isinstance(name, str) or not name.strip() or name != name.strip() or "," in name:
        raise ValueError(f"name: expected a non-empty format name without spaces at the ends or commas, got {name!r}")
    if not (callable(exporter) or (isinstance(exporter, str) and ":" in exporter)):
        raise TypeError(f"exporter: expected a callable or 'module:function', got {exporter!r}")
    with _LOCK:
        if name in _FORMATS and not replace:
            raise ValueError(f"name: export format {name!r} is already registered; pass replace=True to replace it")
        _FORMATS[name] = ExportFormat(
            name, exporter, description, frozenset(options), tuple(backends),
            name if folder_suffix is None else folder_suffix, extra,
        )


def unregister_export_format(name: str) -> None:
    """Remove a format (a user's, usually in a test's clean-up)."""
    with _LOCK:
        if _FORMATS.pop(name, None) is None:
            raise ValueError(f"name: no export format {name!r} is registered; registered: {available_export_formats()}")


def available_export_formats() -> list[str]:
    """The registered format names, in registration order (built-in ones first)."""
    return list(_FORMATS)


def get_export_format(name: str) -> ExportFormat:
    """The entry of ``name``; a ValueError listing the registered ones otherwise."""
    entry = _FORMATS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"format: expected one of {available_export_formats()}, got {name!r}")
    return entry


def default_export_folder(model: Any, format: str) -> str:
    """``<checkpoint stem>_<suffix>`` in the current folder (``mobilesam_<suffix>`` for an in-memory model)."""
    entry = get_export_format(format)
    stem = os.path.splitext(os.path.basename(os.fspath(model)))[0] if isinstance(model, (str, os.PathLike)) else ""
    return os.path.join(os.getcwd(), f"{stem or 'mobilesam'}_{entry.folder_suffix}")


def backend_for_export(folder: str | os.PathLike) -> str | None:
    """The first backend of the format that wrote the export ``folder`` (its manifest's ``"format"`` is
    ``"mobilesam-<format name>"``), or None when the folder has no readable manifest or an unknown format.
    A ValueError for a format that no backend runs (Core ML: macOS and iOS only)."""
    import json

    path = os.path.join(os.fspath(folder), "manifest.json") if os.path.isdir(folder) else os.fspath(folder)
    try:
        with open(path, encoding="utf-8") as f:
            written_by = json.load(f).get("format", "")
    except (OSError, ValueError, AttributeError):
        return None
    entry = _FORMATS.get(written_by.removeprefix("mobilesam-")) if isinstance(written_by, str) else None
    if entry is None:
        return None
    if not entry.backends:
        raise ValueError(f"model: '{os.fspath(folder)}' is a {entry.name} export, which no backend of this package "
                         f"runs ({entry.description}); run it with its own runtime")
    return entry.backends[0]


def export_model(
    model: Any,
    out_dir: str | os.PathLike | None = None,
    format: str = "onnx",
    *,
    check: bool = True,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Export ``model`` (a ``Sam``, a checkpoint path or a weights name) as ``format`` into ``out_dir``
    (default :func:`default_export_folder`); returns the manifest. An option the format does not take
    is a ValueError naming it and the ones it takes."""
    entry = get_export_format(format)
    unknown = sorted(set(options) - entry.options)
    if unknown:
        takes = ", ".join(sorted(entry.options)) or "none"
        raise ValueError(f"{unknown[0]}: not an option of the {format!r} export format (it takes: {takes})")
    out = out_dir if out_dir is not None else default_export_folder(model, format)
    return entry.load()(model, out, check=check, progress=progress, **options)


__all__ = [
    "ExportFormat",
    "available_export_formats",
    "backend_for_export",
    "default_export_folder",
    "export_model",
    "get_export_format",
    "register_export_format",
    "unregister_export_format",
]
