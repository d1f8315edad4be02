"""The registry index: every key's versions in a few objects, safe under concurrent writers.

On a byte store the index is a chain of write-once snapshots plus a log of segments:

* each push (or yank) *after* its manifest exists writes one new segment
  ``index/log/<ns>-<uuid>.json`` (a unique name: writers never contend);
* readers list the log, read the newest snapshot ``index/snapshots/g<G>.json`` and apply the
  segments it does not already include. Records merge idempotently (a version's record never
  changes except ``yanked`` turning on), so applying a segment twice is harmless;
* when more than :data:`COMPACT_AFTER` segments are pending, a pusher writes snapshot G+1
  with an exclusive create (one compactor wins per generation, the chain stays linear),
  then deletes the merged segments. A reader that loses a segment to that deletion reloads.

So ``ls`` costs list(log) + list(snapshots) + get(snapshot) + at most ~COMPACT_AFTER gets,
whatever the number of keys. The index is a cache: manifests are the truth, resolution of a
single key lists that key's manifests, and ``reindex`` rebuilds the index from them.

Example:
    >>> from scope_hub.registry.backends.memory import MemoryStore
    >>> store = MemoryStore("memory://doc-index"); store.wipe()
    >>> idx = StoreIndex(store)
    >>> rec = VersionRecord(version=1, content_sha256="a" * 64, manifest_sha256="b" * 64, size=1,
    ...                     created_at="2026-11-25T00:00:00Z")
    >>> idx.append([("m:resid_post/layer_1/width_16k/sae", rec)])
    >>> idx.load().latest("m:resid_post/layer_1/width_16k/sae").version
    1
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict, ValidationError

from scope_hub.errors import RegistryError
from scope_hub.registry.backends.store import Store
from scope_hub.registry.layout import INDEX_LOG, INDEX_SNAPSHOTS
from scope_hub.registry.records import KeySummary, VersionRecord
from scope_hub.settings import settings

COMPACT_AFTER = 32
"""Pending segments that trigger a compaction by the next pusher (env ``SCOPE_HUB_INDEX_COMPACT_AFTER``)."""
KEEP_SNAPSHOTS = 2
"""Older snapshot generations kept for readers still reading them."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class IndexEntry(_Strict):
    """One record of a log segment."""

    key: str
    """Canonical key."""
    record: VersionRecord
    """The version's record."""


class IndexSegment(_Strict):
    """A log segment: the records one push or yank adds."""

    schema_version: int = 1
    """Segment format version."""
    entries: list[IndexEntry]
    """Records to merge."""


class IndexSnapshot(_Strict):
    """A compacted index (also the whole index file of an hf:// registry)."""

    schema_version: int = 1
    """Snapshot format version."""
    generation: int = 0
    """Position in the snapshot chain."""
    segments: list[str] = []
    """Log segments merged into this snapshot."""
    keys: dict[str, list[VersionRecord]] = {}
    """Every key's version records."""


def merge_record(old: VersionRecord | None, new: VersionRecord) -> VersionRecord:
    """Idempotent, order-independent merge: yanked is sticky, a known revision is kept."""
    if old is None:
        return new
    return old.model_copy(update={"yanked": old.yanked or new.yanked, "revision": old.revision or new.revision})


class RegistryIndex:
    """In-memory index: key -> version -> record."""

    def __init__(self, keys: dict[str, list[VersionRecord]] | None = None):
        self.keys: dict[str, dict[int, VersionRecord]] = {}
        for key, records in (keys or {}).items():
            for record in records:
                self.add(key, record)

    def add(self, key: str, record: VersionRecord) -> None:
        """Merge one record."""
        versions = self.keys.setdefault(key, {})
        versions[record.version] = merge_record(versions.get(record.version), record)

    def records(self, key: str) -> list[VersionRecord]:
        """A key's records, oldest first (empty if unknown)."""
        return [r for _, r in sorted(self.keys.get(key, {}).items())]

    def latest(self, key: str) -> VersionRecord | None:
        """Newest non-yanked record."""
        live = [r for r in self.records(key) if not r.yanked]
        return live[-1] if live else None

    def match_content(self, key: str, prefix: str) -> VersionRecord | None:
        """Newest record whose content_sha256 starts with ``prefix`` (non-yanked preferred)."""
        hits = [r for r in self.records(key) if r.content_sha256.startswith(prefix)]
        live = [r for r in hits if not r.yanked]
        return (live or hits)[-1] if (live or hits) else None

    def summaries(self) -> list[KeySummary]:
        """One summary per key, sorted by key (built without re-validation: 20k keys in ~0.1 s)."""
        out = []
        for key in sorted(self.keys):
            records = [r for _, r in sorted(self.keys[key].items())]
            live = [r for r in records if not r.yanked]
            shown = live[-1] if live else records[-1]
            out.append(
                KeySummary.model_construct(
                    key=key,
                    latest=live[-1].version if live else None,
                    versions=len(records),
                    size=shown.size,
                    updated_at=records[-1].created_at,
                )
            )
        return out

    def to_snapshot(self, generation: int, segments: list[str]) -> IndexSnapshot:
        """Freeze into a snapshot model."""
        keys = {key: self.records(key) for key in sorted(self.keys)}
        return IndexSnapshot(generation=generation, segments=sorted(segments), keys=keys)


