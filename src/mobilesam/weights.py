"""Pretrained weights: a registry of known checkpoints, a local cache, safe
download and safe loading.

This module knows nothing about model classes: it turns a name or a path into
a local file (:func:`resolve_weights`) and a file into a ``state_dict``
(:func:`load_state_dict`). Building the model is ``build.py``'s job.

Environment variables:

* ``MOBILESAM_HOME``: cache folder (default ``~/.cache/mobilesam``).
* ``MOBILESAM_OFFLINE``: ``1``/``true``/``yes`` disables downloads.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pickle
import re
import secrets
import shlex
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

from .hub import WeightsEntry, find_weights, known_weights, weights_aliases

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = [
    "ALIASES",
    "WEIGHTS",
    "CheckpointError",
    "WeightsEntry",
    "cache_dir",
    "check_finite",
    "download_file",
    "get_weights_entry",
    "is_offline",
    "load_state_dict",
    "resolve_weights",
    "weights_digest",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_USER_AGENT = "mobilesam-weights/1"
# Seconds a weights download may go without receiving a byte before it fails. Per read, not for the
# whole file: checkpoints are up to 2.5 GB, and a slow but live transfer shows its progress.
DOWNLOAD_STALL_TIMEOUT = 30.0


# The known checkpoints are listed by the model families (mobilesam.hub); these are the live
# indexes over all registered families, so a family registered at run time resolves here too.
WEIGHTS: dict[str, WeightsEntry] = known_weights()  # file name -> entry
ALIASES: dict[str, str] = weights_aliases()  # short names and Ultralytics' file names -> file name


class CheckpointError(ValueError):
    """A checkpoint could not be found, downloaded or loaded."""


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (hex) of a model's state_dict, names and bytes in sorted order: one name for the same weights
    however they were loaded. Keys the converted files of the onnxruntime and openvino backends and the
    disk cache of embeddings."""
    sd = model.state_dict()
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def get_weights_entry(name: str) -> WeightsEntry | None:
    """Return the registry entry for a file name or alias, or None."""
    return find_weights(name)


def cache_dir() -> Path:
    """Folder holding downloaded weights: ``$MOBILESAM_HOME`` or ``~/.cache/mobilesam``."""
    home = os.environ.get("MOBILESAM_HOME", "").strip()
    if home:
        return Path(home).expanduser()
    return Path.home() / ".cache" / "mobilesam"


def is_offline() -> bool:
    """True when ``$MOBILESAM_OFFLINE`` is ``1``, ``true`` or ``yes``."""
    return os.environ.get("MOBILESAM_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def _known_names() -> str:
    parts = []
    for key in WEIGHTS:
        aliases = [a for a, target in ALIASES.items() if target == key]
        parts.append(f"{key} ({', '.join(aliases)})" if aliases else key)
    return "; ".join(parts)


def _manual_download_hint(entry: WeightsEntry, dest: Path) -> str:
    expected = f"expected SHA-256 {entry.sha256}" if entry.sha256 else "no SHA-256 is published for it"
    return (
        f"Download it by hand and put it at {dest}:\n"
        f"    curl -L -o {shlex.quote(str(dest))} {shlex.quote(entry.url)}\n"
        f"({expected}, about {entry.size_mb:g} MB), or give the path of a "
        "checkpoint file you have: --model path/to/file.pt (command line), SAM(\"path/to/file.pt\") "
        "(Python). Set MOBILESAM_HOME to use another cache folder; MOBILESAM_OFFLINE=1 turns downloads off."
    )


def _is_network_error(exc: BaseException | None) -> bool:
    """True for 'cannot reach the server' errors, as opposed to bad answers (and stalls: a server that
    answered)."""
    if exc is None or isinstance(exc, urllib.error.HTTPError):
        return False
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, TimeoutError):
        return True  # no answer at all within the timeout: connecting timed out
    return isinstance(exc, (urllib.error.URLError, ConnectionError))


