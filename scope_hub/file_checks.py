"""What a check found about files, remembered by the files' identity: torch-free.

Attaching 18 layer dictionaries parses 18 configs and 18 safetensors headers and checks
every tensor's name, shape and dtype. Those checks stay; their *results* are kept here,
keyed by each file's identity (absolute path, size, mtime_ns, ctime_ns, inode, device), so
attaching the same unchanged files again costs one ``stat`` per file. Any change to a file
(rewrite, atomic replace, touch) changes its identity and the check runs again; a failing
check is never remembered, so its error is raised every time.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "f.txt"
    >>> _ = path.write_text("a")
    >>> calls = []
    >>> check = lambda: calls.append(1) or len(path.read_text())
    >>> CHECKS.get_or_run([path], "length", check), CHECKS.get_or_run([path], "length", check), len(calls)
    (1, 1, 1)
    >>> _ = path.write_text("abc")  # size changes: the identity changes, the check runs again
    >>> CHECKS.get_or_run([path], "length", check), len(calls)
    (3, 2)
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

FileIdentity = tuple[str, int, int, int, int, int]
"""(absolute path, size, mtime_ns, ctime_ns, inode, device)."""


def file_identity(path: Path | str) -> FileIdentity:
    """The identity of the file at ``path`` now; raises OSError when it cannot be stat'ed."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class CheckCache:
    """A bounded, thread-safe map from (file identities, what was checked) to the check's result."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_run(self, paths: Sequence[Path | str], what: Hashable, check: Callable[[], T]) -> T:
        """``check()``'s result for these files as they are now: remembered, or computed and remembered.

        ``what`` names the check and its parameters (part of the key). A file that cannot be
        stat'ed runs ``check`` uncached, so its own error reaches the caller.
        """
        try:
            key = (tuple(file_identity(p) for p in paths), what)
        except OSError:
            return check()
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]  # type: ignore[return-value]
        value = check()
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every remembered result."""
        with self._lock:
            self._entries.clear()


CHECKS = CheckCache()
"""The process-wide cache used by config parsing, header reads and tensor checks."""
