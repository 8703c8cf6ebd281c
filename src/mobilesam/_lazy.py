"""Lazy package attributes (PEP 562): a package's public names are imported from their submodules on
first use, so importing the package, or one submodule of it, does not import every other submodule."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # what typing.TYPE_CHECKING is at run time: ``import mobilesam`` does not import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any


def lazy_attributes(
    package: str, names: Mapping[str, str], namespace: dict[str, Any], public: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``.

    ``names``: public name -> the submodule (relative to ``package``) that defines it. ``namespace``: the
    package's ``globals()``, where a name is stored once imported (later look-ups do not come back here).
    An unknown attribute that is a submodule's name imports that submodule, as ``package.submodule``
    worked when the package's ``__init__`` imported everything.
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is not None:
            value = getattr(importlib.import_module(f"{package}.{module}"), name)
            namespace[name] = value
            return value
        if not name.startswith("_"):
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    listed = sorted(public)

    def __dir__() -> list[str]:
        return sorted({*namespace, *listed})

    return __getattr__, __dir__
