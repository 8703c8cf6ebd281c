"""``classes.txt``: the class names of a YOLO dataset, one per line; line i (from 0) names class i.

Written as UTF-8, each name followed by ``"\\n"``. A name cannot hold a line break of any kind
(``\\n``, ``\\r``, U+2028, ... : whatever ``str.splitlines`` breaks on), since one would shift every
later class, and cannot be blank, since a blank line names no class: writing either raises
``ValueError``. Reading splits on ``"\\n"`` only (so a U+2028 a foreign tool left inside a name does
not shift the classes after it), strips the spaces round each name (and a Windows ``"\\r"``) and
skips blank lines, keeping the line numbers of the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..io import atomic_write_text

CLASSES_FILE = "classes.txt"


def check_name(name: object, where: str = "name") -> str:
    """``name`` if it can be one line of ``classes.txt``; else a ValueError naming ``where``."""
    if not isinstance(name, str):
        raise TypeError(f"{where}: expected a class name as a str, got {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"{where}: expected a class name, got a blank one ({name!r})")
    if len(f"x{name}x".splitlines()) != 1:
        raise ValueError(
            f"{where}: a class name cannot contain a line break (\\n, \\r, U+2028, ...): it would take two "
            f"lines of {CLASSES_FILE}; got {name!r}"
        )
    return name


def classes_text(names: Iterable[str]) -> str:
    """The text of a ``classes.txt`` holding ``names`` in order (each checked by :func:`check_name`)."""
    return "".join(f"{check_name(n, f'names[{i}]')}\n" for i, n in enumerate(names))


def write_classes(path: str | os.PathLike, names: Iterable[str]) -> Path:
    """Write ``names`` (class 0 first) to ``path`` atomically; refuses names that are not one line."""
    return atomic_write_text(path, classes_text(names))


def parse_classes(text: str) -> dict[int, str]:
    """{line number: name} of the non-blank lines of a ``classes.txt`` text."""
    return {i: line.strip() for i, line in enumerate(text.split("\n")) if line.strip()}


def read_classes(path: str | os.PathLike, errors: str = "strict") -> dict[int, str]:
    """{class index: name} from a ``classes.txt`` file (see the module docstring for the rule).

    ``errors`` is how bytes that are not UTF-8 are decoded ("strict": ValueError naming the file;
    "replace": U+FFFD).
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise ValueError(f"{CLASSES_FILE}: '{p}' is not UTF-8 text ({e})") from None
    return parse_classes(text)


__all__ = ["CLASSES_FILE", "check_name", "classes_text", "parse_classes", "read_classes", "write_classes"]
