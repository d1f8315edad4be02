"""Gemma Scope 2: single folders in and out, and whole releases into a registry.

Release layout (``google/gemma-scope-2-{270m,1b,4b,12b,27b}-{pt,it}``)::

    resid_post|attn_out|mlp_out|transcoder[_all]/layer_{L}_width_{W}_{variant}/
        config.json + params.safetensors          variant = l0_small, l0_big_affine, l0_medium_seed_1 ...
    clt/width_{W}_{variant}/config.json + params_layer_{i}.safetensors
    crosscoder/[layers_{L1}_{L2}..._]width_{W}_{variant}/config.json + params.safetensors

Keys: ``{model}:{site}/layer_{L}/width_{W}/{type}/{variant}`` with site resid_post, attn_out,
mlp_out, or ``mlp`` for transcoders and CLTs; type sae, transcoder, skip_transcoder (``_affine``
transcoders), clt (``layer_all``), crosscoder (``layer_5-9-12-15``). The ``X`` vs ``X_all`` rule
is in :mod:`scope_hub.interop.release`.

Two layouts are inferred rather than documented, and both are read either way: a CLT layer
file's ``w_dec`` as ``[d_sae, n_layers - i, d_out]`` (ours) or ``[d_sae, n_layers, d_out]``
(what circuit-tracer's and SAELens's Gemma Scope 2 loaders index; the first ``i`` slots are
dropped); a crosscoder's tensors as ``w_enc [n, d_in, d_sae]`` (ours) or concatenated over
layers (``w_enc [n*d_in, d_sae]``, ``w_dec [d_sae, n*d_out]``, ``b_dec [n*d_out]``).
Exports write the full-width CLT decoder and the concatenated crosscoder.

Example:
    >>> spec = parse_folder("resid_post_all/layer_12_width_16k_l0_big")
    >>> spec.site, spec.layer, spec.width, spec.type, spec.variant, spec.is_all
    ('resid_post', 12, '16k', 'sae', 'l0_big', True)
    >>> model_from_repo("google/gemma-scope-2-270m-pt"), model_from_repo("google/gemma-scope-2-1b-it")
    ('google/gemma-3-270m', 'google/gemma-3-1b-it')
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from scope_hub.config_io import check_published_width, gemma_model_id, parse_config
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ConfigError, FormatError, ShapeMismatchError
from scope_hub.interop.common import (
    EMBED_KEY,
    atomic_folder,
    embed,
    exported,
    finish_load,
    load_safetensors,
    read_json,
    save_safetensors,
    write_json,
)
from scope_hub.interop.release import (
    GEMMA_SCOPE_LICENSE,
    ImportReport,
    Planned,
    ReleaseSource,
    digest_files,
    folders_of,
    publish,
)
from scope_hub.keys import DictionaryKey
from scope_hub.kinds import (
    CLT,
    CROSSCODER,
    GEMMA_SCOPE_2,
    JUMPRELU,
    KINDS,
    SAE,
    SKIP_TRANSCODER,
    TRANSCODER,
    kind,
    kind_from_peer,
    peer_name,
)
from scope_hub.metadata import DictionaryConfig

NAME = "gemma-scope-2"
FILES = "config.json (hf_hook_point_in ...) + params.safetensors | params_layer_{i}.safetensors"
SUPPORTED = {t: (JUMPRELU,) for t in (SAE, TRANSCODER, SKIP_TRANSCODER, CLT, CROSSCODER)}
TRANSCODER_TOP = "transcoder"
"""The release's top folder of single-layer transcoders (skip transcoders: variants with ``affine``)."""
SITE_OF_TOP = {"resid_post": "resid_post", "attn_out": "attn_out", "mlp_out": "mlp_out", TRANSCODER_TOP: "mlp"}
KIND_OF_MULTI_LAYER_TOP = {"clt": CLT, "crosscoder": CROSSCODER}
"""The release's top folders of multi-layer dictionaries, with the kind each holds."""
_GS2_JUMPRELU = peer_name(JUMPRELU, GEMMA_SCOPE_2)
SUBSET_LAYERS = {
    "270m": (5, 9, 12, 15),
    "1b": (7, 13, 17, 22),
    "4b": (9, 17, 22, 29),
    "12b": (12, 24, 31, 41),
    "27b": (16, 31, 40, 53),
}
"""The 4 layers (25/50/65/85% depth) of each model's subset, as listed by SAELens 6.54's YAML."""

