"""One folder of a Hub repo as a dictionary source: ``hf://ORG/REPO/sub/folder[@revision]``.

A URL with a path inside the repo names a dictionary folder (``hf://ORG/REPO`` alone stays a
registry URL). Only that folder is downloaded, with ``snapshot_download(allow_patterns=...)``
into the standard Hugging Face cache (its progress bars included), and the commit the revision
resolved to is returned, so whoever records the source can pin it
(:meth:`HubFolder.pinned`). With ``HF_HUB_OFFLINE=1`` the cache answers; a folder it lacks is
an :class:`~scope_hub.errors.OfflineError`. Torch-free.

Example:
    >>> f = parse_hub_folder("hf://google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_small@v1")
    >>> f.repo_id, f.path, f.revision
    ('google/gemma-scope-2-270m-pt', 'resid_post/layer_12_width_16k_l0_small', 'v1')
    >>> str(f.pinned("0" * 40))
    'hf://google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_small@0000000000000000000000000000000000000000'
    >>> is_hub_folder("hf://google/gemma-scope-2-270m-pt"), is_hub_folder("hf://datasets/org/repo/sae")
    (False, True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from scope_hub.errors import DictionaryNotFoundError, OfflineError, RegistryError
from scope_hub.redaction import redact_text
from scope_hub.registry.backends.hf_client import hf_cache_dir, hub_errors, is_commit_sha
from scope_hub.registry.settings import is_offline
from scope_hub.settings import settings

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_FOLDER_PART = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9._+=-]*$")


@dataclass(frozen=True)
class HubFolder:
    """A folder inside a Hub repo, at a revision (branch, tag or commit sha)."""

    repo_type: str
    """``model`` or ``dataset``."""
    repo_id: str
    """``org/name``."""
    path: str
    """Folder inside the repo (posix, no leading or trailing slash)."""
    revision: str = "main"
    """Branch, tag or 40-hex commit sha."""

    def __str__(self) -> str:
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"hf://{prefix}{self.repo_id}/{self.path}@{self.revision}"

    @property
    def is_pinned(self) -> bool:
        """True when the revision is a commit sha (the bytes can never change)."""
        return is_commit_sha(self.revision)

    def pinned(self, commit: str) -> HubFolder:
        """The same folder at commit ``commit``."""
        return replace(self, revision=commit)


def is_hub_folder(source: object) -> bool:
    """True for ``hf://[datasets/]ORG/REPO/<folder...>[@rev]`` (a folder inside a repo)."""
    if not isinstance(source, str) or not source.startswith("hf://"):
        return False
    parts = source.removeprefix("hf://").partition("@")[0].strip("/").split("/")
    return len(parts) > (3 if parts[0] in ("models", "datasets") else 2)


def parse_hub_folder(text: str) -> HubFolder:
    """Parse ``hf://[datasets/|models/]ORG/REPO/FOLDER[/...][@revision]`` (RegistryError if malformed)."""
    rest, _, revision = text.removeprefix("hf://").partition("@")
    parts = rest.strip("/").split("/")
    repo_type = "model"
    if parts and parts[0] in ("models", "datasets"):
        repo_type, parts = parts[0][:-1], parts[1:]
    ok = (
        text.startswith("hf://")
        and len(parts) >= 3
        and all(_PART.match(p) for p in parts[:2])
        and all(_FOLDER_PART.match(p) and p not in (".", "..") for p in parts[2:])
        and not any(c.isspace() or c == "@" for c in revision)
    )
    if not ok:
        raise RegistryError(
            f"bad Hub folder {redact_text(text)!r}: use hf://ORG/REPO/FOLDER[@REVISION], e.g. "
            "hf://google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_small@main"
        )
    return HubFolder(repo_type, "/".join(parts[:2]), "/".join(parts[2:]), revision or "main")


def fetch_hub_folder(folder: HubFolder | str) -> tuple[Path, HubFolder]:
    """Download only ``folder`` (once; the HF cache keeps it) and return (local folder, folder pinned to its commit)."""
    from huggingface_hub import snapshot_download

    folder = parse_hub_folder(folder) if isinstance(folder, str) else folder
    offline = is_offline()
    with hub_errors(str(folder), f"folder {folder.path}", hint="unset HF_HUB_OFFLINE and check the network"):
        snapshot = snapshot_download(
            folder.repo_id,
            repo_type=folder.repo_type,
            revision=folder.revision,
            allow_patterns=[f"{folder.path}/*"],
            cache_dir=hf_cache_dir(),
            local_files_only=offline,
            endpoint=_endpoint(),
        )
    local = Path(snapshot) / folder.path
    if not local.is_dir() or not any(local.iterdir()):
        if offline:
            raise OfflineError(
                f"offline: {folder} is not in the Hugging Face cache; unset HF_HUB_OFFLINE to download it"
            )
        raise DictionaryNotFoundError(
            f"{folder}: no such folder in the repo at that revision; check the folder name and "
            "revision in the repo's file browser"
        )
    return local, folder.pinned(Path(snapshot).name)  # snapshots/<commit sha>


def _endpoint() -> str | None:
    return (settings().hf_endpoint or "").rstrip("/") or None
