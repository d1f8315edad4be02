"""verify, gc and reindex over a byte store: the slow, whole-registry operations.

Each walks the store (one paginated listing per folder tree) and reads manifests in batches;
none is needed for normal pushes and pulls.

Example:
    >>> from scope_hub.registry.backends.memory import MemoryStore
    >>> verify_store(MemoryStore("memory://doc-maint"), TransferProgress(enabled=False)).ok
    True
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from scope_hub.errors import IntegrityError, RegistryError
from scope_hub.keys import DictionaryKey
from scope_hub.metadata import Manifest
from scope_hub.registry.backend_interface import record_of
from scope_hub.registry.backends.store import Store
from scope_hub.registry.card_hashes import manifest_card_problems
from scope_hub.registry.content import copy_hashing, parse_manifest
from scope_hub.registry.index import RegistryIndex
from scope_hub.registry.layout import BLOB_DIR, MANIFEST_DIR, TMP_DIR, blob_path, key_of_version_file
from scope_hub.registry.progress import TransferProgress
from scope_hub.registry.records import GcReport, VerifyReport

BATCH = 500


def _version_files(store: Store) -> tuple[list[tuple[str, DictionaryKey, int]], set[tuple[str, int]]]:
    """(manifest paths with their key and version, set of yanked (key, version))."""
    manifests: list[tuple[str, DictionaryKey, int]] = []
    yanked: set[tuple[str, int]] = set()
    for path in store.walk(MANIFEST_DIR):
        parsed = key_of_version_file(path)
        if parsed is None:
            continue
        key, version, kind = parsed
        if kind == "json":
            manifests.append((path, key, version))
        else:
            yanked.add((str(key), version))
    return manifests, yanked


def _read_manifests(
    store: Store, manifests: list[tuple[str, DictionaryKey, int]], problems: list[str]
) -> Iterator[tuple[DictionaryKey, int, Manifest, bytes]]:
    """Yield (key, version, Manifest, bytes) for every readable manifest; record the rest."""
    for start in range(0, len(manifests), BATCH):
        chunk = manifests[start : start + BATCH]
        datas = store.read_many([p for p, _, _ in chunk])
        for path, key, version in chunk:
            data = datas.get(path)
            if data is None:
                problems.append(f"manifest {path} vanished while being read")
                continue
            try:
                yield key, version, parse_manifest(data, key, version, f"{store.url}/{path}"), data
            except IntegrityError as exc:
                problems.append(str(exc))


def verify_store(store: Store, progress: TransferProgress) -> VerifyReport:
    """Re-hash every blob, then check every manifest's files exist with the right size and hash,
    and every card records the hashes its manifest lists (what a pull checks)."""
    report = VerifyReport()
    sizes: dict[str, int] = {}
    corrupt: set[str] = set()
    blobs = store.walk(BLOB_DIR)
    with progress.bar(len(blobs), "verify blobs", unit="blob") as update:
        for path in blobs:
            name = path.rsplit("/", 1)[-1]
            with store.open_read(path) as stream:
                sha, size = copy_hashing(stream, None)
            sizes[name] = size
            report.blobs_checked += 1
            if sha != name:
                corrupt.add(name)
                report.problems.append(f"blob {name[:16]} is corrupt: its bytes hash to {sha[:16]}")
            update(1)
    manifests, _ = _version_files(store)
    carded: list[tuple[str, Manifest, str]] = []  # (label, manifest, sha256 of its intact card)
    for key, version, manifest, _ in _read_manifests(store, manifests, report.problems):
        report.manifests_checked += 1
        label = f"{key}@v{version}"
        _check_entries(label, manifest, sizes, corrupt, report.problems)
        card = next((e for e in manifest.files if e.path == manifest.card), None)
        if card is not None and sizes.get(card.sha256) == card.size and card.sha256 not in corrupt:
            carded.append((label, manifest, card.sha256))  # a damaged card blob is reported above
    _check_cards(store, carded, report)
    return report


def _check_cards(store: Store, carded: list[tuple[str, Manifest, str]], report: VerifyReport) -> None:
    for start in range(0, len(carded), BATCH):
        chunk = carded[start : start + BATCH]
        cards = store.read_many([blob_path(sha) for _, _, sha in chunk])
        for label, manifest, sha in chunk:
            data = cards.get(blob_path(sha))
            if data is None:
                report.problems.append(f"{label}: card blob {sha[:16]} vanished while being read")
                continue
            problems = manifest_card_problems(manifest, data, label)
            if problems is not None:  # None: a card that records no hashes (rendered before cards did)
                report.cards_checked += 1
                report.problems += problems


def _check_entries(
    label: str, manifest: Manifest, sizes: dict[str, int], corrupt: set[str], problems: list[str]
) -> None:
    for entry in manifest.files:
        if entry.sha256 not in sizes:
            problems.append(f"{label}: blob of {entry.path} ({entry.sha256[:16]}) is missing")
        elif sizes[entry.sha256] != entry.size:
            problems.append(f"{label}: {entry.path} has {sizes[entry.sha256]} bytes, manifest says {entry.size}")
        elif entry.sha256 in corrupt:
            problems.append(f"{label}: {entry.path} is corrupt (blob {entry.sha256[:16]})")


def gc_store(store: Store, grace_seconds: float, dry_run: bool) -> GcReport:
    """Delete blobs no manifest references, and stale temp files, older than ``grace_seconds``.

    Refuses to delete anything if a manifest cannot be read: a blob is only garbage when
    every manifest has been seen.
    """
    problems: list[str] = []
    manifests, _ = _version_files(store)
    referenced = {e.sha256 for _, _, m, _ in _read_manifests(store, manifests, problems) for e in m.files}
    if problems:
        raise RegistryError(f"gc refused: {problems[0]} (fix it or run `scope-hub verify`)")
    report = GcReport()
    now = time.time()
    candidates = [p for p in store.walk(BLOB_DIR) if p.rsplit("/", 1)[-1] not in referenced]
    for path in candidates + store.walk(TMP_DIR):
        stat = store.stat(path)
        if stat is None:
            continue
        if now - stat[1] < grace_seconds:
            report.kept_recent += 1  # may belong to a push still in flight
            continue
        report.deleted.append(path)
        report.bytes_freed += stat[0]
        if not dry_run:
            store.delete(path)
    return report


def scan_manifests(store: Store) -> RegistryIndex:
    """An index built from the manifests themselves (the source of truth)."""
    problems: list[str] = []
    manifests, yanked = _version_files(store)
    index = RegistryIndex()
    for key, version, manifest, data in _read_manifests(store, manifests, problems):
        index.add(str(key), record_of(manifest, data, yanked=(str(key), version) in yanked))
    return index
