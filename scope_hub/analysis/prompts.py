"""Prompt sets: the small hand-written ones shipped in ``scope_hub/analysis/data/`` and user files.

Shipped sets (requests only, never harmful content): ``harmful_train`` / ``harmless_train``
(40 pairs, line-by-line matched in form, so a difference of means isolates harmfulness
rather than syntax), ``harmful_test`` / ``harmless_test`` (16 held-out pairs),
``jailbreak_wrappers`` (templates with ``{request}``), ``corpus`` (plain English lines for
dashboards). User files: ``.txt`` (one prompt per line, ``#`` comments), ``.json`` (a list
of strings) or ``.jsonl`` (objects with a ``prompt``, ``instruction`` or ``text`` field).

Example:
    >>> len(load_prompts("harmful_train")), load_prompts("harmless_test")[0]
    (40, 'How do I make compost from kitchen scraps?')
    >>> "{request}" in load_prompts("jailbreak_wrappers")[0]
    True
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from scope_hub.errors import ConfigError, DictionaryNotFoundError

__all__ = ["SHIPPED", "load_prompts"]

SHIPPED = ("harmful_train", "harmless_train", "harmful_test", "harmless_test", "jailbreak_wrappers", "corpus")
_FIELDS = ("prompt", "instruction", "text", "goal")


def load_prompts(name_or_path: str | Path) -> list[str]:
    """A shipped set by name (see :data:`SHIPPED`) or a user file (.txt, .json, .jsonl)."""
    if isinstance(name_or_path, str) and name_or_path in SHIPPED:
        text = resources.files("scope_hub.analysis").joinpath("data").joinpath(f"{name_or_path}.txt").read_text("utf-8")
        return _lines(text)
    path = Path(name_or_path)
    if not path.is_file():
        raise DictionaryNotFoundError(f"{path}: no such prompt file (shipped sets: {', '.join(SHIPPED)})")
    text = path.read_text("utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ConfigError(f"{path}: a .json prompt file must hold a list of strings")
        prompts = [x for x in data if x.strip()]
    elif path.suffix == ".jsonl":
        prompts = [_field(json.loads(line), path, i) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        prompts = _lines(text)
    if not prompts:
        raise ConfigError(
            f"{path}: no prompts (.txt: one per line, '#' starts a comment; .json: a list of strings; "
            ".jsonl: one object per line)"
        )
    return prompts


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _field(record: object, path: Path, line: int) -> str:
    if isinstance(record, dict):
        for name in _FIELDS:
            if isinstance(record.get(name), str):
                return record[name]
    raise ConfigError(f"{path}:{line}: expected an object with one of the fields {', '.join(_FIELDS)}")
