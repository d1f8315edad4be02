"""Plain Markdown tables for analysis reports (no dependencies, stable formatting).

Example:
    >>> print(markdown_table(["feature", "cosine"], [[3, 0.98765], [7, -0.1]]))
    | feature | cosine |
    |---:|---:|
    | 3 | 0.988 |
    | 7 | -0.100 |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["fmt", "markdown_table"]


def fmt(value: Any, digits: int = 3) -> str:
    """Floats to ``digits`` decimals, everything else through ``str`` (pipes escaped).

    Example:
        >>> fmt(1 / 3), fmt("a|b"), fmt(None)
        ('0.333', 'a\\\\|b', '')
    """
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", "\\n")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A Markdown table; numeric columns are right-aligned."""
    numeric = [all(isinstance(r[i], (int, float)) for r in rows) if rows else False for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)
