"""The version-level interface a registry backend implements.

Byte stores (file://, memory://, s3://) share one implementation of it,
:class:`scope_hub.registry.versions.StoreBackend`; hf:// has its own
(:class:`scope_hub.registry.backends.hf.HfBackend`) because a Hub repo offers atomic
multi-file commits instead of exclusive creates. :class:`scope_hub.registry.Registry` adds
the local cache, offline mode and lockfiles on top, identically for every backend.

Example:
    >>> VersionState(3, yanked=False).version
    3
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from scope_hub.errors import RegistryError, UnknownKeyError, VersionNotFoundError
from scope_hub.keys import DictionaryKey
from scope_hub.metadata import FileEntry, Manifest
from scope_hub.registry.content import Staged, sha256_bytes
from scope_hub.registry.index import RegistryIndex
from scope_hub.registry.progress import TransferProgress
from scope_hub.registry.records import GcReport, PushResult, VerifyReport, VersionRecord


@dataclass(frozen=True)
class VersionState:
    """A version as listed authoritatively by the backend."""

    version: int
    yanked: bool = False


def record_of(manifest: Manifest, data: bytes, yanked: bool = False, revision: str | None = None) -> VersionRecord:
    """The index record of a manifest given its stored bytes."""
    return VersionRecord(
        version=manifest.version,
        content_sha256=manifest.content_sha256,
        manifest_sha256=sha256_bytes(data),
        size=sum(f.size for f in manifest.files),
        created_at=manifest.created_at,
        yanked=yanked,
        revision=revision,
    )


def latest_live(states: list[VersionState]) -> int | None:
    """Highest non-yanked version."""
    live = [s.version for s in states if not s.yanked]
    return max(live) if live else None


def missing_version(key: DictionaryKey, version: int, states: list[VersionState], url: str) -> KeyError:
    """The error for ``key@v{version}`` absent from ``url``: which versions exist, or that none do.

    Example:
        >>> from scope_hub.keys import parse_key
        >>> key = parse_key("m:resid_post/layer_1/width_8/sae")
        >>> error = missing_version(key, 7, [VersionState(1), VersionState(2, yanked=True)], "memory://r")
        >>> str(error).split("; ")[:2]
        ['m:resid_post/layer_1/width_8/sae@v7 does not exist in memory://r', 'available: v1, v2 (yanked)']
    """
    name = key.unpinned()
    if not states:
        return UnknownKeyError(
            f"{name}@v{version} does not exist: {name} is not published in {url} (it has no "
            "versions); see `scope-hub ls`"
        )
    shown = [f"v{s.version}" + (" (yanked)" if s.yanked else "") for s in states]
    if len(shown) > 12:
        shown = [*shown[:3], "...", *shown[-8:]]
    return VersionNotFoundError(
        f"{name}@v{version} does not exist in {url}; available: {', '.join(shown)}; see `scope-hub info {name}`"
    )


class Backend(ABC):
    """Versions of keys on one registry (see module docstring)."""

    url: str
    serves_offline: bool = False
    """True when the backend can answer reads from a local cache of its own in offline mode."""

    @abstractmethod
    def publish(self, staged: Staged, progress: TransferProgress) -> PushResult:
        """Make ``staged`` the next version of its key (or report the identical latest one)."""

    @abstractmethod
    def versions(self, key: DictionaryKey) -> list[VersionState]:
        """Every version of ``key``, authoritatively (empty if the key is unknown)."""

    @abstractmethod
    def read_manifest(self, key: DictionaryKey, version: int) -> bytes:
        """Stored manifest bytes; VersionNotFoundError if the version does not exist."""

    @abstractmethod
    def open_file(self, key: DictionaryKey, version: int, entry: FileEntry) -> BinaryIO:
        """Stream one file of a version (the caller verifies its sha256)."""

    @abstractmethod
    def load_index(self) -> RegistryIndex:
        """The index (every key's version records) in a constant number of requests."""

    @abstractmethod
    def yank(self, key: DictionaryKey, version: int, manifest: Manifest, data: bytes) -> None:
        """Mark a version yanked (idempotent)."""

    @abstractmethod
    def verify(self, progress: TransferProgress) -> VerifyReport:
        """Re-hash every stored file and cross-check manifests."""

    @abstractmethod
    def gc(self, grace_seconds: float, dry_run: bool) -> GcReport:
        """Delete unreferenced objects older than the grace period."""

    @abstractmethod
    def reindex(self) -> int:
        """Rebuild the index from the manifests; return the number of versions indexed."""

    def requests(self) -> int:
        """Store requests made so far (for tests and benchmarks)."""
        return 0

    # -- release cards (``releases/<name>/vN.md``, write-once like manifests) ----------------
    def release_versions(self, name: str) -> list[int]:
        """Published versions of release ``name``, ascending (empty if none)."""
        raise RegistryError(f"{self.url}: this backend does not store release cards")

    def read_release(self, name: str, version: int) -> bytes:
        """Bytes of release card ``name`` version ``version`` (VersionNotFoundError if absent)."""
        raise RegistryError(f"{self.url}: this backend does not store release cards")

    def publish_release(self, name: str, render: Callable[[int], bytes]) -> int:
        """Store ``render(N)`` as version N = next free number of release ``name``, exclusively; return N."""
        raise RegistryError(f"{self.url}: this backend does not store release cards")