_W = r"(?P<width>[1-9]\d*[km]?)"
_VARIANT = r"(?P<variant>l0_[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*)"
_SINGLE_RE = re.compile(rf"^layer_(?P<layer>\d+)_width_{_W}_{_VARIANT}$")
_MULTI_RE = re.compile(rf"^(?:layers?_(?P<layers>\d+(?:_\d+)*)_)?width_{_W}_{_VARIANT}$")


@dataclass(frozen=True)
class FolderSpec:
    """What a release folder's path says about the dictionary in it."""

    top: str
    name: str
    site: str
    type: str
    width: str
    variant: str
    layer: int | None = None
    layers: tuple[int, ...] | None = None
    is_all: bool = False

    def key(self, model: str) -> DictionaryKey:
        layer: int | str = (
            self.layer if self.layer is not None else ("-".join(map(str, self.layers)) if self.layers else "all")
        )
        return DictionaryKey(model, self.site, layer, self.width, self.type, self.variant)


def parse_folder(rel: str) -> FolderSpec:
    """Parse ``top/name`` of a release folder; :class:`FormatError` for an unexpected path."""
    parts = rel.strip("/").split("/")
    if len(parts) != 2:
        raise FormatError(f"{rel}: expected <top folder>/<dictionary folder>")
    top, name = parts
    base, is_all = (top[:-4], True) if top.endswith("_all") else (top, False)
    if base in SITE_OF_TOP:
        match = _SINGLE_RE.match(name)
        if not match:
            raise FormatError(f"{rel}: unexpected folder name; expected layer_<L>_width_<W>_l0_<size>[_...]")
        variant = match["variant"]
        type_ = SAE
        if base == TRANSCODER_TOP:
            type_ = SKIP_TRANSCODER if "affine" in variant.split("_") else TRANSCODER
        return FolderSpec(
            top, name, SITE_OF_TOP[base], type_, match["width"], variant, layer=int(match["layer"]), is_all=is_all
        )
    if top in KIND_OF_MULTI_LAYER_TOP:
        match = _MULTI_RE.match(name)
        if not match:
            raise FormatError(f"{rel}: unexpected folder name; expected [layers_<L>_..._]width_<W>_l0_<size>[_...]")
        layers = tuple(int(x) for x in match["layers"].split("_")) if match["layers"] else None
        type_ = KIND_OF_MULTI_LAYER_TOP[top]
        site = "mlp" if kind(type_).per_layer_decoders else "resid_post"
        return FolderSpec(top, name, site, type_, match["width"], match["variant"], layers=layers)
    raise FormatError(
        f"{rel}: unexpected top-level folder {top!r}; expected one of "
        f"{', '.join(sorted([*SITE_OF_TOP, *(t + '_all' for t in SITE_OF_TOP), *KIND_OF_MULTI_LAYER_TOP]))}"
    )


def model_from_repo(repo_id: str | None) -> str | None:
    """Base model Hub id of a Gemma Scope 2 repo (the 270M base model's id has no ``-pt``)."""
    match = re.match(r"^(?:google/)?gemma-scope-2-(\w+)-(pt|it)$", repo_id or "")
    return gemma_model_id(f"gemma-3-{match[1]}-{match[2]}") if match else None


def gemma_hook_points(site: str, layer: int | str) -> tuple[str, str | None]:
    """transformers hook points (in, out) of a Gemma 2/3 site (DESIGN.md section 5)."""
    base = f"model.layers.{layer}"
    return {
        "resid_post": (f"{base}.output", None),
        "attn_out": (f"{base}.self_attn.o_proj.input", None),
        "mlp_out": (f"{base}.post_feedforward_layernorm.output", None),
        "mlp": (f"{base}.pre_feedforward_layernorm.output", f"{base}.post_feedforward_layernorm.output"),
    }[site]


