"""Machinery every converter shares: building a dictionary from foreign tensors, the embedded
scope-hub config, folding normalization and ``b_dec`` into the weights, atomic output folders.

Each converter reads its format's fields into a :class:`DictionaryConfig` (authoritative for the
math) and, where the format tolerates extra fields, also writes our full config under the key
:data:`EMBED_KEY`. On the way back :func:`reconcile` keeps the embedded config when it describes
exactly the tensors found (same kind, activation, widths), so metadata the foreign format cannot
express (model, site, variant, metrics, provenance, Matryoshka groups...) survives a round trip.

Example:
    >>> from scope_hub.metadata import DictionaryConfig
    >>> derived = DictionaryConfig(type="sae", architecture="jumprelu", d_in=4, d_sae=8)
    >>> embedded = derived.model_copy(update={"architecture": "batchtopk", "k": 2, "variant": "x"})
    >>> reconcile(derived, embedded.model_dump(mode="json"), where="doc").variant
    'x'
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from scope_hub.atomic_files import atomic_folder  # noqa: F401  (re-exported for the converters)
from scope_hub.config_io import parse_json_object, validate_config
from scope_hub.dictionaries import KINDS, Dictionary
from scope_hub.errors import (
    ConfigError,
    FormatError,
    ScopeHubError,
    ShapeMismatchError,
    UnsupportedError,
    WeightsFileError,
)
from scope_hub.kinds import JUMPRELU, architecture, kind
from scope_hub.metadata import DictionaryConfig
from scope_hub.serialization import check_finite

EMBED_KEY = "scope_hub"
"""Key under which exporters store our full config inside a foreign config file."""
SIDECAR = "scope_hub_config.json"
"""Our config beside the files, for formats with no config file (Gemma Scope 1) or one whose
reader complains about unknown fields (sparsify prints every dropped field)."""

Files = dict[str, dict[str, torch.Tensor]]
"""Tensors grouped as stored: ``{file name: {tensor name: tensor}}`` (our native names)."""


# --- building and reading dictionaries -------------------------------------------------------


def dictionary_from_tensors(
    config: DictionaryConfig,
    files: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    where: str,
    allow_nonfinite: bool = False,
) -> Dictionary:
    """A dictionary of ``config`` holding ``files`` (native names), checked like a native load.

    Missing, unexpected or mis-shaped tensors raise :class:`ShapeMismatchError` naming ``where``;
    NaN/inf raise :class:`NonFiniteWeightsError` unless ``allow_nonfinite`` (then a warning).
    """
    cls = KINDS[config.type]
    specs = cls.tensor_specs(config)
    expected = {(s.file, s.name) for s in specs}
    found = {(f, n) for f, tensors in files.items() for n in tensors}
    if found - expected:
        extra = sorted(f"{f}:{n}" for f, n in found - expected)
        raise ShapeMismatchError(f"{where}: unexpected tensors {extra} for a {config.architecture} {config.type}")
    state: dict[str, torch.Tensor] = {}
    for spec in specs:
        tensor = files.get(spec.file, {}).get(spec.name)
        tensor = spec.to_module(tensor) if tensor is not None else None
        if tensor is None:
            raise ShapeMismatchError(
                f"{where}: tensor '{spec.name}' is missing (needed by a {config.architecture} {config.type})"
            )
        if tuple(tensor.shape) != spec.shape:
            raise ShapeMismatchError(
                f"{where}: tensor '{spec.name}' has shape {list(tensor.shape)}, expected {list(spec.shape)}"
            )
        check_finite(where, spec.name, tensor, allow_nonfinite=allow_nonfinite)
        state[spec.attr] = tensor.detach()
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) != 1:
        raise ShapeMismatchError(f"{where}: tensors mix dtypes {sorted(map(str, dtypes))}; convert them to one dtype")
    dtype = str(dtypes.pop()).removeprefix("torch.")
    config = validate_config({**config.model_dump(mode="json"), "dtype": dtype}, where)
    module = cls(config, device="meta")
    module.load_state_dict(state, strict=True, assign=True)
    module.requires_grad_(False)
    return module


def require(
    dictionary_or_config: Dictionary | DictionaryConfig,
    fmt: str,
    supported: Mapping[str, tuple[str, ...]],
    *,
    same_width: bool = False,
) -> DictionaryConfig:
    """Raise :class:`UnsupportedError` unless ``(type, architecture)`` is in ``supported``."""
    config = dictionary_or_config.config if isinstance(dictionary_or_config, Dictionary) else dictionary_or_config
    archs = supported.get(config.type)
    if not archs or config.architecture not in archs:
        listing = "; ".join(f"{t}: {', '.join(a)}" for t, a in supported.items())
        raise UnsupportedError(
            f"the {fmt} format cannot hold a {config.architecture} {config.type} "
            f"(it holds {listing}); keep it in the scope-hub format"
        )
    if same_width and config.d_out != config.d_in:
        raise UnsupportedError(
            f"the {fmt} format needs d_out == d_in; this {config.type} maps {config.d_in} -> {config.d_out}"
        )
    return config


def config_field(
    document: Mapping[str, Any],
    name: str,
    expected: type | tuple[type, ...],
    where: str,
    default: Any = None,
) -> Any:
    """``document[name]`` when it has the ``expected`` type, ``default`` when absent or null, else a
    :class:`ConfigError` naming ``where`` and the field: foreign configs are checked field by field
    before any arithmetic or lookup, so a wrong type never escapes as a bare TypeError.

    A JSON ``true`` is not accepted as an integer.

    Example:
        >>> config_field({"k": 32}, "k", int, "cfg.json")
        32
        >>> config_field({"k": "32"}, "k", int, "cfg.json")
        Traceback (most recent call last):
        ...
        scope_hub.errors.ConfigError: cfg.json: field 'k' must be int, got '32'; fix or re-export the file
    """
    value = document.get(name)
    if value is None:
        return default
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return value
    names = " or ".join(t.__name__ for t in types)
    raise ConfigError(
        f"{where}: field '{name}' must be {names}, got {value!r:.80}; fix or re-export the file",
        field=name,
        path=where,
    )


def exported(
    dictionary: Dictionary, fmt: str, supported: Mapping[str, tuple[str, ...]], *, same_width: bool = False
) -> tuple[DictionaryConfig, Files]:
    """What every exporter starts from: :func:`require` the format can hold ``dictionary``, then
    its :func:`folded_files` (normalization folded into the weights)."""
    require(dictionary, fmt, supported, same_width=same_width)
    return folded_files(dictionary)


# --- folding -------------------------------------------------------------------------------------


def folded_files(dictionary: Dictionary) -> tuple[DictionaryConfig, Files]:
    """Config and tensors with input/output normalization folded into the weights.

    ``constant_scale`` (``x * s_in`` in, ``y / s_out`` out) becomes ``w_enc * s_in``,
    ``w_dec / s_out``, ``b_dec / s_out``, ``affine_skip_connection * s_in / s_out`` (computed
    in float64, stored in the original dtype), for formats that have no such field. The
    returned config has normalization ``none`` and the stored dtype.
    """
    files = dictionary.tensors_by_file(stored=False)
    dtype = next(iter(next(iter(files.values())).values())).dtype
    config = dictionary.config.model_copy(update={"dtype": str(dtype).removeprefix("torch.")})
    norm = config.normalization
    if norm.kind == "none":
        return config, files
    s_in, s_out = norm.scale_in, norm.scale_out
    factors = {"w_enc": s_in, "w_dec": 1 / s_out, "b_dec": 1 / s_out, "affine_skip_connection": s_in / s_out}
    out: Files = {}
    for file, tensors in files.items():
        out[file] = {
            name: (t.double() * factors[name]).to(t.dtype) if name in factors else t for name, t in tensors.items()
        }
    return config.model_copy(update={"normalization": type(norm)()}), out


def check_encoder_shapes(w_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor | None) -> None:
    """Refuse (:class:`ShapeMismatchError`) an encoder whose biases do not fit ``w_enc`` ``[d_in, d_sae]``.

    ``b_dec`` is checked against ``d_in`` only where it is subtracted from the input (pass None for a
    transcoder, whose ``b_dec`` lives in the output space). Foreign files are read before any config
    can check them; without this, arithmetic on their tensors fails with torch's bare ``RuntimeError``.
    """
    if w_enc.dim() != 2:
        raise ShapeMismatchError(
            f"encoder weight has shape {tuple(w_enc.shape)}; expected [d_in, d_sae]",
            tensor="w_enc",
            actual=tuple(w_enc.shape),
        )
    d_in, d_sae = w_enc.shape
    for name, tensor, want in (("b_enc", b_enc, (d_sae,)), ("b_dec", b_dec, (d_in,))):
        if tensor is not None and tuple(tensor.shape) != want:
            raise ShapeMismatchError(
                f"{name} has shape {tuple(tensor.shape)} but the encoder weight {tuple(w_enc.shape)} needs {list(want)}",
                tensor=name,
                expected=want,
                actual=tuple(tensor.shape),
            )


def fold_b_dec_in(b_enc: torch.Tensor, w_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """Encoder bias of ``(x - b_dec) @ w_enc + b`` rewritten as ``x @ w_enc + b_enc``: ``b_enc - b_dec @ w_enc``."""
    check_encoder_shapes(w_enc, b_enc, b_dec)
    return (b_enc.double() - b_dec.double() @ w_enc.double()).to(b_enc.dtype)


def unfold_b_dec_in(b_enc: torch.Tensor, w_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fold_b_dec_in`: the bias a subtract-``b_dec``-first format stores."""
    check_encoder_shapes(w_enc, b_enc, b_dec)
    return (b_enc.double() + b_dec.double() @ w_enc.double()).to(b_enc.dtype)


