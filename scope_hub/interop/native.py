"""The scope-hub format itself (``config.json`` with ``schema_version`` + Gemma Scope 2 tensors).

Listed in :data:`scope_hub.interop.formats.FORMATS` so ``scope-hub convert`` can read and write
it like any peer format.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from scope_hub.dictionaries import SAE
    >>> from scope_hub.metadata import DictionaryConfig
    >>> sae = SAE(DictionaryConfig(type="sae", architecture="relu", d_in=4, d_sae=8))
    >>> _ = [p.data.zero_() for p in sae.parameters()]
    >>> out = save(sae, Path(tempfile.mkdtemp()) / "d")
    >>> detect(out), load(out).config.d_sae
    (True, 8)
"""

from __future__ import annotations

import json
from pathlib import Path

from scope_hub.dictionaries import Dictionary

NAME = "scope-hub"
FILES = "config.json (with schema_version) + params.safetensors | params_layer_{i}.safetensors"


def detect(folder: Path) -> bool:
    """A ``config.json`` carrying ``schema_version`` next to our weight files."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        return False
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    has_weights = (folder / "params.safetensors").is_file() or (folder / "params_layer_0.safetensors").is_file()
    return isinstance(raw, dict) and "schema_version" in raw and has_weights


def load(folder: Path) -> Dictionary:
    """:meth:`Dictionary.from_pretrained` (every check of the native loader applies)."""
    return Dictionary.from_pretrained(folder)


def save(dictionary: Dictionary, out: Path) -> Path:
    """:meth:`Dictionary.save_pretrained` (atomic)."""
    return dictionary.save_pretrained(out)
