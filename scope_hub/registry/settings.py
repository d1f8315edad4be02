"""The registry's defaults from the environment: where it lives, where the cache is, offline mode.

Every variable is read by :mod:`scope_hub.settings` at call time (not import time), so tests
and long-lived processes see changes; this module turns them into the registry's defaults.

Example:
    >>> import os
    >>> os.environ["SCOPE_HUB_REGISTRY"] = "memory://doc"
    >>> default_registry_url()
    'memory://doc'
    >>> del os.environ["SCOPE_HUB_REGISTRY"]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from scope_hub.settings import progress_enabled, settings

__all__ = ["cache_root", "default_registry_url", "is_offline", "progress_enabled", "user_data_dir", "verify_mode"]


def user_data_dir() -> Path:
    """The per-user data folder (XDG on Linux, Application Support on macOS, LOCALAPPDATA on Windows)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    if os.name == "nt":
        return settings().local_app_data or Path.home() / "AppData" / "Local"
    return settings().xdg_data_home or Path.home() / ".local" / "share"


def default_registry_url() -> str:
    """``$SCOPE_HUB_REGISTRY``, else the embedded local registry under the user's data folder."""
    url = (settings().registry or "").strip()
    return url or (user_data_dir() / "scope_hub" / "registry").as_uri()


def cache_root() -> Path:
    """``$SCOPE_HUB_CACHE``, else ``~/.cache/scope_hub``."""
    root = settings().cache
    return root.expanduser() if root else Path.home() / ".cache" / "scope_hub"


def verify_mode() -> str:
    """How a warm load trusts cached files: ``stat`` (default) or ``always`` (``$SCOPE_HUB_VERIFY``).

    ``stat`` re-hashes a cached file only when its size, mtime, ctime or inode differ from
    those recorded when it was last hashed; ``always`` re-hashes every file on every load.

    Example:
        >>> os.environ.pop("SCOPE_HUB_VERIFY", None) and None
        >>> verify_mode()
        'stat'
    """
    return settings().verify


def is_offline() -> bool:
    """Offline mode: ``SCOPE_HUB_OFFLINE`` or ``HF_HUB_OFFLINE`` is truthy."""
    return settings().offline
