"""Read any dictionary's ``config.json``: ours (any schema version) or Gemma Scope 2's as published.

Torch-free, so the registry can inspect folders without loading weights.

* Ours carries ``schema_version``; older versions are migrated by
  :data:`MIGRATIONS`, newer ones are refused with an "upgrade" message.
* Gemma Scope 2's has no ``schema_version`` but fields such as
  ``hf_hook_point_in``, ``architecture: "jump_relu"``, ``affine_connection``;
  it is translated using the tensor shapes in the folder's safetensors header,
  and kept verbatim in ``source_config``.

Example:
    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text(json.dumps(
    ...     {"type": "sae", "architecture": "relu", "d_in": 4, "d_sae": 8, "schema_version": 1}))
    >>> read_config(folder).d_out
    4
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from scope_hub.errors import ConfigError, DictionaryNotFoundError, ScopeHubError, UnsafeFormatError, WeightsFileError
from scope_hub.file_checks import CHECKS
from scope_hub.kinds import (
    CLT,
    CROSSCODER,
    GEMMA_SCOPE_2,
    JUMPRELU,
    SAE,
    SKIP_TRANSCODER,
    TRANSCODER,
    kind,
    kind_from_peer,
    peer_name,
)
from scope_hub.metadata import SCHEMA_VERSION, DictionaryConfig

CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")

MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""``MIGRATIONS[n]`` turns a schema-n config dict into a schema-(n+1) one."""

_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


