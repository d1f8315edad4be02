"""Registry backends by URL scheme: file:// (default), memory://, s3://, hf://.

Heavy clients (s3fs, huggingface_hub) are imported only when their scheme is used.

Example:
    >>> normalize_url("memory://demo")
    'memory://demo'
    >>> open_backend("memory://demo").url
    'memory://demo'
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from scope_hub.errors import RegistryURLError
from scope_hub.redaction import redact_text, redact_url, url_has_secret_parts

if TYPE_CHECKING:  # the interface imports the index, which imports the stores of this package
    from scope_hub.registry.backend_interface import Backend

SCHEMES = ("file", "memory", "s3", "hf")


def normalize_url(url: str) -> str:
    """Canonical registry URL: plain paths become absolute ``file://`` URIs.

    Refused with :class:`~scope_hub.errors.RegistryURLError` (the URL shown redacted): an
    unknown scheme, control characters, user info or a query (credentials belong in the
    environment), ``file:`` URIs without an absolute path, and s3 URLs without a valid bucket.
    """
    if not isinstance(url, str) or not url.strip():
        raise RegistryURLError(f"registry URL must be a non-empty string, got {url!r}; e.g. file:///srv/registry")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise RegistryURLError(f"registry URL {redact_text(url)!r} contains control characters (NUL, newline, ...)")
    if url.startswith("file:") and not url.startswith("file://"):
        url = "file://" + url[len("file:") :]  # RFC 8089's one-slash form file:/srv/reg
        if not url.startswith("file:///"):
            raise RegistryURLError(f"file URI {url!r} needs an absolute path: file:///srv/registry")
    if "://" not in url:
        return _file_url(url)
    scheme = url.split("://", 1)[0]
    if scheme not in SCHEMES:
        raise RegistryURLError(
            f"unsupported registry URL {redact_text(url)!r}: use one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    if url_has_secret_parts(url):
        raise RegistryURLError(
            f"registry URL {redact_text(url)!r} carries user info or a query; drop it ({redact_url(url)}) and "
            "give credentials through the environment (HF_TOKEN, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        )
    if scheme == "file":
        return _file_url(url)
    if scheme == "s3":
        check_s3_url(url)
    return url.rstrip("/")


def _file_url(url: str) -> str:
    from scope_hub.registry.backends.file import path_of_url

    return path_of_url(url).as_uri()


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_s3_url(url: str) -> str:
    """The bucket of an ``s3://bucket[/prefix]`` URL; RegistryURLError if S3 would refuse it.

    Example:
        >>> check_s3_url("s3://my-bucket/registry")
        'my-bucket'
    """
    bucket = url.removeprefix("s3://").split("/", 1)[0]
    if not bucket:
        raise RegistryURLError(f"s3 URL {url!r} has no bucket (nothing between s3:// and /); use s3://bucket[/prefix]")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise RegistryURLError(
            f"s3 URL {url!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-', "
            "starting and ending with a letter or digit); use s3://bucket[/prefix]"
        )
    return bucket


def open_backend(url: str) -> Backend:
    """The backend serving ``url``."""
    url = normalize_url(url)
    scheme = url.split("://", 1)[0]
    if scheme == "hf":
        from scope_hub.registry.backends.hf import HfBackend

        return HfBackend(url)
    from scope_hub.registry.versions import StoreBackend

    if scheme == "memory":
        from scope_hub.registry.backends.memory import MemoryStore

        return StoreBackend(MemoryStore(url))
    if scheme == "s3":
        from scope_hub.registry.backends.s3 import S3Store

        return StoreBackend(S3Store(url))
    from scope_hub.registry.backends.file import FileStore

    return StoreBackend(FileStore(url))
