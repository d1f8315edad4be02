"""The :class:`Registry` facade: push, pull, resolve, list, info, card, verify, yank, gc, reindex,
lock, and release cards.

It adds to any backend the local cache (verified blobs, immutable manifests, snapshots),
offline mode and lockfiles, so every backend behaves the same to callers.

Example:
    >>> import tempfile, json
    >>> from pathlib import Path
    >>> from safetensors.numpy import save_file
    >>> import numpy as np
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text(json.dumps(
    ...     {"schema_version": 1, "type": "sae", "architecture": "relu", "d_in": 4, "d_sae": 8}))
    >>> z = lambda *shape: np.zeros(shape, np.float32)
    >>> save_file({"w_enc": z(4, 8), "b_enc": z(8), "w_dec": z(8, 4), "b_dec": z(4)}, str(folder / "params.safetensors"))
    >>> reg = Registry("memory://doc-api", cache_dir=tempfile.mkdtemp())
    >>> reg.push(folder, "m:resid_post/layer_1/width_8/sae", license="mit").version
    1
    >>> sorted(p.name for p in reg.pull("m:resid_post/layer_1/width_8/sae@v1").iterdir())
    ['README.md', 'config.json', 'params.safetensors']
    >>> "m:resid_post/layer_1/width_8/sae@v1" in reg.card("m:resid_post/layer_1/width_8/sae")
    True
"""

from __future__ import annotations

import builtins
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scope_hub.errors import (
    IntegrityError,
    KeyParseError,
    LockfileError,
    OfflineError,
    RegistryError,
    ScopeHubError,
    UnknownKeyError,
    VersionNotFoundError,
)
from scope_hub.keys import DictionaryKey, close_keys, parse_key, version_number
from scope_hub.metadata import FileEntry, Manifest
from scope_hub.registry.backend_interface import Backend, latest_live, missing_version
from scope_hub.registry.backends import normalize_url, open_backend
from scope_hub.registry.cache import LocalCache, export_snapshot
from scope_hub.registry.content import (
    TRANSFER_THREADS,
    card_problems,
    map_threads,
    parse_manifest,
    sha256_bytes,
    sha256_file,
    stage_folder,
)
from scope_hub.registry.faults import fault_point
from scope_hub.registry.layout import check_release_name, key_path
from scope_hub.registry.lockfile import LockEntry, Lockfile
from scope_hub.registry.progress import TransferProgress
from scope_hub.registry.records import GcReport, KeyInfo, KeySummary, PushResult, VerifyReport, VersionDetail
from scope_hub.registry.settings import cache_root, default_registry_url, is_offline

if TYPE_CHECKING:
    from scope_hub.cards import ReleaseCard


def as_key(key: str | DictionaryKey) -> DictionaryKey:
    """Parse a key string (or pass a DictionaryKey through) and check its path is safe."""
    parsed = parse_key(key) if isinstance(key, str) else key
    key_path(parsed)
    return parsed


