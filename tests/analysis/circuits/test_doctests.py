"""The runnable examples in the circuits modules' docstrings stay runnable."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import scope_hub.analysis.circuits as circuits

MODULES = sorted(m.name for m in pkgutil.iter_modules(circuits.__path__, circuits.__name__ + "."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