# --- one folder ----------------------------------------------------------------------------------


def detect(folder: Path) -> bool:
    """A published-style ``config.json`` (no ``schema_version``) next to ``params*.safetensors``."""
    folder = Path(folder)
    if not ((folder / "params.safetensors").is_file() or (folder / "params_layer_0.safetensors").is_file()):
        return False
    try:
        raw = read_json(folder / "config.json", "config.json")
    except FormatError:
        return False
    return "schema_version" not in raw and ("hf_hook_point_in" in raw or raw.get("architecture") == _GS2_JUMPRELU)


def reads_natively(folder: Path) -> bool:
    """Whether :meth:`Dictionary.from_pretrained` reads this Gemma Scope 2 folder as it is (lazily,
    with every native check): all but a crosscoder, whose layers are stored concatenated."""
    try:
        raw = read_json(Path(folder) / "config.json", "config.json")
    except FormatError:
        return True  # the native loader says what is wrong
    published = kind_from_peer(GEMMA_SCOPE_2, str(raw.get("type", "")))
    return published is None or published not in KINDS or not kind(published).stacked


def load(
    folder: Path,
    *,
    spec: FolderSpec | None = None,
    model: str | None = None,
    source_uri: str | None = None,
    allow_nonfinite: bool = False,
) -> Dictionary:
    """One Gemma Scope 2 folder as a dictionary (release path details from ``spec`` when given);
    ``allow_nonfinite`` as for every converter (:mod:`scope_hub.interop.formats`)."""
    folder = Path(folder)
    if spec is None:
        try:
            spec = parse_folder(f"{folder.parent.name}/{folder.name}")
        except FormatError:
            spec = None
    raw = read_json(folder / "config.json", "config.json") if (folder / "config.json").is_file() else None
    if raw is None:
        if spec is None:
            raise FormatError(f"{folder}: no config.json, and the folder name does not say what it holds")
        raw = _inferred_config(spec)
    type_ = (spec.type if spec else None) or kind_from_peer(GEMMA_SCOPE_2, str(raw.get("type", "")))
    info = kind(type_) if type_ is not None and type_ in KINDS else None
    if info is not None and info.stacked:
        config, files = _crosscoder(folder, raw, spec, model)
    elif (info is not None and info.per_layer_decoders) or (folder / "params_layer_0.safetensors").is_file():
        config, files = _clt(folder, raw)
    else:
        config = parse_config(
            {k: v for k, v in raw.items() if k != EMBED_KEY}, folder=folder, where=str(folder / "config.json")
        )
        files = {"params.safetensors": load_safetensors(folder / "params.safetensors")}
    config = _with_release_facts(config, spec, model, source_uri, folder)
    source, embedded = str(folder / "config.json"), raw.get(EMBED_KEY)
    return finish_load(config, files, embedded, where=str(folder), source=source, allow_nonfinite=allow_nonfinite)


def _inferred_config(spec: FolderSpec) -> dict[str, Any]:
    """A config for a folder published without config.json (as SAELens infers one)."""
    hook_in, hook_out = gemma_hook_points(spec.site, spec.layer if spec.layer is not None else 0)
    gs2_type = peer_name(spec.type, GEMMA_SCOPE_2)
    raw: dict[str, Any] = {"architecture": _GS2_JUMPRELU, "hf_hook_point_in": hook_in, "type": gs2_type}
    if hook_out:
        raw["hf_hook_point_out"] = hook_out
        raw["affine_connection"] = kind(spec.type).affine_skip == "always" or "affine" in spec.variant.split("_")
    return raw


