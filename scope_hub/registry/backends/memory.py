"""memory:// registry root: fsspec's in-process MemoryFileSystem, for tests and notebooks.

Contents live as long as the process and are shared by every Store with the same URL.
Exclusive create is made atomic by a process-wide lock (nothing else writes this memory).

Example:
    >>> store = MemoryStore("memory://doc-mem")
    >>> store.put_bytes("a.txt", b"hi"); store.read_bytes("a.txt")
    b'hi'
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from fsspec.implementations.memory import MemoryFileSystem

from scope_hub.registry.backends.store import FsspecStore

_LOCK = threading.Lock()


class MemoryStore(FsspecStore):
    """A registry root in this process's memory."""

    def __init__(self, url: str):
        name = url.removeprefix("memory://").strip("/") or "default"
        super().__init__(f"memory://{name}", MemoryFileSystem(), f"/{name}")

    def create_bytes(self, path: str, data: bytes) -> bool:
        self._count("put")
        with _LOCK:
            if self.fs.exists(self.full(path)):
                return False
            self.fs.pipe_file(self.full(path), data)
            return True

    def put_bytes(self, path: str, data: bytes) -> None:
        self._count("put")
        with _LOCK:
            self.fs.pipe_file(self.full(path), data)

    def put_file(self, path: str, local: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        data = Path(local).read_bytes()
        self.put_bytes(path, data)
        if on_bytes:
            on_bytes(len(data))

    def wipe(self) -> None:
        """Remove every object of this root (tests)."""
        with _LOCK:
            if self.fs.exists(self.root):
                self.fs.rm(self.root, recursive=True)
