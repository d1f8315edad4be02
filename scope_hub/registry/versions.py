"""The version protocol over a byte store (file://, memory://, s3://).

Push, in order (each step is a fault point, see :mod:`scope_hub.registry.faults`):

1. check and hash the folder (``staged``);
2. upload every blob not already stored to ``blobs/sha256/<hex>`` (``blob_uploaded``);
   a blob only ever holds the bytes its name hashes to, so concurrent uploads are harmless;
3. list the key's ``_versions/``; if the latest live version has the same content, stop:
   identical re-push is a no-op reporting that version;
4. render the card for N = highest existing + 1 and upload its (small) blob, then exclusively
   create ``vN.json`` (``before_manifest``). This one write makes the version exist, complete
   (its blobs, card included, are already stored). Losing the race to another pusher just
   means relisting, re-rendering the card for N+1 and trying again, so the stored card
   always names its own version;
5. append an index segment (``manifest_written`` before, ``index_appended`` after), then
   compact the index if enough segments are pending.

``latest`` is the highest non-yanked manifest in the key's listing, so it moves exactly when
a complete version appears; a crash at any point leaves either no version or a complete one.

Example:
    >>> from scope_hub.registry.backends.memory import MemoryStore
    >>> backend = StoreBackend(MemoryStore("memory://doc-versions"))
    >>> backend.versions(parse_key("m:resid_post/layer_1/width_16k/sae"))
    []
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import BinaryIO

from scope_hub.errors import RegistryError, VersionNotFoundError
from scope_hub.keys import DictionaryKey, parse_key
from scope_hub.metadata import FileEntry, Manifest
from scope_hub.registry import maintenance
from scope_hub.registry.backend_interface import Backend, VersionState, latest_live, record_of
from scope_hub.registry.backends.store import Store
from scope_hub.registry.content import (
    Staged,
    StagedCard,
    StagedFile,
    build_manifest,
    manifest_bytes,
    map_threads,
    parse_manifest,
    utc_now,
)
from scope_hub.registry.faults import fault_point
from scope_hub.registry.index import RegistryIndex, StoreIndex
from scope_hub.registry.layout import (
    blob_path,
    manifest_path,
    parse_release_file,
    parse_version_file,
    release_dir,
    release_path,
    versions_dir,
    yank_path,
)
from scope_hub.registry.progress import TransferProgress
from scope_hub.registry.records import GcReport, PushResult, VerifyReport

MAX_CLAIMS = 200
"""Exclusive-create attempts before a push gives up (each loss means another pusher won)."""


class StoreBackend(Backend):
    """:class:`Backend` over any :class:`~scope_hub.registry.backends.store.Store`."""

    def __init__(self, store: Store):
        self.store = store
        self.url = store.url
        self.index = StoreIndex(store)

    def requests(self) -> int:
        return sum(self.store.stats.values())

    # -- reads ---------------------------------------------------------------------------
    def versions(self, key: DictionaryKey) -> list[VersionState]:
        found: dict[int, bool] = {}
        for name in self.store.list_names(versions_dir(key)):
            parsed = parse_version_file(name)
            if parsed and parsed[1] == "json":
                found.setdefault(parsed[0], False)
            elif parsed:
                found[parsed[0]] = True  # a marker without its manifest cannot happen; tolerated
        return [VersionState(v, yanked) for v, yanked in sorted(found.items())]

    def read_manifest(self, key: DictionaryKey, version: int) -> bytes:
        try:
            return self.store.read_bytes(manifest_path(key, version))
        except FileNotFoundError:
            raise VersionNotFoundError(f"{key.unpinned()}@v{version} does not exist in {self.url}") from None

    def open_file(self, key: DictionaryKey, version: int, entry: FileEntry) -> BinaryIO:
        try:
            return self.store.open_read(blob_path(entry.sha256))
        except FileNotFoundError:
            raise RegistryError(
                f"blob {entry.sha256[:12]} ({entry.path} of {key.unpinned()}@v{version}) is missing from {self.url}; "
                "run `scope-hub verify`"
            ) from None

    def load_index(self) -> RegistryIndex:
        return self.index.load()

    # -- push ----------------------------------------------------------------------------
    def _upload_blobs(self, staged: Staged, progress: TransferProgress) -> None:
        def upload(f: StagedFile) -> None:
            path = blob_path(f.sha256)
            existing = self.store.stat(path)
            if existing is not None and existing[0] == f.size:
                self.store.touch(path)  # keeps gc's grace window from racing this push
                return
            with progress.bar(f.size, f"push {f.name}") as update:
                self.store.put_file(path, f.local, update)
            fault_point("blob_uploaded")

        map_threads(upload, staged.files)

    def _upload_card(self, card: StagedCard) -> None:
        path = blob_path(card.sha256)
        existing = self.store.stat(path)
        if existing is not None and existing[0] == card.size:
            self.store.touch(path)
            return
        self.store.put_bytes(path, card.data)

    def _identical_latest(self, staged: Staged, states: list[VersionState]) -> PushResult | None:
        latest = latest_live(states)
        if latest is None:
            return None
        data = self.read_manifest(staged.key, latest)
        manifest = parse_manifest(data, staged.key, latest, self.url)
        if manifest.content_sha256 != staged.content_sha256:
            return None
        return PushResult(
            key=str(staged.key),
            version=latest,
            created=False,
            content_sha256=manifest.content_sha256,
            manifest_sha256=record_of(manifest, data).manifest_sha256,
        )

    def _claim_version(self, staged: Staged) -> tuple[Manifest, bytes] | PushResult:
        cards: dict[int, StagedCard | None] = {}  # version -> its card, rendered and uploaded once
        for attempt in range(MAX_CLAIMS):
            states = self.versions(staged.key)
            same = self._identical_latest(staged, states)
            if same is not None:
                return same
            version = max((s.version for s in states), default=0) + 1
            if version not in cards:  # first try, or another pusher took the number we rendered for
                card = cards[version] = staged.render_card(version)
                if card is not None:
                    self._upload_card(card)
            manifest = build_manifest(staged, version, cards[version])
            data = manifest_bytes(manifest)
            fault_point("before_manifest")
            if self.store.create_bytes(manifest_path(staged.key, version), data):
                return manifest, data
            time.sleep(random.uniform(0, 0.01 * min(attempt + 1, 10)))  # lost the race: back off, relist
        raise RegistryError(
            f"could not claim a version of {staged.key} after {MAX_CLAIMS} attempts (heavy contention); retry"
        )

    def publish(self, staged: Staged, progress: TransferProgress) -> PushResult:
        same = self._identical_latest(staged, self.versions(staged.key))
        if same is not None:
            return same  # checked before uploading too: an identical re-push costs one list + one get
        self._upload_blobs(staged, progress)
        claimed = self._claim_version(staged)
        if isinstance(claimed, PushResult):
            return claimed
        manifest, data = claimed
        fault_point("manifest_written")
        record = record_of(manifest, data)
        entries = [(str(staged.key), record)]
        previous = self._previous_record(staged.key, manifest.version)
        if previous is not None:
            entries.append((str(staged.key), previous))  # repairs the index if that pusher died before logging
        self.index.append(entries)
        fault_point("index_appended")
        self.index.compact_if_needed()
        return PushResult(
            key=str(staged.key),
            version=manifest.version,
            created=True,
            content_sha256=manifest.content_sha256,
            manifest_sha256=record.manifest_sha256,
        )

    def _previous_record(self, key: DictionaryKey, version: int):
        if version == 1:
            return None
        try:
            data = self.read_manifest(key, version - 1)
        except VersionNotFoundError:
            return None
        yanked = self.store.stat(yank_path(key, version - 1)) is not None
        return record_of(parse_manifest(data, key, version - 1, self.url), data, yanked=yanked)

    # -- release cards -------------------------------------------------------------------
    def release_versions(self, name: str) -> list[int]:
        return sorted(v for v in map(parse_release_file, self.store.list_names(release_dir(name))) if v)

    def read_release(self, name: str, version: int) -> bytes:
        try:
            return self.store.read_bytes(release_path(name, version))
        except FileNotFoundError:
            raise VersionNotFoundError(f"release {name}@v{version} does not exist in {self.url}") from None

    def publish_release(self, name: str, render: Callable[[int], bytes]) -> int:
        for attempt in range(MAX_CLAIMS):
            version = max(self.release_versions(name), default=0) + 1
            if self.store.create_bytes(release_path(name, version), render(version)):
                return version
            time.sleep(random.uniform(0, 0.01 * min(attempt + 1, 10)))  # another publisher took N
        raise RegistryError(f"could not claim a version of release {name} after {MAX_CLAIMS} attempts; retry")

    # -- maintenance ---------------------------------------------------------------------
    def yank(self, key: DictionaryKey, version: int, manifest: Manifest, data: bytes) -> None:
        marker = json.dumps({"key": str(key.unpinned()), "version": version, "yanked_at": utc_now()}).encode()
        self.store.create_bytes(yank_path(key, version), marker)  # False: already yanked, fine
        self.index.append([(str(key.unpinned()), record_of(manifest, data, yanked=True))])

    def verify(self, progress: TransferProgress) -> VerifyReport:
        return maintenance.verify_store(self.store, progress)

    def gc(self, grace_seconds: float, dry_run: bool) -> GcReport:
        return maintenance.gc_store(self.store, grace_seconds, dry_run)

    def reindex(self) -> int:
        scanned = maintenance.scan_manifests(self.store)
        exists = lambda key, rec: self.store.stat(manifest_path(parse_key(key), rec.version)) is not None  # noqa: E731
        rebuilt = self.index.rebuild(scanned, exists)
        return sum(len(v) for v in rebuilt.keys.values())
