"""``data.yaml``: the small Ultralytics dataset file (paths, ``nc``, ``names``), without a YAML library.

Written as::

    # optional comment lines
    train: "/abs/images"          <- each given field, in order; strings as JSON strings (valid YAML)
    val: "/abs/images"
    nc: 3
    names:
      0: "cat"

Read back: the same layout and the usual hand-written variations of it — ``#`` comments, plain,
single- or double-quoted scalars, integers, floats, booleans, and ``names`` as a block mapping
(``0: cat``), a block list (``- cat``) or a flow list (``[cat, dog]``). Anything else (nested
mappings, multi-line strings, anchors) raises ``ValueError`` naming the line: this is not a YAML
parser, only the reader of this one small file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from ..io import atomic_write_text

DATA_YAML = "data.yaml"
Scalar = Union[str, int, float, bool, None, os.PathLike]

_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*):(?:\s+(.*))?$")
_ITEM = re.compile(r"^\s+(\d+):\s+(.*)$")
_LIST_ITEM = re.compile(r"^\s+-\s+(.*)$")


def _names_dict(names: Mapping[int, str] | Sequence[str]) -> dict[int, str]:
    items = names.items() if isinstance(names, Mapping) else enumerate(names)
    out = {}
    for i, n in items:
        if not isinstance(n, str):
            raise TypeError(f"names[{i}]: expected a class name as a str, got {type(n).__name__}")
        out[int(i)] = n
    return out


def _scalar_text(value: Scalar, key: str) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value), ensure_ascii=False)  # a JSON string is a YAML scalar
    raise TypeError(f"{key}: expected a str, path, number, bool or None, got {type(value).__name__}")


def data_yaml_text(names: Mapping[int, str] | Sequence[str], comment: str = "", **fields: Scalar) -> str:
    """The text of a ``data.yaml``: ``comment`` lines, ``fields`` in order, then ``nc`` and ``names``."""
    names = _names_dict(names)
    head = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    body = "".join(f"{k}: {_scalar_text(v, k)}\n" for k, v in fields.items())
    listed = "".join(f"  {i}: {_scalar_text(n, f'names[{i}]')}\n" for i, n in names.items())
    return f"{head}{body}nc: {len(names)}\nnames:\n{listed}"


def write_data_yaml(
    path: str | os.PathLike, names: Mapping[int, str] | Sequence[str], comment: str = "", **fields: Scalar
) -> Path:
    """Write :func:`data_yaml_text` to ``path`` atomically (e.g. ``train=..., val=...``)."""
    return atomic_write_text(path, data_yaml_text(names, comment, **fields))


def _parse_scalar(raw: str, where: str) -> Any:
    raw = raw.strip()
    if raw.startswith('"'):
        try:
            value, end = json.JSONDecoder().raw_decode(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: bad double-quoted string {raw!r} ({e.msg})") from None
        _check_rest(raw[end:], where)
        return value
    if raw.startswith("'"):
        m = re.match(r"'((?:[^']|'')*)'", raw)
        if not m:
            raise ValueError(f"{where}: unterminated single-quoted string {raw!r}")
        _check_rest(raw[m.end():], where)
        return m.group(1).replace("''", "'")
    raw = re.split(r"\s+#", raw, maxsplit=1)[0].strip()  # a comment after a plain scalar
    if raw.startswith(("{", "|", ">", "&", "*", "!")):
        raise ValueError(f"{where}: {raw!r} is YAML this reader does not handle (flow mappings, blocks, anchors, tags)")
    if raw in ("", "~", "null", "Null", "NULL"):
        return None
    if raw in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return raw.lower() == "true"
    if re.fullmatch(r"[-+]?\d+", raw):
        return int(raw)
    if re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", raw):
        return float(raw)
    return raw


def _check_rest(rest: str, where: str) -> None:
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        raise ValueError(f"{where}: unexpected {rest!r} after a quoted string")


def _flow_list(raw: str, where: str) -> list[Any]:
    inner = raw.strip()[1:]
    inner = inner[: inner.rindex("]")] if "]" in inner else None
    if inner is None:
        raise ValueError(f"{where}: a list started with '[' must end with ']' on the same line")
    items, token, quote = [], "", ""
    for ch in inner:
        if quote:
            token += ch
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            token += ch
            quote = ch
        elif ch == ",":
            items.append(token)
            token = ""
        else:
            token += ch
    if token.strip() or items:
        items.append(token)
    return [_parse_scalar(t, where) for t in items]


def parse_data_yaml(text: str, source: str = DATA_YAML) -> dict[str, Any]:
    """The fields of a ``data.yaml`` text; ``names`` becomes {index: name}."""
    out: dict[str, Any] = {}
    block: str | None = None  # the key whose indented lines follow
    for lineno, line in enumerate(text.split("\n"), 1):
        where = f"{source} line {lineno}"
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t":
            if block is None:
                raise ValueError(f"{where}: an indented line outside 'names:' ({line.strip()!r})")
            m = _ITEM.match(line)
            if m and isinstance(out[block], dict):
                out[block][int(m.group(1))] = _parse_scalar(m.group(2), where)
                continue
            m = _LIST_ITEM.match(line)
            if m and isinstance(out[block], list):
                out[block].append(_parse_scalar(m.group(1), where))
                continue
            raise ValueError(f"{where}: expected '  N: name' or '  - name' under {block}:, got {line.strip()!r}")
        m = _KEY.match(line)
        if not m:
            raise ValueError(f"{where}: expected 'key: value', got {line!r}")
        key, raw = m.group(1), (m.group(2) or "")
        if key in out:
            raise ValueError(f"{where}: '{key}' is given twice")
        block = None
        if not raw.strip() or raw.lstrip().startswith("#"):
            if key != "names":
                raise ValueError(f"{where}: '{key}:' opens a block; only 'names:' may hold one here")
            peek = next((ln for ln in text.split("\n")[lineno:] if ln.strip() and not ln.lstrip().startswith("#")), "")
            out[key] = [] if _LIST_ITEM.match(peek) else {}
            block = key
        elif raw.lstrip().startswith("["):
            out[key] = _flow_list(raw, where)
        else:
            out[key] = _parse_scalar(raw, where)
    if "names" in out:
        names = out["names"]
        if isinstance(names, list):
            out["names"] = dict(enumerate(names))
        elif not isinstance(names, dict):
            raise ValueError(f"{source}: 'names' must be a list or a mapping of index: name, got {names!r}")
        out["names"] = {i: str(n) for i, n in out["names"].items()}
    return out


def read_data_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The fields of the ``data.yaml`` at ``path`` (see :func:`parse_data_yaml`)."""
    p = Path(path)
    return parse_data_yaml(p.read_text(encoding="utf-8"), f"'{p}'")


__all__ = ["DATA_YAML", "data_yaml_text", "parse_data_yaml", "read_data_yaml", "write_data_yaml"]
