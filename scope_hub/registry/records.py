"""Pydantic records the registry returns and stores (index entries, results, reports).

Example:
    >>> r = VersionRecord(version=2, content_sha256="a" * 64, manifest_sha256="b" * 64, size=10,
    ...                   created_at="2026-11-25T00:00:00Z")
    >>> r.yanked, r.revision
    (False, None)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from scope_hub.metadata import FileEntry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class VersionRecord(_Strict):
    """What the index knows about one version (enough for ls, sha refs and lockfiles)."""

    version: int = Field(ge=1)
    """The N of vN."""
    content_sha256: str
    """Content hash of the version's files (the ``@sha256:`` ref matches its prefix)."""
    manifest_sha256: str
    """sha256 of the manifest bytes as stored (what lockfiles pin)."""
    size: int = Field(ge=0)
    """Total bytes of the version's files."""
    created_at: str
    """ISO 8601 UTC time of the push."""
    yanked: bool = False
    """Skipped by ``latest``; still pullable by exact pin."""
    revision: str | None = None
    """hf:// only: a commit where this version's files are in the key folder (None: the head)."""


class PushResult(_Strict):
    """Outcome of :meth:`Registry.push`."""

    key: str
    """Canonical key (no ref)."""
    version: int
    """The version now holding the pushed content."""
    created: bool
    """False when identical content was already the latest version (nothing written)."""
    content_sha256: str
    """Content hash of the pushed files."""
    manifest_sha256: str
    """sha256 of the version's manifest bytes."""

    @property
    def ref(self) -> str:
        """``key@vN``."""
        return f"{self.key}@v{self.version}"


class KeySummary(_Strict):
    """One line of ``scope-hub ls``."""

    key: str
    """Canonical key."""
    latest: int | None
    """Latest non-yanked version (None if every version is yanked)."""
    versions: int
    """Number of versions, yanked included."""
    size: int
    """Bytes of the latest version (or of the newest one if all are yanked)."""
    updated_at: str
    """Push time of the newest version."""


class VersionDetail(_Strict):
    """One version as shown by ``scope-hub info``."""

    version: int
    """The N of vN."""
    yanked: bool
    """Yanked versions are skipped by latest."""
    created_at: str
    """Push time."""
    content_sha256: str
    """Content hash."""
    manifest_sha256: str
    """Manifest hash."""
    size: int
    """Total bytes."""
    files: list[FileEntry]
    """The version's files."""


class KeyInfo(_Strict):
    """Everything ``scope-hub info`` prints about a key."""

    key: str
    """Canonical key."""
    registry: str
    """Registry URL."""
    latest: int | None
    """Latest non-yanked version."""
    versions: list[VersionDetail]
    """All versions, oldest first."""
    config: dict
    """config.json of the latest (or newest) version."""
    card: str | None = None
    """Card text of that version, if it has one."""


class VerifyReport(_Strict):
    """Result of re-hashing a registry (or the local cache)."""

    blobs_checked: int = 0
    """Blobs whose bytes were re-hashed."""
    manifests_checked: int = 0
    """Manifests parsed and cross-checked."""
    cards_checked: int = 0
    """Cards whose recorded file hashes were compared with their manifest's."""
    problems: list[str] = Field(default_factory=list)
    """One line per mismatch, missing blob or unreadable manifest."""

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


class GcReport(_Strict):
    """Result of garbage collection."""

    deleted: list[str] = Field(default_factory=list)
    """Store paths removed (or that would be, in a dry run)."""
    bytes_freed: int = 0
    """Their total size."""
    kept_recent: int = 0
    """Unreferenced objects younger than the grace period, left alone."""
    note: str | None = None
    """Backend remark (e.g. hf:// has nothing to collect)."""
