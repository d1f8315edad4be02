"""Messages for invalid training configs: name where the bad value came from and what would fix it.

A value set by a ``key=value`` override is reported as that override (not as the
YAML file it overrode), an unknown field comes with the closest known one, and a
list field that got a scalar shows the list syntax.

Example:
    >>> from pydantic import ValidationError
    >>> from trainers.config import TrainConfig
    >>> try:
    ...     TrainConfig.model_validate({"optim": {"learning_rate": 3e-4}})
    ... except ValidationError as exc:
    ...     print(describe_validation_error(exc, TrainConfig, "sae.yaml", ["optim.learning_rate=3e-4"]))
    override optim.learning_rate: unknown field (did you mean optim.lr?)
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

LIST_EXAMPLES = {
    "data.paths": "data.paths=[docs/a.txt,corpus.jsonl]",
    "harvest.layers": "harvest.layers=[3,6,9]",
    "dictionary.matryoshka_groups": "dictionary.matryoshka_groups=[1024,3072]",
}
"""How to write each list field as an override (YAML flow lists; quote them for zsh)."""


def _section_model(model: type[BaseModel], path: tuple[str, ...]) -> type[BaseModel] | None:
    """The pydantic model holding the fields under ``path`` (``("optim",)`` -> OptimConfig)."""
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _model_in(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _closest(model: type[BaseModel], path: tuple[str, ...], name: str) -> str:
    section = _section_model(model, path)
    if section is None:
        return ""
    known = list(section.model_fields)
    prefix = ".".join(path) + "." if path else ""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if not close:  # an abbreviation: learning_rate -> lr is no close spelling, but its initials
        initials = "".join(word[:1] for word in name.lower().split("_"))
        close = [k for k in known if k == initials]
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    return f" (known: {', '.join(prefix + k for k in known)})"


def _override_for(loc: str, overrides: list[str]) -> str | None:
    """The last override that set ``loc`` or a section above it."""
    for item in reversed(overrides):
        key = item.partition("=")[0]
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
            return key
    return None


def _problem(model: type[BaseModel], error: dict[str, Any], loc: str) -> str:
    parts = tuple(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return "unknown field" + _closest(model, parts[:-1], parts[-1])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "list_type" and loc in LIST_EXAMPLES:
        message += f"; write a list: {LIST_EXAMPLES[loc]}"
    return message


def _field_path(error: dict[str, Any]) -> tuple[str, ...]:
    """The error's field names: list indices and union member tags (``list[int]``, ``literal['all']``) dropped."""
    return tuple(str(p) for p in error["loc"] if not isinstance(p, int) and not any(c in str(p) for c in "[('"))


def describe_validation_error(exc: ValidationError, model: type[BaseModel], path: object, overrides: list[str]) -> str:
    """One message for every problem in ``exc``: ``override KEY: ...`` or ``FILE: KEY: ...``.

    A field of several accepted forms (``harvest.layers``: a list or ``all``) fails once per form;
    those failures are one problem, said once (the list form's hint when one of them has it).
    """
    grouped: dict[str, list[str]] = {}
    for error in exc.errors():
        loc = ".".join(_field_path(error))
        grouped.setdefault(loc, []).append(_problem(model, {**error, "loc": _field_path(error)}, loc))
    problems = []
    for loc, found in grouped.items():
        with_hint = [p for p in found if "write a list" in p]
        problem = with_hint[0] if with_hint else " or ".join(dict.fromkeys(found))
        override = _override_for(loc, overrides) if loc else None
        if override is not None:
            problems.append(f"override {loc}: {problem}")
        elif not loc:  # a rule across fields: its message names them
            problems.append(f"{path or 'config'}: {problem}")
        else:
            problems.append(f"{path or 'config'}: {loc}: {problem}")
    return "; ".join(problems)
