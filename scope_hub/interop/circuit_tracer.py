"""circuit-tracer transcoder sets and cross-layer transcoders, in and out.

Checked against circuit-tracer 0.5.0 (``transcoder/single_layer_transcoder.py``,
``cross_layer_transcoder.py``, ``utils/hf_utils.py``). A folder holds ``config.yaml``
(``model_name``, ``model_kind: transcoder_set | cross_layer_transcoder``,
``feature_input_hook``, ``feature_output_hook``) and either

* a transcoder set: ``layer_{i}.safetensors`` with ``W_enc [d_sae, d_model]``, ``b_enc``,
  ``W_dec [d_sae, d_model]``, ``b_dec``, optional ``activation_function.threshold`` (JumpReLU,
  else ReLU) and ``W_skip [d_model, d_model]`` (applied as ``x @ W_skip.T``); read back as one
  transcoder per layer (``load_all``). Gemma Scope 2 (``w_enc`` ...) and Gemma Scope
  ``.npz`` layer files listed under ``transcoders:`` are read too;
* a CLT: ``W_enc_{i}.safetensors`` (``W_enc_{i} [d_sae, d_model]``, ``b_enc_{i}``, ``b_dec_{i}``,
  optional ``threshold_{i}``) and ``W_dec_{i}.safetensors`` (``W_dec_{i} [d_sae, n - i, d_model]``).
  circuit-tracer's ``load_clt`` reads no skip path; ours is written as ``W_skip_{i}``
  (``[d_in, d_out]``, ``x @ W_skip``) into the encoder file, with a warning that
  circuit-tracer ignores it.

circuit-tracer's JumpReLU is ``x * (x > threshold)`` (no ReLU), ours ``relu(x) * (x > threshold)``:
the same for thresholds >= 0. Exports clamp thresholds at 0, which leaves our function unchanged
and makes theirs equal to it; imports warn about negative thresholds.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from scope_hub.config_io import validate_config
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import DictionaryNotFoundError, FormatError, UnsupportedError
from scope_hub.interop.common import (
    EMBED_KEY,
    atomic_folder,
    dictionary_from_tensors,
    embed,
    finish_load,
    folded_files,
    load_safetensors,
    read_numeric_npz,
    rebuilt,
    reconcile,
    require,
    save_safetensors,
)
from scope_hub.kinds import CLT, JUMPRELU, RELU, SKIP_TRANSCODER, TRANSCODER, kind
from scope_hub.metadata import DictionaryConfig

NAME = "circuit-tracer"
FILES = "config.yaml + layer_{i}.safetensors | W_enc_{i}.safetensors + W_dec_{i}.safetensors"
SUPPORTED = {TRANSCODER: (JUMPRELU, RELU), SKIP_TRANSCODER: (JUMPRELU, RELU), CLT: (JUMPRELU, RELU)}
HOOKS = {
    "mlp_in": "mlp.hook_in",
    "mlp_out": "hook_mlp_out",
    "resid_pre": "hook_resid_pre",
    "resid_post": "hook_resid_post",
}
"""Our site -> circuit-tracer feature hook (``mlp.hook_in`` is the output of the pre-MLP norm)."""
SITES = {**{hook: site for site, hook in HOOKS.items()}, "hook_mlp_in": "mlp_in", "mlp.hook_out": "mlp_out"}
"""circuit-tracer hook -> our site; ``hook_resid_mid`` and ``ln2.hook_normalized`` have none."""


def detect(folder: Path) -> bool:
    folder = Path(folder)
    return any((folder / name).is_file() for name in ("config.yaml", "layer_0.safetensors", "W_enc_0.safetensors"))


def _read_yaml(folder: Path) -> dict[str, Any]:
    import yaml

    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_bytes())
    except (yaml.YAMLError, RecursionError, ValueError) as exc:  # ValueError: ints past the digit limit
        raise FormatError(f"{path}: not valid YAML ({type(exc).__name__}); fix or re-export it") from None
    if not isinstance(raw, dict):
        raise FormatError(f"{path}: must hold a mapping")
    return raw


def _numbered(folder: Path, pattern: str) -> list[tuple[int, Path]]:
    regex = re.compile(pattern)
    found = sorted((int(m[1]), p) for p in folder.iterdir() if (m := regex.match(p.name)))
    return found


def _clean_threshold(threshold: torch.Tensor, where: str) -> torch.Tensor:
    if bool((threshold < 0).any()):
        warnings.warn(
            f"{where}: negative JumpReLU thresholds: circuit-tracer lets pre-activations between them "
            "and 0 through, scope-hub clamps those at 0",
            UserWarning,
            stacklevel=4,
        )
    return threshold


def _validated(cfg: dict[str, Any], folder: Path, source: Path, **from_tensors: Any) -> DictionaryConfig:
    """The config of tensors read from ``source`` (``from_tensors``: kind, activation, widths) with
    what config.yaml says about the model and sites; its values are foreign input, so a bad one
    is a ConfigError naming it."""
    fields = dict(
        from_tensors,
        model=cfg.get("model_name"),
        site=SITES.get(str(cfg.get("feature_input_hook"))),
        site_out=SITES.get(str(cfg.get("feature_output_hook"))),
        provenance={"source": "circuit-tracer", "source_uri": str(source)},
    )
    return validate_config(fields, str(folder / "config.yaml"))


def _layer_file(path: Path, i: int, cfg: dict[str, Any], folder: Path, allow_nonfinite: bool) -> Dictionary:
    if path.suffix == ".npz":
        import numpy as np

        if not path.is_file():
            raise DictionaryNotFoundError(f"{path}: layer file listed in config.yaml not found")
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in read_numeric_npz(path).items()}
        missing = [name for name in ("W_enc", "W_dec", "b_enc", "b_dec") if name not in t]
        if missing:
            raise FormatError(f"{path}: arrays {missing} missing; a transcoder .npz holds W_enc, W_dec, b_enc, b_dec")
        t = {
            "w_enc": t.pop("W_enc"),
            "w_dec": t.pop("W_dec"),
            "b_enc": t.pop("b_enc"),
            "b_dec": t.pop("b_dec"),
            **({"threshold": t.pop("threshold")} if "threshold" in t else {}),
        } | t
    else:
        t = load_safetensors(path)
    params: dict[str, torch.Tensor]
    if "w_enc" in t:  # Gemma Scope 2 names and orientation
        params = {
            k: t.pop(k) for k in ("w_enc", "b_enc", "w_dec", "b_dec", "threshold", "affine_skip_connection") if k in t
        }
    else:
        missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in t]
        if missing:
            raise FormatError(f"{path}: missing tensors {missing}")
        params = {
            "w_enc": t.pop("W_enc").T.contiguous(),
            "b_enc": t.pop("b_enc"),
            "w_dec": t.pop("W_dec"),
            "b_dec": t.pop("b_dec"),
        }
        if "activation_function.threshold" in t:
            params["threshold"] = t.pop("activation_function.threshold")
        if "W_skip" in t:
            params["affine_skip_connection"] = t.pop("W_skip").T.contiguous()
    if t:
        raise FormatError(f"{path}: unexpected tensors {sorted(t)}")
    if "threshold" in params:
        params["threshold"] = _clean_threshold(params["threshold"], str(path))
    config = _validated(
        cfg,
        folder,
        path,
        type=SKIP_TRANSCODER if "affine_skip_connection" in params else TRANSCODER,
        architecture=JUMPRELU if "threshold" in params else RELU,
        d_in=params["w_enc"].shape[0],
        d_sae=params["w_enc"].shape[1],
        d_out=params["w_dec"].shape[-1],
        layer=i,
    )
    return dictionary_from_tensors(
        config, {"params.safetensors": params}, where=str(path), allow_nonfinite=allow_nonfinite
    )


def _transcoder_set(folder: Path, cfg: dict[str, Any], allow_nonfinite: bool) -> dict[str, Dictionary]:
    if isinstance(cfg.get("transcoders"), list):
        paths = []
        for i, entry in enumerate(cfg["transcoders"]):
            if not isinstance(entry, str) or not entry.strip() or "\x00" in entry:
                raise FormatError(f"{folder / 'config.yaml'}: transcoders[{i}] is {entry!r}; list file paths")
            if entry.startswith("hf://"):
                raise UnsupportedError(f"{folder}: layer {i} is {entry}; download it and list the local file")
            local = folder / entry if (folder / entry).exists() else Path(entry)
            paths.append((i, local))
    else:
        paths = _numbered(folder, r"^layer_(\d+)\.safetensors$")
    if not paths:
        raise FormatError(f"{folder}: a transcoder set needs layer_<i>.safetensors files")
    out = {f"layer_{i}": _layer_file(path, i, cfg, folder, allow_nonfinite) for i, path in paths}
    embedded = cfg.get(EMBED_KEY)
    if isinstance(embedded, list) and len(embedded) == len(out):
        for (name, module), extra in zip(list(out.items()), embedded):
            final = reconcile(module.config, extra, where=str(folder / "config.yaml"))
            if final is not module.config:
                out[name] = rebuilt(final, module.tensors_by_file(), where=str(folder))
    return out


def _clt(folder: Path, cfg: dict[str, Any], allow_nonfinite: bool) -> Dictionary:
    encoders = _numbered(folder, r"^W_enc_(\d+)\.safetensors$")
    n = len(encoders)
    if n == 0 or [i for i, _ in encoders] != list(range(n)):
        raise FormatError(f"{folder}: a CLT needs W_enc_0 .. W_enc_<n-1>.safetensors")
    files: dict[str, dict[str, torch.Tensor]] = {}
    for i, path in encoders:
        t = load_safetensors(path)
        t.update(load_safetensors(folder / f"W_dec_{i}.safetensors"))
        try:
            params = {
                "w_enc": t.pop(f"W_enc_{i}").T.contiguous(),
                "b_enc": t.pop(f"b_enc_{i}"),
                "w_dec": t.pop(f"W_dec_{i}"),
                "b_dec": t.pop(f"b_dec_{i}"),
            }
        except KeyError as exc:
            raise FormatError(f"{path}: missing tensor {exc}") from None
        if f"threshold_{i}" in t:
            params["threshold"] = _clean_threshold(t.pop(f"threshold_{i}"), str(path))
        if f"W_skip_{i}" in t:
            params["affine_skip_connection"] = t.pop(f"W_skip_{i}")
        if t:
            raise FormatError(f"{path}: unexpected tensors {sorted(t)}")
        files[f"params_layer_{i}.safetensors"] = params
    first = files["params_layer_0.safetensors"]
    config = _validated(
        cfg,
        folder,
        folder,
        type=CLT,
        architecture=JUMPRELU if "threshold" in first else RELU,
        d_in=first["w_enc"].shape[0],
        d_sae=first["w_enc"].shape[1],
        d_out=first["w_dec"].shape[-1],
        layers=list(range(n)),
        affine_skip="affine_skip_connection" in first,
    )
    source, embedded = str(folder / "config.yaml"), cfg.get(EMBED_KEY)
    return finish_load(config, files, embedded, where=str(folder), source=source, allow_nonfinite=allow_nonfinite)


def load_all(folder: Path, *, allow_nonfinite: bool = False) -> dict[str, Dictionary]:
    """``{"layer_<i>": transcoder}`` for a transcoder set, ``{"": clt}`` for a CLT.

    NaN/inf weights raise :class:`~scope_hub.errors.NonFiniteWeightsError` unless
    ``allow_nonfinite`` (then a warning).
    """
    folder = Path(folder)
    cfg = _read_yaml(folder)
    kind = cfg.get("model_kind") or (
        "cross_layer_transcoder" if (folder / "W_enc_0.safetensors").is_file() else "transcoder_set"
    )
    if kind == "cross_layer_transcoder":
        return {"": _clt(folder, cfg, allow_nonfinite)}
    if kind == "transcoder_set":
        return _transcoder_set(folder, cfg, allow_nonfinite)
    raise UnsupportedError(f"{folder}: unknown model_kind {kind!r}")


def load(folder: Path, *, allow_nonfinite: bool = False) -> Dictionary:
    """The one dictionary in ``folder`` (a CLT, or a set of one transcoder); see :func:`load_all`."""
    found = load_all(folder, allow_nonfinite=allow_nonfinite)
    if len(found) != 1:
        raise FormatError(f"{folder}: holds {len(found)} transcoders; use load_all (or convert the folder)")
    return next(iter(found.values()))


def _yaml(config: DictionaryConfig, kind: str, embedded: Any) -> dict[str, Any]:
    return {
        "model_name": config.model,
        "model_kind": kind,
        "feature_input_hook": HOOKS.get(config.site or "", "hook_resid_mid"),
        "feature_output_hook": HOOKS.get(config.site_out or "", "hook_mlp_out"),
        EMBED_KEY: embedded,
    }


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False))


def _clamped(threshold: torch.Tensor) -> torch.Tensor:
    return threshold.clamp(min=0)


def save_all(dictionaries: dict[str, Dictionary], out: Path) -> list[Path]:
    """One CLT, or transcoders (one per layer) as a transcoder set, into ``out``."""
    modules = list(dictionaries.values())
    for module in modules:
        require(module, NAME, SUPPORTED, same_width=True)  # one d_model for inputs and outputs
    if any(kind(m.config.type).per_layer_decoders for m in modules):
        if len(modules) != 1:
            raise UnsupportedError("a circuit-tracer folder holds one CLT, or transcoders only")
        return [_save_clt(modules[0], Path(out))]
    found = [m.config.layer for m in modules]
    layers = [layer for layer in found if layer is not None]
    if len(layers) != len(found):
        layers = list(range(len(modules)))
    if len(set(layers)) != len(layers):
        raise UnsupportedError(f"a transcoder set needs one transcoder per layer, got layers {layers}")
    order = sorted(zip(layers, modules), key=lambda pair: pair[0])
    if len(order) > 1 and [layer for layer, _ in order] != list(range(len(order))):
        warnings.warn(
            f"circuit-tracer's load_transcoder_set needs layers 0..n-1, these are {sorted(layers)}",
            UserWarning,
            stacklevel=2,
        )
    configs = []
    with atomic_folder(out) as stage:
        for layer, module in order:
            config, files = folded_files(module)
            t = files["params.safetensors"]
            weights = {
                "W_enc": t["w_enc"].T.contiguous(),
                "b_enc": t["b_enc"],
                "W_dec": t["w_dec"],
                "b_dec": t["b_dec"],
            }
            if "threshold" in t:
                weights["activation_function.threshold"] = _clamped(t["threshold"])
            if "affine_skip_connection" in t:
                weights["W_skip"] = t["affine_skip_connection"].T.contiguous()
            save_safetensors(stage / f"layer_{layer}.safetensors", weights)
            configs.append(embed(config))
        first = folded_files(order[0][1])[0]
        _write_yaml(stage / "config.yaml", _yaml(first, "transcoder_set", configs))
    return [Path(out)]


def _save_clt(module: Dictionary, out: Path) -> Path:
    config, files = folded_files(module)
    if config.affine_skip:
        warnings.warn(
            "circuit-tracer's load_clt reads no skip path: the affine skip is written as W_skip_<i> "
            "(read back by scope-hub) and ignored by circuit-tracer",
            UserWarning,
            stacklevel=3,
        )
    with atomic_folder(out) as stage:
        for i in range(config.n_layers):
            t = files[f"params_layer_{i}.safetensors"]
            enc = {f"W_enc_{i}": t["w_enc"].T.contiguous(), f"b_enc_{i}": t["b_enc"], f"b_dec_{i}": t["b_dec"]}
            if "threshold" in t:
                enc[f"threshold_{i}"] = _clamped(t["threshold"])
            if "affine_skip_connection" in t:
                enc[f"W_skip_{i}"] = t["affine_skip_connection"]
            save_safetensors(stage / f"W_enc_{i}.safetensors", enc)
            save_safetensors(stage / f"W_dec_{i}.safetensors", {f"W_dec_{i}": t["w_dec"]})
        _write_yaml(stage / "config.yaml", _yaml(config, "cross_layer_transcoder", embed(config)))
    return out


def save(dictionary: Dictionary, out: Path) -> Path:
    """A CLT folder, or a transcoder set of one (``layer_<L>.safetensors``)."""
    return save_all({"": dictionary}, out)[0]
