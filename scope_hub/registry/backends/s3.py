"""s3:// registry root through s3fs (any S3-compatible endpoint).

The endpoint comes from the standard AWS variables (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``), credentials from the usual boto chain. Exclusive create is a
conditional put (``If-None-Match: *``, s3fs ``pipe_file(mode="create")``): S3 and moto 5.2.5
answer 412 PreconditionFailed to the second writer, which s3fs raises as FileExistsError.
Plain S3 puts (and completed multipart uploads) are atomic, so blobs need no temp name.

Example (needs an endpoint, so not run here)::

    store = S3Store("s3://my-bucket/registry")
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

if TYPE_CHECKING:
    from typing_extensions import Buffer

from scope_hub.errors import RegistryConnectionError, RegistryError, RegistryURLError
from scope_hub.redaction import redact_text, redact_url
from scope_hub.registry.backends import check_s3_url
from scope_hub.registry.backends.store import FsspecStore, _Forward
from scope_hub.settings import settings


def _endpoint() -> str | None:
    return settings().s3_endpoint


_UNREACHABLE = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyConnectionError",
    "ConnectionClosedError",
    "ResponseStreamingError",
    "IncompleteReadError",
)
"""botocore errors of a connection that failed or dropped (before a request, or during a download)."""


@contextlib.contextmanager
def s3_errors(url: str) -> Iterator[None]:
    """Turn botocore's exceptions (which are not OSErrors) into scope-hub errors that say what to do.

    s3fs already maps S3's answers (404, 403, 412) to FileNotFoundError, PermissionError and
    FileExistsError, which the store protocol relies on; those pass through untouched.
    """
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        module = type(exc).__module__ or ""
        if not module.startswith(("botocore", "aiobotocore", "aiohttp")):
            raise
        name = type(exc).__name__
        endpoint = redact_url(_endpoint() or "") or "AWS's default endpoint"
        if name in _UNREACHABLE or module.startswith("aiohttp"):
            raise RegistryConnectionError(
                f"cannot reach the S3 endpoint {endpoint} for {url} ({name}); check that the server is up, "
                "set AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) to your S3-compatible server, or unset it for "
                "AWS, and retry"
            ) from None
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            raise RegistryConnectionError(
                f"no AWS credentials for {url} at {endpoint}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)"
            ) from None
        if name == "ParamValidationError":
            raise RegistryURLError(f"S3 refused {url}: {redact_text(' '.join(str(exc).split()))}") from None
        raise RegistryError(f"S3 request for {url} at {endpoint} failed ({name}: {redact_text(str(exc))})") from None


class S3Store(FsspecStore):
    """A registry root in an S3 bucket (optionally under a prefix)."""

    def __init__(self, url: str):
        try:
            import s3fs
        except ImportError:  # optional dependency: say exactly what to install
            raise RegistryError("s3:// registries need s3fs: pip install 'scope-hub[s3]'") from None
        check_s3_url(url)
        root = url.removeprefix("s3://").strip("/")
        # No listing cache: versions and index segments must be seen as soon as they exist.
        # The instance cache stays on: Registry objects with the same endpoint share one client.
        fs = s3fs.S3FileSystem(
            use_listings_cache=False,
            client_kwargs={"endpoint_url": _endpoint()},
        )
        super().__init__(f"s3://{root}", fs, root)

    def create_bytes(self, path: str, data: bytes) -> bool:
        self._count("put")
        for attempt in range(10):
            try:
                self.fs.pipe_file(self.full(path), data, mode="create")
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                # AWS answers 409 ConditionalRequestConflict while a racing conditional put is in flight.
                if "Conflict" not in str(exc) or attempt == 9:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return False

    def open_read(self, path: str) -> BinaryIO:
        with s3_errors(self.url):
            stream = super().open_read(path)
        return cast(BinaryIO, _GuardedReader(stream, self.url))

    def read_many(self, paths: list[str]) -> dict[str, bytes | None]:
        if not paths:
            return {}
        self._count("get", len(paths))
        got = self.fs.cat([self.full(p) for p in paths], on_error="omit")  # concurrent GETs
        by_rel = {self.relative(k): v for k, v in got.items()}
        return {p: by_rel.get(p) for p in paths}

    def put_file(self, path: str, local: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        self._count("put")
        self.fs.put_file(str(local), self.full(path), callback=_Forward(on_bytes))


class _GuardedReader(io.RawIOBase):
    """An S3 object opened for reading whose reads go through :func:`s3_errors`.

    Opening sends only a HEAD; the bytes come in ranged GETs as they are read, so a download
    that fails half-way fails in a read, long after the open returned.
    """

    def __init__(self, stream: Any, url: str) -> None:
        super().__init__()
        self._stream, self._url = stream, url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        with s3_errors(self._url):
            return self._stream.readinto(buffer)

    def read(self, size: int | None = -1) -> bytes:
        with s3_errors(self._url):
            return self._stream.read(-1 if size is None else size)

    def close(self) -> None:
        try:
            with s3_errors(self._url):
                self._stream.close()
        finally:
            super().close()


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: S3Store, *args: Any, **kwargs: Any) -> Any:
        with s3_errors(self.url):
            return method(self, *args, **kwargs)

    return call


# Every store operation may be the first to touch the network: each gets the same translation.
for _name in (
    "read_bytes",
    "read_many",
    "stat",
    "list_names",
    "walk",
    "create_bytes",
    "put_bytes",
    "put_file",
    "delete",
    "touch",
):
    setattr(S3Store, _name, _guarded(getattr(S3Store, _name)))
