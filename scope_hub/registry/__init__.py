"""scope-hub's dictionary registry (torch-free).

Backends are URLs: ``file://`` (default: a local registry under the user's data folder,
overridable by ``SCOPE_HUB_REGISTRY``), ``memory://``, ``s3://`` (s3fs; endpoint from
``AWS_ENDPOINT_URL``) and ``hf://org/repo`` (a Hugging Face Hub repo). See docs/registry.md.

Example:
    >>> from scope_hub.registry import Registry
    >>> Registry("memory://example").url
    'memory://example'
"""

from __future__ import annotations

import os
from typing import Any

from scope_hub.errors import ArgumentError
from scope_hub.registry.api import Registry, pull_locked
from scope_hub.registry.lockfile import DEFAULT_LOCKFILE, LockEntry, Lockfile
from scope_hub.registry.records import GcReport, KeyInfo, KeySummary, PushResult, VerifyReport, VersionRecord

__all__ = [
    "DEFAULT_LOCKFILE",
    "GcReport",
    "KeyInfo",
    "KeySummary",
    "LockEntry",
    "Lockfile",
    "PushResult",
    "Registry",
    "VerifyReport",
    "VersionRecord",
    "as_registry",
    "pull_locked",
]


def as_registry(registry: Registry | str | os.PathLike[str] | None = None, **options: Any) -> Registry:
    """The one way from a registry URL or path (None: the default registry) to a :class:`Registry`.

    A Registry passes through unchanged; ``options`` (``offline``, ``cache_dir``, ``progress``)
    apply to one opened here.

    Example:
        >>> as_registry("memory://doc-open").url, as_registry(Registry("memory://x")).url
        ('memory://doc-open', 'memory://x')
    """
    if isinstance(registry, Registry):
        return registry
    if registry is not None and not isinstance(registry, (str, os.PathLike)):
        raise ArgumentError(
            f"registry must be a Registry or its URL, got {type(registry).__name__}",
            argument="registry",
            value=registry,
        )
    return Registry(None if registry is None else str(registry), **options)
