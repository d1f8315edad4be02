"""Every public name of ``scope_hub.analysis.circuits`` is the function or class it names, never a submodule.

Importing a submodule binds it on the package under its own name; a submodule named like a
public function (``prune.py`` holding ``prune``) made ``from scope_hub.analysis.circuits import
prune`` return the module once anything had imported it, and ``prune(graph)`` a TypeError.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import types

import scope_hub.analysis.circuits as circuits

SUBMODULES = {m.name for m in pkgutil.iter_modules(circuits.__path__)}


def test_no_submodule_shares_a_public_name():
    assert set(circuits.__all__) & SUBMODULES == set()


def test_every_public_name_is_its_function_or_class_after_every_submodule_is_imported():
    for name in sorted(SUBMODULES):
        importlib.import_module(f"{circuits.__name__}.{name}")
    for name in circuits.__all__:
        value = getattr(circuits, name)
        assert not isinstance(value, types.ModuleType), name
        assert inspect.isfunction(value) or inspect.isclass(value), (name, value)
        assert value.__name__ == name and value.__module__.startswith(circuits.__name__ + "."), (name, value)
        assert value is getattr(importlib.import_module(circuits._LAZY[name]), name)


def test_the_docs_import_line_gives_callables_in_a_fresh_interpreter():
    # A fresh process: the import order of docs/circuits.md (attribute first, which imports the
    # pruning submodule) is what exposed the clash.
    names = ", ".join(circuits.__all__)
    code = (
        f"import types\nfrom scope_hub.analysis.circuits import attribute, prune\nfrom scope_hub.analysis.circuits import {names}\n"
        f"bad = [n for n in {circuits.__all__!r} if isinstance(globals()[n], types.ModuleType) or not callable(globals()[n])]\n"
        "assert not bad, bad\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
