"""SAELens 6.x folders (``cfg.json`` + ``sae_weights.safetensors``) in and out, and release names.

Field mapping (checked against sae_lens 6.54.12, ``sae_lens/saes/*.py`` and
``loading/pretrained_sae_loaders.py``): ``W_enc [d_in, d_sae]`` = our ``w_enc``, ``W_dec`` =
``w_dec``, ``b_enc``, ``b_dec``, ``threshold``; ``W_skip [d_out, d_in]`` = our
``affine_skip_connection`` transposed. Architectures: ``standard`` (relu), ``jumprelu``,
``topk`` (``k``), ``batchtopk`` (a training checkpoint; SAELens saves inference BatchTopK as
jumprelu, and so do we), ``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``,
``jumprelu_skip_transcoder``. On import ``apply_b_dec_to_input`` (SAELens subtracts ``b_dec``
before encoding) is folded into ``b_enc' = b_enc - b_dec @ W_enc`` and topk's
``rescale_acts_by_decoder_norm`` into the weights; exports always write
``apply_b_dec_to_input: false``, so they are exact. Hook names ``blocks.{L}.hook_resid_post``
etc. map to our sites; ``metadata.hf_hook_name`` (SAELens's own field for transformers hook
points) is preferred when present.

:func:`key_for` maps a SAELens release + sae_id (``pretrained_saes.yaml``) to our registry key,
so ``SAE.from_pretrained(release, sae_id)`` ports with a one-line change.

Example:
    >>> str(key_for("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_small"))
    'google/gemma-3-270m:resid_post/layer_12/width_16k/sae/l0_small'
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from scope_hub.config_io import gemma_model_id, site_of_hook_point, validate_config
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ConfigError, FormatError, ShapeMismatchError, UnknownReleaseError, UnsupportedError
from scope_hub.interop import gemma_scope_1, gemma_scope_2
from scope_hub.interop.common import (
    EMBED_KEY,
    atomic_folder,
    check_encoder_shapes,
    config_field,
    embed,
    exported,
    finish_load,
    fold_b_dec_in,
    load_safetensors,
    read_json,
    save_safetensors,
    write_json,
)
from scope_hub.keys import DictionaryKey
from scope_hub.kinds import (
    BATCHTOPK,
    JUMPRELU,
    RELU,
    SAE,
    SAELENS,
    SKIP_TRANSCODER,
    TOPK,
    TRANSCODER,
    architecture,
    kind,
    peer_name,
)

NAME = "saelens"
FILES = "cfg.json + sae_weights.safetensors"
FORMAT_VERSION = "6.54.12"
"""SAELens version whose format exports follow (written as ``metadata.sae_lens_version``)."""
ARCHITECTURES = {
    "standard": (SAE, RELU),
    "jumprelu": (SAE, JUMPRELU),
    "topk": (SAE, TOPK),
    "batchtopk": (SAE, BATCHTOPK),
    "transcoder": (TRANSCODER, RELU),
    "skip_transcoder": (SKIP_TRANSCODER, RELU),
    "jumprelu_transcoder": (TRANSCODER, JUMPRELU),
    "jumprelu_skip_transcoder": (SKIP_TRANSCODER, JUMPRELU),
}
"""SAELens ``architecture`` -> our (type, architecture)."""
CLASS_SUFFIX = {SAE: "", TRANSCODER: "_transcoder", SKIP_TRANSCODER: "_skip_transcoder"}
"""The suffix SAELens appends to an architecture name for each of our types."""
SUPPORTED = {
    SAE: (RELU, JUMPRELU, TOPK, BATCHTOPK),
    TRANSCODER: (RELU, JUMPRELU, BATCHTOPK),
    SKIP_TRANSCODER: (RELU, JUMPRELU, BATCHTOPK),
}
_SAELENS_TOPK = peer_name(TOPK, SAELENS)
_SAELENS_RELU = peer_name(RELU, SAELENS)
TL_HOOKS = {
    "resid_pre": "hook_resid_pre",
    "resid_post": "hook_resid_post",
    "mlp_out": "hook_mlp_out",
    "attn_out": "attn.hook_z",
    "mlp_in": "hook_mlp_in",
}
"""Our site -> TransformerLens hook (``blocks.{L}.<hook>``). ``hook_attn_out`` (after o_proj),
``hook_resid_mid`` and ``ln2.hook_normalized`` have no site of ours and import with site None."""
VENDORED = Path(__file__).parent / "data" / "saelens_gemma_scope.json.gz"
_LLM_KEYS = ("model_name", "hook_name", "hook_name_out", "hook_head_index", "hf_hook_name", "hf_hook_name_out")


def detect(folder: Path) -> bool:
    return (Path(folder) / "cfg.json").is_file() and (Path(folder) / "sae_weights.safetensors").is_file()


def tl_site(hook_name: str | None) -> tuple[str | None, int | None]:
    """(site, layer) of a TransformerLens hook name such as ``blocks.12.hook_resid_post``."""
    match = re.match(r"^blocks\.(\d+)\.(.+)$", hook_name or "")
    if not match:
        return None, None
    sites = {hook: site for site, hook in TL_HOOKS.items()}
    return sites.get(match[2]), int(match[1])


def _model_id(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return None
    return gemma_model_id(name) if "/" not in name and name.lower().startswith("gemma") else name


def _metadata(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    meta = dict(config_field(cfg, "metadata", dict, where, {}))
    for key in (*_LLM_KEYS, "hook_point"):  # SAELens < 6 kept these at the top level
        if key in cfg and key not in meta:
            meta["hook_name" if key == "hook_point" else key] = cfg[key]
    return meta


def _architecture(cfg: dict[str, Any], where: str) -> tuple[str, int | None]:
    arch = config_field(cfg, "architecture", str, where)
    activation = config_field(cfg, "activation_fn", str, where) or config_field(cfg, "activation_fn_str", str, where)
    kwargs = config_field(cfg, "activation_fn_kwargs", dict, where, {})
    k = config_field(cfg, "k", (int, float), where) or config_field(kwargs, "k", (int, float), where)
    if arch is None:
        arch = _SAELENS_TOPK if activation == _SAELENS_TOPK else _SAELENS_RELU
    if arch not in ARCHITECTURES:
        raise UnsupportedError(
            f"{where}: SAELens architecture {arch!r} has no scope-hub equivalent; supported: {', '.join(ARCHITECTURES)}"
        )
    if k is not None and not 1 <= k < 2**63:  # also refuses NaN and inf, which round() cannot take
        raise ConfigError(f"{where}: field 'k' must be a positive count of latents, got {k!r}", field="k", path=where)
    return arch, (max(1, round(k)) if k is not None else None)


def _normalization(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    mode = config_field(cfg, "normalize_activations", (str, bool), str(folder / "cfg.json"), "none") or "none"
    if isinstance(mode, bool):  # older SAELens wrote a flag
        mode = "expected_average_only_in" if mode else "none"
    if mode not in ("none", "expected_average_only_in"):
        raise UnsupportedError(
            f"{folder}: normalize_activations={mode!r} is a per-token operation scope-hub does not implement"
        )
    scaler = folder / "activation_scaler.json"
    if scaler.is_file():
        factor = read_json(scaler, "activation_scaler.json").get("scaling_factor")
        if isinstance(factor, (int, float)) and factor != 1:
            return {"kind": "constant_scale", "scale_in": float(factor), "scale_out": float(factor)}
    elif mode == "expected_average_only_in":
        warnings.warn(
            f"{folder}: normalize_activations=expected_average_only_in without activation_scaler.json; "
            "imported unscaled, as SAE.load_from_disk does",
            UserWarning,
            stacklevel=3,
        )
    return {"kind": "none"}


def load(folder: Path, *, allow_nonfinite: bool = False) -> Dictionary:
    """A SAELens folder as a dictionary (see the module docstring for what is folded); a bad
    ``cfg.json`` field is a :class:`ConfigError` naming it, NaN/inf weights are refused unless
    ``allow_nonfinite``."""
    folder = Path(folder)
    where = str(folder / "cfg.json")
    cfg = read_json(folder / "cfg.json", "cfg.json")
    meta = _metadata(cfg, where)
    arch, k = _architecture(cfg, where)
    type_, activation = ARCHITECTURES[arch]
    if meta.get("hook_head_index") is not None:
        raise UnsupportedError(f"{folder}: SAEs on a single attention head (hook_head_index) are not supported")
    t = load_safetensors(folder / "sae_weights.safetensors")
    if "log_threshold" in t:
        t["threshold"] = torch.exp(t.pop("log_threshold"))
    for name in ("scaling_factor", "finetuning_scaling_factor"):
        if name in t and not bool((t.pop(name) == 1).all()):
            raise UnsupportedError(f"{folder}: a non-unit {name} is not supported")
    missing = [n for n in ("W_enc", "W_dec", "b_enc", "b_dec") if n not in t]
    if missing:
        raise FormatError(f"{folder / 'sae_weights.safetensors'}: missing tensors {missing}")
    w_enc, w_dec, b_enc, b_dec = t.pop("W_enc"), t.pop("W_dec"), t.pop("b_enc"), t.pop("b_dec")
    reconstructs = kind(type_).reconstructs_input
    if reconstructs and cfg.get("apply_b_dec_to_input", True):
        b_enc = fold_b_dec_in(b_enc, w_enc, b_dec)
    threshold = t.pop("threshold", None)
    if ARCHITECTURES[arch][1] == BATCHTOPK and "topk_threshold" in t:
        threshold = torch.full_like(b_enc, float(t.pop("topk_threshold")))
    if cfg.get("rescale_acts_by_decoder_norm"):
        check_encoder_shapes(w_enc, b_enc, None)  # rescaling touches the encoder and decoder, not b_dec
        if w_dec.dim() != 2 or w_dec.shape[0] != w_enc.shape[1]:
            raise ShapeMismatchError(
                f"{folder / 'sae_weights.safetensors'}: W_dec has shape {tuple(w_dec.shape)}; "
                f"rescaling by decoder norms needs [{w_enc.shape[1]}, d_out]",
                path=str(folder),
                tensor="W_dec",
                actual=tuple(w_dec.shape),
            )
        norms = w_dec.double().norm(dim=-1)
        w_enc, b_enc = (w_enc.double() * norms).to(w_enc.dtype), (b_enc.double() * norms).to(b_enc.dtype)
        w_dec = (w_dec.double() / norms[:, None]).to(w_dec.dtype)
    params = {"w_enc": w_enc, "b_enc": b_enc, "w_dec": w_dec, "b_dec": b_dec}
    if threshold is not None and architecture(activation).stores_threshold:
        params["threshold"] = threshold
    if "W_skip" in t:
        params["affine_skip_connection"] = t.pop("W_skip").T.contiguous()
    if t:
        raise FormatError(f"{folder / 'sae_weights.safetensors'}: unexpected tensors {sorted(t)} for {arch}")
    hook_in, hook_out = (config_field(meta, name, str, where) for name in ("hf_hook_name", "hf_hook_name_out"))
    tl_in, tl_out = (config_field(meta, name, str, where) for name in ("hook_name", "hook_name_out"))
    site, layer = site_of_hook_point(hook_in) if hook_in else tl_site(tl_in)
    site_out = site_of_hook_point(hook_out)[0] if hook_out else tl_site(tl_out)[0]
    for name, actual in (("d_in", w_enc.shape[0]), ("d_sae", w_enc.shape[1]), ("d_out", w_dec.shape[-1])):
        stated = config_field(cfg, name, int, where, None)
        if stated is not None and stated != actual:
            raise ShapeMismatchError(
                f"{where}: {name}={stated} but sae_weights.safetensors holds {actual}; the folder's files disagree",
                path=str(folder),
                tensor=name,
                expected=stated,
                actual=actual,
            )
    fields = dict(
        type=type_,
        architecture=activation,
        d_in=w_enc.shape[0],
        d_sae=w_enc.shape[1],
        d_out=w_dec.shape[-1],
        k=k if architecture(activation).needs_k else None,
        model=_model_id(meta.get("model_name")),
        site=site,
        site_out=site_out if not reconstructs else None,
        layer=layer,
        hook_point_in=hook_in,
        hook_point_out=hook_out if not reconstructs else None,
        normalization=_normalization(cfg, folder),
        provenance={"source": "saelens", "source_uri": str(folder)},
        source_config={k: v for k, v in cfg.items() if k != "metadata"}
        | {"metadata": {k: v for k, v in meta.items() if k != EMBED_KEY}},
    )
    files = {"params.safetensors": params}
    config = validate_config(fields, where)
    embedded = meta.get(EMBED_KEY)
    return finish_load(config, files, embedded, where=str(folder), source=where, allow_nonfinite=allow_nonfinite)


def save(dictionary: Dictionary, out: Path) -> Path:
    """Write a SAELens 6 folder that ``SAE.load_from_disk`` loads to the same features."""
    config, files = exported(dictionary, NAME, SUPPORTED)
    t = files["params.safetensors"]
    suffix = CLASS_SUFFIX[config.type]
    info, reconstructs = architecture(config.architecture), kind(config.type).reconstructs_input
    # SAELens runs a stored threshold as a JumpReLU, whichever activation trained it.
    name = peer_name(JUMPRELU, SAELENS) if info.stores_threshold else peer_name(config.architecture, SAELENS)
    if reconstructs:
        arch = name
    else:
        arch = (name + suffix) if info.stores_threshold else suffix.lstrip("_")

    def hook(site):
        return f"blocks.{config.layer}.{TL_HOOKS[site]}" if site in TL_HOOKS and config.layer is not None else None

    meta: dict[str, Any] = {
        "sae_lens_version": FORMAT_VERSION,
        "model_name": config.model,
        "hook_name": hook(config.site),
        "hook_head_index": None,
        EMBED_KEY: embed(config),
    }
    hook_in, hook_out = config.hook_points()
    if hook_in:
        meta["hf_hook_name"] = hook_in
    if not reconstructs:
        meta["hook_name_out"] = hook(config.site_out or config.site)
        if hook_out:
            meta["hf_hook_name_out"] = hook_out
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "dtype": config.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if meta["hook_name"] and meta["hook_name"].endswith("hook_z") else "none",
        "metadata": meta,
    }
    if not reconstructs:
        cfg["d_out"] = config.d_out
    if arch == _SAELENS_TOPK:
        cfg.update(k=config.k, rescale_acts_by_decoder_norm=False)
    weights = {"W_enc": t["w_enc"], "b_enc": t["b_enc"], "W_dec": t["w_dec"], "b_dec": t["b_dec"]}
    if "threshold" in t:
        weights["threshold"] = t["threshold"]
    if "affine_skip_connection" in t:
        weights["W_skip"] = t["affine_skip_connection"].T.contiguous()
    with atomic_folder(out) as stage:
        write_json(stage / "cfg.json", cfg)
        save_safetensors(stage / "sae_weights.safetensors", weights)
    return Path(out)


# --- release names -------------------------------------------------------------------------------


def installed_yaml() -> Path | None:
    """``pretrained_saes.yaml`` of the installed sae_lens, found without importing it."""
    spec = importlib.util.find_spec("sae_lens")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "pretrained_saes.yaml"
        if path.is_file():
            return path
    return None


def release_table(yaml_path: str | None = None) -> dict[str, dict[str, Any]]:
    """``{release: {"repo_id": ..., "saes": {sae_id: path}}}`` for every Gemma Scope release.

    Read from ``yaml_path``, else the installed sae_lens's YAML, else the trimmed copy shipped
    with scope-hub (:data:`VENDORED`, made by :func:`vendor_table`; its SAELens version is
    :func:`vendored_version`).
    Parsed once per file.
    """
    path = yaml_path or installed_yaml()
    return _table(str(path) if path else None)


@functools.lru_cache(maxsize=4)
def _table(path: str | None) -> dict[str, dict[str, Any]]:
    if path is None:
        data = json.loads(gzip.decompress(VENDORED.read_bytes()))["releases"]
        return {
            r: {
                "repo_id": v["repo_id"],
                "saes": {(s if isinstance(s, str) else s[0]): (s if isinstance(s, str) else s[1]) for s in v["saes"]},
            }
            for r, v in data.items()
        }
    import yaml

    with open(path) as handle:
        raw = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {
        release: {"repo_id": value["repo_id"], "saes": {str(s["id"]): str(s["path"]) for s in value["saes"]}}
        for release, value in raw.items()
        if str(value.get("repo_id", "")).startswith("google/gemma-scope")
    }


def vendored_version() -> str:
    """The SAELens version whose ``pretrained_saes.yaml`` the bundled table was made from."""
    return str(json.loads(gzip.decompress(VENDORED.read_bytes()))["sae_lens_version"])


def vendor_table(yaml_path: Path | str, out: Path | str = VENDORED, *, sae_lens_version: str | None = None) -> Path:
    """Write the trimmed, gzipped Gemma Scope release table from a ``pretrained_saes.yaml``.

    ``sae_lens_version``: the SAELens release the YAML belongs to (default: the installed one).
    """
    if sae_lens_version is None:
        from importlib.metadata import version

        sae_lens_version = version("sae-lens")
    releases = {
        r: {"repo_id": v["repo_id"], "saes": [p if i == p else [i, p] for i, p in v["saes"].items()]}
        for r, v in sorted(release_table(str(yaml_path)).items())
    }
    payload = {
        "source": f"sae_lens {sae_lens_version} pretrained_saes.yaml",
        "sae_lens_version": sae_lens_version,
        "releases": releases,
    }
    Path(out).write_bytes(
        gzip.compress(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode(), 9, mtime=0)
    )
    return Path(out)


def key_for(release: str, sae_id: str, *, registry: Any = None, yaml_path: str | None = None) -> DictionaryKey:
    """The scope-hub key of SAELens's ``(release, sae_id)``, as the Gemma Scope importers name it.

    ``SAE.from_pretrained("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_small")`` becomes
    ``load_dictionary(key_for("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_small"))``.

    An ``X_all`` folder whose name also exists under ``X`` gets the variant suffix ``_all``, as
    the importer gives it when the weights differ; when they are identical the importer
    publishes both under the ``X`` key, which ``registry=`` (a Registry or its URL) resolves:
    the ``X`` key is returned when only it is published there.
    """
    table = release_table(yaml_path)
    if release not in table:
        close = [r for r in table if release.split("-")[:3] == r.split("-")[:3]][:5]
        raise UnknownReleaseError(
            f"unknown SAELens release {release!r} (only Gemma Scope releases map to keys)"
            + (f"; similar: {', '.join(close)}" if close else "")
        )
    entry = table[release]
    path = entry["saes"].get(sae_id)
    if path is None:
        raise UnknownReleaseError(
            f"sae_id {sae_id!r} is not in release {release!r}; e.g. {', '.join(list(entry['saes'])[:3])}"
        )
    repo = entry["repo_id"]
    model = gemma_scope_2.model_from_repo(repo)
    if model is not None:
        spec = gemma_scope_2.parse_folder(path)
        key = spec.key(model)
        if spec.is_all and f"{spec.top[:-4]}/{spec.name}" in _repo_paths(yaml_path).get(repo, ()):
            suffixed = DictionaryKey(key.model, key.site, key.layer, key.width, key.type, f"{key.variant}_all")
            if registry is None or _exists(registry, suffixed) or not _exists(registry, key):
                return suffixed
        return key
    facts = gemma_scope_1.repo_facts(repo)
    if facts is None:
        raise UnsupportedError(
            f"release {release!r} ({repo}) is not a Gemma Scope release; convert its folders "
            "with `scope-hub convert --from saelens` and push them under keys you choose"
        )
    layer, width, variant = gemma_scope_1.parse_folder(path)
    return DictionaryKey(facts[0], facts[1], layer, width, facts[2], variant)


def _repo_paths(yaml_path: str | None) -> dict[str, frozenset[str]]:
    path = yaml_path or installed_yaml()
    return _paths(str(path) if path else None)


@functools.lru_cache(maxsize=4)
def _paths(path: str | None) -> dict[str, frozenset[str]]:
    paths: dict[str, set[str]] = {}
    for entry in _table(path).values():
        paths.setdefault(entry["repo_id"], set()).update(entry["saes"].values())
    return {repo: frozenset(p) for repo, p in paths.items()}


def _exists(registry: Any, key: DictionaryKey) -> bool:
    from scope_hub.interop.release import open_registry

    try:
        open_registry(registry).resolve_version(key)
    except KeyError:  # UnknownKeyError, VersionNotFoundError
        return False
    return True
