"""Published dictionaries by their Hub address or SAELens name, in any layout scope-hub reads.

Two source strings, accepted wherever a dictionary is (``load_dictionary``,
``ScopedModel.from_pretrained`` / ``attach``, the lockfile, the CLI):

* ``hf://[datasets/]ORG/REPO/FOLDER[@REVISION]``: one folder of a Hub repo at a branch, tag or
  commit sha (default ``main``);
* ``saelens://RELEASE/SAE_ID``: a SAELens ``release`` + ``sae_id`` (``SAE.from_pretrained``'s
  arguments), looked up in the installed ``sae-lens`` release table, or in the table bundled
  with scope-hub when ``sae-lens`` is not installed, and read from the release's Hub repo.

Only the named folder is downloaded (into the standard Hugging Face cache); its layout
(scope-hub, Gemma Scope 2 or 1, SAELens, sparsify, dictionary_learning, circuit-tracer) is
detected by :func:`scope_hub.interop.formats.detect_format`, and the commit the revision
resolved to is returned so callers record the source pinned.

Example:
    >>> str(hub_folder_of("saelens://gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_small"))
    'hf://google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_small@main'
    >>> is_remote_source("hf://org/repo/sae@v1"), is_remote_source("hf://org/repo"), is_remote_source("./sae")
    (True, False, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ConfigError, FormatError, IntegrityError
from scope_hub.interop.formats import detect_format, get_format
from scope_hub.registry.backends.hf_folders import HubFolder, fetch_hub_folder, is_hub_folder, parse_hub_folder
from scope_hub.registry.content import card_problems, folder_digest, folder_hashes, is_native_folder
from scope_hub.registry.lockfile import LockEntry, Lockfile, unpinned_source

SAELENS_PREFIX = "saelens://"
NATIVE_FORMATS = ("scope-hub",)
"""Formats :meth:`Dictionary.from_pretrained` reads as they are (so ``lazy`` applies)."""


@dataclass(frozen=True)
class LoadedSource:
    """A dictionary loaded from a remote source, and where exactly it came from."""

    dictionary: Dictionary
    folder: HubFolder
    """The Hub folder pinned to the commit its revision resolved to."""
    local: Path
    """The folder in the Hugging Face cache."""
    format: str
    """Layout detected on the downloaded folder (a :data:`~scope_hub.interop.formats.FORMATS` name)."""
    sha256: str
    """Digest of the folder's files (:func:`scope_hub.registry.content.folder_digest`)."""


def saelens_source(release: str, sae_id: str) -> str:
    """The source string of a SAELens ``release`` + ``sae_id``.

    Example:
        >>> saelens_source("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_small")
        'saelens://gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_small'
    """
    return f"{SAELENS_PREFIX}{release}/{sae_id}"


def is_remote_source(source: object) -> bool:
    """True for an ``hf://`` folder or a ``saelens://`` name (not for a registry URL or a local path)."""
    return isinstance(source, str) and (source.startswith(SAELENS_PREFIX) or is_hub_folder(source))


def hub_folder_of(source: str | HubFolder, *, yaml_path: str | None = None) -> HubFolder:
    """The Hub folder a source string names (a SAELens name is looked up in the release table)."""
    if isinstance(source, HubFolder):
        return source
    if not source.startswith(SAELENS_PREFIX):
        return parse_hub_folder(source)
    from scope_hub.interop.saelens import UnknownReleaseError, release_table

    release, _, sae_id = source.removeprefix(SAELENS_PREFIX).partition("/")
    if not release or not sae_id:
        raise ConfigError(
            f"bad SAELens source {source!r}: use saelens://RELEASE/SAE_ID, e.g. "
            "saelens://gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_small"
        )
    table = release_table(yaml_path)
    entry = table.get(release)
    if entry is None:
        close = [r for r in table if r.split("-")[:3] == release.split("-")[:3]][:5]
        raise UnknownReleaseError(
            f"unknown SAELens release {release!r}" + (f"; similar: {', '.join(close)}" if close else "")
        )
    path = entry["saes"].get(sae_id)
    if path is None:
        raise UnknownReleaseError(
            f"sae_id {sae_id!r} is not in release {release!r}; e.g. {', '.join(list(entry['saes'])[:3])}"
        )
    return HubFolder("model", entry["repo_id"], path.strip("/"))


def fetch_source(source: str | HubFolder, *, expected_sha256: str | None = None) -> tuple[Path, HubFolder, str]:
    """Download only the folder ``source`` names: (local folder, folder pinned to its commit, files' digest).

    ``expected_sha256``: the digest a saved config or lockfile pinned (IntegrityError when the
    files differ).
    """
    local, pinned = fetch_hub_folder(hub_folder_of(source))
    hashes = folder_hashes(local)
    digest = folder_digest(local, hashes)
    problems = card_problems(local, hashes)
    if problems:  # a folder scope-hub published: its card records every file's sha256
        raise IntegrityError(f"{pinned}: {'; '.join(problems)}")
    if expected_sha256 is not None and digest != expected_sha256:
        raise IntegrityError(
            f"{pinned}: the files in the Hugging Face cache hash to {digest[:12]} but {expected_sha256[:12]} was "
            "pinned; delete that folder from the cache (`hf cache delete`) and load again"
        )
    return local, pinned, digest


