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

from scope_hub.lazy_imports import lazy_attributes

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

__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY)
