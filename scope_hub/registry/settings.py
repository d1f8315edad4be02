"""Environment-driven defaults of the registry: where it lives, where the cache is, offline mode.

Read at call time (not import time) so tests and long-lived processes see changes.

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

from scope_hub.errors import ConfigError

REGISTRY_ENV = "SCOPE_HUB_REGISTRY"
CACHE_ENV = "SCOPE_HUB_CACHE"
OFFLINE_ENVS = ("SCOPE_HUB_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to 1/true/yes/on (any case)."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def user_data_dir() -> Path:
    """The per-user data folder (XDG on Linux, Application Support on macOS, LOCALAPPDATA on Windows)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def default_registry_url() -> str:
    """``$SCOPE_HUB_REGISTRY``, else the embedded local registry under the user's data folder."""
    url = os.environ.get(REGISTRY_ENV, "").strip()
    return url or (user_data_dir() / "scope_hub" / "registry").as_uri()


def cache_root() -> Path:
    """``$SCOPE_HUB_CACHE``, else ``~/.cache/scope_hub``."""
    root = os.environ.get(CACHE_ENV, "").strip()
    return Path(root).expanduser() if root else Path.home() / ".cache" / "scope_hub"


VERIFY_ENV = "SCOPE_HUB_VERIFY"
VERIFY_MODES = ("stat", "always")


def verify_mode() -> str:
    """How a warm load trusts cached files: ``stat`` (default) or ``always`` (``$SCOPE_HUB_VERIFY``).

    ``stat`` re-hashes a cached file only when its size, mtime, ctime or inode differ from
    those recorded when it was last hashed; ``always`` re-hashes every file on every load.

    Example:
        >>> os.environ.pop(VERIFY_ENV, None) and None
        >>> verify_mode()
        'stat'
    """
    mode = os.environ.get(VERIFY_ENV, "").strip().lower() or "stat"
    if mode not in VERIFY_MODES:
        raise ConfigError(f"{VERIFY_ENV}={mode!r} is not one of {', '.join(VERIFY_MODES)}; unset it or pick one")
    return mode


def is_offline() -> bool:
    """Offline mode: ``SCOPE_HUB_OFFLINE`` or ``HF_HUB_OFFLINE`` is truthy."""
    return any(env_flag(name) for name in OFFLINE_ENVS)


def progress_enabled() -> bool:
    """Progress bars only on an interactive terminal, never under CI or SCOPE_HUB_QUIET."""
    if env_flag("SCOPE_HUB_QUIET") or os.environ.get("CI"):
        return False
    return sys.stderr.isatty()
