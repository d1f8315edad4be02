"""The one lazy-import helper: a package's public names, imported on first use (PEP 562).

Keeps ``import scope_hub`` (and the registry, cards and CLI) free of torch: a name is imported
from its module only when first looked up, then cached in the package's namespace.

Example:
    >>> getattr_, dir_, all_ = lazy_attributes("pkg", {"sqrt": "math"})
    >>> getattr_("sqrt")(4.0), all_
    (2.0, ['sqrt'])
    >>> getattr_("nope")
    Traceback (most recent call last):
    ...
    AttributeError: module 'pkg' has no attribute 'nope'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose ``names`` map to the module defining each."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        owner = sys.modules.get(package)
        if owner is not None:
            setattr(owner, name, value)  # cached: later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        owner = sys.modules.get(package)
        return sorted({*names, *(vars(owner) if owner is not None else ())})

    return __getattr__, __dir__, sorted(names)
