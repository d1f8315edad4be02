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

from scope_hub.registry.api import Registry, pull_locked
from scope_hub.registry.lockfile import DEFAULT_LOCKFILE, LockEntry, Lockfile
from scope_hub.registry.models import GcReport, KeyInfo, KeySummary, PushResult, VerifyReport, VersionRecord

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
    "pull_locked",
]
