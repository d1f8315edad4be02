"""docs/design.md's Python blocks run as written, and the README points only at files inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("index", range(len(_python_blocks(DESIGN))))
def test_design_doc_blocks_run(index):
    exec(compile(_python_blocks(DESIGN)[index], f"{DESIGN}[block {index}]", "exec"), {})


def test_design_doc_has_its_examples():
    assert len(_python_blocks(DESIGN)) >= 2


@pytest.mark.parametrize(
    "doc", ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
)
def test_docs_point_only_inside_the_repository(doc):
    text = (ROOT / doc).read_text()
    here = (ROOT / doc).parent
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):  # Markdown links
        if "://" not in target:
            resolved = (here / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), (doc, target)
    for path in re.findall(r"`((?:\.\./|docs/|benchmarks/|trainers/examples/)[^`\s]*\.(?:md|yaml|py))`", text):
        base = here if path.startswith("../") else ROOT
        resolved = (base / path).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), (doc, path)
