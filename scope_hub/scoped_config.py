"""The small config a ScopedModel saves, and turning dictionary sources into dictionaries.

``scoped_model.json`` records the base model (id + revision) and every attached
dictionary pinned so that :meth:`ScopedModel.from_pretrained` rebuilds exactly
the same scoped model: registry keys with their version and content sha256,
Hub folders (``hf://``, ``saelens://``) at the commit they resolved to with their
content sha256, local folders with their path and content sha256, in-memory
dictionaries saved next to the config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from scope_hub.atomic_files import atomic_write_text
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ConfigError, DictionaryNotFoundError, IntegrityError, KeyParseError
from scope_hub.keys import DictionaryKey, parse_key
from scope_hub.metadata import SCHEMA_VERSION
from scope_hub.model_resolution import converted_weights
from scope_hub.registry.content import folder_digest
from scope_hub.sources import is_remote_source, load_folder, load_remote

if TYPE_CHECKING:
    from scope_hub.scoped_model import ScopedModel


class DictionaryEntry(BaseModel):
    """One attached dictionary, pinned."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Name the dictionary is attached under."""
    key: str | None = None
    """Registry key pinned to a version (``...@vN``), when it came from a registry."""
    registry: str | None = None
    """URL of that registry."""
    path: str | None = None
    """Folder it was loaded from (relative paths are relative to the saved config)."""
    source: str | None = None
    """Hub folder it was downloaded from, pinned to a commit (``hf://ORG/REPO/FOLDER@<sha>``)."""
    sha256: str | None = None
    """Content hash: the manifest's content_sha256 for keys, :func:`folder_sha256` for folders and Hub folders."""