def _snapshot_name(generation: int) -> str:
    return f"g{generation:012d}.json"


class StoreIndex:
    """The log-structured index of a byte store (see module docstring)."""

    def __init__(self, store: Store):
        self.store = store

    def append(self, entries: Iterable[tuple[str, VersionRecord]]) -> None:
        """Write one new log segment holding ``entries``."""
        segment = IndexSegment(entries=[IndexEntry(key=k, record=r) for k, r in entries])
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.json"
        self.store.put_bytes(f"{INDEX_LOG}/{name}", segment.model_dump_json().encode())

    def _newest_snapshot(self) -> IndexSnapshot:
        names = [n for n in self.store.list_names(INDEX_SNAPSHOTS) if n.startswith("g") and n.endswith(".json")]
        if not names:
            return IndexSnapshot()
        data = self.store.read_bytes(f"{INDEX_SNAPSHOTS}/{max(names)}")
        try:
            return IndexSnapshot.model_validate_json(data)
        except ValidationError:
            raise RegistryError(
                f"index snapshot {max(names)} of {self.store.url} is corrupt; run `scope-hub reindex`"
            ) from None

    def _load_once(self) -> tuple[RegistryIndex, IndexSnapshot, list[str]]:
        pending = self.store.list_names(INDEX_LOG)  # listed before the snapshot: see module docstring
        snapshot = self._newest_snapshot()
        index = RegistryIndex(snapshot.keys)
        merged = set(snapshot.segments)
        unmerged = [name for name in pending if name not in merged and name.endswith(".json")]
        for name in unmerged:
            data = self.store.read_bytes(f"{INDEX_LOG}/{name}")  # FileNotFoundError: compacted meanwhile
            try:
                segment = IndexSegment.model_validate_json(data)
            except ValidationError:
                continue  # a torn segment cannot exist (atomic puts); skip foreign junk, reindex repairs
            for entry in segment.entries:
                index.add(entry.key, entry.record)
        return index, snapshot, unmerged

    def load_full(self) -> tuple[RegistryIndex, IndexSnapshot, list[str]]:
        """(index, snapshot it was built on, segments applied on top)."""
        for _ in range(5):
            try:
                return self._load_once()
            except FileNotFoundError:
                continue  # a compactor merged and deleted a segment or snapshot we listed: reload
        raise RegistryError(f"the index of {self.store.url} kept changing while being read; retry")

    def load(self) -> RegistryIndex:
        """The current index."""
        return self.load_full()[0]

    def compact_if_needed(self, threshold: int | None = None) -> bool:
        """Fold pending segments into a new snapshot when there are more than ``threshold``."""
        if threshold is None:
            threshold = settings().index_compact_after or COMPACT_AFTER
        if len(self.store.list_names(INDEX_LOG)) <= threshold:
            return False  # cheap check first: merged segments are deleted, so the log is what is pending
        index, snapshot, pending = self.load_full()
        if len(pending) <= threshold:
            return False
        return self._write_snapshot(index, snapshot.generation + 1, pending)

    def _write_snapshot(self, index: RegistryIndex, generation: int, merged: list[str]) -> bool:
        data = index.to_snapshot(generation, merged).model_dump_json().encode()
        if not self.store.create_bytes(f"{INDEX_SNAPSHOTS}/{_snapshot_name(generation)}", data):
            return False  # another writer made this generation; its snapshot is as good as ours
        for name in merged:
            self.store.delete(f"{INDEX_LOG}/{name}")
        for name in self.store.list_names(INDEX_SNAPSHOTS):
            if name.endswith(".json") and name < _snapshot_name(generation - KEEP_SNAPSHOTS + 1):
                self.store.delete(f"{INDEX_SNAPSHOTS}/{name}")
        return True

    def rebuild(self, scanned: RegistryIndex, exists: Callable[[str, VersionRecord], bool]) -> RegistryIndex:
        """Replace the index by ``scanned`` (from the manifests), keeping records written meanwhile.

        The scan's records win; a yank the old index logged during the scan is kept (yanks are
        sticky). Records the scan lacks survive only if ``exists(key, record)`` (their manifest
        was created during the scan); anything else the old index claimed is dropped.
        Retries when a concurrent compaction takes the next generation first.
        """
        for _ in range(10):
            try:
                old, snapshot, pending = self.load_full()
            except RegistryError:
                old, snapshot, pending = RegistryIndex(), self._generation_floor(), []
            merged = RegistryIndex()
            for key, versions in scanned.keys.items():
                for record in versions.values():
                    merged.add(key, record)
            for key, versions in old.keys.items():
                for record in versions.values():
                    # known to the scan: merge (keeps a yank logged during the scan);
                    # unknown: keep only if its manifest appeared during the scan
                    if record.version in scanned.keys.get(key, {}) or exists(key, record):
                        merged.add(key, record)
            if self._write_snapshot(merged, snapshot.generation + 1, pending):
                return merged
        raise RegistryError(f"could not write a new index snapshot to {self.store.url}; retry `scope-hub reindex`")

    def _generation_floor(self) -> IndexSnapshot:
        names = [n for n in self.store.list_names(INDEX_SNAPSHOTS) if n.startswith("g") and n.endswith(".json")]
        return IndexSnapshot(generation=int(max(names)[1:13]) if names else 0)
