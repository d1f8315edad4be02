"""file:// registry root: a local (or network-mounted) folder.

Exclusive create = write a temp file, then ``os.link`` it to the final name: the link either
publishes the complete bytes or fails with EEXIST, so a crash never leaves a half-written
manifest under its final name. Replacing writes use temp + ``os.replace``. Temp files live in
``<root>/tmp`` (same filesystem, so link/rename are atomic); ``gc`` removes stale ones.

Example:
    >>> import tempfile
    >>> store = FileStore(Path(tempfile.mkdtemp()).as_uri())
    >>> store.create_bytes("x/v1.json", b"{}"), store.create_bytes("x/v1.json", b"[]")
    (True, False)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from fsspec.implementations.local import LocalFileSystem

from scope_hub.errors import RegistryError, RegistryURLError
from scope_hub.registry.backends.store import FsspecStore
from scope_hub.registry.faults import fault_point
from scope_hub.registry.layout import TMP_DIR


def path_of_url(url: str) -> Path:
    """Local folder of a ``file://`` URL (or a plain path); RegistryURLError if it cannot be one."""
    if "\x00" in url:
        raise RegistryURLError(f"registry URL {url!r} contains a NUL character")
    if url.startswith("file://"):
        try:
            parsed = urlparse(url)
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket in the host part
            raise RegistryURLError(f"file URL {url!r} does not parse ({exc}); use file:///absolute/path") from None
        if parsed.netloc not in ("", "localhost"):
            raise RegistryURLError(f"file URL {url!r} names host {parsed.netloc!r}; use file:///absolute/path")
        path = Path(unquote(parsed.path))
        if not path.is_absolute():
            raise RegistryURLError(f"file URL {url!r} has no absolute path; use file:///absolute/path")
    else:
        try:
            path = Path(url).expanduser().absolute()
        except RuntimeError as exc:  # "~user" naming no user: expanduser cannot find a home folder
            raise RegistryURLError(f"registry path {url!r}: {exc}; give an absolute path") from None
    _check_path_length(path, url)
    return path.resolve()


def _check_path_length(path: Path, url: str) -> None:
    """Refuse paths the OS would reject with ENAMETOOLONG, before any file is touched."""
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    if longest > _NAME_MAX or len(os.fsencode(str(path))) > _PATH_MAX:
        shown = url if len(url) <= 80 else f"{url[:60]}...({len(url)} characters)"
        raise RegistryURLError(
            f"registry path {shown!r} is too long for the filesystem (a name over {_NAME_MAX} bytes or "
            f"a path over {_PATH_MAX}); use a shorter folder"
        )


_NAME_MAX = 255
_PATH_MAX = 4096


class FileStore(FsspecStore):
    """A registry root on the local filesystem."""

    def __init__(self, url: str):
        base = path_of_url(url)
        super().__init__(base.as_uri(), LocalFileSystem(), str(base))
        self.base = base

    def _local(self, path: str) -> Path:
        return self.base / path

    def _temp(self) -> Path:
        tmp = self.base / TMP_DIR
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{uuid.uuid4().hex}.part"

    def read_bytes(self, path: str) -> bytes:
        self._count("get")
        return self._local(path).read_bytes()

    def open_read(self, path: str) -> BinaryIO:
        self._count("get")
        return open(self._local(path), "rb")

    def stat(self, path: str) -> tuple[int, float] | None:
        self._count("head")
        try:
            st = self._local(path).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size, st.st_mtime

    def list_names(self, prefix: str) -> list[str]:
        self._count("list")
        try:
            return sorted(os.listdir(self._local(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def walk(self, prefix: str) -> list[str]:
        self._count("list")
        out: list[str] = []
        for folder, _, names in os.walk(self._local(prefix)):
            rel = Path(folder).relative_to(self.base).as_posix()
            out.extend(f"{rel}/{name}" for name in names)
        return sorted(out)

    def _write_temp(self, data: bytes) -> Path:
        tmp = self._temp()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # small metadata files: make the published bytes durable
        return tmp

    def create_bytes(self, path: str, data: bytes) -> bool:
        self._count("put")
        final = self._local(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temp(data)
        try:
            fault_point("manifest_tmp_written")
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        except OSError as exc:  # EPERM / ENOTSUP: no hard links (FAT, some FUSE mounts)
            raise RegistryError(
                f"file:// registries need hard links to publish atomically, and {self.base} "
                f"refused one ({exc.strerror}); put the registry on a local or NFS filesystem"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, path: str, data: bytes) -> None:
        self._count("put")
        final = self._local(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._write_temp(data), final)

    def put_file(self, path: str, local: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        self._count("put")
        final = self._local(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temp()
        try:
            with open(local, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(8 * 1024 * 1024):
                    dst.write(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
            fault_point("blob_tmp_written")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, path: str) -> None:
        self._count("delete")
        self._local(path).unlink(missing_ok=True)

    def touch(self, path: str) -> None:
        # A read-only mount: gc grace then relies on the original mtime.
        with contextlib.suppress(OSError):
            os.utime(self._local(path))

    def remove_tree(self, path: str) -> None:
        """Delete a folder (tests and gc of ``tmp``)."""
        shutil.rmtree(self._local(path), ignore_errors=True)