def resolve_weights(
    name_or_path: str | os.PathLike[str],
    *,
    offline: bool | None = None,
    progress: bool = True,
) -> Path:
    """Turn a file path or a known weights name into a local checkpoint file.

    An existing file is returned as is. A known name (see :data:`WEIGHTS` and
    :data:`ALIASES`) is looked up in :func:`cache_dir`, then in the current
    folder, and otherwise downloaded into the cache unless ``offline``
    (default: :func:`is_offline`).
    """
    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointError(f"checkpoint: '{raw}' is a folder, not a checkpoint file")

    entry = get_weights_entry(raw)
    if entry is None:
        raise CheckpointError(
            f"checkpoint: file '{raw}' not found; known names are {_known_names()}"
        )

    cached = cache_dir() / entry.name
    if cached.is_file():
        return cached
    local = Path.cwd() / entry.name
    if local.is_file():
        return local

    if offline is None:
        offline = is_offline()
    if offline:
        raise CheckpointError(
            f"checkpoint: '{entry.name}' is not in {cached.parent} nor in the current "
            "folder, and downloads are off (offline mode, MOBILESAM_OFFLINE). "
            + _manual_download_hint(entry, cached)
        )

    logger.info("downloading %s from %s to %s", entry.name, entry.url, cached)
    try:
        download_file(entry.url, cached, entry.sha256, progress=progress)
    except CheckpointError as err:
        cause = err.__cause__
        if _is_network_error(cause):
            raise CheckpointError(
                f"checkpoint: '{entry.name}' is missing from {cached.parent} and could "
                f"not be downloaded: no network? ({type(cause).__name__}: {cause}). "
                + _manual_download_hint(entry, cached)
            ) from cause
        raise CheckpointError(f"{err}\n" + _manual_download_hint(entry, cached)) from cause
    return cached


def _copy_response(
    response: http.client.HTTPResponse, out: BinaryIO, bar: tqdm, tmp: Path
) -> tuple[int, str]:
    """Copy the body to ``out``; return the byte count and its SHA-256."""
    digest = hashlib.sha256()
    n = 0
    # read1: what has arrived, up to a chunk, so the bar moves on a slow connection too.
    while chunk := response.read1(_CHUNK):
        try:
            out.write(chunk)
        except OSError as exc:
            raise CheckpointError(f"download: could not write {tmp}: {exc}") from exc
        digest.update(chunk)
        n += len(chunk)
        bar.update(len(chunk))
    return n, digest.hexdigest()


