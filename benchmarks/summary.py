"""Headline rows a benchmark hands to :mod:`benchmarks.run_all`.

Each benchmark script prints its full tables and, given ``--summary PATH``, also writes the few
numbers the issues set goals for as a JSON list of :class:`Headline` rows. ``run_all`` runs the
scripts one after another and turns those rows into the summary table of ``benchmarks/README.md``.

Example:
    >>> row = Headline("harvest", "harvest / bare forward to layer 6 (tok/s)", 0.97, goal=">= 0.95")
    >>> row.met
    True
"""

from __future__ import annotations

import argparse
import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path

_OPS = {">=": operator.ge, "<=": operator.le}


@dataclass
class Headline:
    """One number a goal is set for (or worth a line in the summary even without one)."""

    benchmark: str
    metric: str
    value: float
    unit: str = "x"
    goal: str | None = None  # ">= 1.5" or "<= 1.05", in ``unit``
    note: str = ""
    met: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.goal is not None:
            op, threshold = self.goal.split()
            self.met = bool(_OPS[op](self.value, float(threshold)))


def add_summary_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--summary",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the headline numbers here as JSON (read by benchmarks.run_all)",
    )


def write_summary(path: Path | None, rows: list[Headline]) -> None:
    if path is not None:
        path.write_text(json.dumps([asdict(r) for r in rows], indent=1))


def read_summary(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []
