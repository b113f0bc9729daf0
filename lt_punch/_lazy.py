"""PEP 562 lazy attributes: one copy for ``lt_punch``, ``lt_punch.nat`` and
``lt_punch.signaling``, whose names load their modules (and what those import:
libtorrent, websockets, aiohttp) only on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, names: Mapping[str, str], namespace: Mapping[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``.

    ``names`` maps an attribute to the module that defines it: absolute, or relative to
    ``package`` with a leading dot. ``namespace`` is the package's ``globals()``.
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