def _clt(folder: Path, raw: dict[str, Any]) -> tuple[DictionaryConfig, dict]:
    config = parse_config(
        {k: v for k, v in raw.items() if k != EMBED_KEY}, folder=folder, where=str(folder / "config.json")
    )
    if not kind(config.type).per_layer_decoders:
        raise FormatError(f"{folder}: a clt folder must hold params_layer_<i>.safetensors files")
    n, files = config.n_layers, {}
    for i in range(n):
        name = f"params_layer_{i}.safetensors"
        tensors = load_safetensors(folder / name)
        w_dec = tensors.get("w_dec")
        if w_dec is not None and w_dec.ndim == 3 and w_dec.shape[1] == n and i > 0:
            if bool(w_dec[:, :i].any()):
                warnings.warn(
                    f"{folder / name}: decoders into layers before {i} are nonzero and are dropped "
                    "(a CLT layer writes only to itself and later layers)",
                    UserWarning,
                    stacklevel=3,
                )
            tensors["w_dec"] = w_dec[:, i:].contiguous()
        files[name] = tensors
    return config, files


def _crosscoder_layers(raw: dict[str, Any], spec: FolderSpec | None, model: str | None) -> list[int]:
    layers = raw.get("layers")
    if isinstance(layers, list):
        if not layers or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 10_000 for x in layers):
            raise FormatError(f"config.json: 'layers' must be a non-empty list of layer numbers, got {layers!r}")
        return list(layers)
    hooks = raw.get("hf_hook_point_in")
    if isinstance(hooks, list):
        found = [re.search(r"layers\.(\d{1,4})\.", h) if isinstance(h, str) else None for h in hooks]
        if not found or None in found:
            raise FormatError(
                f"config.json: 'hf_hook_point_in' must list hook points like model.layers.3.output, got {hooks!r}"
            )
        return [int(m[1]) for m in found if m]
    if spec is not None and spec.layers:
        return list(spec.layers)
    size = re.search(r"gemma-(?:v)?3-(\w+?)(?:-(?:pt|it))?$", str(raw.get("model_name") or model or ""))
    if size and size[1] in SUBSET_LAYERS:
        return list(SUBSET_LAYERS[size[1]])
    raise FormatError(
        "cannot tell which layers this crosscoder reads (no 'layers' in config.json, none in the "
        "folder name, unknown model size)"
    )


