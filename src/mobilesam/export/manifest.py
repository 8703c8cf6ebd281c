"""The JSON manifest written next to the exported ONNX files, and reading it back."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "mobilesam-onnx"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """An export that failed a check, or exported files that cannot be used."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON through :func:`mobilesam.io.atomic_write_text`."""
    from ..io import atomic_write_text  # mobilesam.io loads PIL: reading a manifest does not need it

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def find_manifest(path: str | os.PathLike) -> Path:
    """The manifest of an export folder (or the manifest file itself)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise FileNotFoundError(
            f"onnx model: '{path}' is not an export folder (no {MANIFEST_NAME}); create one with "
            "'mobilesam export --model mobile_sam.pt --format onnx --out DIR'"
        )
    return p


def read_manifest(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """Load and validate a manifest; returns (folder, manifest)."""
    p = find_manifest(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"onnx model: cannot read manifest '{p}' ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ExportError(f"onnx model: '{p}' is not a mobilesam ONNX manifest (expected \"format\": \"{FORMAT}\")")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ExportError(
            f"onnx model: '{p}' has format_version {data.get('format_version')}, newer than this mobilesam "
            f"reads ({FORMAT_VERSION}); upgrade mobilesam or re-export"
        )
    if not isinstance(data.get("files"), dict):
        raise ExportError(f"onnx model: manifest '{p}' lists no files")
    return p.parent, data


def file_entry(manifest: dict[str, Any], folder: Path, key: str, verify: bool = True) -> Path:
    """Path of the file ``key`` (e.g. "encoder", "decoder_int8"), its checksum verified."""
    files = manifest["files"]
    if key not in files:
        raise ExportError(
            f"onnx model: the export in '{folder}' has no '{key}' file (it has {', '.join(sorted(files))}); "
            "re-export with 'mobilesam export ... --quantize int8' for the int8 files"
        )
    entry = files[key]
    path = folder / entry["path"]
    if not path.is_file():
        raise FileNotFoundError(f"onnx model: '{path}' listed in {MANIFEST_NAME} is missing; re-export the model")
    if verify and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        raise ExportError(
            f"onnx model: '{path}' does not match the SHA-256 in {MANIFEST_NAME} (changed or truncated); re-export it"
        )
    return path
