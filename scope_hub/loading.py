"""``load_dictionary``: one call for a local folder, a registry key, a Hub folder or a SAELens name.

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
from scope_hub.errors import ConfigError, DictionaryNotFoundError, KeyParseError
from scope_hub.keys import DictionaryKey, parse_key
from scope_hub.sources import is_remote_source, load_folder, load_locked, load_remote, saelens_source


def load_dictionary(
    source: str | Path | DictionaryKey | None = None,
    *,
    release: str | None = None,
    sae_id: str | None = None,
    registry: Any = None,
    lock: str | Path | None = None,
    lazy: bool = False,
    **kwargs: Any,
) -> Dictionary:
    """Load a dictionary from any source scope-hub knows.

    ``source`` is a folder (any layout :func:`scope_hub.interop.detect_format` knows), a
    registry key (``model:site/layer_L/width_W/type[@ref]``), a Hub folder
    (``hf://ORG/REPO/FOLDER[@revision]``) or a SAELens name (``saelens://RELEASE/SAE_ID``);
    or give SAELens's ``release`` and ``sae_id`` instead, as ``SAE.from_pretrained`` takes them:
    ``load_dictionary(release="gemma-scope-2-270m-pt-res", sae_id="layer_12_width_16k_l0_small")``.
    Only the named Hub folder is downloaded, into the Hugging Face cache.

    ``registry`` is a :class:`scope_hub.registry.Registry` or its URL (default: the
    local registry, or ``$SCOPE_HUB_REGISTRY``). ``lock``: a lockfile (``scope-hub lock``) that
    pins the key or Hub source; the bytes loaded are then exactly the locked ones.

    ``lazy`` (default False, as every scope-hub loader): True checks the files now but reads
    tensor data only on first use (scope-hub's own layout; other layouts are converted in
    memory, so they load in full). Other keyword arguments go to
    :meth:`Dictionary.from_pretrained` (``device``, ``dtype``, ``matryoshka_groups``,
    ``allow_nonfinite``).
    """
    kwargs["lazy"] = lazy
    if release is not None or sae_id is not None:
        if source is not None or not (release and sae_id):
            raise ConfigError("give either a source, or both release= and sae_id= (SAELens names)")
        source = saelens_source(release, sae_id)
    if source is None:
        raise ConfigError("load_dictionary needs a source (folder, key, hf:// folder) or release= and sae_id=")
    if is_remote_source(source):
        if lock is not None:
            return load_locked(str(source), lock, **kwargs).dictionary
        return load_remote(str(source), **kwargs).dictionary
    if isinstance(source, Path) or (isinstance(source, str) and Path(source).is_dir()):
        return load_folder(Path(source), **kwargs) if Path(source).is_dir() else Dictionary.from_pretrained(source)
    try:
        key = source if isinstance(source, DictionaryKey) else parse_key(str(source))
    except KeyParseError as exc:
        raise DictionaryNotFoundError(
            f"{source!r} is neither a dictionary folder, a registry key, an hf://ORG/REPO/FOLDER "
            f"nor a saelens://RELEASE/SAE_ID ({exc})"
        ) from None
    from scope_hub.registry import as_registry

    if lock is not None:
        from scope_hub.registry.api import pull_locked

        return Dictionary.from_pretrained(pull_locked(key, lock), **kwargs)
    reg = as_registry(registry)
    return Dictionary.from_pretrained(reg.pull(key), **kwargs)
