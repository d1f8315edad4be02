"""Importing a whole published release into a registry: sources, planning, publishing, the report.

A release is read from a local folder or a Hub repo (fetched folder by folder through
``huggingface_hub.snapshot_download``, which honours ``HF_HUB_OFFLINE`` and the HF cache). A
format-specific planner (Gemma Scope 1 or 2) turns its file listing into :class:`Planned`
folders, each with a registry key; :func:`publish` pushes them one by one with a progress bar,
continuing past failures, and returns an :class:`ImportReport`.

Keys keep every published dictionary apart. When two folders map to the same key (Gemma Scope 2
publishes 50 folder names both under ``X/`` and ``X_all/``), the sha256 of their weight files
decides: identical weights are the same dictionary (one key, the ``X_all`` copy is reported as
an alias and not pushed again); different weights keep the ``X/`` folder's key and give the
``X_all`` folder the variant suffix ``_all`` (``l0_big`` -> ``l0_big_all``).

Example:
    >>> report = ImportReport("doc", [FolderResult("a/b", "failed", reason="bad name")])
    >>> report.ok, report.counts()
    (False, {'failed': 1})
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from scope_hub.errors import DictionaryNotFoundError, FormatError
from scope_hub.keys import DictionaryKey
from scope_hub.settings import progress_enabled, settings


@dataclass
class FolderResult:
    """What happened to one folder of the release."""

    folder: str
    """Path inside the release (``resid_post/layer_12_width_16k_l0_small``)."""
    status: str
    """published | unchanged | alias | planned (dry run) | failed."""
    key: str | None = None
    """Registry key it was (or would be) published under."""
    version: int | None = None
    """Registry version now holding it."""
    reason: str | None = None
    """Why it failed, or which folder it is an alias of."""


@dataclass
class ImportReport:
    """Outcome of an import: one :class:`FolderResult` per folder, in release order."""

    source: str
    results: list[FolderResult] = field(default_factory=list)

    def of(self, status: str) -> list[FolderResult]:
        """Results with ``status``."""
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[FolderResult]:
        return self.of("failed")

    @property
    def ok(self) -> bool:
        """True when no folder failed."""
        return not self.failed

    def counts(self) -> dict[str, int]:
        """Number of folders per status."""
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def summary(self) -> str:
        """Human-readable report: counts, then one line per failure and alias."""
        lines = [f"{self.source}: " + ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))]
        lines += [f"  FAILED {r.folder}: {r.reason}" for r in self.failed]
        lines += [f"  alias  {r.folder} -> {r.key} ({r.reason})" for r in self.of("alias")]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "counts": self.counts(), "results": [asdict(r) for r in self.results]}


@dataclass
class Planned:
    """One folder to publish: its key (or why it has none) and how to build its native folder."""

    rel: str
    key: DictionaryKey | None
    build: Callable[[Path, DictionaryKey], None] | None = None
    """Write the native dictionary folder for ``key`` into the given (empty) folder."""
    weights_digest: Callable[[], str] | None = None
    """sha256 over the folder's weight files (for the same-key rule)."""
    is_all: bool = False
    """True for folders under an ``X_all/`` top folder."""
    error: str | None = None


