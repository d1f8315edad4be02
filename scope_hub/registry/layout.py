"""Where things live inside a registry root, and the path-safety rules every path obeys.

Layout (file://, memory://, s3://)::

    blobs/sha256/<hex>                       immutable file contents
    manifests/<key path>/_versions/vN.json   written once, exclusively: makes vN exist
    manifests/<key path>/_versions/vN.yanked marker: vN skipped by latest, still pullable
    index/snapshots/g<G>.json                compacted index, generation G (write-once)
    index/log/<ns>-<uuid>.json               one index segment per push / yank
    releases/<name>/vN.md                    release card N of a release (written once, exclusively)
    tmp/                                     temp files (file://), removed by gc

``_versions`` cannot collide with a variant folder: variants start with a letter or digit.

Example:
    >>> from scope_hub.keys import parse_key
    >>> manifest_path(parse_key("google/gemma-3-270m:resid_post/layer_3/width_16k/sae"), 2)
    'manifests/google--gemma-3-270m/resid_post/layer_3/width_16k/sae/_versions/v2.json'
    >>> check_file_name("../etc/passwd")
    Traceback (most recent call last):
    ...
    scope_hub.errors.UnsafePathError: unsafe file name '../etc/passwd': ...
"""

from __future__ import annotations

import re

from scope_hub.errors import UnsafePathError
from scope_hub.keys import DictionaryKey

BLOB_DIR = "blobs/sha256"
MANIFEST_DIR = "manifests"
VERSIONS = "_versions"
INDEX_SNAPSHOTS = "index/snapshots"
INDEX_LOG = "index/log"
TMP_DIR = "tmp"
RELEASES_DIR = "releases"

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_VERSION_FILE = re.compile(r"^v([1-9]\d{0,8})\.(json|yanked)$")
_RELEASE_FILE = re.compile(r"^v([1-9]\d{0,8})\.md$")
_FILE_RULE = "letters, digits, '.', '_', '-', starting with a letter or digit, no '..', at most 128"


def check_file_name(name: str) -> str:
    """Return ``name`` if it is a safe flat file name, else raise UnsafePathError."""
    if not isinstance(name, str) or ".." in name or not _SAFE_PART.match(name):
        raise UnsafePathError(f"unsafe file name {name!r}: use {_FILE_RULE} characters (no folders)")
    return name


def key_path(key: DictionaryKey) -> str:
    """The key's storage path, each component checked (no ``..``, absolute parts or odd characters)."""
    path = key.path
    parts = path.split("/")
    if path.startswith("/") or ".." in path or not all(_SAFE_PART.match(p) for p in parts):
        raise UnsafePathError(f"unsafe key path {path!r} for key {str(key)!r}: components must be {_FILE_RULE}")
    return path


def check_sha256(hexdigest: str) -> str:
    """Return a lowercase 64-hex sha256, or raise UnsafePathError (it becomes a blob path)."""
    if not isinstance(hexdigest, str) or not _HEX64.match(hexdigest):
        raise UnsafePathError(f"bad sha256 {hexdigest!r}: expected 64 lowercase hex digits")
    return hexdigest


def blob_path(sha256: str) -> str:
    """Store path of the blob with this sha256."""
    return f"{BLOB_DIR}/{check_sha256(sha256)}"


def versions_dir(key: DictionaryKey) -> str:
    """Folder holding a key's manifests and yank markers."""
    return f"{MANIFEST_DIR}/{key_path(key)}/{VERSIONS}"


def manifest_path(key: DictionaryKey, version: int) -> str:
    """Store path of the manifest of ``key`` version ``version``."""
    return f"{versions_dir(key)}/v{int(version)}.json"


def yank_path(key: DictionaryKey, version: int) -> str:
    """Store path of the yank marker of ``key`` version ``version``."""
    return f"{versions_dir(key)}/v{int(version)}.yanked"


def parse_version_file(name: str) -> tuple[int, str] | None:
    """``("v3.json")`` -> ``(3, "json")``; ``v3.yanked`` -> ``(3, "yanked")``; anything else -> None."""
    match = _VERSION_FILE.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def key_of_version_file(path: str) -> tuple[DictionaryKey, int, str] | None:
    """Inverse of :func:`manifest_path` / :func:`yank_path` (None for other paths)."""
    head, _, name = path.rpartition("/")
    parsed = parse_version_file(name)
    prefix, suffix = f"{MANIFEST_DIR}/", f"/{VERSIONS}"
    if parsed is None or not head.startswith(prefix) or not head.endswith(suffix):
        return None
    key = DictionaryKey.from_path(head[len(prefix) : -len(suffix)])
    return key, parsed[0], parsed[1]


def check_release_name(name: str) -> str:
    """Return ``name`` if it is a safe release name (one path component), else raise UnsafePathError."""
    if not isinstance(name, str) or ".." in name or not _SAFE_PART.match(name):
        raise UnsafePathError(
            f"bad release name {name!r}: use {_FILE_RULE} characters, e.g. scope-hub-demo-gemma-3-270m"
        )
    return name


def release_dir(name: str) -> str:
    """Folder holding every published version of release ``name``."""
    return f"{RELEASES_DIR}/{check_release_name(name)}"


def release_path(name: str, version: int) -> str:
    """Store path of release card ``name`` version ``version``."""
    return f"{release_dir(name)}/v{int(version)}.md"


def parse_release_file(name: str) -> int | None:
    """``"v3.md"`` -> 3; anything else -> None."""
    match = _RELEASE_FILE.match(name)
    return int(match.group(1)) if match else None