class TensorInfo(NamedTuple):
    """Name-independent facts about one stored tensor."""

    dtype: str
    """Torch-style dtype name (float32, bfloat16, ...), or the raw safetensors code if unusual."""
    shape: tuple[int, ...]
    """Tensor shape."""


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of a safetensors file without reading its data.

    Raises :class:`WeightsFileError` for a missing-data, truncated or non-safetensors file.
    Remembered by the file's identity (:mod:`scope_hub.file_checks`): an unchanged file is
    parsed once per process.
    """
    return dict(CHECKS.get_or_run([path], "safetensors header", lambda: _parse_safetensors_header(path)))


def _parse_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            infos = {}
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensor_slice = handle.get_slice(name)
                code = tensor_slice.get_dtype()
                infos[name] = TensorInfo(_SAFETENSORS_DTYPES.get(code, code), tuple(tensor_slice.get_shape()))
    except (FileNotFoundError, IsADirectoryError):
        raise DictionaryNotFoundError(
            f"{path}: weights file not found; the folder must hold it next to config.json"
        ) from None
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError subclasses
        if path.is_dir():  # safetensors reports a directory as "No such device (os error 19)"
            raise DictionaryNotFoundError(f"{path}: is a folder, not a safetensors file") from None
        raise WeightsFileError(f"{path}: not a readable safetensors file ({exc}); re-download or re-export it") from exc
    return infos


MAX_JSON_DEPTH = 64
"""Deepest nesting a metadata JSON file may have (real configs nest two or three levels)."""


def parse_json_object(
    data: bytes | str, where: str, error: type[ScopeHubError] = ConfigError, what: str = "fix or re-export the file"
) -> dict[str, Any]:
    """A JSON object from ``data``; ``error`` (a ConfigError) for anything else, never a bare builtin.

    Refuses what would otherwise escape as RecursionError (``[`` nested thousands deep) or a bare
    ValueError (integers past Python's 4,300-digit conversion limit), besides invalid JSON,
    bad UTF-8 and non-object documents.

    Example:
        >>> parse_json_object(b'{"d_in": 4}', "config.json")
        {'d_in': 4}
        >>> parse_json_object("[" * 100 + "]" * 100, "config.json")
        Traceback (most recent call last):
        ...
        scope_hub.errors.ConfigError: config.json: not valid JSON (nested deeper than 64 levels); fix or re-export the file
    """
    try:
        raw = json.loads(data)
    except RecursionError:
        raise error(f"{where}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels); {what}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and ints over the digit limit
        reason = "an integer with thousands of digits" if "digits" in str(exc) else " ".join(str(exc).split())
        raise error(f"{where}: not valid JSON ({reason}); {what}") from None
    if _depth(raw) > MAX_JSON_DEPTH:
        raise error(f"{where}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels); {what}")
    if not isinstance(raw, dict):
        raise error(f"{where}: must hold a JSON object, found {type(raw).__name__}")
    return raw


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (so it cannot overflow the stack itself)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_config(folder: Path | str) -> DictionaryConfig:
    """Parse ``folder/config.json`` (ours or Gemma Scope 2's) into a :class:`DictionaryConfig`.

    Our configs are parsed, migrated and validated once per unchanged file (remembered by the
    file's identity; each call gets its own copy); Gemma Scope 2's depend on the tensor
    headers too and are translated on every call (from remembered headers).
    """
    folder = Path(folder)
    path = folder / CONFIG_FILE
    try:
        data = path.read_bytes()
    except OSError:
        return _read_config(folder)  # says what is missing
    # The bytes' digest is part of the key: a rewrite within one timestamp tick that lands on a
    # recycled inode with the same size would otherwise be served the old parse.
    what = ("scope-hub config", hashlib.sha256(data).digest())
    parsed = CHECKS.get_or_run([path], what, lambda: _read_own_config(folder, data))
    return parsed.model_copy(deep=True) if parsed is not None else _read_config(folder)


def _read_own_config(folder: Path, data: bytes) -> DictionaryConfig | None:
    """The config when ``config.json`` (``data``) is ours (it depends on that file alone), else None."""
    path = folder / CONFIG_FILE
    try:
        raw = parse_json_object(data, str(path))
    except ConfigError:
        return None  # _read_config raises the right error
    if not isinstance(raw, dict) or "schema_version" not in raw:
        return None
    return parse_config(raw, folder=folder, where=str(path))


def _read_config(folder: Path) -> DictionaryConfig:
    path = folder / CONFIG_FILE
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        _refuse_pickle_only(folder)
        raise DictionaryNotFoundError(
            f"{path}: no config.json; a dictionary folder holds config.json + params.safetensors"
        ) from None
    return parse_config(parse_json_object(data, str(path)), folder=folder, where=str(path))


def parse_config(raw: dict[str, Any], *, folder: Path | None = None, where: str = CONFIG_FILE) -> DictionaryConfig:
    """Validate a config dict of any supported origin; errors name ``where`` and the field."""
    if "schema_version" in raw:
        raw = migrate(raw, where)
    elif _looks_like_gemma_scope_2(raw):
        if folder is None:
            raise ConfigError(f"{where}: a Gemma Scope 2 config needs its folder to read tensor shapes")
        raw = from_gemma_scope_2(raw, folder, where)
    else:
        raise ConfigError(
            f"{where}: neither a scope-hub config (no 'schema_version') nor a Gemma Scope 2 config "
            "(no 'hf_hook_point_in'); for other formats use `scope-hub convert`"
        )
    return validate_config(raw, where)


def validate_config(raw: dict[str, Any], where: str = CONFIG_FILE) -> DictionaryConfig:
    """Pydantic validation with one-line, field-naming errors."""
    try:
        return DictionaryConfig.model_validate(raw)
    except ValidationError as exc:
        fields = [".".join(str(p) for p in err["loc"]) or "(config)" for err in exc.errors()]
        problems = "; ".join(f"field '{field}': {err['msg']}" for field, err in zip(fields, exc.errors()))
        raise ConfigError(f"{where}: {problems}", field=fields[0], path=where) from None


def migrate(raw: dict[str, Any], where: str = CONFIG_FILE) -> dict[str, Any]:
    """Bring a config dict of an older schema up to :data:`SCHEMA_VERSION`."""
    version = raw.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise ConfigError(f"{where}: field 'schema_version' must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"{where}: schema_version {version} was written by a newer scope-hub "
            f"(this one reads up to {SCHEMA_VERSION}); upgrade with `pip install -U scope-hub`"
        )
    while version < SCHEMA_VERSION:
        raw = MIGRATIONS[version](dict(raw))
        version = raw["schema_version"]
    return raw


def _refuse_pickle_only(folder: Path) -> None:
    if folder.is_dir() and any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
        raise UnsafeFormatError(
            f"{folder}: holds only pickle files; scope-hub never unpickles. Convert with "
            "`scope-hub convert --from dictionary-learning` (uses torch.load(weights_only=True))"
        )


# --- Gemma Scope 2 -------------------------------------------------------------------

_GS2_JUMPRELU = peer_name(JUMPRELU, GEMMA_SCOPE_2)
_LAYER_IN_HOOK = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_SITE_BY_HOOK_SUFFIX = {
    "self_attn.o_proj.input": "attn_out",
    "post_feedforward_layernorm.output": "mlp_out",
    "pre_feedforward_layernorm.output": "mlp_in",
    "mlp.input": "mlp_in",
    "mlp.output": "mlp_out",
}


def looks_like_gemma_scope_2(raw: dict[str, Any]) -> bool:
    """Whether a config dict without ``schema_version`` is Gemma Scope 2's as published."""
    return "hf_hook_point_in" in raw or raw.get("architecture") == _GS2_JUMPRELU


_looks_like_gemma_scope_2 = looks_like_gemma_scope_2


def gemma_model_id(model_name: str) -> str:
    """Normalise Gemma Scope 2's ``model_name`` to the base model's Hub id.

    Example:
        >>> gemma_model_id("gemma-v3-270m-pt"), gemma_model_id("google/gemma-3-1b-it")
        ('google/gemma-3-270m', 'google/gemma-3-1b-it')
    """
    name = model_name if "/" in model_name else f"google/{model_name}"
    name = name.replace("-v3", "-3")
    if "270m" in name:  # the 270M base model's Hub id has no -pt suffix
        name = name.replace("-pt", "")
    return name


def site_of_hook_point(hook_point: str) -> tuple[str | None, int | None]:
    """(site, layer) named by a transformers hook point such as ``model.layers.12.output``."""
    match = _LAYER_IN_HOOK.search(hook_point)
    layer = int(match.group(1)) if match else None
    if re.search(r"layers\.\d+\.output$", hook_point):
        return "resid_post", layer
    if re.search(r"layers\.\d+\.input$", hook_point):
        return "resid_pre", layer
    for suffix, site in _SITE_BY_HOOK_SUFFIX.items():
        if hook_point.endswith(suffix):
            return site, layer
    return None, layer


def _clt_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("params_layer_*.safetensors"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    return files


def check_published_width(width: Any, d_sae: int, params: Path, where: str) -> None:
    """A published ``width`` (16384 or "16k") must name the tensors' latent count."""
    if width is None:
        return
    from scope_hub.keys import width_label

    if isinstance(width, bool) or not isinstance(width, (int, str)):
        raise ConfigError(f"{where}: field 'width' must be an integer or a label like 16k, got {width!r}")
    if width == d_sae or str(width).strip().lower() in (str(d_sae), width_label(d_sae)):
        return
    raise ConfigError(
        f"{where}: field 'width' says {width!r} but {params.name} holds {d_sae} latents (w_enc's last dim); "
        "the config and the tensors disagree: re-download the folder or fix 'width'"
    )


def from_gemma_scope_2(raw: dict[str, Any], folder: Path, where: str = CONFIG_FILE) -> dict[str, Any]:
    """Translate a published Gemma Scope 2 config dict into our schema's dict."""
    architecture = raw.get("architecture", _GS2_JUMPRELU)
    if architecture != _GS2_JUMPRELU:
        raise ConfigError(
            f"{where}: field 'architecture': Gemma Scope 2 publishes jump_relu only, got {architecture!r}"
        )
    clt_files = _clt_files(folder)
    params = clt_files[0] if clt_files else folder / "params.safetensors"
    shapes = read_safetensors_header(params)
    for name in ("w_enc", "w_dec"):
        if name not in shapes:
            raise ConfigError(
                f"{params}: tensor '{name}' missing; a Gemma Scope 2 file holds w_enc, b_enc, threshold, w_dec, b_dec"
            )
    hook_in = raw.get("hf_hook_point_in")
    hook_out = raw.get("hf_hook_point_out")
    site, layer = site_of_hook_point(hook_in) if isinstance(hook_in, str) else (None, None)
    site_out = site_of_hook_point(hook_out)[0] if isinstance(hook_out, str) else None
    d_in, d_sae = shapes["w_enc"].shape[-2:]
    d_out = shapes["w_dec"].shape[-1]
    has_skip = "affine_skip_connection" in shapes or bool(raw.get("affine_connection"))
    published_type = str(raw.get("type", "")).lower()
    if kind_from_peer(GEMMA_SCOPE_2, published_type) == CROSSCODER:
        raise ConfigError(
            f"{where}: a Gemma Scope 2 crosscoder stores its layers concatenated; load it with "
            "scope_hub.interop.gemma_scope_2.load(folder) or `scope-hub convert --from gemma-scope-2`"
        )
    if clt_files:
        dict_type, layers = CLT, list(range(len(clt_files)))
        template = lambda hp: _LAYER_IN_HOOK.sub(lambda m: m.group(0).replace(m.group(1), "{layer}"), hp)  # noqa: E731
        hook_in = template(hook_in) if isinstance(hook_in, str) else hook_in
        hook_out = template(hook_out) if isinstance(hook_out, str) else hook_out
        layer = None
    else:
        layers = None
        is_transcoder = published_type == peer_name(TRANSCODER, GEMMA_SCOPE_2) or (hook_out not in (None, hook_in))
        is_transcoder = is_transcoder or d_in != d_out
        dict_type = SKIP_TRANSCODER if has_skip else TRANSCODER if is_transcoder else SAE
    width = raw.get("width")
    check_published_width(width, d_sae, params, where)
    return {
        "schema_version": SCHEMA_VERSION,
        "type": dict_type,
        "architecture": JUMPRELU,
        "d_in": d_in,
        "d_sae": d_sae,
        "d_out": d_out,
        "model": gemma_model_id(raw["model_name"]) if raw.get("model_name") else None,
        "site": site,
        "site_out": site_out if not kind(dict_type).reconstructs_input else None,
        "layer": layer,
        "layers": layers,
        "hook_point_in": hook_in if isinstance(hook_in, str) else None,
        "hook_point_out": hook_out if isinstance(hook_out, str) else None,
        "width_label": str(width) if width is not None else None,
        "affine_skip": has_skip,
        "l0_target": raw.get("l0") if isinstance(raw.get("l0"), (int, float)) else None,
        "dtype": shapes["w_enc"].dtype if shapes["w_enc"].dtype in _SAFETENSORS_DTYPES.values() else "float32",
        "provenance": {"source": "gemma-scope-2", "source_uri": str(folder)},
        "source_config": raw,
    }