# --- sources -------------------------------------------------------------------------------------

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class ReleaseSource:
    """A release's files, from a local folder or a Hub repo (downloaded one folder at a time)."""

    def __init__(self, source: str | Path, *, revision: str | None = None, repo_id: str | None = None):
        text = str(source)
        self.revision = revision
        if Path(text).is_dir():
            self.root: Path | None = Path(text)
            self.repo_id = repo_id or guess_repo_id(self.root)
        elif text.startswith("hf://") or _REPO_RE.match(text):
            self.root = None
            self.repo_id = repo_id or text.removeprefix("hf://").strip("/")
        else:
            raise DictionaryNotFoundError(f"{text}: neither a local folder nor a Hub repo id (org/name)")
        self.name = str(self.root) if self.root is not None else f"hf://{self.repo_id}"

    def files(self) -> list[str]:
        """Relative posix paths of every file in the release (hidden entries skipped)."""
        root = self.root
        if root is None:
            if not _hub_offline():  # list remotely, download nothing yet
                from huggingface_hub import HfApi

                listing = HfApi(endpoint=_hub_endpoint()).list_repo_files(self._hub_repo(), revision=self.revision)
                return sorted(listing)
            root = self._hub_snapshot(None)
        out = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(root)
            out += [(rel / f).as_posix() for f in filenames if not f.startswith(".")]
        return sorted(out)

    def fetch(self, rel: str) -> Path:
        """Local path of folder ``rel`` (downloaded into the HF cache first for a Hub repo)."""
        if self.root is not None:
            return self.root / rel
        from scope_hub.registry.backends.hf_client import hub_errors

        with hub_errors(
            self.name,
            f"folder {rel}",
            hint="unset HF_HUB_OFFLINE (and check the network), or import "
            "from a local copy of the release; run again to resume",
        ):
            return self._hub_snapshot([f"{rel}/*"]) / rel

    def uri(self, rel: str) -> str:
        """Stable provenance URI of folder ``rel`` (independent of where the files sit locally)."""
        if self.repo_id:
            return f"hf://{self.repo_id}/{rel}" + (f"@{self.revision}" if self.revision else "")
        return f"{self.root.name if self.root else self.name}/{rel}"

    def _hub_repo(self) -> str:
        """The Hub repo id of a source that is not a local folder (``__init__`` always sets it then)."""
        if self.repo_id is None:
            raise DictionaryNotFoundError(f"{self.name}: no Hub repo id; pass repo_id=")
        return self.repo_id

    def _hub_snapshot(self, patterns: list[str] | None) -> Path:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                self._hub_repo(),
                revision=self.revision,
                allow_patterns=patterns,
                local_files_only=_hub_offline(),
                endpoint=_hub_endpoint(),
                cache_dir=settings().hf_hub_cache,
            )
        )


def _hub_endpoint() -> str | None:
    """``HF_ENDPOINT`` read now (huggingface_hub reads it once, at import)."""
    return (settings().hf_endpoint or "").rstrip("/") or None


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return True
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        pass
    return settings().hf_hub_offline


def guess_repo_id(path: Path) -> str | None:
    """The Hub repo a local folder was downloaded from, when its path says so.

    Recognises an HF cache snapshot (``models--google--gemma-scope-2-270m-pt/snapshots/<rev>``)
    and a ``--local-dir`` named after a Gemma Scope repo (``gemma-scope-2-270m-pt``).
    """
    for part in (path.resolve(), *path.resolve().parents):
        match = re.match(r"^models--([^-].*?)--(.+)$", part.name)
        if match:
            return f"{match.group(1)}/{match.group(2)}"
    if re.match(r"^gemma-scope-", path.resolve().name):
        return f"google/{path.resolve().name}"
    return None


# --- planning helpers ----------------------------------------------------------------------------


def folders_of(files: list[str], depth: int) -> dict[str, list[str]]:
    """Group file paths into folders ``depth`` levels deep: ``{folder: [paths inside it]}``."""
    out: dict[str, list[str]] = {}
    for path in files:
        parts = path.split("/")
        if len(parts) > depth:
            out.setdefault("/".join(parts[:depth]), []).append("/".join(parts[depth:]))
    return out


def digest_files(folder: Path, names: list[str]) -> str:
    """sha256 over ``(name, sha256(file))`` of the named files, sorted by name."""
    outer = hashlib.sha256()
    for name in sorted(names):
        inner = hashlib.sha256()
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def _weights_digest(item: Planned) -> str:
    if item.weights_digest is None:
        raise FormatError(f"{item.rel}: no way to hash its weights was planned")
    return item.weights_digest()


