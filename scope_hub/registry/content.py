"""Content addressing: hash a dictionary folder, render its card, build and parse manifests.

A pushed folder is flat: ``config.json`` (a scope-hub DictionaryConfig), ``params*.safetensors``,
optionally ``README.md`` (the card *source*) and other files. Dotfiles are skipped; subfolders,
odd names, a missing, foreign or invalid config.json, tensors that disagree with it
(:func:`scope_hub.tensor_layout.check_folder`), a key that contradicts it
(:func:`scope_hub.registry.key_check.check_key_matches`) and a card source without license or
base model are refused before anything is uploaded.

The stored ``README.md`` is not the source: it is rendered for the version being claimed
(:meth:`Staged.render_card`), so it always names its own version. ``content_sha256`` covers
the other files plus the card source's digest (:class:`scope_hub.cards.CardSource`), never
the rendered card, so it does not depend on the version number a push ends up with.

Example:
    >>> content_digest([("config.json", "ab" * 32)]) == content_digest([("config.json", "ab" * 32)])
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from pydantic import ValidationError

from scope_hub.config_io import parse_json_object
from scope_hub.errors import (
    ArgumentError,
    CardError,
    ConfigError,
    DictionaryNotFoundError,
    IntegrityError,
    RegistryError,
)
from scope_hub.keys import DictionaryKey
from scope_hub.metadata import DictionaryConfig, FileEntry, Manifest
from scope_hub.registry.card_hashes import CARD_NAME, card_text_problems
from scope_hub.registry.key_check import check_key_matches
from scope_hub.registry.layout import check_file_name

if TYPE_CHECKING:  # cards imports huggingface_hub: loaded only when a push stages a folder
    from scope_hub.cards import CardSource

CHUNK = 8 * 1024 * 1024
TRANSFER_THREADS = 4
"""Files hashed / transferred at once (hashlib and file I/O release the GIL)."""
T = TypeVar("T")
R = TypeVar("R")


def map_threads(fn: Callable[[T], R], items: Iterable[T], threads: int = TRANSFER_THREADS) -> list[R]:
    """``[fn(x) for x in items]`` on a few threads (in order; the first exception propagates)."""
    items = list(items)
    if len(items) <= 1 or threads <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


CONFIG_NAME = "config.json"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def copy_hashing(src: BinaryIO, dst: BinaryIO | None, on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Stream ``src`` into ``dst`` (if given) in one pass; return (sha256 hex, size).

    Streams with ``readinto`` are read into one reused buffer: a fresh multi-MB ``bytes`` per
    chunk costs page faults that made a cold pull ~1.6x slower than the copy itself.
    """
    digest, size = hashlib.sha256(), 0
    # typing.BinaryIO does not declare readinto, though every buffered reader has it.
    readinto = getattr(src, "readinto", None)
    if callable(readinto):
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while n := readinto(buffer):
            filled = view[:n]
            digest.update(filled)
            if dst is not None:
                dst.write(filled)
            size += n
            if on_bytes:
                on_bytes(n)
        return digest.hexdigest(), size
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
        size += len(chunk)
        if on_bytes:
            on_bytes(len(chunk))
    return digest.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a local file."""
    with open(path, "rb") as f:
        return copy_hashing(f, None)


def content_digest(pairs: list[tuple[str, str]]) -> str:
    """sha256 over sorted (path, sha256) pairs: same files, same digest, whatever the order."""
    lines = "".join(f"{path}\0{sha}\n" for path, sha in sorted(pairs))
    return sha256_bytes(lines.encode())


def folder_hashes(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` of a folder's files (dotfiles skipped; subfolders are not looked into)."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    return {p.name: sha for p, (sha, _) in zip(files, map_threads(sha256_file, files))}


def folder_digest(folder: Path, hashes: dict[str, str] | None = None) -> str:
    """:func:`content_digest` of a folder's files (``hashes``: their :func:`folder_hashes`, if known)."""
    return content_digest(sorted((hashes if hashes is not None else folder_hashes(folder)).items()))


def card_problems(folder: str | Path, hashes: dict[str, str]) -> list[str] | None:
    """Differences between a folder's files and the sha256 its card (README.md) records.

    ``hashes``: ``{file name: sha256}`` of the folder's files (:func:`folder_hashes`); the card
    itself is not counted. None when the folder has no card or its card records no hashes (not
    a scope-hub card, or rendered before cards recorded them).

    Example:
        >>> import tempfile
        >>> from scope_hub.cards import compose_card
        >>> folder = Path(tempfile.mkdtemp())
        >>> card = compose_card({"scope_hub": {"files": {"a.bin": "0" * 64}}}, "")
        >>> _ = (folder / "README.md").write_text(card)
        >>> card_problems(folder, {"a.bin": "1" * 64, "README.md": "2" * 64})[0].endswith("card records 0000000000000000")
        True
    """
    card = Path(folder) / CARD_NAME
    if not card.is_file():
        return None
    return card_text_problems(card.read_bytes(), hashes, str(Path(folder)))