class Registry:
    """A dictionary registry at ``url`` (``None``: ``$SCOPE_HUB_REGISTRY`` or the local default).

    ``cache_dir`` defaults to ``$SCOPE_HUB_CACHE``; ``offline`` to ``SCOPE_HUB_OFFLINE`` /
    ``HF_HUB_OFFLINE``; ``progress`` (bars on transfers) to "stderr is a terminal and not CI".
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        offline: bool | None = None,
        progress: bool | None = None,
    ):
        self.url = normalize_url(url or default_registry_url())
        self.cache = LocalCache(Path(cache_dir) if cache_dir else cache_root(), self.url)
        self.progress = TransferProgress(progress)
        self._offline = offline
        self._backend: Backend | None = None

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    @property
    def offline(self) -> bool:
        """Whether only the local cache may be used."""
        return is_offline() if self._offline is None else self._offline

    @property
    def backend(self) -> Backend:
        """The backend serving this URL (opened on first use)."""
        if self._backend is None:
            self._backend = open_backend(self.url)
        return self._backend

    def _can_read_remote(self) -> bool:
        return not self.offline or self.backend.serves_offline

    def _require_online(self, what: str) -> None:
        if self.offline:
            raise OfflineError(f"cannot {what} on {self.url} in offline mode; unset SCOPE_HUB_OFFLINE / HF_HUB_OFFLINE")

    # -- writing ---------------------------------------------------------------------------
    def push(
        self,
        folder: str | Path,
        key: str | DictionaryKey,
        *,
        card: str | Path | None = None,
        license: str | None = None,
        private: bool | None = None,
    ) -> PushResult:
        """Publish ``folder`` as the next version of ``key``; identical content is a no-op.

        ``card``: the card source (default: the folder's README.md); the stored README.md is
        rendered from it and config.json for the version claimed. The card must state a
        license (in its front matter, or ``license``) and a base model (there, or config.model).
        ``private``: hf:// only, visibility of the Hub repo if this push creates it.

        Example: ``Registry("s3://bucket/reg").push("out/sae", "google/gemma-3-270m:resid_post/layer_6/width_16k/sae",
        license="apache-2.0")``
        """
        k = as_key(key)
        if k.ref:
            raise KeyParseError(
                f"push takes a key without a ref, got {str(k)!r}: versions are assigned by the registry"
            )
        self._require_online("push")
        if private is not None:
            if not hasattr(self.backend, "private"):
                raise RegistryError(
                    f"private applies to hf:// registries (the Hub repo a push creates), not {self.url}"
                )
            self.backend.private = private
        staged = stage_folder(folder, k, card, license=license, registry_url=self.url)
        fault_point("staged")
        return self.backend.publish(staged, self.progress)

    def yank(self, key: str | DictionaryKey) -> int:
        """Yank ``key@vN``: ``latest`` skips it, exact pins still pull it. Returns N."""
        k = as_key(key)
        version = version_number(k.ref or "")
        if version is None:
            raise KeyParseError(f"yank needs an exact version, e.g. {k.unpinned()}@v1")
        self._require_online("yank")
        manifest, data = self._manifest(k, version)
        self.backend.yank(k, version, manifest, data)
        return version

    # -- resolving -------------------------------------------------------------------------
    def _manifest(self, key: DictionaryKey, version: int) -> tuple[Manifest, bytes]:
        data = self.cache.manifest(key, version)
        if data is not None:
            return parse_manifest(data, key, version, f"cache {self.cache.rid}"), data
        if not self._can_read_remote():
            raise OfflineError(f"{key.unpinned()}@v{version} is not in the local cache and offline mode is on")
        try:
            data = self.backend.read_manifest(key, version)
        except VersionNotFoundError:
            states = self.backend.versions(key)
            if any(s.version == version for s in states):
                raise  # listed, but its manifest is missing: the backend's message says so
            raise missing_version(key, version, states, self.url) from None
        manifest = parse_manifest(data, key, version, self.url)
        self.cache.save_manifest(key, version, data)
        return manifest, data

    def _latest(self, key: DictionaryKey) -> int:
        if not self._can_read_remote():
            cached = self.cache.latest(key)
            if cached is None:
                raise OfflineError(f"offline: {key.unpinned()}@latest was never resolved online; pin a cached version")
            return cached
        states = self.backend.versions(key)
        if not states and self.offline:  # a backend's own cache (hf) may just predate the key
            raise OfflineError(f"offline: {key.unpinned()} is not in the cached index of {self.url}")
        if not states:
            raise self._not_published(key)
        version = latest_live(states)
        if version is None:
            raise VersionNotFoundError(
                f"every version of {key.unpinned()} is yanked; pin one, e.g. @v{states[-1].version}",
                key=str(key.unpinned()),
                ref="latest",
                registry=self.url,
            )
        self.cache.save_latest(key, version)
        return version

    def _not_published(self, key: DictionaryKey) -> UnknownKeyError:
        """The error for a key with no version, naming the published keys it is closest to."""
        try:
            known = [s.key for s in self.backend.load_index().summaries() if s.latest is not None]
        except (ScopeHubError, OSError):  # the error is about the key: a failing listing must not hide it
            known = []
        close = close_keys(key, known)
        hint = f"close keys that exist: {', '.join(close)}" if close else "see `scope-hub ls`"
        return UnknownKeyError(
            f"{key.unpinned()} is not published in {self.url}; {hint}", key=str(key.unpinned()), registry=self.url
        )

    def _by_content(self, key: DictionaryKey, prefix: str) -> int:
        if self._can_read_remote():
            record = self.backend.load_index().match_content(str(key.unpinned()), prefix)
            if record is not None:
                return record.version
            candidates = [s.version for s in self.backend.versions(key)]  # the index may lag: ask the manifests
        else:
            candidates = self.cache.cached_versions(key)
        for version in reversed(candidates):
            if self._manifest(key, version)[0].content_sha256.startswith(prefix):
                return version
        raise VersionNotFoundError(
            f"no version of {key.unpinned()} has content sha256:{prefix}… in {self.url}",
            key=str(key.unpinned()),
            ref=f"sha256:{prefix}",
            registry=self.url,
        )

    def resolve_version(self, key: str | DictionaryKey) -> int:
        """The N a key's ref (``latest`` by default) points to now."""
        k = as_key(key)
        ref = k.ref or "latest"
        if (n := version_number(ref)) is not None:
            return n
        return self._latest(k) if ref == "latest" else self._by_content(k, ref.removeprefix("sha256:"))

    def resolve(self, key: str | DictionaryKey) -> Manifest:
        """The manifest a key (with its ref) resolves to.

        Example: ``Registry().resolve("google/gemma-3-270m:resid_post/layer_6/width_16k/sae@v2").files``
        """
        k = as_key(key)
        return self._manifest(k, self.resolve_version(k))[0]

    # -- pulling ----------------------------------------------------------------------------
    def pull(
        self,
        key: str | DictionaryKey,
        *,
        to: str | Path | None = None,
        lock: str | Path | Lockfile | None = None,
        verify: bool = False,
    ) -> Path:
        """Local folder holding the dictionary's files, downloaded and verified if needed.

        ``lock``: a lockfile (path or object) that must pin this key in this registry; the
        version and manifest bytes are then exactly the locked ones (else LockfileError).
        ``to``: copy the files there instead of returning the cache snapshot.
        ``verify``: re-hash cached files instead of trusting sizes (slower).

        Example: ``Registry("file:///data/reg").pull("m:resid_post/layer_1/width_16k/sae@v1")``
        """
        k = as_key(key)
        if lock is not None:
            entry = (Lockfile.load(lock) if not isinstance(lock, Lockfile) else lock).find(k, registry=self.url)
            manifest = self._locked_manifest(k, entry)
        else:
            manifest = self._manifest(k, self.resolve_version(k))[0]
        snapshot = self._materialize(k, manifest, verify)
        self._check_card(k, manifest, snapshot)
        return export_snapshot(snapshot, manifest, Path(to)) if to is not None else snapshot

    def _check_card(self, key: DictionaryKey, manifest: Manifest, snapshot: Path) -> None:
        """The card's recorded file hashes must be the manifest's (whose bytes the cache verified)."""
        if not manifest.card:
            return
        problems = card_problems(snapshot, {e.path: e.sha256 for e in manifest.files})
        if problems:
            raise IntegrityError(
                f"{key.unpinned()}@v{manifest.version} in {self.url}: its card disagrees with its files "
                f"({'; '.join(problems)}); run `scope-hub verify` and re-push the version"
            )

    def _locked_manifest(self, key: DictionaryKey, entry: LockEntry) -> Manifest:
        version, locked = entry.version, entry.manifest_sha256
        if version is None or locked is None:  # a Hub source entry: find() never returns one for a key
            raise LockfileError(
                f"{entry.source} is locked as a Hub source; load it with load_dictionary(source, lock=)"
            )
        manifest, data = self._manifest(key, version)
        if sha256_bytes(data) != locked:
            raise LockfileError(
                f"{entry.key}@v{version} in {self.url} no longer matches the lockfile (manifest sha256 "
                f"{sha256_bytes(data)[:12]} != locked {locked[:12]}); re-lock only if the change is intended"
            )
        return manifest

    def pull_many(
        self, keys: list[str | DictionaryKey], *, verify: bool = False, threads: int = TRANSFER_THREADS
    ) -> list[Path]:
        """``[pull(k) for k in keys]`` with the transfers of all keys in flight together.

        Versions and manifests are resolved first; then every missing file of every key is
        downloaded (and sha256-verified) over ``threads`` parallel transfers, largest first, each
        blob once even when keys share it; then each snapshot is built. Use it to fetch every
        layer of a model at once.

        Example: ``Registry("s3://bucket/reg").pull_many([f"m:resid_post/layer_{i}/width_16k/sae@v1" for i in range(18)])``
        """
        pinned = [as_key(k) for k in keys]
        manifests = map_threads(lambda k: self._manifest(k, self.resolve_version(k))[0], pinned, threads)
        snapshots = self._materialize_many(list(zip(pinned, manifests)), verify, threads)
        for key, manifest, snapshot in zip(pinned, manifests, snapshots):
            self._check_card(key, manifest, snapshot)
        return snapshots

    def _materialize(self, key: DictionaryKey, manifest: Manifest, verify: bool) -> Path:
        return self._materialize_many([(key, manifest)], verify)[0]

    def _materialize_many(
        self, items: list[tuple[DictionaryKey, Manifest]], verify: bool, threads: int = TRANSFER_THREADS
    ) -> list[Path]:
        ready = [self.cache.snapshot_ready(key, manifest, rehash=verify) for key, manifest in items]
        jobs: dict[str, tuple[DictionaryKey, int, FileEntry, str]] = {}
        for (key, manifest), done in zip(items, ready):
            if done:
                continue
            label = f"{key.unpinned()}@v{manifest.version}"
            for entry in manifest.files:
                blob = self.cache.blob(entry)
                if blob is not None and verify and sha256_file(blob)[0] != entry.sha256:
                    blob.unlink()
                    blob = None
                if blob is None:
                    jobs.setdefault(entry.sha256, (key, manifest.version, entry, label))
        if jobs and not self._can_read_remote():
            _key, _version, entry, label = next(iter(jobs.values()))
            raise OfflineError(f"offline: {entry.path} of {label} is not in the local cache")

        def fetch(job: tuple[DictionaryKey, int, FileEntry, str]) -> Path:
            key, version, entry, label = job
            with self.backend.open_file(key, version, entry) as stream:
                return self.cache.ingest(stream, entry, label, self.progress)

        # several files (CLT layers, every layer of a model, card, config) download at once, the
        # largest first so the last transfers to finish are short ones
        map_threads(fetch, sorted(jobs.values(), key=lambda job: -job[2].size), threads)
        return [
            self.cache.snapshot_dir(key, manifest.version) if done else self.cache.build_snapshot(key, manifest)
            for (key, manifest), done in zip(items, ready)
        ]

    # -- browsing and maintenance ------------------------------------------------------------
    def list(self, pattern: str = "*") -> list[KeySummary]:
        """Published keys matching an fnmatch ``pattern`` over canonical keys (from the index)."""
        if not self._can_read_remote():
            raise OfflineError(f"cannot list {self.url} in offline mode")
        return [s for s in self.backend.load_index().summaries() if fnmatchcase(s.key, pattern)]

    def info(self, key: str | DictionaryKey) -> KeyInfo:
        """Versions, sizes, config and card of a key (the card of its ref, default latest)."""
        k = as_key(key)
        if not self._can_read_remote():
            raise OfflineError(f"cannot read {self.url} in offline mode")
        states = self.backend.versions(k)
        if not states:
            raise self._not_published(k)
        details, manifests = [], {}
        for state in states:
            manifest, data = self._manifest(k, state.version)
            manifests[state.version] = manifest
            details.append(
                VersionDetail(
                    version=state.version,
                    yanked=state.yanked,
                    created_at=manifest.created_at,
                    content_sha256=manifest.content_sha256,
                    manifest_sha256=sha256_bytes(data),
                    size=sum(f.size for f in manifest.files),
                    files=manifest.files,
                )
            )
        latest = latest_live(states)
        version = self.resolve_version(k) if k.ref else (latest or states[-1].version)
        if version not in manifests:
            raise missing_version(k, version, states, self.url)
        shown = manifests[version]
        return KeyInfo(
            key=str(k.unpinned()),
            registry=self.url,
            latest=latest,
            versions=details,
            config=shown.config,
            card=self._card_text(k, shown),
        )

    def _card_text(self, key: DictionaryKey, manifest: Manifest) -> str | None:
        if not manifest.card:
            return None
        entry = next(e for e in manifest.files if e.path == manifest.card)
        return self._small_file(key, manifest, entry).decode("utf-8", errors="replace")

    def _small_file(self, key: DictionaryKey, manifest: Manifest, entry: FileEntry) -> bytes:
        """One file of a version through the verified cache, without fetching the others (the card)."""
        blob = self.cache.blob(entry)
        if blob is None:
            if not self._can_read_remote():
                raise OfflineError(
                    f"offline: {entry.path} of {key.unpinned()}@v{manifest.version} is not in the local cache"
                )
            with self.backend.open_file(key, manifest.version, entry) as stream:
                blob = self.cache.ingest(stream, entry, f"{key.unpinned()}@v{manifest.version}", self.progress)
        return blob.read_bytes()

    def card(self, key: str | DictionaryKey) -> str:
        """The card of a version (its ref, default latest): the stored README.md.

        A version pushed before cards were generated has none stored: a card is rendered from
        its metadata then (without a license, which only the pusher could state).

        Example: ``print(Registry().card("google/gemma-3-270m:resid_post/layer_6/width_16k/sae@v2"))``
        """
        k = as_key(key)
        manifest = self.resolve(k)
        text = self._card_text(k, manifest)
        if text is not None:
            return text
        from scope_hub.cards import render_dictionary_card
        from scope_hub.config_io import migrate, validate_config

        raw = manifest.config
        config = validate_config(
            migrate(raw) if "schema_version" in raw else raw, f"config of {k.unpinned()}@v{manifest.version}"
        )
        return render_dictionary_card(config, k, manifest.version, registry_url=self.url)

    def verify(self, *, cache: bool = False) -> VerifyReport:
        """Re-hash every blob of the registry (and of the local cache if ``cache``)."""
        self._require_online("verify")
        report = self.backend.verify(self.progress)
        if cache:
            local = self.cache.verify(self.progress)
            report.blobs_checked += local.blobs_checked
            report.problems += local.problems
        return report

    def gc(self, *, grace_seconds: float = 3600.0, dry_run: bool = False) -> GcReport:
        """Delete blobs no manifest references (and stale temp files) older than the grace period."""
        self._require_online("gc")
        return self.backend.gc(grace_seconds, dry_run)

    def reindex(self) -> int:
        """Rebuild the index from the manifests; returns the number of versions indexed."""
        self._require_online("reindex")
        return self.backend.reindex()

    # -- release cards ------------------------------------------------------------------------
    def build_release(
        self, name: str, keys: builtins.list[str | DictionaryKey], *, license: str, description: str = ""
    ) -> ReleaseCard:
        """A :class:`~scope_hub.cards.ReleaseCard` pinning each key (at its ref, default latest)
        to its version and content sha256 in this registry. Nothing is written.

        Example: ``Registry().build_release("my-release", ["m:resid_post/layer_6/width_16k/sae"], license="mit")``
        """
        from scope_hub.cards import ReleaseCard, ReleaseEntry, public_url

        check_release_name(name)
        entries, models, seen = [], [], set()
        for key in keys:
            k = as_key(key)
            if str(k.unpinned()) in seen:
                raise KeyParseError(f"{k.unpinned()} is listed twice in release {name}; list each key once")
            seen.add(str(k.unpinned()))
            manifest = self.resolve(k)
            entries.append(ReleaseEntry(key=str(k.with_ref(f"v{manifest.version}")), sha256=manifest.content_sha256))
            if k.model not in models:
                models.append(k.model)
        return ReleaseCard(
            name=name,
            license=license,
            base_model=models,
            registry=public_url(self.url),
            entries=entries,
            description=description.strip(),
        )

    def publish_release(self, card: ReleaseCard) -> tuple[ReleaseCard, bool]:
        """Store a release card as ``releases/<name>/vN.md`` (N: the next free number, written once).

        Returns ``(card with its version, created)``; a card equal to the latest published one
        (ignoring the version) is not stored again (``created`` False, the latest returned).
        """
        from scope_hub.cards import ReleaseCard

        self._require_online("publish a release")
        name = check_release_name(card.name)
        versions = self.backend.release_versions(name)
        if versions:
            latest = ReleaseCard.parse(
                self.backend.read_release(name, versions[-1]).decode(), f"release {name}@v{versions[-1]}"
            )
            if latest.model_copy(update={"version": None}) == card.model_copy(update={"version": None}):
                return latest, False
        version = self.backend.publish_release(name, lambda v: card.model_copy(update={"version": v}).render().encode())
        return card.model_copy(update={"version": version}), True

    def release_versions(self, name: str) -> builtins.list[int]:
        """Published versions of release ``name``."""
        if not self._can_read_remote():
            raise OfflineError(f"cannot list the releases of {self.url} in offline mode")
        return self.backend.release_versions(check_release_name(name))

    def read_release(self, name: str, version: int | None = None) -> str:
        """Text of release card ``name`` at ``version`` (default: the latest published).

        Example: ``print(Registry("hf://org/dicts").read_release("scope-hub-demo-gemma-3-270m"))``
        """
        check_release_name(name)
        if version is None:
            if self._can_read_remote() and not (self.offline and self.cache.latest_release(name)):
                versions = self.backend.release_versions(name)
                if not versions:
                    raise UnknownKeyError(f"no release named {name!r} is published in {self.url}")
                version = versions[-1]
                self.cache.save_latest_release(name, version)
            else:
                version = self.cache.latest_release(name)
                if version is None:
                    raise OfflineError(f"offline: release {name} was never read online; pin a cached version")
        data = self.cache.release(name, version)
        if data is None:
            if not self._can_read_remote():
                raise OfflineError(f"offline: release {name}@v{version} is not in the local cache")
            data = self.backend.read_release(name, version)
            self.cache.save_release(name, version, data)
        return data.decode("utf-8")

    def lock(self, keys: builtins.list[str | DictionaryKey], path: str | Path | None = None) -> Lockfile:
        """Pin ``keys`` (each at its ref, default latest) into a lockfile, written to ``path`` if given."""
        entries = []
        for key in keys:
            k = as_key(key)
            version = self.resolve_version(k)
            manifest, data = self._manifest(k, version)
            entries.append(
                LockEntry(
                    registry=self.url,
                    key=str(k.unpinned()),
                    version=version,
                    manifest_sha256=sha256_bytes(data),
                    content_sha256=manifest.content_sha256,
                )
            )
        lockfile = Lockfile(entries=entries)
        if path is not None:
            lockfile.save(path)
        return lockfile


def pull_locked(key: str | DictionaryKey, lockfile: str | Path = "scope.lock", **kwargs: Any) -> Path:
    """Pull ``key`` from the registry its lockfile entry names, exactly as locked.

    Example: ``pull_locked("google/gemma-3-270m:resid_post/layer_6/width_16k/sae", "scope.lock")``
    """
    lock = Lockfile.load(lockfile)
    entry = lock.find(as_key(key))
    return Registry(entry.registry, **kwargs).pull(key, lock=lock)