def resolve_same_keys(plan: list[Planned]) -> list[FolderResult]:
    """Apply the same-key rule (module docstring) in place; return alias/failure results found.

    Folders are visited in release order, non-``_all`` folders first within a key.
    """
    results: list[FolderResult] = []
    groups: dict[str, list[Planned]] = {}
    for item in plan:
        if item.key is not None and item.error is None:
            groups.setdefault(str(item.key), []).append(item)
    for items in groups.values():
        items.sort(key=lambda p: (p.is_all, p.rel))
        first = items[0]
        for other in items[1:]:
            try:
                same = _weights_digest(first) == _weights_digest(other)
            except Exception as exc:
                other.error = f"cannot hash weights to compare with {first.rel}: {exc}"
                continue
            if same:
                other.error = "alias"
                results.append(
                    FolderResult(other.rel, "alias", str(first.key), reason=f"identical weights to {first.rel}")
                )
            elif other.is_all and other.key is not None:
                variant = f"{other.key.variant}_all" if other.key.variant else "all"
                other.key = replace(other.key, variant=variant)
            else:
                other.error = f"same key {first.key} as {first.rel} but different weights"
    taken: dict[str, str] = {}
    for item in plan:  # a suffixed key could still meet another folder's key
        if item.key is None or item.error is not None:
            continue
        if str(item.key) in taken:
            item.error = f"same key {item.key} as {taken[str(item.key)]} but different weights"
        else:
            taken[str(item.key)] = item.rel
    return results


# --- publishing ----------------------------------------------------------------------------------


def open_registry(registry: Any) -> Any:
    """A registry object from a Registry, or from its URL (``file://``, ``memory://``, ...).

    A local registry (``file://``, ``memory://``, a path) is opened with ``offline=False``:
    reading a release from the HF cache needs ``HF_HUB_OFFLINE=1``, which would otherwise also
    forbid pushing to a registry that needs no network.
    """
    from scope_hub.registry import as_registry

    if isinstance(registry, (str, os.PathLike)):
        url = str(registry)
        local = url.startswith(("file://", "memory://")) or "://" not in url
        return as_registry(url, offline=False if local else None)
    if not hasattr(registry, "push"):  # a Registry, or an object with its interface (tests pass fakes)
        return as_registry(registry)
    return registry


GEMMA_SCOPE_LICENSE = "cc-by-4.0"
"""License the Gemma Scope releases are published under (their Hub model cards); ``--license`` overrides."""


def card_source(rel: str, license: str) -> str:
    """The card source written next to an imported folder: its license and where it came from.

    Stable across runs and machines (no local paths), so a re-import stays a no-op push.
    """
    return (
        f"---\nlicense: {license}\n---\nImported by `scope-hub import` from the release folder "
        f"`{rel}`; its original config.json is kept in the `source_config` field of config.json.\n"
    )


def publish(
    source_name: str,
    plan: list[Planned],
    registry: Any,
    *,
    dry_run: bool = False,
    progress: bool | None = None,
    license: str = GEMMA_SCOPE_LICENSE,
) -> ImportReport:
    """Build and push every planned folder; failures are recorded and the import goes on.

    Each pushed folder gets a README.md card source stating ``license`` (the registry refuses
    versions whose card has no license); the registry renders the card from it.
    """
    from tqdm.auto import tqdm

    report = ImportReport(source_name)
    aliases = {r.folder: r for r in resolve_same_keys(plan)}
    reg = None if dry_run else open_registry(registry)
    enabled = progress_enabled() if progress is None else progress
    with tempfile.TemporaryDirectory(prefix="scope-hub-import-") as tmp:
        bar = tqdm(plan, desc="import", unit="dict", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        for index, item in enumerate(bar):
            bar.set_postfix_str(item.rel[-60:], refresh=False)
            if item.rel in aliases:
                report.results.append(aliases[item.rel])
                continue
            if item.error is not None or item.key is None or item.build is None:
                report.results.append(FolderResult(item.rel, "failed", reason=item.error or "no key"))
                continue
            if reg is None:  # a dry run
                report.results.append(FolderResult(item.rel, "planned", str(item.key)))
                continue
            stage = Path(tmp) / f"d{index}"
            try:
                item.build(stage, item.key)
                if not (stage / "README.md").exists():
                    (stage / "README.md").write_text(card_source(item.rel, license), encoding="utf-8")
                pushed = reg.push(stage, item.key)
            except Exception as exc:
                report.results.append(
                    FolderResult(item.rel, "failed", str(item.key), reason=f"{type(exc).__name__}: {exc}")
                )
                continue
            finally:
                _rmtree(stage)
            status = "published" if getattr(pushed, "created", True) else "unchanged"
            report.results.append(FolderResult(item.rel, status, str(item.key), getattr(pushed, "version", None)))
    return report


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