def scalar_tensor(tensor: torch.Tensor, name: str) -> float:
    """The one value a stored scalar tensor (``k``, a BatchTopK ``threshold``) holds."""
    if tensor.numel() != 1:
        raise ShapeMismatchError(
            f"{name} must hold one value, got a tensor of shape {tuple(tensor.shape)}",
            tensor=name,
            actual=tuple(tensor.shape),
        )
    return float(tensor.reshape(()).item())


# --- embedded config -----------------------------------------------------------------------------


def embed(config: DictionaryConfig) -> dict[str, Any]:
    """Our config as the JSON-able dict exporters store under :data:`EMBED_KEY`."""
    return config.model_dump(mode="json")


def _family(config: DictionaryConfig) -> tuple:
    info = architecture(config.architecture)
    # Formats store every threshold architecture as JumpReLU; its k then no longer changes the math.
    arch = JUMPRELU if info.stores_threshold else config.architecture
    k = config.k if info.k_at_inference else None
    return (
        kind(config.type).layout,
        arch,
        k,
        config.d_in,
        config.d_sae,
        config.d_out,
        config.n_layers,
        config.affine_skip,
    )


def finish_load(
    derived: DictionaryConfig,
    files: Mapping[str, Mapping[str, torch.Tensor]],
    embedded: Any,
    *,
    where: str,
    source: str,
    allow_nonfinite: bool = False,
) -> Dictionary:
    """The finishing step every converter's ``load`` shares: build the dictionary from what the
    foreign files say (``derived``), then prefer our config embedded in them (``embedded``,
    found in ``source``) when it describes the same tensors, rebuilding with it.

    Build first so a foreign folder whose tensors contradict its own config fails on the
    foreign names, before the embedded config is trusted.
    """
    module = dictionary_from_tensors(derived, files, where=where, allow_nonfinite=allow_nonfinite)
    final = reconcile(module.config, embedded, where=source)
    return module if final is module.config else rebuilt(final, files, where=where)


