"""Comments and docstrings say why, about the code: no issue numbers, no remarks on the build machine."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NARRATION = re.compile(r"issue #\d+|not reachable here|this machine|not reachable", re.IGNORECASE)
ANONYMOUS_TODO = re.compile(r"\bTODO\b(?!\s*\((?:when|once|if|until)\b)")


def test_no_comment_narrates_the_build_environment():
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for top in ("scope_hub", "trainers", "benchmarks")
        for path in sorted((ROOT / top).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if NARRATION.search(line) or ANONYMOUS_TODO.search(line)
    ]
    assert found == [], "say why, about the code (a TODO names its condition: TODO(when ...)):\n" + "\n".join(found)
