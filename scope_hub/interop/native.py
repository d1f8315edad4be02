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

from pathlib import Path

from scope_hub.dictionaries import Dictionary
from scope_hub.registry.content import is_native_folder

NAME = "scope-hub"
FILES = "config.json (with schema_version) + params.safetensors | params_layer_{i}.safetensors"


def detect(folder: Path) -> bool:
    """A ``config.json`` carrying ``schema_version`` next to our weight files."""
    return is_native_folder(folder)


def load(folder: Path, *, allow_nonfinite: bool = False) -> Dictionary:
    """:meth:`Dictionary.from_pretrained` (every check of the native loader applies)."""
    return Dictionary.from_pretrained(folder, allow_nonfinite=allow_nonfinite)


def save(dictionary: Dictionary, out: Path) -> Path:
    """:meth:`Dictionary.save_pretrained` (atomic)."""
    return dictionary.save_pretrained(out)
