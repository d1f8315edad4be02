"""Interop: one converter per foreign format, release importers, format detection.

Formats (:data:`~scope_hub.interop.formats.FORMATS`): ``scope-hub``, ``gemma-scope-2``,
``gemma-scope-1``, ``saelens``, ``sparsify``, ``dictionary-learning``, ``circuit-tracer``.
Every converter module offers ``detect(folder)``, ``load(folder) -> Dictionary`` and
``save(dictionary, out)``. Names are imported lazily, so ``import scope_hub.interop`` (and the
CLI's argument parsing) does not import torch.

Example:
    >>> import scope_hub.interop as interop
    >>> "saelens" in interop.FORMATS
    True
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FORMATS": "scope_hub.interop.formats",
    "convert": "scope_hub.interop.formats",
    "detect_format": "scope_hub.interop.formats",
    "get_format": "scope_hub.interop.formats",
    "load_all": "scope_hub.interop.formats",
    "save_all": "scope_hub.interop.formats",
    "import_gemma_scope_2": "scope_hub.interop.gemma_scope_2",
    "import_gemma_scope_1": "scope_hub.interop.gemma_scope_1",
    "ImportReport": "scope_hub.interop.release",
    "key_for": "scope_hub.interop.saelens",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'scope_hub.interop' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
