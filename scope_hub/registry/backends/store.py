"""The byte-store interface every fsspec-backed registry root implements.

A :class:`Store` maps relative paths (see :mod:`scope_hub.registry.layout`) to bytes. Its
one unusual primitive is :meth:`Store.create_bytes`, an *exclusive* create that either
writes the whole object or reports that it already exists: the version protocol builds
on it. Every call is counted in :attr:`Store.stats` (``get``, ``head``, ``list``, ``put``,
``delete``) so tests and benchmarks can check how many store requests an operation costs.

Example:
    >>> from scope_hub.registry.backends.memory import MemoryStore
    >>> store = MemoryStore("memory://doc-base")
    >>> store.create_bytes("a/b.json", b"1"), store.create_bytes("a/b.json", b"2")
    (True, False)
    >>> store.read_bytes("a/b.json"), store.stats["put"]
    (b'1', 2)
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import fsspec
from fsspec.callbacks import Callback


class _Forward(Callback):
    """fsspec callback forwarding byte counts to a plain function."""

    def __init__(self, on_bytes: Callable[[int], None] | None):
        super().__init__()
        self._on_bytes = on_bytes

    def relative_update(self, inc: int = 1) -> None:
        if self._on_bytes and inc:
            self._on_bytes(inc)

    def absolute_update(self, value: int) -> None:
        delta, self.value = value - int(getattr(self, "value", 0) or 0), value
        self.relative_update(delta)


class Store(ABC):
    """Bytes at relative paths under one registry root."""

    def __init__(self, url: str):
        self.url = url
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()  # pulls fetch files from several threads

    def _count(self, kind: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[kind] += n

    @property
    def reads(self) -> int:
        """Read requests so far (get + head + list)."""
        return self.stats["get"] + self.stats["head"] + self.stats["list"]

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Whole object; FileNotFoundError if absent."""

    def read_many(self, paths: list[str]) -> dict[str, bytes | None]:
        """Several objects (None where absent); backends may batch."""
        out: dict[str, bytes | None] = {}
        for path in paths:
            try:
                out[path] = self.read_bytes(path)
            except FileNotFoundError:
                out[path] = None
        return out

    @abstractmethod
    def open_read(self, path: str) -> BinaryIO:
        """Stream an object; FileNotFoundError if absent."""

    @abstractmethod
    def stat(self, path: str) -> tuple[int, float] | None:
        """(size, modified unix time) or None if absent."""

    @abstractmethod
    def list_names(self, prefix: str) -> list[str]:
        """Names of files and folders directly under ``prefix`` (empty if none)."""

    @abstractmethod
    def walk(self, prefix: str) -> list[str]:
        """Every file path under ``prefix``, relative to the root."""

    @abstractmethod
    def create_bytes(self, path: str, data: bytes) -> bool:
        """Write ``data`` only if ``path`` does not exist, atomically; False if it existed."""

    @abstractmethod
    def put_bytes(self, path: str, data: bytes) -> None:
        """Write or replace ``path`` atomically (readers see old or new bytes, never a mix)."""

    @abstractmethod
    def put_file(self, path: str, local: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        """Upload a local file atomically."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Remove ``path`` (no error if absent)."""

    def touch(self, path: str) -> None:  # noqa: B027 - optional hook: stores without cheap mtimes skip it
        """Refresh the modified time of an existing object where cheap (gc grace for reused blobs)."""


class FsspecStore(Store):
    """A :class:`Store` over an fsspec filesystem rooted at ``root``; subclasses add exclusivity."""

    def __init__(self, url: str, fs: fsspec.AbstractFileSystem, root: str):
        super().__init__(url)
        self.fs = fs
        self.root = root.rstrip("/")

    def full(self, path: str) -> str:
        """Absolute fsspec path of a relative store path."""
        return f"{self.root}/{path}" if path else self.root

    def relative(self, full: str) -> str:
        """Inverse of :meth:`full` for paths the filesystem returns (with or without a leading /)."""
        full, root = full.strip("/"), self.root.strip("/")
        return full[len(root) + 1 :] if full.startswith(root + "/") else full

    def read_bytes(self, path: str) -> bytes:
        self._count("get")
        return self.fs.cat_file(self.full(path))

    def open_read(self, path: str) -> BinaryIO:
        self._count("get")
        return self.fs.open(self.full(path), "rb", block_size=8 * 1024 * 1024)

    def stat(self, path: str) -> tuple[int, float] | None:
        self._count("head")
        try:
            info = self.fs.info(self.full(path))
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            return None
        return int(info["size"]), self.modified(info)

    def modified(self, info: dict) -> float:
        """Modified time from an fsspec info dict (backend-specific field names)."""
        value = info.get("mtime") or info.get("created") or info.get("LastModified") or 0.0
        return value.timestamp() if hasattr(value, "timestamp") else float(value)

    def list_names(self, prefix: str) -> list[str]:
        self._count("list")
        try:
            entries = self.fs.ls(self.full(prefix), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def walk(self, prefix: str) -> list[str]:
        self._count("list")
        try:
            found = self.fs.find(self.full(prefix))
        except FileNotFoundError:
            return []
        return sorted(self.relative(p) for p in found)

    def put_bytes(self, path: str, data: bytes) -> None:
        self._count("put")
        self.fs.pipe_file(self.full(path), data)

    def put_file(self, path: str, local: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        self._count("put")
        self.fs.put_file(str(local), self.full(path), callback=_Forward(on_bytes))

    def delete(self, path: str) -> None:
        self._count("delete")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.full(path))
