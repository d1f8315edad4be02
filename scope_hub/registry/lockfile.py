"""``scope.lock``: exact versions of the dictionaries a project uses.

A JSON file (sorted, stable, diff-friendly)::

    {
     "entries": [
      {"content_sha256": "…", "key": "google/gemma-3-270m:resid_post/layer_12/width_16k/sae",
       "manifest_sha256": "…", "registry": "s3://bucket/registry", "version": 3}
     ],
     "lockfile_version": 1
    }

Loading through it resolves a key to exactly that registry and version, and refuses
(LockfileError) if the manifest bytes there no longer hash to ``manifest_sha256``; every file
is then checked against the manifest's sha256, so the bytes are exactly the locked ones.

A Hub folder or SAELens name (``hf://ORG/REPO/FOLDER[@rev]``, ``saelens://RELEASE/SAE_ID``) is
locked as its ``source`` (revision dropped), the folder it ``resolved`` to pinned at a commit,
and the folder's ``content_sha256`` (:func:`scope_hub.registry.content.folder_digest`)::

      {"content_sha256": "…", "resolved": "hf://google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_small@<sha>",
       "source": "saelens://gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_small"}

Example:
    >>> lock = Lockfile(entries=[LockEntry(registry="memory://x", key="m:resid_post/layer_1/width_16k/sae",
    ...                 version=1, manifest_sha256="a" * 64, content_sha256="b" * 64)])
    >>> lock.find(parse_key("m:resid_post/layer_1/width_16k/sae")).version
    1
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scope_hub.atomic_files import atomic_write_text
from scope_hub.errors import KeyParseError, LockfileError
from scope_hub.keys import DictionaryKey, parse_key, version_number
from scope_hub.redaction import redact_url

DEFAULT_LOCKFILE = "scope.lock"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class LockEntry(_Strict):
    """One pinned dictionary: a registry key at a version, or a Hub folder at a commit."""

    registry: str | None = None
    """Registry URL the version lives in (registry keys)."""
    key: str | None = None
    """Canonical key, no ref (registry keys)."""
    version: int | None = Field(default=None, ge=1)
    """The pinned vN (registry keys)."""
    manifest_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """sha256 of the manifest bytes: pins every file through their sha256 (registry keys)."""
    content_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Content hash: the version's (the ``@sha256:`` ref), or the Hub folder's files' digest."""
    source: str | None = None
    """Hub folder or SAELens name as given, without revision (Hub sources)."""
    resolved: str | None = None
    """``hf://ORG/REPO/FOLDER@<commit sha>`` the source resolved to (Hub sources)."""

    @model_validator(mode="after")
    def _one_kind(self) -> LockEntry:
        registry_fields = (self.registry, self.key, self.version, self.manifest_sha256)
        if self.source is None and None in registry_fields:
            raise ValueError("an entry needs registry, key, version and manifest_sha256 (or source and resolved)")
        if self.source is not None and (self.resolved is None or any(f is not None for f in registry_fields)):
            raise ValueError("a Hub source entry holds source, resolved and content_sha256 only")
        return self

    @field_validator("registry")
    @classmethod
    def _no_secret(cls, url: str | None) -> str | None:
        return redact_url(url) if url else url


class Lockfile(_Strict):
    """The whole lockfile."""

    lockfile_version: Literal[1] = 1
    """Format version."""
    entries: list[LockEntry] = Field(default_factory=list)
    """Pinned dictionaries, sorted by key."""

    @classmethod
    def load(cls, path: str | Path) -> Lockfile:
        """Read and validate a lockfile; LockfileError if missing or malformed."""
        try:
            lock = cls.model_validate_json(Path(path).read_bytes())
        except FileNotFoundError:
            raise LockfileError(
                f"lockfile {str(path)!r} does not exist; create it with `scope-hub lock KEY...`"
            ) from None
        except ValidationError as exc:
            raise LockfileError(f"lockfile {str(path)!r} is malformed: {exc.errors()[0]['msg']}") from None
        for entry in lock.entries:
            if entry.key is None:
                continue
            try:
                parse_key(entry.key)
            except KeyParseError as exc:
                raise LockfileError(f"lockfile {str(path)!r}: {exc}") from None
        return lock

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename)."""
        path = Path(path)
        self.entries.sort(key=lambda e: (e.key or "", e.registry or "", e.source or ""))
        data = json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1) + "\n"
        atomic_write_text(path, data)
        return path

    def find_source(self, source: str) -> LockEntry:
        """The entry locking Hub source ``source`` (its revision, if any, is ignored); LockfileError otherwise."""
        name = unpinned_source(source)
        hits = [e for e in self.entries if e.source == name]
        if not hits:
            raise LockfileError(f"{name} is not in the lockfile; add it with `scope-hub lock {name}`")
        return hits[0]

    def merged(self, entries: list[LockEntry]) -> Lockfile:
        """This lockfile with ``entries`` added, replacing entries of the same key/registry or source."""

        def ident(e: LockEntry) -> tuple:
            return (e.source,) if e.source else (e.key, e.registry)

        new = {ident(e) for e in entries}
        return Lockfile(entries=[e for e in self.entries if ident(e) not in new] + list(entries))

    def find(self, key: DictionaryKey, registry: str | None = None) -> LockEntry:
        """The entry pinning ``key`` (its ref, if any, must agree); LockfileError otherwise."""
        name = str(key.unpinned())
        hits = [e for e in self.entries if e.key == name and (registry is None or e.registry == registry)]
        if not hits:
            where = f" for registry {registry}" if registry else ""
            raise LockfileError(f"{name} is not in the lockfile{where}; add it with `scope-hub lock {name}`")
        if len(hits) > 1:
            raise LockfileError(f"{name} is locked in several registries; pass the registry explicitly")
        entry = hits[0]
        pinned = version_number(key.ref) if key.ref else None
        if pinned is not None and pinned != entry.version:
            raise LockfileError(f"{key} asks for v{pinned} but the lockfile pins v{entry.version}")
        if key.ref and key.ref.startswith("sha256:") and not entry.content_sha256.startswith(key.ref[7:]):
            raise LockfileError(f"{key} does not match the locked content {entry.content_sha256[:12]}")
        return entry


def unpinned_source(source: str) -> str:
    """A Hub source without its ``@revision`` (how lockfiles name it).

    Example:
        >>> unpinned_source("hf://google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_small@main")
        'hf://google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_small'
    """
    return source if source.startswith("saelens://") else source.partition("@")[0].rstrip("/")
