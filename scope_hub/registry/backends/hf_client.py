"""Thin huggingface_hub access for the hf:// backend: URL parsing, downloads, errors.

Reads go through ``hf_hub_download`` so the standard Hugging Face cache is used and
``HF_HUB_OFFLINE`` is honoured; commit-pinned reads that are cached cost no request at all.
``HF_ENDPOINT``, ``HF_HUB_CACHE`` / ``HF_HOME`` and the token (``HF_TOKEN`` or a saved login)
are read when the client is made, never printed or written by scope-hub.

``hf://org/name@REV``: REV is a branch (read and write; default ``main``), or a tag or a
commit sha (read-only: the registry as it was at that revision).

Example:
    >>> parse_hf_url("hf://datasets/org/dicts@dev")
    ('dataset', 'org/dicts', 'dev')
    >>> with_revision("hf://org/dicts@main", "v1-tag")
    'hf://org/dicts@v1-tag'
"""

from __future__ import annotations

import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from scope_hub.errors import OfflineError, RegistryError
from scope_hub.registry.settings import is_offline
from scope_hub.settings import settings

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
CONFLICT_STATUS = (409, 412)
"""What the Hub answers when ``parent_commit`` is no longer the branch head."""


def parse_hf_url(url: str) -> tuple[str, str, str]:
    """``hf://[datasets/|models/]org/name[@branch]`` -> (repo_type, repo_id, branch)."""
    rest, _, branch = url.removeprefix("hf://").partition("@")
    parts = rest.strip("/").split("/")
    repo_type = "model"
    if parts and parts[0] in ("models", "datasets"):
        repo_type, parts = parts[0][:-1], parts[1:]
    if len(parts) != 2 or not all(_REPO_PART.match(p) for p in parts):
        raise RegistryError(f"bad hf URL {url!r}: use hf://org/name[@branch] or hf://datasets/org/name[@branch]")
    return repo_type, "/".join(parts), branch or "main"


def with_revision(url: str, revision: str) -> str:
    """``url`` (an hf:// registry URL) read at ``revision`` (branch, tag or commit sha)."""
    if not url.startswith("hf://"):
        raise RegistryError(f"--revision applies to hf:// registries, not {url!r}")
    if not revision or "@" in revision or any(c.isspace() for c in revision):
        raise RegistryError(f"bad revision {revision!r}: give a branch, a tag or a commit sha")
    return f"{url.partition('@')[0]}@{revision}"


def is_commit_sha(revision: str) -> bool:
    """A full 40-hex commit id (as opposed to a branch or tag name)."""
    return bool(_COMMIT_SHA.match(revision))


