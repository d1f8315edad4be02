"""Registry backends by URL scheme: file:// (default), memory://, s3://, hf://.

Heavy clients (s3fs, huggingface_hub) are imported only when their scheme is used.

Example:
    >>> normalize_url("memory://demo")
    'memory://demo'
    >>> open_backend("memory://demo").url
    'memory://demo'
"""

from __future__ import annotations

from scope_hub.errors import RegistryError
from scope_hub.registry.protocol import Backend

SCHEMES = ("file", "memory", "s3", "hf")


def normalize_url(url: str) -> str:
    """Canonical registry URL: plain paths become absolute ``file://`` URIs."""
    if "://" not in url:
        from scope_hub.registry.backends.file import path_of_url

        return path_of_url(url).as_uri()
    scheme = url.split("://", 1)[0]
    if scheme not in SCHEMES:
        raise RegistryError(f"unsupported registry URL {url!r}: use one of {', '.join(s + '://' for s in SCHEMES)}")
    if scheme == "file":
        from scope_hub.registry.backends.file import path_of_url

        return path_of_url(url).as_uri()
    return url.rstrip("/")


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
