"""Content addressing: hash a dictionary folder, build and parse manifests.

A pushed folder is flat: ``config.json`` (a valid DictionaryConfig), ``params*.safetensors``,
optionally ``README.md`` (the card) and other files. Dotfiles are skipped; subfolders, odd
names and a missing or invalid config.json are refused before anything is uploaded.

Example:
    >>> content_digest([("config.json", "ab" * 32)]) == content_digest([("config.json", "ab" * 32)])
    True
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, TypeVar

from pydantic import ValidationError

from scope_hub.errors import ConfigError, DictionaryNotFoundError, IntegrityError, RegistryError
from scope_hub.keys import DictionaryKey
from scope_hub.metadata import DictionaryConfig, FileEntry, Manifest
from scope_hub.registry.layout import check_file_name

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
CARD_NAME = "README.md"
CONFIG_NAME = "config.json"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def copy_hashing(src: BinaryIO, dst: BinaryIO | None, on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Stream ``src`` into ``dst`` (if given) in one pass; return (sha256 hex, size)."""
    digest, size = hashlib.sha256(), 0
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


@dataclass(frozen=True)
class StagedFile:
    """One local file ready to upload."""

    name: str
    local: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Staged:
    """A hashed dictionary folder, ready to become a version of ``key``."""

    key: DictionaryKey
    files: tuple[StagedFile, ...]
    config: dict
    content_sha256: str

    @property
    def card(self) -> str | None:
        """Name of the card file if the folder has one."""
        return CARD_NAME if any(f.name == CARD_NAME for f in self.files) else None

    @property
    def size(self) -> int:
        """Total bytes."""
        return sum(f.size for f in self.files)


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


def _load_config(path: Path | None, key: DictionaryKey) -> dict:
    if path is None:
        raise ConfigError(f"no {CONFIG_NAME} in the folder pushed as {str(key)!r}; write one (a DictionaryConfig dump)")
    try:
        config = json.loads(path.read_text())
        DictionaryConfig.model_validate(config)
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ConfigError(f"{str(path)!r} is not a valid DictionaryConfig: {detail}") from None
    if config.get("type") != key.type:
        raise ConfigError(f"{str(path)!r} says type {config.get('type')!r} but the key says {key.type!r}")
    return config


def stage_folder(folder: str | Path, key: DictionaryKey, card: str | Path | None = None) -> Staged:
    """Hash every file of ``folder`` (``card`` replaces its README.md) for a push as ``key``."""
    files = _folder_files(Path(folder))
    if card is not None:
        card_path = Path(card)
        if not card_path.is_file():
            raise DictionaryNotFoundError(f"card file {str(card_path)!r} does not exist")
        files[CARD_NAME] = card_path
    config = _load_config(files.get(CONFIG_NAME), key)
    items = sorted(files.items())
    hashes = map_threads(lambda item: sha256_file(item[1]), items)
    staged = [StagedFile(name=name, local=path, sha256=sha, size=size) for (name, path), (sha, size) in zip(items, hashes)]
    digest = content_digest([(f.name, f.sha256) for f in staged])
    return Staged(key=key.unpinned(), files=tuple(staged), config=config, content_sha256=digest)


def utc_now() -> str:
    """ISO 8601 UTC timestamp, seconds precision."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_manifest(staged: Staged, version: int) -> Manifest:
    """The manifest that makes ``staged`` version ``version`` of its key."""
    return Manifest(
        key=str(staged.key),
        version=version,
        files=[FileEntry(path=f.name, sha256=f.sha256, size=f.size) for f in staged.files],
        config=staged.config,
        content_sha256=staged.content_sha256,
        created_at=utc_now(),
        card=staged.card,
    )


def manifest_bytes(manifest: Manifest) -> bytes:
    """Canonical bytes of a manifest (sorted keys): what is stored and what lockfiles hash."""
    return (json.dumps(manifest.model_dump(mode="json"), sort_keys=True, indent=1) + "\n").encode()


def parse_manifest(data: bytes, key: DictionaryKey, version: int, where: str) -> Manifest:
    """Parse manifest bytes and check they describe ``key`` version ``version``."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError:
        raise IntegrityError(f"manifest of {key.unpinned()}@v{version} at {where} is corrupt (not a valid manifest)") from None
    if manifest.key != str(key.unpinned()) or manifest.version != version:
        raise IntegrityError(
            f"manifest at {where} describes {manifest.key}@v{manifest.version}, not {key.unpinned()}@v{version}"
        )
    for entry in manifest.files:
        check_file_name(entry.path)
    expected = content_digest([(e.path, e.sha256) for e in manifest.files])
    if manifest.content_sha256 != expected:
        raise IntegrityError(f"manifest of {key.unpinned()}@v{version} at {where} has a wrong content_sha256")
    return manifest
