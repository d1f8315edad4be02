"""The layering of DESIGN.md §3, enforced: who may import whom, and which parts stay torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scope_hub"

# cli -> scoped_model -> hooks -> dictionaries | hookpoints -> serialization | registry | cards -> metadata -> errors
RANKS: dict[str, float] = {
    "scope_hub": 0,  # the package __init__ only re-exports lazily
    "scope_hub.errors": 0,
    "scope_hub.atomic_files": 0,
    "scope_hub.redaction": 0,
    "scope_hub.lazy_imports": 0,
    "scope_hub.settings": 0.5,
    "scope_hub.kinds": 0.5,
    "scope_hub.file_checks": 0,
    "scope_hub.metadata": 1,
    "scope_hub.keys": 1,
    "scope_hub.config_io": 2,
    "scope_hub.tensor_layout": 2.5,
    "scope_hub.cards": 2.5,
    "scope_hub.serialization": 3,
    "scope_hub.feature_stats": 3,
    "scope_hub.registry": 3,
    "scope_hub.gguf_models": 3,
    "scope_hub.model_resolution": 3.5,
    "scope_hub.dictionaries": 4,
    "scope_hub.hookpoints": 4,
    "scope_hub.hooks": 5,
    "scope_hub.interop": 6,
    "scope_hub.attachment": 6,
    "scope_hub.sources": 6.5,
    "scope_hub.loading": 6.6,
    "scope_hub.scoped_config": 6.6,
    "scope_hub.steering": 6.5,
    "scope_hub.scoped_tokens": 6.5,
    "scope_hub.scoped_model": 7,
    "scope_hub.analysis": 8,
    "scope_hub.testing": 8.5,
    "scope_hub.cli": 9,
}
TORCH_FREE = [
    "scope_hub",
    "scope_hub.atomic_files",
    "scope_hub.redaction",
    "scope_hub.settings",
    "scope_hub.kinds",
    "scope_hub.file_checks",
    "scope_hub.keys",
    "scope_hub.metadata",
    "scope_hub.config_io",
    "scope_hub.tensor_layout",
    "scope_hub.cards",
    "scope_hub.registry",
    "scope_hub.cli",
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    candidates = [name for name in RANKS if module == name or module.startswith(name + ".")]
    if not candidates:
        raise AssertionError(f"{module} has no place in the layer table of tests/test_layering.py: add it")
    return max(candidates, key=len)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only, never imported at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path) -> list[str]:
    names = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        own = _layer(importer)
        for imported in _imports(path):
            if imported == "trainers" or imported.startswith("trainers."):
                found.append(f"{importer} imports {imported}: scope_hub must never import trainers")
            elif imported.startswith("scope_hub.") or imported == "scope_hub":
                other = _layer(imported)
                if other != own and RANKS[other] >= RANKS[own] and own != "scope_hub":
                    found.append(f"{importer} (layer {own}) imports {imported} (layer {other}): upward import")
    return found


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_named_module_exists():
    """A renamed or deleted module must leave the tables too, or they silently stop guarding anything."""
    stale = sorted(name for name in {*RANKS, *TORCH_FREE} if not _exists(name))
    assert stale == [], f"tests/test_layering.py names modules that do not exist: {stale}"


def test_the_stale_name_check_fails_on_a_missing_module():
    assert _exists("scope_hub.errors") and not _exists("scope_hub.no_such_module")


def test_no_module_imports_upward_or_trainers():
    assert _violations() == []


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    bad = PACKAGE / "errors_probe_for_layering_test.py"
    monkeypatch.setitem(RANKS, "scope_hub.errors_probe_for_layering_test", 0)
    bad.write_text("from scope_hub.dictionaries import SAE\nimport trainers\n")
    try:
        found = _violations()
    finally:
        bad.unlink()
    assert any("upward import" in v for v in found) and any("never import trainers" in v for v in found)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules_do_not_import_torch(module):
    code = f"import sys, {module}; sys.exit(3 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"import {module} pulled in torch or failed: {result.stderr[-500:]}"
