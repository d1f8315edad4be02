"""scope-hub: a model-hub plugin and dictionary registry for mechanistic interpretability.

Top-level names are imported lazily so that torch-free parts (registry, keys,
cards, most of the CLI) never pull in torch.

Example:
    >>> import scope_hub
    >>> scope_hub.parse_key("google/gemma-3-270m:resid_post/layer_12/width_16k/sae").layer
    12
"""

from __future__ import annotations

from scope_hub.lazy_imports import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "parse_key": "scope_hub.keys",
    "DictionaryKey": "scope_hub.keys",
    "DictionaryConfig": "scope_hub.metadata",
    "Dictionary": "scope_hub.dictionaries",
    "load_dictionary": "scope_hub.loading",
    "Registry": "scope_hub.registry",
    "ScopedModel": "scope_hub.scoped_model",
}

__getattr__, __dir__, _names = lazy_attributes(__name__, _LAZY)
__all__ = [*_names, "__version__"]
