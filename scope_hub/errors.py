"""Typed errors for scope-hub.

Every error derives from :class:`ScopeHubError` *and* from the builtin a caller
would naturally catch (``ValueError``, ``FileNotFoundError``, ``KeyError`` ...),
so ``except KeyError`` keeps working for code that does not know scope-hub.
Messages are one line: what is wrong, where, and what to do about it.

Example:
    >>> from scope_hub.errors import KeyParseError, ScopeHubError
    >>> issubclass(KeyParseError, ValueError) and issubclass(KeyParseError, ScopeHubError)
    True
"""

from __future__ import annotations


class ScopeHubError(Exception):
    """Base class of every error scope-hub raises on purpose.

    Keyword arguments become attributes a program can act on without parsing the message
    (``key``, ``path``, ``expected``, ``actual``, ``choices`` ...); the message stays for people.

    Example:
        >>> err = ConfigError("unknown type 'x'; use one of: sae, clt", field="type", choices=("sae", "clt"))
        >>> err.field, err.choices, str(err)
        ('type', ('sae', 'clt'), "unknown type 'x'; use one of: sae, clt")
    """

    def __init__(self, *args: object, **data: object) -> None:
        super().__init__(*args)
        self.data: dict[str, object] = data
        """Everything given as keyword arguments (also set as attributes)."""
        for name, value in data.items():
            setattr(self, name, value)

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else self.__class__.__name__

    def __reduce__(
        self,
    ) -> tuple[object, ...]:  # keep the data through pickling (multiprocessing workers re-raise errors)
        return _rebuild, (type(self), self.args, self.data)


def _rebuild(cls: type[ScopeHubError], args: tuple[object, ...], data: dict[str, object]) -> ScopeHubError:
    return cls(*args, **data)


class ConfigError(ScopeHubError, ValueError):
    """A config.json (or other metadata) is missing fields, has unknown ones, or bad values (``field``,
    ``choices`` where known)."""


class ShapeMismatchError(ScopeHubError, ValueError):
    """A tensor's name, shape or dtype does not match what its config promises (``path``, ``tensor``,
    ``expected``, ``actual`` where known)."""


class WeightsFileError(ScopeHubError, ValueError):
    """A weights file is truncated, corrupt, or not in the safetensors format."""


class NonFiniteWeightsError(ScopeHubError, ValueError):
    """A weights file holds NaN or infinite values."""


class UnsafeFormatError(ScopeHubError, ValueError):
    """Only a pickle-based file is available; scope-hub never unpickles."""


class DictionaryNotFoundError(ScopeHubError, FileNotFoundError, LookupError):
    """A local dictionary folder or one of its files does not exist (``path`` when known)."""


class ModelNotFoundError(ScopeHubError, FileNotFoundError):
    """A model folder does not exist, or the Hub has no model under this id."""


class KeyParseError(ScopeHubError, ValueError):
    """A registry key or ref does not follow the key grammar."""


class UnsafePathError(ScopeHubError, ValueError):
    """A key or file name would escape its folder (``..``, absolute paths, odd characters)."""


class UnknownKeyError(ScopeHubError, KeyError):
    """No dictionary is published under this key in the registry (``key``, ``registry``)."""


class VersionNotFoundError(ScopeHubError, KeyError):
    """The key exists but the requested version or ref does not (``key``, ``ref``, ``registry``)."""


class IntegrityError(ScopeHubError, ValueError):
    """Bytes on disk or in a store do not match their recorded sha256 or size."""


class OfflineError(ScopeHubError, ConnectionError):
    """Offline mode is on and the requested data is not in the local cache."""


class RegistryError(ScopeHubError, RuntimeError):
    """A registry operation failed in a way the caller can act on (see message)."""


class LockfileError(ScopeHubError, ValueError):
    """A scope.lock file is malformed, or a pinned entry no longer matches the registry."""


class UnsupportedModelError(ScopeHubError, ValueError):
    """A model family or site has no hookpoint adapter; the message lists what is supported."""


class HookpointError(ScopeHubError, LookupError):
    """A hookpoint path does not name a module of the model."""


class CardError(ScopeHubError, ValueError):
    """A card lacks required fields (base model, license) or does not parse."""


class RegistryURLError(RegistryError, ValueError):
    """A registry URL is malformed, names an impossible place, or carries credentials."""


class RegistryConnectionError(RegistryError, ConnectionError):
    """A registry's storage endpoint cannot be reached or refuses the credentials found."""


class GraphFileError(ScopeHubError, ValueError):
    """A saved attribution graph is truncated, not a graph, or holds pickled objects beyond tensors."""


class ArgumentError(ScopeHubError, ValueError):
    """A function argument has a value the function cannot use (``argument``, ``value``, ``choices``)."""


class NotAttachedError(ScopeHubError, KeyError):
    """No dictionary of that name is attached to the model (``name``; ``choices``: the attached names)."""


class FeatureIndexError(ScopeHubError, IndexError):
    """A feature or layer index is out of range (``name``, ``index``, ``size``)."""


class UnsupportedOperationError(ScopeHubError, NotImplementedError):
    """The operation cannot be done on this kind of dictionary (e.g. splicing a crosscoder)."""


class UnsupportedError(ScopeHubError, ValueError):
    """The dictionary (or folder) uses something the target (or source) format cannot express."""


class FormatError(ScopeHubError, ValueError):
    """A folder does not follow the format it was read as (missing file, unknown layout, ...)."""


class UnknownReleaseError(ScopeHubError, KeyError):
    """A SAELens release or sae_id that the release table does not list."""


class PeerRankError(ScopeHubError, RuntimeError):
    """Another rank of a distributed job failed, so this one stops too (``rank``: the failed rank;
    ``error``: its exception type and message)."""
