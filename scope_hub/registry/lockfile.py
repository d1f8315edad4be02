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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scope_hub.atomic_files import atomic_write_text
from scope_hub.errors import KeyParseError, LockfileError
from scope_hub.keys import DictionaryKey, parse_key, version_number
from scope_hub.redaction import redact_url

DEFAULT_LOCKFILE = "scope.lock"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class LockEntry(_Strict):
    """One pinned dictionary."""

    registry: str
    """Registry URL the version lives in (credentials stripped: they come from the environment)."""
    key: str
    """Canonical key, no ref."""
    version: int = Field(ge=1)
    """The pinned vN."""
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the manifest bytes: pins every file through their sha256."""
    content_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Content hash (informational; the ``@sha256:`` ref of the version)."""

    @field_validator("registry")
    @classmethod
    def _no_secret(cls, url: str) -> str:
        return redact_url(url)


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
            try:
                parse_key(entry.key)
            except KeyParseError as exc:
                raise LockfileError(f"lockfile {str(path)!r}: {exc}") from None
        return lock

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename)."""
        path = Path(path)
        self.entries.sort(key=lambda e: (e.key, e.registry))
        data = json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1) + "\n"
        atomic_write_text(path, data)
        return path

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
