"""The local download cache, shared by every registry (like huggingface_hub's blobs/snapshots).

Layout under ``$SCOPE_HUB_CACHE`` (default ``~/.cache/scope_hub``)::

    blobs/sha256/<hex>                                  verified file contents, read-only
    registries/<rid>/url                                the registry URL, for humans
    registries/<rid>/manifests/<key path>/vN.json       exact manifest bytes (immutable by vN)
    registries/<rid>/refs/<key path>/latest             last version ``latest`` resolved to
    registries/<rid>/snapshots/<key path>/vN/<file>     hardlinks to blobs: what ``pull`` returns
    registries/<rid>/releases/<name>/vN.md              release cards (immutable by vN), ``latest``
    verified/<path of a blob or snapshot file>          its stat when last hashed (see below)
    tmp/                                                downloads in flight

``<rid>`` is the URL's scheme plus 16 hex of its sha256 (credentials are stripped from the
URL first). Blobs enter the cache only after their sha256 matched (hash computed while
copying, one pass), under a temp name renamed into place; a snapshot folder is built under a
temp name and renamed whole, so a reader never sees a half-built one.

What a warm load guarantees (git's index works the same way): each blob and snapshot file
has a stat record (size, mtime_ns, ctime_ns, inode, device) taken when its bytes were last
hashed. A warm load compares the file's stat with its record and re-hashes on any difference;
a corrupt file is dropped and downloaded again. Any write through the filesystem changes
mtime or ctime (``os.utime`` can restore mtime, never ctime), so it is caught; corruption
below the filesystem (bit rot, raw device writes) or a clock set back is not: for that,
``SCOPE_HUB_VERIFY=always`` re-hashes every file on every load, and ``scope-hub verify --cache``
re-hashes the whole cache.

Example:
    >>> import tempfile
    >>> cache = LocalCache(Path(tempfile.mkdtemp()), "memory://doc-cache")
    >>> cache.rid.startswith("memory--")
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO

from scope_hub.errors import IntegrityError
from scope_hub.keys import DictionaryKey
from scope_hub.metadata import FileEntry, Manifest
from scope_hub.redaction import redact_url
from scope_hub.registry.content import copy_hashing, sha256_file
from scope_hub.registry.faults import fault_point
from scope_hub.registry.layout import blob_path, check_file_name, check_release_name, key_path, parse_version_file
from scope_hub.registry.progress import TransferProgress
from scope_hub.registry.records import VerifyReport
from scope_hub.registry.settings import verify_mode

STAT_RECORDS = "verified"


def registry_id(url: str) -> str:
    """Folder name of a registry inside the cache."""
    scheme = url.split("://", 1)[0] if "://" in url else "file"
    return f"{scheme}--{hashlib.sha256(url.encode()).hexdigest()[:16]}"


class LocalCache:
    """Local files of one registry plus the blob store shared by all registries."""

    def __init__(self, root: Path, url: str):
        self.root = Path(root)
        self.url = redact_url(url)  # recorded in registries/<rid>/url: never a credential
        self.rid = registry_id(self.url)
        self.base = self.root / "registries" / self.rid

    # -- small atomic writes ---------------------------------------------------------------
    def _tmp(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / uuid.uuid4().hex

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp()
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _remember_url(self) -> None:
        marker = self.base / "url"
        if not marker.exists():
            self._write(marker, self.url.encode())

    # -- manifests and refs ------------------------------------------------------------------
    def _manifest_file(self, key: DictionaryKey, version: int) -> Path:
        return self.base / "manifests" / key_path(key) / f"v{int(version)}.json"

    def manifest(self, key: DictionaryKey, version: int) -> bytes | None:
        """Cached manifest bytes of ``key@vN`` (versions are immutable, so never stale)."""
        try:
            return self._manifest_file(key, version).read_bytes()
        except FileNotFoundError:
            return None

    def save_manifest(self, key: DictionaryKey, version: int, data: bytes) -> None:
        """Cache manifest bytes (after the caller parsed and checked them)."""
        self._remember_url()
        self._write(self._manifest_file(key, version), data)

    def cached_versions(self, key: DictionaryKey) -> list[int]:
        """Versions of ``key`` whose manifests are cached."""
        folder = self.base / "manifests" / key_path(key)
        names = os.listdir(folder) if folder.is_dir() else []
        return sorted(p[0] for p in map(parse_version_file, names) if p and p[1] == "json")

    def latest(self, key: DictionaryKey) -> int | None:
        """The version ``latest`` last resolved to online (for offline mode)."""
        try:
            return int((self.base / "refs" / key_path(key) / "latest").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def save_latest(self, key: DictionaryKey, version: int) -> None:
        """Remember what ``latest`` resolved to."""
        self._write(self.base / "refs" / key_path(key) / "latest", str(version).encode())

    # -- release cards -------------------------------------------------------------------------
    def _release_file(self, name: str, leaf: str) -> Path:
        return self.base / "releases" / check_release_name(name) / leaf

    def release(self, name: str, version: int) -> bytes | None:
        """Cached bytes of release card ``name@vN``."""
        try:
            return self._release_file(name, f"v{int(version)}.md").read_bytes()
        except FileNotFoundError:
            return None

    def save_release(self, name: str, version: int, data: bytes) -> None:
        """Cache a release card (immutable by version)."""
        self._remember_url()
        self._write(self._release_file(name, f"v{int(version)}.md"), data)

    def latest_release(self, name: str) -> int | None:
        """The version a release's ``latest`` last resolved to online."""
        try:
            return int(self._release_file(name, "latest").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def save_latest_release(self, name: str, version: int) -> None:
        """Remember what a release's ``latest`` resolved to (for offline mode)."""
        self._write(self._release_file(name, "latest"), str(version).encode())

    # -- stat records: when a cached file must be hashed again ---------------------------------
    def _record_file(self, path: Path) -> Path:
        return self.root / STAT_RECORDS / path.relative_to(self.root)

    def record_stat(self, path: Path) -> None:
        """Record ``path``'s stat now that its bytes are known to be right."""
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: the next load re-fetches it
            self._write(self._record_file(path), _stat_line(path).encode())

    def _unchanged(self, path: Path) -> bool:
        try:
            return self._record_file(path).read_text() == _stat_line(path)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def trusted(self, path: Path, entry: FileEntry, rehash: bool = False) -> bool:
        """Whether cached ``path`` holds ``entry``'s bytes, re-hashing unless its stat record still matches."""
        try:
            if path.stat().st_size != entry.size:
                return False
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not rehash and verify_mode() == "stat" and self._unchanged(path):
            return True
        if sha256_file(path)[0] != entry.sha256:
            return False
        self.record_stat(path)
        return True

    # -- blobs ---------------------------------------------------------------------------------
    def blob(self, entry: FileEntry, rehash: bool = False) -> Path | None:
        """Cached blob of ``entry`` if present and intact (a corrupt one is removed)."""
        path = self.root / blob_path(entry.sha256)
        if self.trusted(path, entry, rehash):
            return path
        if path.exists():
            path.unlink()  # wrong bytes under a content address: never serve them again
        return None

    def ingest(self, stream: BinaryIO, entry: FileEntry, label: str, progress: TransferProgress) -> Path:
        """Copy ``stream`` into the cache, hashing on the way; IntegrityError if it is not ``entry``."""
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as out, progress.bar(entry.size, f"pull {entry.path}") as update:
                first = True

                def chunk_landed(n: int) -> None:
                    nonlocal first
                    update(n)
                    if first:  # once per blob: reading the settings costs milliseconds
                        first = False
                        fault_point("first_chunk_downloaded")

                sha, size = copy_hashing(stream, out, chunk_landed)
            if sha != entry.sha256 or size != entry.size:
                raise IntegrityError(
                    f"{label}: {entry.path} is corrupt in the registry (sha256 {sha[:16]}…, {size} bytes; "
                    f"expected {entry.sha256[:16]}…, {entry.size} bytes); run `scope-hub verify`"
                )
            os.chmod(tmp, 0o444)  # snapshots hardlink blobs: make accidental in-place edits fail
            final = self.root / blob_path(entry.sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            self.record_stat(final)
            return final
        finally:
            tmp.unlink(missing_ok=True)

    # -- snapshots -------------------------------------------------------------------------------
    def snapshot_dir(self, key: DictionaryKey, version: int) -> Path:
        """Where the folder of ``key@vN`` lives once built."""
        return self.base / "snapshots" / key_path(key) / f"v{int(version)}"

    def snapshot_ready(self, key: DictionaryKey, manifest: Manifest, rehash: bool = False) -> bool:
        """True when the snapshot holds every file intact (see the module docstring for how that is known)."""
        folder = self.snapshot_dir(key, manifest.version)
        return all(self.trusted(folder / check_file_name(e.path), e, rehash) for e in manifest.files)

    def build_snapshot(self, key: DictionaryKey, manifest: Manifest) -> Path:
        """Link every (already cached) blob into a fresh folder and rename it into place."""
        final = self.snapshot_dir(key, manifest.version)
        staging = self._tmp()
        staging.mkdir()
        for entry in manifest.files:
            blob = self.blob(entry)
            if blob is None:
                raise IntegrityError(f"blob {entry.sha256[:16]} vanished from the cache while building {final}")
            _link_or_copy(blob, staging / check_file_name(entry.path))
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # stale or broken: move it aside first (rename is atomic, rmtree is not)
            aside = self._tmp()
            os.replace(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(staging, final)
        except OSError:  # a concurrent puller renamed its identical folder first
            shutil.rmtree(staging, ignore_errors=True)
        for entry in manifest.files:  # linking changed the blobs' ctime: record the bytes just checked
            self.record_stat(self.root / blob_path(entry.sha256))
            self.record_stat(final / check_file_name(entry.path))
        return final

    def verify(self, progress: TransferProgress) -> VerifyReport:
        """Re-hash every cached blob; drop corrupt ones and the snapshot files linked to them."""
        report = VerifyReport()
        folder = self.root / "blobs" / "sha256"
        names = sorted(os.listdir(folder)) if folder.is_dir() else []
        bad_inodes: set[tuple[int, int]] = set()
        with progress.bar(len(names), "verify cache", unit="blob") as update:
            for name in names:
                report.blobs_checked += 1
                if sha256_file(folder / name)[0] == name:
                    self.record_stat(folder / name)
                else:
                    st = (folder / name).stat()
                    bad_inodes.add((st.st_dev, st.st_ino))
                    report.problems.append(f"cached blob {name[:16]} was corrupt and has been removed")
                    (folder / name).unlink()
                update(1)
        if bad_inodes:
            self._drop_linked(bad_inodes)
        return report

    def _drop_linked(self, inodes: set[tuple[int, int]]) -> None:
        """Remove snapshot files that are hardlinks of corrupt blobs (next pull rebuilds them)."""
        for folder, _, names in os.walk(self.root / "registries"):
            for name in names:
                path = Path(folder) / name
                st = path.stat()
                if (st.st_dev, st.st_ino) in inodes:
                    path.unlink()


def _stat_line(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino} {st.st_dev}"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # other filesystem or no hardlinks: a copy is correct, just bigger
        shutil.copyfile(src, dst)


def export_snapshot(snapshot: Path, manifest: Manifest, to: Path) -> Path:
    """Copy a snapshot's files into ``to`` (each written under a temp name, then renamed)."""
    to.mkdir(parents=True, exist_ok=True)
    for entry in manifest.files:
        name = check_file_name(entry.path)
        tmp = to / f".{name}.{uuid.uuid4().hex[:8]}.part"
        shutil.copyfile(snapshot / name, tmp)
        os.replace(tmp, to / name)
    return to
