"""The torch side of :mod:`scope_hub.kinds`: the class behind each dictionary type and activation function.

Both mappings are views of the torch-free table, importing an implementation the first time
it is asked for, so a kind added with :func:`scope_hub.kinds.register_kind` is found here too.

Example:
    >>> KINDS["skip_transcoder"].__name__, ACTIVATIONS["topk"].__name__
    ('SkipTranscoder', 'TopK')
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from scope_hub import kinds
from scope_hub.dictionaries.activation import Activation
from scope_hub.dictionaries.base import Dictionary

T = TypeVar("T")


def import_implementation(spec: str) -> object:
    """The object ``"package.module:Name"`` names."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


class _Implementations(Mapping[str, type[T]], Generic[T]):
    """A read-only name -> class view of one table of :mod:`scope_hub.kinds`."""

    def __init__(self, table: Mapping[str, kinds.KindInfo | kinds.ArchitectureInfo], lookup: Callable) -> None:
        self._table, self._lookup = table, lookup

    def __getitem__(self, name: str) -> type[T]:
        return import_implementation(self._lookup(name).implementation)  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


KINDS: Mapping[str, type[Dictionary]] = _Implementations[Dictionary](kinds.KINDS, kinds.kind)
"""Dictionary class for each ``config.type`` (unknown: :class:`~scope_hub.errors.ConfigError` with the choices)."""

ACTIVATIONS: Mapping[str, type[Activation]] = _Implementations[Activation](kinds.ARCHITECTURES, kinds.architecture)
"""Activation strategy for each ``config.architecture``."""
