"""Every environment variable scope-hub reads, in one place (pydantic-settings; torch-free).

Read at call time, not import time: :func:`settings` builds a fresh :class:`ScopeHubSettings`
from the environment on each call, so tests that monkeypatch ``os.environ`` and long-lived
processes see changes. Other modules ask this one (``settings().offline``), never ``os.environ``.
A malformed value is a :class:`~scope_hub.errors.ConfigError` naming the variable.
``docs/architecture.md`` holds the table :func:`environment_table` writes.

Example:
    >>> import os
    >>> os.environ["SCOPE_HUB_OFFLINE"] = "yes"
    >>> settings().offline
    True
    >>> del os.environ["SCOPE_HUB_OFFLINE"]
    >>> os.environ["SCOPE_HUB_INDEX_COMPACT_AFTER"] = "many"
    >>> settings()
    Traceback (most recent call last):
    ...
    scope_hub.errors.ConfigError: environment variable SCOPE_HUB_INDEX_COMPACT_AFTER='many': ...
    >>> del os.environ["SCOPE_HUB_INDEX_COMPACT_AFTER"]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from scope_hub.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}


def _flag(value: Any) -> bool:
    """1/true/yes/on (any case) is on; anything else, including a typo, is off (as huggingface_hub reads flags)."""
    return value if isinstance(value, bool) else str(value).strip().lower() in _TRUE


def _set(value: Any) -> bool:
    """Any value but empty or 0 is on (``CI=github`` counts)."""
    return value if isinstance(value, bool) else str(value).strip() not in ("", "0")


Flag = Annotated[bool, BeforeValidator(_flag)]
SetFlag = Annotated[bool, BeforeValidator(_set)]


def _env(*names: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(*names) if len(names) > 1 else names[0])


class ScopeHubSettings(BaseSettings):
    """The environment as scope-hub sees it; one field per variable (first alias wins)."""

    model_config = SettingsConfigDict(
        extra="ignore", frozen=True, env_ignore_empty=True, use_attribute_docstrings=True, case_sensitive=True
    )

    registry: str | None = _env("SCOPE_HUB_REGISTRY")
    """Default registry URL (``file://``, ``memory://``, ``s3://``, ``hf://``); else the per-user local registry."""
    cache: Path | None = _env("SCOPE_HUB_CACHE")
    """Download cache of registry blobs; default ``~/.cache/scope_hub``."""
    models: Path | None = _env("SCOPE_HUB_MODELS")
    """Folder of converted real models; default ``~/.cache/scope_hub/models``."""
    scope_hub_offline: Flag = Field(default=False, validation_alias="SCOPE_HUB_OFFLINE")
    """Never touch the network; serve from the cache or fail with OfflineError."""
    hf_hub_offline: Flag = Field(default=False, validation_alias="HF_HUB_OFFLINE")
    """huggingface_hub's offline switch; scope-hub honours it too."""
    quiet: Flag = Field(default=False, validation_alias="SCOPE_HUB_QUIET")
    """No progress bars."""
    debug: SetFlag = Field(default=False, validation_alias="SCOPE_HUB_DEBUG")
    """The CLI prints full tracebacks instead of one-line errors."""
    ci: SetFlag = Field(default=False, validation_alias="CI")
    """Set by CI systems: no progress bars."""
    index_compact_after: int | None = Field(default=None, gt=0, validation_alias="SCOPE_HUB_INDEX_COMPACT_AFTER")
    """Registry index: fold the append log into a snapshot after this many entries."""
    demo_dir: Path | None = _env("SCOPE_HUB_DEMO_DIR")
    """Work folder of ``make demo``; default ``~/.cache/scope_hub/demo``."""
    fault: str | None = _env("SCOPE_HUB_FAULT")
    """Crash-test hook: the registry step at which to fail (tests only)."""
    fault_ready: str | None = _env("SCOPE_HUB_FAULT_READY")
    """Crash-test hook: file prefix a paused process touches when it reaches the fault (tests only)."""
    fault_go: str | None = _env("SCOPE_HUB_FAULT_GO")
    """Crash-test hook: file whose creation resumes a paused process (tests only)."""
    hf_endpoint: str | None = _env("HF_ENDPOINT")
    """Hugging Face Hub endpoint (a mirror or a local server)."""
    hf_home: Path | None = _env("HF_HOME")
    """huggingface_hub's home; its cache is ``$HF_HOME/hub``."""
    hf_hub_cache: Path | None = _env("HF_HUB_CACHE")
    """huggingface_hub's download cache (wins over ``HF_HOME``)."""
    s3_endpoint: str | None = _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    """S3 endpoint (MinIO, moto, ...); ``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL``."""
    verify: Literal["stat", "always"] = Field(default="stat", validation_alias="SCOPE_HUB_VERIFY")
    """How a warm load trusts cached files: ``stat`` re-hashes only files whose size, mtime, ctime or inode changed
    since they were hashed; ``always`` re-hashes every file on every load."""
    xdg_data_home: Path | None = _env("XDG_DATA_HOME")
    """Per-user data folder on Linux (the default local registry lives under it)."""
    local_app_data: Path | None = _env("LOCALAPPDATA")
    """Per-user data folder on Windows."""

    @property
    def offline(self) -> bool:
        """Offline mode: ``SCOPE_HUB_OFFLINE`` or ``HF_HUB_OFFLINE``."""
        return self.scope_hub_offline or self.hf_hub_offline

    @property
    def progress(self) -> bool:
        """Progress bars: only on an interactive terminal, never under ``CI`` or ``SCOPE_HUB_QUIET``."""
        return not (self.quiet or self.ci) and sys.stderr.isatty()

    @property
    def hf_cache_dir(self) -> Path | None:
        """huggingface_hub's cache as its own rules find it (None: its default)."""
        if self.hf_hub_cache:
            return self.hf_hub_cache
        return self.hf_home / "hub" if self.hf_home else None


def settings() -> ScopeHubSettings:
    """The current environment, read now."""
    try:
        return ScopeHubSettings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "?"
        value = os.environ.get(name)
        raise ConfigError(
            f"environment variable {name}={value!r}: {error['msg']}; fix or unset it", variable=name, value=value
        ) from None


def progress_enabled() -> bool:
    """The one progress switch: bars on an interactive terminal, never under ``CI`` or ``SCOPE_HUB_QUIET``."""
    return settings().progress


def environment_table() -> str:
    """The Markdown table of every variable, as ``docs/architecture.md`` shows it.

    Example:
        >>> environment_table().splitlines()[2].startswith("| `SCOPE_HUB_REGISTRY` |")
        True
    """
    rows = ["| Variable | Meaning |", "| --- | --- |"]
    for field in ScopeHubSettings.model_fields.values():
        alias = field.validation_alias
        names = alias.choices if isinstance(alias, AliasChoices) else [alias]
        meaning = " ".join((field.description or "").split()).replace("``", "`")
        rows.append(f"| {', '.join(f'`{n}`' for n in names)} | {meaning} |")
    return "\n".join(rows)