def _crosscoder(folder: Path, raw: dict[str, Any], spec: FolderSpec | None, model: str | None) -> tuple:
    layers = _crosscoder_layers(raw, spec, model)
    n, t = len(layers), load_safetensors(folder / "params.safetensors")
    if "w_enc" not in t or "w_dec" not in t or "b_dec" not in t:
        raise ShapeMismatchError(f"{folder}: params.safetensors needs w_enc, b_enc, threshold, w_dec, b_dec")
    w_enc, w_dec, b_dec = t["w_enc"], t["w_dec"], t["b_dec"]
    if w_enc.ndim == 2:  # concatenated over layers (unconfirmed Gemma Scope 2 layout)
        if w_enc.shape[0] % n or w_dec.shape[1] % n:
            raise ShapeMismatchError(
                f"{folder}: w_enc {list(w_enc.shape)} / w_dec {list(w_dec.shape)} do not split into {n} layers"
            )
        if b_dec.numel() != w_dec.shape[1]:
            raise ShapeMismatchError(
                f"{folder}: b_dec {list(b_dec.shape)} does not match w_dec {list(w_dec.shape)}",
                path=str(folder),
                tensor="b_dec",
                actual=tuple(b_dec.shape),
            )
        w_enc = w_enc.reshape(n, w_enc.shape[0] // n, w_enc.shape[1])
        w_dec = w_dec.reshape(w_dec.shape[0], n, w_dec.shape[1] // n)
        b_dec = b_dec.reshape(n, -1)
    t = {**t, "w_enc": w_enc.contiguous(), "w_dec": w_dec.contiguous(), "b_dec": b_dec.contiguous()}
    check_published_width(raw.get("width"), w_enc.shape[-1], folder / "params.safetensors", str(folder / "config.json"))
    model_name = raw.get("model_name")
    config = DictionaryConfig(
        type="crosscoder",
        architecture="jumprelu",
        d_in=w_enc.shape[-2],
        d_sae=w_enc.shape[-1],
        d_out=w_dec.shape[-1],
        layers=layers,
        site="resid_post",
        hook_point_in="model.layers.{layer}.output",
        model=gemma_model_id(model_name) if isinstance(model_name, str) else None,
        l0_target=raw.get("l0") if isinstance(raw.get("l0"), (int, float)) else None,
        provenance={"source": "gemma-scope-2", "source_uri": str(folder)},
        source_config={k: v for k, v in raw.items() if k != EMBED_KEY},
    )
    return config, {"params.safetensors": t}


def _with_release_facts(
    config: DictionaryConfig, spec: FolderSpec | None, model: str | None, source_uri: str | None, folder: Path
) -> DictionaryConfig:
    update: dict[str, Any] = {}
    if spec is not None:
        if spec.type != config.type:
            raise FormatError(f"{folder}: the folder name says {spec.type} but the files hold a {config.type}")
        if spec.layer is not None and config.layer not in (None, spec.layer):
            raise FormatError(f"{folder}: the folder name says layer {spec.layer}, config.json layer {config.layer}")
        if spec.layers and kind(config.type).stacked and list(spec.layers) != config.layers:
            raise FormatError(f"{folder}: planned layers {list(spec.layers)}, config.json says {config.layers}")
        site = spec.site if spec.site != "mlp" else "mlp_in"
        if config.site and config.site != site:
            raise FormatError(f"{folder}: under {spec.top}/ but config.json's hook point is {config.site}")
        if not kind(config.type).reconstructs_input:
            update.update(site=config.site or site, site_out=config.site_out or "mlp_out")
        else:
            update["site"] = config.site or site
        update.update(width_label=spec.width, variant=spec.variant)
        if spec.layer is not None:
            update["layer"] = spec.layer
            if not config.hook_point_in:
                hook_in, hook_out = gemma_hook_points(spec.site, spec.layer)
                update.update(hook_point_in=hook_in, hook_point_out=hook_out)
    if model:
        if config.model and config.model != model:
            raise FormatError(f"{folder}: config.json names model {config.model}, expected {model}")
        update["model"] = model
    if source_uri:
        update["provenance"] = config.provenance.model_copy(update={"source_uri": source_uri})
    return config.model_copy(update=update)


def save(dictionary: Dictionary, out: Path) -> Path:
    """Write ``dictionary`` as a Gemma Scope 2 folder (JumpReLU only; our config embedded)."""
    config, files = exported(dictionary, NAME, SUPPORTED)
    hook_in, hook_out = config.hook_points()
    raw: dict[str, Any] = {
        "architecture": _GS2_JUMPRELU,
        "width": config.d_sae,
        "l0": config.l0_target,
        "model_name": _gs2_model_name(config.model),
        "hf_hook_point_in": hook_in,
        "type": peer_name(config.type, GEMMA_SCOPE_2),
        EMBED_KEY: embed(config),
    }
    info = kind(config.type)
    if not (info.reconstructs_input and not info.multi_layer) and hook_out:
        raw["hf_hook_point_out"] = hook_out
    if not info.reconstructs_input:
        raw["affine_connection"] = config.affine_skip
    if info.stacked:
        raw["layers"] = list(config.layers or ())  # the config validator requires layers for stacked kinds
        t = files["params.safetensors"]
        n = config.n_layers
        files = {
            "params.safetensors": {
                **t,
                "w_enc": t["w_enc"].reshape(n * config.d_in, config.d_sae),
                "w_dec": t["w_dec"].reshape(config.d_sae, n * config.d_out),
                "b_dec": t["b_dec"].reshape(n * config.d_out),
            }
        }
    if info.per_layer_decoders:
        n = config.n_layers
        for i in range(1, n):
            t = files[f"params_layer_{i}.safetensors"]
            pad = t["w_dec"].new_zeros(config.d_sae, i, config.d_out)
            t["w_dec"] = torch.cat([pad, t["w_dec"]], dim=1)
    with atomic_folder(out) as stage:
        write_json(stage / "config.json", {k: v for k, v in raw.items() if v is not None})
        for name, tensors in files.items():
            save_safetensors(stage / name, tensors)
    return Path(out)


def _gs2_model_name(model: str | None) -> str | None:
    """Inverse of :func:`gemma_model_id` for Gemma 3 ids (``google/gemma-3-270m`` -> ``gemma-v3-270m-pt``)."""
    match = re.match(r"^google/gemma-3-(\w+?)(-pt|-it)?$", model or "")
    return f"gemma-v3-{match[1]}{match[2] or '-pt'}" if match else model


# --- whole releases ------------------------------------------------------------------------------


def plan_release(source: ReleaseSource, *, model: str | None = None, include: list[str] | None = None) -> list[Planned]:
    """One :class:`Planned` per dictionary folder of the release (unexpected folders carry an error)."""
    import fnmatch

    model = model or model_from_repo(source.repo_id)
    plan: list[Planned] = []
    for rel, inside in sorted(folders_of(source.files(), 2).items()):
        if include and not any(fnmatch.fnmatch(rel, pattern) for pattern in include):
            continue
        if "/" not in rel:
            continue
        try:
            spec = parse_folder(rel)
            folder_model = model or _local_model(source, rel)
            if kind(spec.type).stacked and not spec.layers:
                spec = replace(spec, layers=tuple(_crosscoder_layers(_local_raw(source, rel), spec, folder_model)))
            key = spec.key(folder_model)
        except (FormatError, ConfigError, ValueError) as exc:
            plan.append(Planned(rel, None, error=str(exc)))
            continue
        weights = [f for f in inside if "/" not in f and f.endswith(".safetensors")]
        plan.append(
            Planned(rel, key, _builder(source, rel, spec, folder_model), _digest(source, rel, weights), spec.is_all)
        )
    return plan


def _local_raw(source: ReleaseSource, rel: str) -> dict[str, Any]:
    """A local folder's config.json (empty for Hub sources: nothing is downloaded to plan)."""
    if source.root is not None and (source.root / rel / "config.json").is_file():
        return read_json(source.root / rel / "config.json", "config.json")
    return {}


def _local_model(source: ReleaseSource, rel: str) -> str:
    name = _local_raw(source, rel).get("model_name")
    if isinstance(name, str):
        return gemma_model_id(name)
    raise FormatError(f"{rel}: cannot tell the base model (no repo id, no model_name in config.json); pass model=")


def _builder(source: ReleaseSource, rel: str, spec: FolderSpec, model: str):
    def build(stage: Path, key: DictionaryKey) -> None:
        module = load(source.fetch(rel), spec=spec, model=model, source_uri=source.uri(rel))
        module.config = module.config.model_copy(update={"variant": key.variant})  # maybe suffixed _all
        module.save_pretrained(stage)

    return build


def _digest(source: ReleaseSource, rel: str, names: list[str]):
    return lambda: digest_files(source.fetch(rel), names)


# Parallel to gemma_scope_1.import_gemma_scope_1: one importer interface, each over its own planner.
def import_gemma_scope_2(
    source: str | Path,
    registry: Any,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    model: str | None = None,
    include: list[str] | None = None,
    dry_run: bool = False,
    progress: bool | None = None,
    license: str = GEMMA_SCOPE_LICENSE,
) -> ImportReport:
    """Publish every dictionary of a Gemma Scope 2 release (local folder or Hub repo) to ``registry``.

    ``registry`` is a Registry or its URL. Re-running is cheap and safe: identical content is a
    no-op push (reported ``unchanged``). Malformed folders are reported ``failed`` with the
    reason and the import continues. ``include`` keeps only folders matching any glob
    (``"resid_post/*"``); ``dry_run`` plans keys without pushing. ``license`` goes into each
    version's card (default: Gemma Scope's published license, cc-by-4.0).

    Example (offline, from the HF cache)::

        report = import_gemma_scope_2("google/gemma-scope-2-270m-pt", "file:///data/registry",
                                      include=["resid_post/*"])
        print(report.summary())
    """
    src = ReleaseSource(source, revision=revision, repo_id=repo_id)
    return publish(
        src.name,
        plan_release(src, model=model, include=include),
        registry,
        dry_run=dry_run,
        progress=progress,
        license=license,
    )