@dataclass(frozen=True)
class StagedFile:
    """One local file ready to upload."""

    name: str
    local: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class StagedCard:
    """A card rendered for one version: small bytes uploaded like any other file."""

    name: str
    data: bytes
    sha256: str
    size: int


@dataclass(frozen=True, eq=False)
class Staged:
    """A hashed dictionary folder, ready to become a version of ``key``.

    ``files`` excludes the card: :meth:`render_card` makes it for the version being claimed.
    """

    key: DictionaryKey
    files: tuple[StagedFile, ...]
    config: dict
    content_sha256: str
    dictionary: DictionaryConfig | None = None
    """The validated config (what the card is rendered from)."""
    card_source: CardSource | None = None
    """The :class:`scope_hub.cards.CardSource` (None: the version has no card)."""
    registry_url: str | None = None
    """Registry URL the card's loading snippet names."""

    @property
    def card(self) -> str | None:
        """Name of the card file if the version gets one."""
        return CARD_NAME if self.card_source is not None else None

    @property
    def card_source_sha256(self) -> str | None:
        """Digest of the card source (part of ``content_sha256``)."""
        return self.card_source.digest if self.card_source is not None else None

    @property
    def size(self) -> int:
        """Total bytes of the non-card files."""
        return sum(f.size for f in self.files)

    def render_card(self, version: int) -> StagedCard | None:
        """The card of ``key@v{version}`` (None when the version has no card)."""
        if self.card_source is None:
            return None
        if self.dictionary is None:
            raise ArgumentError(
                f"{self.key}: a Staged with a card needs its validated config to render it; "
                "build it with stage_folder()",
                argument="dictionary",
                value=None,
            )
        from scope_hub.cards import render_dictionary_card

        text = render_dictionary_card(
            self.dictionary,
            self.key,
            version,
            text=self.card_source,
            registry_url=self.registry_url,
            files={f.name: f.sha256 for f in self.files},
        )
        data = text.encode("utf-8")
        return StagedCard(name=CARD_NAME, data=data, sha256=sha256_bytes(data), size=len(data))


def _folder_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DictionaryNotFoundError(f"dictionary folder {str(folder)!r} does not exist or is not a folder")
    files: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue  # .DS_Store, .gitattributes, editor swap files: never part of a dictionary
        if not entry.is_file():
            raise RegistryError(f"{str(entry)!r} is a folder; dictionary folders must be flat (move or remove it)")
        files[check_file_name(entry.name)] = entry
    return files


