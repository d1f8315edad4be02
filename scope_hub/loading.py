"""``load_dictionary``: one call for a local folder or a registry key.

Example:
    >>> import tempfile
    >>> from scope_hub.dictionaries import SAE
    >>> from scope_hub.metadata import DictionaryConfig
    >>> folder = SAE(DictionaryConfig(type="sae", architecture="relu", d_in=4, d_sae=8)).save_pretrained(
    ...     tempfile.mkdtemp() + "/sae")
    >>> load_dictionary(folder).config.d_sae
    8
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scope_hub.dictionaries import Dictionary
from scope_hub.errors import DictionaryNotFoundError, KeyParseError
from scope_hub.keys import DictionaryKey, parse_key


def load_dictionary(
    source: str | Path | DictionaryKey,
    *,
    registry: Any = None,
    **kwargs: Any,
) -> Dictionary:
    """Load a dictionary from a folder path or a registry key (``model:site/layer_L/width_W/type[@ref]``).

    ``registry`` is a :class:`scope_hub.registry.Registry` or its URL (default: the
    local registry, or ``$SCOPE_HUB_REGISTRY``). Keyword arguments go to
    :meth:`Dictionary.from_pretrained` (``device``, ``dtype``, ``lazy``,
    ``matryoshka_groups``, ``allow_nonfinite``).
    """
    if isinstance(source, Path) or (isinstance(source, str) and Path(source).is_dir()):
        return Dictionary.from_pretrained(source, **kwargs)
    try:
        key = source if isinstance(source, DictionaryKey) else parse_key(str(source))
    except KeyParseError as exc:
        raise DictionaryNotFoundError(f"{source!r} is neither a dictionary folder nor a registry key ({exc})") from None
    from scope_hub.registry import as_registry

    reg = as_registry(registry)
    return Dictionary.from_pretrained(reg.pull(key), **kwargs)
