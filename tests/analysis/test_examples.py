"""Every docstring example in scope_hub.analysis runs (they are the modules' documentation)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import scope_hub.analysis

# The circuits subpackage (another owner) runs its own examples in tests/analysis/circuits/test_doctests.py.
MODULES = [
    "scope_hub.analysis",
    *sorted(
        m.name
        for m in pkgutil.walk_packages(scope_hub.analysis.__path__, "scope_hub.analysis.")
        if not m.name.startswith("scope_hub.analysis.circuits")
    ),
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