def hf_cache_dir() -> str | None:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it at import)."""
    cache = settings().hf_cache_dir
    return str(cache) if cache else None


def commit_of(pointer: str) -> str:
    """Commit hash of a file path inside the HF cache (``.../snapshots/<commit>/<file>``)."""
    parts = Path(pointer).parts
    return parts[parts.index("snapshots") + 1]


@contextmanager
def hub_errors(url: str, what: str, hint: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub / HTTP errors into scope-hub's one-line errors.

    ``hint``: what the user can do when the data is not cached and the Hub cannot be used
    (appended to the :class:`OfflineError`); by default, leave offline mode.
    """
    from huggingface_hub import errors as hf

    todo = hint or "unset HF_HUB_OFFLINE / SCOPE_HUB_OFFLINE and check the network"
    try:
        yield
    except hf.LocalEntryNotFoundError:  # offline mode, or the Hub unreachable, and nothing cached
        raise OfflineError(
            f"offline: {what} of {url} is not in the Hugging Face cache and the Hub is "
            f"unreachable or offline mode is on; {todo}"
        ) from None
    except hf.OfflineModeIsEnabled:
        raise OfflineError(f"offline: cannot reach {url} for {what}; {todo}") from None
    except hf.RemoteEntryNotFoundError:
        raise FileNotFoundError(f"{what} not found in {url}") from None
    except hf.RepositoryNotFoundError:
        raise RegistryError(
            f"Hub repo of {url} not found (private? log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except hf.RevisionNotFoundError:
        raise RegistryError(f"revision for {what} not found in {url}") from None
    except hf.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status not in (401, 403, 429) and not (isinstance(status, int) and status >= 500):
            raise  # e.g. 412 on a commit race: the commit loop handles it
        raise RegistryError(
            f"the Hub refused {what} of {url} (HTTP {status or '?'}); check HF_TOKEN, wait and retry, or set "
            "HF_HUB_OFFLINE=1 to use the cache"
        ) from None
    except Exception as exc:
        if type(exc).__module__.split(".")[0].startswith("httpx"):  # connection refused, timeouts, ...
            raise RegistryError(
                f"cannot reach the Hub for {url} ({type(exc).__name__}); check HF_ENDPOINT "
                "and the network, or set HF_HUB_OFFLINE=1 to use the cache"
            ) from None
        raise


class HubClient:
    """One repo, one branch; counts the calls it makes."""

    def __init__(self, url: str):
        from huggingface_hub import HfApi

        self.url = url
        self.repo_type, self.repo_id, self.branch = parse_hf_url(url)
        self.endpoint = (settings().hf_endpoint or "").rstrip("/") or None
        self.api = HfApi(endpoint=self.endpoint)
        self.calls: Counter[str] = Counter()

    def download(self, filename: str, revision: str) -> str:
        """Local path of ``filename`` at ``revision`` via the HF cache (FileNotFoundError if absent)."""
        from huggingface_hub import hf_hub_download

        self.calls["download"] += 1
        with hub_errors(self.url, filename):
            return hf_hub_download(
                self.repo_id,
                filename,
                repo_type=self.repo_type,
                revision=revision,
                endpoint=self.endpoint,
                cache_dir=hf_cache_dir(),
                local_files_only=is_offline(),
            )

    def head_commit(self, create: bool = False, private: bool | None = None) -> str:
        """Commit at the tip of the branch (``create``: make the repo first if it does not exist,
        ``private`` as huggingface_hub's ``create_repo``: None = the account's default)."""
        from huggingface_hub import errors as hf

        self.calls["repo_info"] += 1
        try:
            with hub_errors(self.url, "repo info"):
                return self._branch_tip()
        except RegistryError:
            if not create:
                raise
        with hub_errors(self.url, "create repo"):
            self.api.create_repo(self.repo_id, repo_type=self.repo_type, exist_ok=True, private=private)
            try:
                return self._branch_tip()
            except hf.RevisionNotFoundError:
                raise RegistryError(
                    f"branch {self.branch!r} does not exist in {self.url}; create it on the Hub"
                ) from None

    def _branch_tip(self) -> str:
        # huggingface_hub types RepoInfo.sha as optional (it mirrors the JSON); a repo info asked
        # for one revision always carries the commit, so a missing one is a broken endpoint.
        sha = self.api.repo_info(self.repo_id, repo_type=self.repo_type, revision=self.branch).sha
        if sha is None:
            raise RegistryError(
                f"{self.url}: the Hub answered repo info for branch {self.branch!r} without a commit hash; "
                "check HF_ENDPOINT points at a Hugging Face Hub (or a compatible mirror)"
            )
        return sha

    def remember_head(self, commit: str) -> None:
        """Record ``commit`` as the branch head in the HF cache (its documented ``refs/<branch>``).

        Reads pin commit hashes (race-free), which leaves ``refs/<branch>`` unwritten; writing
        it lets a later ``HF_HUB_OFFLINE=1`` session find the same files.
        """
        from huggingface_hub.file_download import repo_folder_name

        if is_commit_sha(self.branch):
            return  # a commit needs no ref: the HF cache serves it offline by its sha
        root = hf_cache_dir()
        if root is None:
            from huggingface_hub import constants

            root = constants.HF_HUB_CACHE
        ref = Path(root) / repo_folder_name(repo_id=self.repo_id, repo_type=self.repo_type) / "refs" / self.branch
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            tmp = ref.with_name(f".{ref.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(commit)
            os.replace(tmp, ref)
        except OSError:
            pass  # read-only cache: offline mode then needs the user's own snapshot_download

    def commit(self, operations: list, message: str, parent: str) -> str | None:
        """Create one commit on the branch if its head is still ``parent``; None on conflict."""
        from huggingface_hub import errors as hf

        self.calls["commit"] += 1
        try:
            with hub_errors(self.url, "commit"):
                info = self.api.create_commit(
                    self.repo_id,
                    operations,
                    commit_message=message,
                    repo_type=self.repo_type,
                    revision=self.branch,
                    parent_commit=parent,
                )
        except hf.HfHubHTTPError as exc:
            if exc.response is not None and exc.response.status_code in CONFLICT_STATUS:
                return None
            raise RegistryError(
                f"commit to {self.url} failed: HTTP {exc.response.status_code if exc.response is not None else '?'}"
            ) from None
        return info.oid

    def tag(self, commit: str, name: str, message: str) -> None:
        """Best-effort tag (tags are for humans browsing the Hub; the index pins commits)."""
        from huggingface_hub import errors as hf

        self.calls["tag"] += 1
        with suppress(hf.HfHubHTTPError, OSError):
            self.api.create_tag(
                self.repo_id, tag=name, tag_message=message, revision=commit, repo_type=self.repo_type, exist_ok=True
            )

    def list_files(self, commit: str) -> list[str]:
        """Every file path in the repo at ``commit``."""
        self.calls["tree"] += 1
        with hub_errors(self.url, "file listing"):
            tree = self.api.list_repo_tree(self.repo_id, revision=commit, repo_type=self.repo_type, recursive=True)
            return [item.path for item in tree if hasattr(item, "size")]

    def list_folder(self, commit: str, folder: str) -> list[str]:
        """Names of the files directly inside ``folder`` at ``commit`` (empty if it does not exist)."""
        self.calls["tree"] += 1
        try:
            with hub_errors(self.url, f"listing of {folder}"):
                tree = self.api.list_repo_tree(
                    self.repo_id, path_in_repo=folder, revision=commit, repo_type=self.repo_type
                )
                return sorted(item.path.rsplit("/", 1)[-1] for item in tree if hasattr(item, "size"))
        except FileNotFoundError:
            return []

    def commit_titles(self, commit: str) -> dict[str, str]:
        """Commit title -> commit id, for the history reachable from ``commit``."""
        self.calls["commits"] += 1
        with hub_errors(self.url, "commit history"):
            return {
                c.title: c.commit_id
                for c in self.api.list_repo_commits(self.repo_id, revision=commit, repo_type=self.repo_type)
            }