def rebuilt(config: DictionaryConfig, files: Mapping[str, Mapping[str, torch.Tensor]], *, where: str) -> Dictionary:
    """Tensors that :func:`dictionary_from_tensors` already built once, under ``config`` instead:
    their NaN/inf were refused or warned about then, so they pass silently now."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return dictionary_from_tensors(config, files, where=where, allow_nonfinite=True)


def reconcile(derived: DictionaryConfig, embedded: Any, *, where: str) -> DictionaryConfig:
    """``embedded`` (our config found in a foreign file) if it describes the same tensors, else ``derived``.

    Same tensors: same kind family (sae/transcoder interchangeable at equal widths), same
    activation (batchtopk is stored as jumprelu by most formats), same k for topk, same widths,
    layer count and skip path. The dtype always comes from the tensors.
    """
    if embedded is None:
        return derived
    try:
        if not isinstance(embedded, dict):
            raise ConfigError(f"'{EMBED_KEY}' must be an object")
        candidate = validate_config(embedded, where)
    except ConfigError as exc:
        warnings.warn(f"{where}: ignoring the embedded scope-hub config ({exc})", UserWarning, stacklevel=3)
        return derived
    if candidate.normalization.kind != "none" or _family(candidate) != _family(derived):
        warnings.warn(
            f"{where}: the embedded scope-hub config does not describe these tensors "
            "(edited after export?); using the format's own fields",
            UserWarning,
            stacklevel=3,
        )
        return derived
    return candidate.model_copy(update={"dtype": derived.dtype})


# --- files ---------------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or :class:`FormatError` saying what is wrong."""
    if not path.is_file():
        raise FormatError(f"{path}: {what} not found")
    return parse_json_object(path.read_bytes(), str(path), FormatError, what="re-export it")


def read_numeric_npz(path: Path) -> dict[str, Any]:
    """Every array of an ``.npz`` as numpy arrays; WeightsFileError for pickled objects, text or a bad file."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # zipfile errors, ValueError for object arrays, truncated members
        raise WeightsFileError(
            f"{path}: not a readable numeric npz file ({exc}); re-download or re-export it"
        ) from None
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise WeightsFileError(f"{path}: array {name!r} has dtype {array.dtype}, not numbers; re-export it")
    return arrays


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Deterministic JSON (sorted keys, 2-space indent, trailing newline)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, or a typed error naming the file."""
    from safetensors.torch import load_file

    from scope_hub.errors import DictionaryNotFoundError, WeightsFileError

    if not path.is_file():
        raise DictionaryNotFoundError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsFileError(f"{path}: not a readable safetensors file ({exc})") from exc


def save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write tensors (made contiguous, on CPU) to a safetensors file."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def parent_model_name(folder: Path, key: str = "model") -> str | None:
    """``key`` of a ``config.json`` one level up (sparsify's run config), if any."""
    path = folder.parent / "config.json"
    try:
        value = parse_json_object(path.read_bytes(), str(path)).get(key) if path.is_file() else None
    except (OSError, ScopeHubError):
        return None
    return value if isinstance(value, str) else None