class ScopedModelConfig(BaseModel):
    """Contents of ``scoped_model.json``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    FILE: ClassVar[str] = "scoped_model.json"

    schema_version: int = SCHEMA_VERSION
    """Schema version of this file."""
    base_model: str
    """Hub id or local folder of the base causal LM."""
    base_model_revision: str | None = None
    """Revision of the base model, if pinned."""
    base_model_weights: dict[str, str] | None = None
    """Set when the base model is a converted local copy (e.g. GGUF Q4_K_M, dequantized): what its
    weights are (:func:`scope_hub.model_resolution.converted_weights`)."""
    dictionaries: list[DictionaryEntry]
    """Attached dictionaries, in attach order."""

    @classmethod
    def read(cls, folder: Path) -> ScopedModelConfig:
        path = folder / cls.FILE
        try:
            return cls.model_validate_json(path.read_text())
        except ValueError as exc:
            raise ConfigError(
                f"{path}: not a valid scoped-model config ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}); re-save it with ScopedModel.save_pretrained"
            ) from None


def folder_sha256(folder: Path) -> str:
    """sha256 over the sorted (file name, file sha256) pairs of a dictionary folder."""
    return folder_digest(folder)


def _default_name(dictionary: Dictionary) -> str:
    c = dictionary.config
    where = f"layer_{c.layer}" if c.layer is not None else "layers_" + "-".join(map(str, c.layers or []))
    return f"{c.site or 'site'}/{where}/{c.type}"


def key_name(key: DictionaryKey) -> str:
    """The name a registry key is attached under when no name is given: ``{site}_{layer}``.

    The full key (without its ref) is used instead when that short name is already taken.

    Example:
        >>> key_name(parse_key("google/gemma-3-270m:resid_post/layer_12/width_16k/sae/l0_small@v2"))
        'resid_post_12'
        >>> key_name(parse_key("google/gemma-3-270m:mlp/layer_all/width_262k/clt"))
        'mlp_all'
    """
    return f"{key.site}_{key.layer}"


def looks_like_path(source: str) -> bool:
    """True when ``source`` is meant as a folder rather than a registry key.

    Example:
        >>> looks_like_path("/tmp/x/nosuch"), looks_like_path("./sae"), looks_like_path("~/sae")
        (True, True, True)
        >>> looks_like_path("google/gemma-3-270m:resid_post/layer_6/width_16k/sae")
        False
    """
    if source.startswith(("/", ".", "~")):
        return True
    parent = Path(source).parent
    return "/" in source and parent != Path(".") and parent.is_dir()


def reject_missing_folder(source: str) -> None:
    """Raise :class:`DictionaryNotFoundError` ("no such folder") when ``source`` is meant as a folder
    (:func:`looks_like_path`) that does not exist, rather than letting it fail as a malformed key."""
    if not looks_like_path(source):
        return
    try:
        exists = Path(source).expanduser().is_dir()
    except RuntimeError:  # "~name" naming no user of this system
        exists = False
    if not exists:
        raise DictionaryNotFoundError(
            f"{source}: no such folder (a dictionary folder holds config.json and "
            "params.safetensors; a registry key looks like MODEL:SITE/layer_L/width_W/TYPE)",
            path=source,
        )


def load_dictionary_source(
    source: Any, base: Path | None, registry: Any, *, lazy: bool
) -> tuple[Dictionary, dict[str, Any]]:
    """(dictionary, record) for a Dictionary, a folder, a registry key, or a saved DictionaryEntry."""
    if isinstance(source, DictionaryEntry):
        return _from_entry(source, base, registry, lazy)
    if isinstance(source, Dictionary):
        return source, {"name": _default_name(source), "inline": True}
    if is_remote_source(source):
        return _from_hub(str(source), lazy, expected_sha=None)
    folder = Path(source)
    if folder.is_dir():
        record = {"name": folder.name, "path": os.path.abspath(folder), "folder": os.path.abspath(folder)}
        return load_folder(folder, lazy=lazy), record
    if not isinstance(source, DictionaryKey):
        reject_missing_folder(str(source))
    try:
        key = source if isinstance(source, DictionaryKey) else parse_key(str(source))
    except KeyParseError as exc:
        raise DictionaryNotFoundError(f"{source!r} is neither a dictionary folder nor a registry key ({exc})") from None
    return _from_registry(key, registry, lazy, expected_sha=None)


def load_sources(sources: Any, registry: Any, *, lazy: bool) -> list[tuple[str, Dictionary, dict[str, Any]]]:
    """``(name, dictionary, record)`` for each source of a list, a ``{name: source}`` mapping or one source.

    Every source is found and checked here (folders exist and hold a dictionary, keys parse and
    resolve in the registry), so a caller can do this before any slow model load.
    """
    if isinstance(sources, (str, os.PathLike, Dictionary, DictionaryKey)):
        sources = [sources]
    items = sources.items() if isinstance(sources, Mapping) else ((None, source) for source in sources)
    loaded = []
    for given, source in items:
        dictionary, record = load_dictionary_source(source, None, registry, lazy=lazy)
        loaded.append((given or record["name"], dictionary, {**record, "given": given is not None}))
    return loaded


def _registry(registry: Any) -> Any:
    from scope_hub.registry import as_registry

    return as_registry(registry)


def _from_registry(key: DictionaryKey, registry: Any, lazy: bool, expected_sha: str | None):
    reg = _registry(registry)
    manifest = reg.resolve(key)
    if expected_sha is not None and manifest.content_sha256 != expected_sha:
        raise IntegrityError(
            f"{key}: registry {reg.url} now holds content {manifest.content_sha256[:12]} but the saved scoped model "
            f"pinned {expected_sha[:12]}; pull the exact version or re-save the scoped model"
        )
    pinned = key.with_ref(f"v{manifest.version}")
    folder = reg.pull(pinned)
    record = {
        "name": key_name(key),
        "full_name": str(key.unpinned()),
        "key": str(pinned),
        "registry": reg.url,
        "sha256": manifest.content_sha256,
        "folder": str(folder),
    }
    return Dictionary.from_pretrained(folder, lazy=lazy), record


def _from_hub(source: str, lazy: bool, expected_sha: str | None):
    loaded = load_remote(source, lazy=lazy, expected_sha256=expected_sha)
    name = loaded.folder.path.rsplit("/", 1)[-1]
    record = {"name": name, "source": str(loaded.folder), "sha256": loaded.sha256, "folder": str(loaded.local)}
    return loaded.dictionary, record


def _from_entry(entry: DictionaryEntry, base: Path | None, registry: Any, lazy: bool):
    if entry.source is not None:
        dictionary, record = _from_hub(entry.source, lazy, entry.sha256)
        return dictionary, {**record, "name": entry.name}
    if entry.key is not None:
        dictionary, record = _from_registry(parse_key(entry.key), registry or entry.registry, lazy, entry.sha256)
        return dictionary, {**record, "name": entry.name}
    folder = Path(entry.path or "")
    folder = folder if folder.is_absolute() or base is None else base / folder
    if not folder.is_dir():
        raise DictionaryNotFoundError(
            f"{folder}: the folder of saved dictionary {entry.name!r} no longer exists; restore it or re-save "
            "the scoped model",
            path=str(folder),
        )
    if entry.sha256 is not None and folder_sha256(folder) != entry.sha256:
        raise IntegrityError(
            f"{folder}: files changed since the scoped model was saved (sha256 mismatch); "
            "restore them or re-save the scoped model"
        )
    return load_folder(folder, lazy=lazy), {  # any layout the folder was attached in
        **entry.model_dump(),
        "path": str(folder),
        "folder": str(folder),
    }


def save_scoped_config(scoped: ScopedModel, folder: Path) -> Path:
    """Write ``scoped_model.json`` (and in-memory dictionaries) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, record in scoped._sources.items():
        if record.get("key"):
            entries.append(
                DictionaryEntry(
                    name=name, key=record["key"], registry=record.get("registry"), sha256=record.get("sha256")
                )
            )
            continue
        if record.get("source"):
            entries.append(DictionaryEntry(name=name, source=record["source"], sha256=record["sha256"]))
            continue
        if record.get("inline"):
            relative = Path("dictionaries") / name.replace("/", "__")
            scoped.dictionaries[name].save_pretrained(folder / relative)
            path, stored = relative, folder / relative
        else:
            path = stored = Path(record["path"])
        entries.append(DictionaryEntry(name=name, path=str(path), sha256=folder_sha256(stored)))
    if scoped.base_model_id is None:
        raise ConfigError(
            "the wrapped model has no Hub id or folder (config._name_or_path); save the base model "
            "with model.save_pretrained(dir) and build the ScopedModel from that dir"
        )
    config = ScopedModelConfig(
        base_model=scoped.base_model_id,
        base_model_revision=scoped.base_model_revision,
        base_model_weights=converted_weights(scoped.base_model_id, scoped.base_model_revision),
        dictionaries=entries,
    )
    atomic_write_text(folder / ScopedModelConfig.FILE, json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    return folder