def is_native_folder(folder: Path) -> bool:
    """A folder in scope-hub's own layout: config.json carrying ``schema_version`` next to our weight files."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError, RecursionError):  # hostile JSON: the loader's reader says what is wrong
        return False
    has_weights = (folder / "params.safetensors").is_file() or (folder / "params_layer_0.safetensors").is_file()
    return isinstance(raw, dict) and "schema_version" in raw and has_weights


_CONVERT_HINT = (
    "`scope-hub push` converts it on the fly (or convert it first with `scope_hub.sources.publishable_folder` "
    "or `scope-hub convert FOLDER OUT --to scope-hub`); a whole Gemma Scope release publishes with "
    "`scope-hub import gemma-scope-2 SOURCE`"
)


def _load_config(folder: Path, path: Path | None, key: DictionaryKey) -> tuple[dict, DictionaryConfig]:
    """(config.json as stored, validated config); refuses foreign formats and tensor mismatches."""
    from scope_hub.config_io import looks_like_gemma_scope_2
    from scope_hub.tensor_layout import check_folder

    if path is None:
        raise ConfigError(
            f"no {CONFIG_NAME} in the folder pushed as {str(key)!r}; a folder in another format "
            f"(SAELens cfg.json, sparsify, Gemma Scope .npz, ...) must be converted: {_CONVERT_HINT}"
        )
    raw = parse_json_object(path.read_bytes(), repr(str(path)), what="fix or re-export it")
    if "schema_version" not in raw:
        what = "a Gemma Scope 2 config.json" if looks_like_gemma_scope_2(raw) else "not a scope-hub config.json"
        raise ConfigError(
            f"{str(path)!r} is {what} (no schema_version); push publishes scope-hub folders as "
            f"they are: {_CONVERT_HINT}"
        )
    try:
        config = check_folder(folder)  # migrates old schemas; every tensor's name, shape and dtype vs config.json
    except ValidationError as exc:  # pragma: no cover - validate_config already turns these into ConfigError
        raise ConfigError(f"{str(path)!r} is not a valid DictionaryConfig: {exc.errors()[0]['msg']}") from None
    check_key_matches(config, key, repr(str(path)))
    return raw, config


def _card_source(path: Path | None, config: DictionaryConfig, key: DictionaryKey, license: str | None) -> CardSource:
    from scope_hub.cards import CardSource, default_base_model, is_local_path, validate_card

    where = (
        f"card source {str(path)!r}"
        if path is not None
        else f"card of {key} (no --card FILE and no README.md in the folder)"
    )
    try:
        text = path.read_text(encoding="utf-8") if path is not None else None
    except UnicodeDecodeError:
        raise CardError(f"{where} is not UTF-8 text") from None
    source = CardSource.parse(text, config, key, license=license, strict=True, where=where)
    if is_local_path(source.front.get("base_model")):
        raise CardError(
            f"{where}: base_model {source.front['base_model']!r} is a local path; state the Hub id of the "
            "model (e.g. 'base_model: google/gemma-3-270m') and describe a converted copy in the card text"
        )
    validate_card(
        {
            "license": source.front.get("license"),
            "base_model": source.front.get("base_model") or default_base_model(config, key),
        },
        where,
    )
    return source


def stage_folder(
    folder: str | Path,
    key: DictionaryKey,
    card: str | Path | None = None,
    *,
    license: str | None = None,
    registry_url: str | None = None,
) -> Staged:
    """Check and hash ``folder`` for a push as ``key``.

    The card source is ``card`` if given, else the folder's README.md (else none); the card
    must state a license (there, or ``license``) and a base model (there, or config.model,
    or the key's model). Raises ConfigError / ShapeMismatchError / CardError before any upload.
    """
    folder = Path(folder)
    files = _folder_files(folder)
    source_path = files.pop(CARD_NAME, None)
    if card is not None:
        source_path = Path(card)
        if not source_path.is_file():
            raise DictionaryNotFoundError(f"card file {str(source_path)!r} does not exist")
    raw, config = _load_config(folder, files.get(CONFIG_NAME), key)
    source = _card_source(source_path, config, key, license)
    items = sorted(files.items())
    hashes = map_threads(lambda item: sha256_file(item[1]), items)
    staged = [
        StagedFile(name=name, local=path, sha256=sha, size=size) for (name, path), (sha, size) in zip(items, hashes)
    ]
    pairs = [(f.name, f.sha256) for f in staged] + [(CARD_NAME, source.digest)]
    return Staged(
        key=key.unpinned(),
        files=tuple(staged),
        config=raw,
        content_sha256=content_digest(pairs),
        dictionary=config,
        card_source=source,
        registry_url=registry_url,
    )


def utc_now() -> str:
    """ISO 8601 UTC timestamp, seconds precision."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_manifest(staged: Staged, version: int, card: StagedCard | None = None) -> Manifest:
    """The manifest that makes ``staged`` version ``version`` of its key (``card``: its rendered card)."""
    if card is None:
        card = staged.render_card(version)
    entries = [FileEntry(path=f.name, sha256=f.sha256, size=f.size) for f in staged.files]
    if card is not None:
        entries.append(FileEntry(path=card.name, sha256=card.sha256, size=card.size))
    return Manifest(
        key=str(staged.key),
        version=version,
        files=sorted(entries, key=lambda e: e.path),
        config=staged.config,
        content_sha256=staged.content_sha256,
        created_at=utc_now(),
        card=card.name if card is not None else None,
        card_source_sha256=staged.card_source_sha256 if card is not None else None,
    )


def manifest_digest(manifest: Manifest) -> str:
    """The content_sha256 a manifest must carry: its files, the card counted by its source digest."""
    pairs = [
        (e.path, manifest.card_source_sha256 if e.path == manifest.card and manifest.card_source_sha256 else e.sha256)
        for e in manifest.files
    ]
    return content_digest(pairs)


def manifest_bytes(manifest: Manifest) -> bytes:
    """Canonical bytes of a manifest (sorted keys): what is stored and what lockfiles hash."""
    return (json.dumps(manifest.model_dump(mode="json"), sort_keys=True, indent=1) + "\n").encode()


def parse_manifest(data: bytes, key: DictionaryKey, version: int, where: str) -> Manifest:
    """Parse manifest bytes and check they describe ``key`` version ``version``."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError:
        raise IntegrityError(
            f"manifest of {key.unpinned()}@v{version} at {where} is corrupt (not a valid manifest)"
        ) from None
    if manifest.key != str(key.unpinned()) or manifest.version != version:
        raise IntegrityError(
            f"manifest at {where} describes {manifest.key}@v{manifest.version}, not {key.unpinned()}@v{version}"
        )
    for entry in manifest.files:
        check_file_name(entry.path)
    if manifest.content_sha256 != manifest_digest(manifest):
        raise IntegrityError(f"manifest of {key.unpinned()}@v{version} at {where} has a wrong content_sha256")
    return manifest