def download_file(
    url: str,
    dest: Path,
    sha256: str | None,
    progress: bool = True,
    timeout: float | None = None,
) -> None:
    """Download ``url`` to ``dest`` atomically, checking its size and SHA-256 (``sha256=None``: logged as
    unverified, with the digest of what arrived).

    ``timeout`` (default :data:`DOWNLOAD_STALL_TIMEOUT`, read at call time): seconds without a byte
    (connecting, or during the transfer) after which the download fails.

    The body goes to ``<dest>.<random>.part`` in the same folder and is moved
    into place with :func:`os.replace` only once complete and verified, so
    ``dest`` is never a partial file and no ``.part`` file is left behind.
    Every failure raises :class:`CheckpointError`, chained to its cause.
    """
    from tqdm import tqdm  # imported here: only a download needs it, and it is slow to import

    if timeout is None:
        timeout = DOWNLOAD_STALL_TIMEOUT
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"download: cannot create folder {dest.parent}: {exc}") from exc
    # Same folder as dest so that os.replace stays on one file system (atomic).
    tmp = dest.with_name(f"{dest.name}.{secrets.token_hex(6)}.part")
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length_header = response.headers.get("Content-Length")
                expected = int(length_header) if length_header and length_header.isdigit() else None
                with open(tmp, "xb") as out, tqdm(
                    total=expected,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                ) as bar:
                    got, digest = _copy_response(response, out, bar, tmp)
        except urllib.error.HTTPError as exc:
            raise CheckpointError(
                f"download: {url} answered HTTP {exc.code} {exc.reason}; "
                f"could not download {dest.name}"
            ) from exc
        except http.client.IncompleteRead as exc:
            raise CheckpointError(
                f"download: connection to {url} dropped after {len(exc.partial)} bytes "
                f"of {dest.name}; try again"
            ) from exc
        except urllib.error.URLError as exc:
            raise CheckpointError(
                f"download: cannot reach {url} for {dest.name}: {exc.reason}"
            ) from exc
        except TimeoutError as exc:
            raise CheckpointError(
                f"download: {url} timed out: nothing received for {timeout:g} s while fetching "
                f"{dest.name} (stalled connection); try again"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise CheckpointError(
                f"download: fetching {dest.name} from {url} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

        # http.client may report a dropped connection as a short read rather than
        # IncompleteRead, so the byte count must be checked here.
        if expected is not None and got != expected:
            raise CheckpointError(
                f"download: {dest.name} from {url} is incomplete: got {got} of "
                f"{expected} bytes (connection dropped?); try again"
            )
        if sha256 is not None and digest != sha256.lower():
            raise CheckpointError(
                f"download: checksum mismatch for {dest.name} from {url}: "
                f"expected SHA-256 {sha256.lower()}, got {digest}; the file was discarded"
            )
        if sha256 is None:
            # Complete (the byte count matched), but nothing says these are the publisher's bytes. Loading
            # is torch.load(weights_only=True), so a wrong file fails to load; it cannot run code.
            logger.warning(
                "mobilesam: %s has no published SHA-256, so the download from %s is unverified; "
                "its SHA-256 is %s (compare it with a copy you trust)", dest.name, url, digest,
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _registry_hint(path: Path) -> str:
    entry = WEIGHTS.get(path.name)
    return f" (it can be fetched again from {entry.url})" if entry else ""


def _diagnose_load_error(path: Path, exc: Exception) -> CheckpointError:
    """Explain why ``torch.load`` failed, by looking at the file itself.

    torch's own messages differ between failure kinds and versions, so the
    file's header and zip structure decide what is reported.
    """
    message = str(exc)
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    if len(first_line) > 120 and ". " in first_line:
        first_line = first_line.split(". ", 1)[0] + "."  # torch appends long boilerplate
    detail = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    redownload = f"delete it and download it again{_registry_hint(path)}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as read_exc:
        return CheckpointError(f"checkpoint: cannot read '{path}': {read_exc}")

    if size == 0:
        return CheckpointError(
            f"checkpoint: '{path}' is empty; it looks truncated: {redownload}"
        )
    # torch words it "Unsupported global: GLOBAL x" or "Trying to load unsupported GLOBAL x whose module
    # is blocked" (os, sys, ...: the usual payloads), depending on the global.
    if isinstance(exc, pickle.UnpicklingError) and "unsupported global" in message.lower():
        found = re.search(r"GLOBAL (\S+)", message)
        what = f" ({found.group(1)})" if found else ""
        return CheckpointError(
            f"checkpoint: '{path}' holds Python objects other than tensors{what}; "
            "mobilesam refuses to unpickle arbitrary objects for safety (loading "
            "uses torch.load(weights_only=True)). If it is a pickled model, save "
            "its weights with torch.save(model.state_dict(), path) and load that"
        )
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return CheckpointError(
                f"checkpoint: '{path}' looks truncated or corrupt (incomplete zip "
                f"archive, {size} bytes; {detail}): {redownload}"
            )
        return CheckpointError(
            f"checkpoint: '{path}' is a zip archive but not a readable PyTorch "
            f"checkpoint ({detail}); if it was downloaded it may be corrupt: {redownload}"
        )
    # Legacy (pre-zip) torch files are pickles starting with the protocol byte 0x80.
    if head[:1] == b"\x80" and (
        isinstance(exc, EOFError) or "EOF" in message or "truncated" in message
    ):
        return CheckpointError(
            f"checkpoint: '{path}' looks truncated or corrupt ({detail}): {redownload}"
        )
    return CheckpointError(
        f"checkpoint: '{path}' is not a PyTorch checkpoint ({detail}); "
        "pass a .pt/.pth file saved with torch.save"
    )


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with readable errors.

    The one place files are unpickled: tensors, containers and plain values only, never arbitrary
    objects. Use :func:`load_state_dict` for model weights.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint: file '{path}' not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure is diagnosed below
        raise _diagnose_load_error(path, exc) from exc


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a checkpoint file safely and return its ``state_dict``.

    Always uses ``torch.load(..., weights_only=True)``. Accepts a flat
    ``state_dict``, ``{"model": sd}`` or ``{"state_dict": sd}``, and strips the
    ``module.`` prefix that DistributedDataParallel adds.
    """
    path = Path(path).expanduser()
    obj = load_checkpoint(path)
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint: '{path}' holds a {type(obj).__name__}, expected a state_dict "
            "(a dict of tensors, possibly under 'model' or 'state_dict')"
        )
    if not obj:
        raise CheckpointError(f"checkpoint: '{path}' holds an empty dict, no weights")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint: '{path}' is not a dict of tensors: entry {key!r} is a "
                f"{type(value).__name__}; expected a state_dict"
            )

    check_finite(obj, path)

    prefix = "module."
    # Only strip when every key has it (a DDP wrapper); a partial match is a real name.
    if all(key.startswith(prefix) for key in obj):
        return {key[len(prefix):]: value for key, value in obj.items()}
    return dict(obj)


def check_finite(state_dict: dict[str, torch.Tensor], source: str | os.PathLike[str]) -> None:
    """Refuse a state_dict with a NaN or inf in a floating-point tensor, naming the first few tensors.

    Such weights load and run, but every prediction is NaN (``conf=[nan]``, empty masks).
    """
    bad = [
        key for key, value in state_dict.items()
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all())
    ]
    if bad:
        few = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise CheckpointError(
            f"checkpoint: '{source}' holds NaN or inf values in {len(bad)} tensor(s): {few}; "
            f"a model with these weights predicts NaN: the file is damaged or the training diverged"
            f"{_registry_hint(Path(source))}"
        )
