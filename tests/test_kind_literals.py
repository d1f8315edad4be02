"""No code outside :mod:`scope_hub.kinds` compares a dictionary kind or architecture name as a string literal.

Such a comparison is knowledge about a kind living outside the table of kinds: adding a kind
would then mean hunting for every ``type == "transcoder"``. Code asks the table instead
(``kind(config.type).reconstructs_input``, ``architecture(name).stores_threshold``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from scope_hub.kinds import ARCHITECTURES, KINDS

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("scope_hub", "trainers")
TABLE = ROOT / "scope_hub" / "kinds.py"
NAMES = frozenset({*KINDS, *ARCHITECTURES, *(n for info in ARCHITECTURES.values() for n in info.peer_names.values())})


def _kind_literals(node: ast.AST) -> list[str]:
    """Kind names among ``node`` and the elements of a tuple/list/set literal."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str) and i.value in NAMES]


def kind_literal_comparisons(source: str, where: str) -> list[str]:
    """``file:line: name`` for each comparison or match case against a kind name in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            names = [n for operand in (node.left, *node.comparators) for n in _kind_literals(operand)]
        elif isinstance(node, ast.MatchValue):
            names = _kind_literals(node.value)
        else:
            continue
        found += [f"{where}:{node.lineno}: {name!r}" for name in names]
    return found


def test_no_kind_or_architecture_name_is_compared_as_a_literal():
    found = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path != TABLE:
                found += kind_literal_comparisons(path.read_text(), str(path.relative_to(ROOT)))
    assert found == [], "ask scope_hub.kinds instead of comparing names:\n" + "\n".join(found)


def test_the_scan_catches_each_form_of_comparison():
    source = """
if config.type == "transcoder": pass
if arch in ("topk", "batchtopk"): pass
if "clt" != t: pass
match t:
    case "crosscoder": pass
if raw.get("architecture") == "jump_relu": pass
if site == "mlp_in" or kind(t).multi_layer: pass
"""
    lines = sorted((hit.split(":")[1] for hit in kind_literal_comparisons(source, "probe")), key=int)
    assert lines == ["2", "3", "3", "4", "6", "7"]


def test_the_docs_show_the_table_of_kinds():
    from scope_hub.kinds import kinds_table

    docs = (ROOT / "docs" / "architecture.md").read_text()
    assert kinds_table() in docs, "regenerate the table of kinds in docs/architecture.md with kinds_table()"