def load_remote(source: str | HubFolder, *, expected_sha256: str | None = None, **kwargs: Any) -> LoadedSource:
    """Download one Hub folder (or SAELens name) and load the dictionary in it, whatever its layout.

    ``expected_sha256`` as :func:`fetch_source` (checked before anything is loaded);
    ``kwargs`` as :func:`load_folder`.
    """
    local, pinned, digest = fetch_source(source, expected_sha256=expected_sha256)
    fmt = folder_format(local)
    dictionary = load_folder(local, fmt=fmt, origin=pinned, **kwargs)
    return LoadedSource(dictionary=dictionary, folder=pinned, local=local, format=fmt, sha256=digest)


def lock_source(source: str) -> LockEntry:
    """A lockfile entry pinning a Hub source to the commit it resolves to now, with its files' digest."""
    _, pinned, digest = fetch_source(source)
    return LockEntry(source=unpinned_source(source), resolved=str(pinned), content_sha256=digest)


def locked_entry(source: str, lock: str | Path | Lockfile) -> LockEntry:
    """The entry of ``lock`` (a lockfile or its path) pinning Hub source ``source``."""
    return (lock if isinstance(lock, Lockfile) else Lockfile.load(lock)).find_source(source)


def load_locked(source: str, lock: str | Path | Lockfile, **kwargs: Any) -> LoadedSource:
    """Load Hub source ``source`` exactly as ``lock`` pinned it."""
    entry = locked_entry(source, lock)
    return load_remote(str(entry.resolved), expected_sha256=entry.content_sha256, **kwargs)


GEMMA_SCOPE_FORMATS = ("gemma-scope-2", "gemma-scope-1")


def publishable_folder(source: str | Path, scratch: Path) -> tuple[Path, str]:
    """``(folder to push, source format)`` for anything :func:`scope_hub.load_dictionary` accepts.

    A local folder in scope-hub's layout is returned as it is. Any other layout, and any Hub
    folder or SAELens name, is converted into ``scratch`` (created) with its provenance saying
    where it came from: the format, the Hub folder pinned to its commit (a local folder by its
    name only), and the sha256 of every source file. A card source (README.md) is carried over.
    """
    if is_remote_source(str(source)):
        folder, origin, _ = fetch_source(str(source))
        uri = str(origin)
    else:
        folder, origin = Path(source), None
        uri = folder.resolve().name
    fmt = folder_format(folder)
    if fmt in NATIVE_FORMATS and origin is None:
        return folder, fmt
    dictionary = load_folder(folder, fmt=fmt, origin=origin)
    provenance = dictionary.config.provenance
    dictionary.config.provenance = provenance.model_copy(
        update={
            "source": fmt if provenance.source in ("unknown", "") else provenance.source,
            "source_uri": uri,
            "source_files": folder_hashes(folder),
        }
    )
    card = folder / "README.md"
    out = dictionary.save_pretrained(scratch, card=card.read_text(encoding="utf-8") if card.is_file() else None)
    return out, fmt


def folder_format(folder: Path) -> str:
    """The layout of a dictionary folder; an unrecognised one counts as scope-hub's own, whose
    loader then says what is wrong with it."""
    try:
        return detect_format(folder)
    except ConfigError:
        return NATIVE_FORMATS[0]


def load_folder(
    folder: Path,
    *,
    fmt: str | None = None,
    origin: HubFolder | None = None,
    lazy: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> Dictionary:
    """A local dictionary folder in any layout scope-hub reads (``fmt``: detected when None).

    ``origin``: the Hub folder the files came from (recorded as provenance for Gemma Scope 2).
    ``kwargs`` (``matryoshka_groups``, ``allow_nonfinite``) as :meth:`Dictionary.from_pretrained`;
    ``lazy`` applies to scope-hub's own layout (the others are converted in memory).
    """
    fmt = fmt or ("scope-hub" if is_native_folder(folder) else folder_format(folder))  # the common case first
    if fmt in NATIVE_FORMATS or (fmt == "gemma-scope-2" and origin is None and _gemma_scope_2_native(folder)):
        return Dictionary.from_pretrained(folder, lazy=lazy, device=device, dtype=dtype, **kwargs)
    dictionary = _load_foreign(fmt, folder, origin, allow_nonfinite=bool(kwargs.get("allow_nonfinite")))
    if kwargs.get("matryoshka_groups") is not None:
        dictionary = dictionary.truncated(kwargs["matryoshka_groups"])
    if device is not None or dtype is not None:
        dictionary = dictionary.to(device=device, dtype=dtype)
    return dictionary


def _gemma_scope_2_native(folder: Path) -> bool:
    from scope_hub.interop import gemma_scope_2

    return gemma_scope_2.reads_natively(folder)


def _load_foreign(fmt: str, local: Path, origin: HubFolder | None, *, allow_nonfinite: bool) -> Dictionary:
    if fmt != "gemma-scope-2" or origin is None:
        return get_format(fmt).load(local, allow_nonfinite=allow_nonfinite)
    from scope_hub.interop import gemma_scope_2

    try:
        spec = gemma_scope_2.parse_folder("/".join(origin.path.split("/")[-2:]))
    except FormatError:
        spec = None  # a folder named otherwise: its config.json says what it holds
    model = gemma_scope_2.model_from_repo(origin.repo_id)
    return gemma_scope_2.load(local, spec=spec, model=model, source_uri=str(origin), allow_nonfinite=allow_nonfinite)
