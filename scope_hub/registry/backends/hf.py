"""hf:// registry: a Hugging Face Hub repo (model or dataset) as a dictionary registry.

Layout in the repo (browsable on the Hub)::

    .scope/index.json                   every key's version records (rewritten by each commit)
    <key path>/config.json              the newest pushed version's files, as a normal
    <key path>/params.safetensors       Hub folder a person can read and download
    <key path>/README.md                card (if the version has one)
    <key path>/.scope/vN.json           manifest of every version
    <key path>/.scope/vN.yanked         yank marker
    releases/<name>/vN.md               release cards (each added once, by its own commit)

One push = ONE commit holding the files, the manifest and the updated index, created with
``parent_commit=<head it was built on>``: if anyone committed in between, the Hub refuses
(409/412) and the push rebuilds on the new head, so N concurrent pushers get distinct
versions and a crash leaves nothing half-published. Older versions stay readable at the
commit recorded in their index record (``revision``: a commit where the key folder still held
that version); the newest version of a key is read at the head the index was read from.
Each version's commit is also tagged (``<key path with __>__vN``), so ``hf://org/repo@<tag>``
(or ``scope-hub pull --revision <tag|sha|branch>``) reads the registry as it was then.

Example:
    >>> tag_name(parse_key("google/gemma-3-270m:resid_post/layer_6/width_16k/sae"), 2)
    'google--gemma-3-270m__resid_post__layer_6__width_16k__sae__v2'
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Generic, TypeVar

from pydantic import ValidationError

from scope_hub.errors import IntegrityError, RegistryError, VersionNotFoundError
from scope_hub.keys import DictionaryKey, parse_key
from scope_hub.metadata import FileEntry, Manifest
from scope_hub.registry.backend_interface import Backend, VersionState, record_of
from scope_hub.registry.backends.hf_client import HubClient, is_commit_sha
from scope_hub.registry.card_hashes import manifest_card_problems
from scope_hub.registry.content import (
    Staged,
    build_manifest,
    copy_hashing,
    manifest_bytes,
    parse_manifest,
    sha256_bytes,
    utc_now,
)
from scope_hub.registry.faults import fault_point
from scope_hub.registry.index import IndexSnapshot, RegistryIndex
from scope_hub.registry.layout import key_path, parse_release_file, release_dir, release_path
from scope_hub.registry.progress import TransferProgress
from scope_hub.registry.records import GcReport, PushResult, VerifyReport, VersionRecord
from scope_hub.registry.settings import is_offline

if TYPE_CHECKING:
    from huggingface_hub import CommitOperation

INDEX_FILE = ".scope/index.json"
MAX_COMMITS = 50

R = TypeVar("R")
PlanResult = TypeVar("PlanResult", covariant=True)


@dataclass(frozen=True)
class _Plan(Generic[PlanResult]):
    """One commit: its operations, its message, and what it stands for (handed back once committed).

    No operations: nothing to commit, ``result`` is the answer as it stands.
    """

    operations: list[CommitOperation]
    message: str
    result: PlanResult

    @staticmethod
    def nothing(result: R) -> _Plan[R]:
        """A plan that commits nothing and answers ``result``."""
        return _Plan([], "", result)


def tag_name(key: DictionaryKey, version: int) -> str:
    """Human-readable git tag of ``key@vN`` (tags are informational; the index pins commits)."""
    return f"{key_path(key).replace('/', '__')}__v{version}"


def _manifest_file(key: DictionaryKey, version: int) -> str:
    return f"{key_path(key)}/.scope/v{version}.json"


def _commit_message(key: DictionaryKey, version: int) -> str:
    return f"scope-hub: publish {key.unpinned()}@v{version}"


class HfBackend(Backend):
    """:class:`~scope_hub.registry.backend_interface.Backend` over a Hub repo."""

    serves_offline = True  # reads fall back to the Hugging Face cache

    def __init__(self, url: str):
        self.client = HubClient(url)
        self.url = url
        self._state: tuple[str, RegistryIndex] | None = None
        self.private: bool | None = None
        """Visibility of the repo if a push has to create it (None: the account's default)."""

    def requests(self) -> int:
        return sum(self.client.calls.values())

    # -- reading the head --------------------------------------------------------------------
    def _index_at(self, commit: str) -> RegistryIndex:
        try:
            with open(self.client.download(INDEX_FILE, commit), "rb") as f:
                return RegistryIndex(IndexSnapshot.model_validate_json(f.read()).keys)
        except FileNotFoundError:
            return RegistryIndex()  # a repo nothing was pushed to yet
        except ValidationError:
            raise RegistryError(f"{INDEX_FILE} of {self.url} is corrupt; run `scope-hub reindex`") from None

    def _refresh(self, create: bool = False) -> tuple[str, RegistryIndex]:
        if is_offline():
            from scope_hub.registry.backends.hf_client import commit_of

            commit = commit_of(self.client.download(INDEX_FILE, self.client.branch))
        else:
            commit = self.client.head_commit(create=create, private=self.private)
        index = self._index_at(commit)
        if not is_offline() and index.keys:
            self.client.remember_head(commit)
        self._state = (commit, index)
        return self._state

    def _record(self, key: DictionaryKey, version: int) -> tuple[str, VersionRecord]:
        """(commit the index was read at, record); reuses the last head if it knows the version."""
        for state in ([self._state] if self._state else []) + [None]:
            commit, index = state or self._refresh()
            record = index.keys.get(str(key.unpinned()), {}).get(version)
            if record is not None:
                return commit, record
        raise VersionNotFoundError(f"{key.unpinned()}@v{version} does not exist in {self.url}")

    def versions(self, key: DictionaryKey) -> list[VersionState]:
        _, index = self._refresh()
        return [VersionState(r.version, r.yanked) for r in index.records(str(key.unpinned()))]

    def read_manifest(self, key: DictionaryKey, version: int) -> bytes:
        commit, record = self._record(key, version)
        try:
            with open(self.client.download(_manifest_file(key, version), commit), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise VersionNotFoundError(f"manifest of {key.unpinned()}@v{version} is missing from {self.url}") from None
        if sha256_bytes(data) != record.manifest_sha256:
            raise IntegrityError(
                f"manifest of {key.unpinned()}@v{version} in {self.url} does not match its index record"
            )
        return data

    def open_file(self, key: DictionaryKey, version: int, entry: FileEntry) -> BinaryIO:
        commit, record = self._record(key, version)
        try:
            return open(self.client.download(f"{key_path(key)}/{entry.path}", record.revision or commit), "rb")
        except FileNotFoundError:
            raise RegistryError(
                f"{entry.path} of {key.unpinned()}@v{version} is missing from {self.url}; run `scope-hub verify`"
            ) from None

    def load_index(self) -> RegistryIndex:
        return self._refresh()[1]

    # -- writing ------------------------------------------------------------------------------
    def _index_operation(self, index: RegistryIndex) -> CommitOperation:
        from huggingface_hub import CommitOperationAdd

        snapshot = index.to_snapshot(generation=0, segments=[])
        return CommitOperationAdd(INDEX_FILE, json.dumps(snapshot.model_dump(mode="json"), indent=1).encode())

    def _commit_loop(self, build: Callable[[str, RegistryIndex], _Plan[R]]) -> tuple[str, R]:
        """Build operations on the current head and commit them; rebuild on conflict.

        Returns the new commit (or the head, when the plan has nothing to commit) and the plan's result.
        """
        if is_commit_sha(self.client.branch):
            raise RegistryError(
                f"{self.url} is pinned to a commit (read-only); write to a branch: "
                f"hf://{self.client.repo_id} or hf://{self.client.repo_id}@BRANCH"
            )
        for attempt in range(MAX_COMMITS):
            parent, index = self._refresh(create=True)
            self._state = None  # build() edits this index in place: never reuse it for reads
            plan = build(parent, index)
            if not plan.operations:
                return parent, plan.result
            fault_point("before_manifest")
            commit = self.client.commit(plan.operations, plan.message, parent)
            if commit is not None:
                return commit, plan.result
            time.sleep(random.uniform(0.01, 0.05 * min(attempt + 1, 8)))  # lost the race: back off
        raise RegistryError(f"{self.url} kept changing under this push ({MAX_COMMITS} attempts); retry")

    def publish(self, staged: Staged, progress: TransferProgress) -> PushResult:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        key, name, folder = staged.key, str(staged.key), key_path(staged.key)

        def build(parent: str, index: RegistryIndex) -> _Plan[tuple[Manifest, bytes] | PushResult]:
            latest = index.latest(name)
            if latest is not None and latest.content_sha256 == staged.content_sha256:
                return _Plan.nothing(
                    PushResult(
                        key=name,
                        version=latest.version,
                        created=False,
                        content_sha256=latest.content_sha256,
                        manifest_sha256=latest.manifest_sha256,
                    )
                )
            records = index.records(name)
            newest = records[-1] if records else None
            version = (newest.version if newest else 0) + 1
            card = staged.render_card(version)  # rebuilt on every attempt: it always names its own version
            manifest = build_manifest(staged, version, card)
            data = manifest_bytes(manifest)
            ops: list[CommitOperation] = [CommitOperationAdd(f"{folder}/{f.name}", str(f.local)) for f in staged.files]
            if card is not None:
                ops.append(CommitOperationAdd(f"{folder}/{card.name}", card.data))
            ops.append(CommitOperationAdd(_manifest_file(key, manifest.version), data))
            if newest is not None:  # its files leave the folder: pin where they can still be read
                ops += [CommitOperationDelete(f"{folder}/{p}") for p in self._stale_files(key, newest, parent, staged)]
                index.keys[name][newest.version] = newest.model_copy(update={"revision": newest.revision or parent})
            index.add(name, record_of(manifest, data))
            ops.append(self._index_operation(index))
            return _Plan(ops, _commit_message(key, version), (manifest, data))

        commit, outcome = self._commit_loop(build)
        if isinstance(outcome, PushResult):
            return outcome
        manifest, data = outcome
        fault_point("manifest_written")
        self.client.tag(commit, tag_name(key, manifest.version), _commit_message(key, manifest.version))
        return PushResult(
            key=name,
            version=manifest.version,
            created=True,
            content_sha256=manifest.content_sha256,
            manifest_sha256=sha256_bytes(data),
        )

    def _stale_files(self, key: DictionaryKey, newest: VersionRecord, parent: str, staged: Staged) -> list[str]:
        with open(self.client.download(_manifest_file(key, newest.version), parent), "rb") as f:
            old = parse_manifest(f.read(), key, newest.version, self.url)
        keep = {f.name for f in staged.files} | ({staged.card} if staged.card else set())
        return [e.path for e in old.files if e.path not in keep]

    def yank(self, key: DictionaryKey, version: int, manifest: Manifest, data: bytes) -> None:
        from huggingface_hub import CommitOperationAdd

        name = str(key.unpinned())

        def build(parent: str, index: RegistryIndex) -> _Plan[int | None]:
            record = index.keys.get(name, {}).get(version)
            if record is None:
                raise VersionNotFoundError(f"{name}@v{version} does not exist in {self.url}")
            if record.yanked:
                return _Plan.nothing(None)
            index.add(name, record.model_copy(update={"yanked": True}))
            marker = json.dumps({"key": name, "version": version, "yanked_at": utc_now()}).encode()
            ops = [
                CommitOperationAdd(f"{key_path(key)}/.scope/v{version}.yanked", marker),
                self._index_operation(index),
            ]
            return _Plan(ops, f"scope-hub: yank {name}@v{version}", version)

        self._commit_loop(build)

    # -- release cards ---------------------------------------------------------------------------
    def release_versions(self, name: str) -> list[int]:
        commit, _ = self._refresh()
        return self._release_versions_at(name, commit)

    def _release_versions_at(self, name: str, commit: str) -> list[int]:
        return sorted(v for v in map(parse_release_file, self.client.list_folder(commit, release_dir(name))) if v)

    def read_release(self, name: str, version: int) -> bytes:
        for state in ([self._state] if self._state else []) + [None]:  # release files stay at every later head
            commit, _ = state or self._refresh()
            try:
                with open(self.client.download(release_path(name, version), commit), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                continue
        raise VersionNotFoundError(f"release {name}@v{version} does not exist in {self.url}")

    def publish_release(self, name: str, render: Callable[[int], bytes]) -> int:
        from huggingface_hub import CommitOperationAdd

        def build(parent: str, index: RegistryIndex) -> _Plan[int]:
            version = max(self._release_versions_at(name, parent), default=0) + 1
            operation = CommitOperationAdd(release_path(name, version), render(version))
            return _Plan([operation], f"scope-hub: release {name}@v{version}", version)

        commit, version = self._commit_loop(build)
        self.client.tag(commit, f"releases__{name}__v{version}", f"scope-hub: release {name}@v{version}")
        return version

    # -- maintenance ----------------------------------------------------------------------------
    def verify(self, progress: TransferProgress) -> VerifyReport:
        report = VerifyReport()
        commit, index = self._refresh()
        items = [(parse_key(k), r) for k in sorted(index.keys) for r in index.records(k)]
        with progress.bar(len(items), "verify versions", unit="version") as update:
            for key, record in items:
                self._verify_version(key, record, commit, report)
                update(1)
        return report

    def _verify_version(self, key: DictionaryKey, record: VersionRecord, commit: str, report: VerifyReport) -> None:
        label = f"{key}@v{record.version}"
        try:
            manifest = parse_manifest(self.read_manifest(key, record.version), key, record.version, self.url)
        except (IntegrityError, VersionNotFoundError) as exc:
            report.problems.append(f"{label}: {exc}")
            return
        report.manifests_checked += 1
        for entry in manifest.files:
            card = io.BytesIO() if entry.path == manifest.card else None  # kept to check what it records
            try:
                with self.open_file(key, record.version, entry) as stream:
                    sha, size = copy_hashing(stream, card)
            except RegistryError as exc:
                report.problems.append(f"{label}: {exc}")
                continue
            report.blobs_checked += 1
            if (sha, size) != (entry.sha256, entry.size):
                report.problems.append(
                    f"{label}: {entry.path} is corrupt (sha256 {sha[:16]}, expected {entry.sha256[:16]})"
                )
            elif (
                card is not None and (problems := manifest_card_problems(manifest, card.getvalue(), label)) is not None
            ):
                report.cards_checked += 1
                report.problems += problems

    def gc(self, grace_seconds: float, dry_run: bool) -> GcReport:
        return GcReport(note="hf:// keeps every version in the repo's git history; there is nothing to collect")

    def reindex(self) -> int:
        """Rebuild ``.scope/index.json`` from the manifests at the head (one commit)."""

        def build(parent: str, old: RegistryIndex) -> _Plan[int]:
            files = set(self.client.list_files(parent))
            titles = None
            fresh = RegistryIndex()
            for path in sorted(files):
                folder, _, name = path.rpartition("/.scope/")
                if not folder or not name.endswith(".json"):
                    continue
                key, version = DictionaryKey.from_path(folder), int(name[1:-5])
                with open(self.client.download(path, parent), "rb") as f:
                    data = f.read()
                manifest = parse_manifest(data, key, version, self.url)
                yanked = f"{folder}/.scope/v{version}.yanked" in files
                known = old.keys.get(str(key), {}).get(version)
                fresh.add(str(key), record_of(manifest, data, yanked, known.revision if known else None))
            for key_name, versions in fresh.keys.items():
                newest = max(versions)
                versions[newest] = versions[newest].model_copy(update={"revision": None})  # read at the head
                for version, record in sorted(versions.items())[:-1]:  # older versions need their commit
                    if record.revision is None:
                        titles = titles if titles is not None else self.client.commit_titles(parent)
                        commit = titles.get(_commit_message(parse_key(key_name), version))
                        versions[version] = record.model_copy(update={"revision": commit})
            count = sum(len(v) for v in fresh.keys.values())
            return _Plan([self._index_operation(fresh)], f"scope-hub: reindex ({count} versions)", count)

        _, count = self._commit_loop(build)
        return count
