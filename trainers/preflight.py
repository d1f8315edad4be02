"""Checks a run makes from its config before anything slow, so that a mistake costs seconds, not a model load.

* :func:`check_sites` resolves the configured sites and layers against the model's
  ``config.json`` (no weights): ``harvest.layer=40`` on an 18-layer model fails at once.
* :func:`adopt_harvest` compares a reused harvest's manifest (``harvest.json``) with the
  training config: a field the config sets that contradicts the harvest (model, revision,
  site, layers, hookpoints, input/output kind, the key's model/site/layer) is a
  :class:`~scope_hub.errors.ConfigError` naming both values; fields the config leaves unset
  are taken from the harvest, so a dictionary trained from a harvest alone records the
  model, site, layer and hookpoints it was harvested at.
* :func:`check_harvest_folder` says what is wrong with a harvest folder that cannot feed a
  run without a model (empty, or an unfinished harvest).

Example:
    >>> from trainers.config import load_config
    >>> cfg = load_config(None, ["harvest.cache_dir=/tmp/h", "harvest.layer=9"])
    >>> meta = {"model": "google/gemma-3-270m", "site": "resid_post", "layers": [3],
    ...         "hookpoints_in": ["model.layers.3.output"], "reconstructs_input": True}
    >>> adopt_harvest(cfg, meta)
    Traceback (most recent call last):
    ...
    scope_hub.errors.ConfigError: harvest.layer=9 contradicts the harvest in /tmp/h, which holds layers [3] ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scope_hub.errors import ConfigError, KeyParseError
from scope_hub.hookpoints import Hookpoint
from scope_hub.kinds import kind
from trainers.config import TrainConfig
from trainers.harvest import SiteSpec, site_spec
from trainers.harvest_shards import META_FILE, read_meta


def model_config(cfg: TrainConfig) -> Any | None:
    """The model's transformers config from a local folder or the HF cache; None when only a download has it."""
    from transformers import AutoConfig

    from scope_hub.model_resolution import resolve_model

    if not cfg.model.id:
        return None
    ident = resolve_model(cfg.model.id, cfg.model.revision)
    try:
        return AutoConfig.from_pretrained(ident, revision=cfg.model.revision, local_files_only=True)
    except (OSError, ValueError, KeyError):  # not cached yet (or unreadable): the model load will say
        return None


def check_sites(cfg: TrainConfig) -> SiteSpec | None:
    """Resolve sites and layers against the model's ``config.json``; raises the same typed errors the
    model would (``HookpointError`` for a layer out of range, ``UnsupportedModelError``), before loading it."""
    config = model_config(cfg)
    return site_spec(config, cfg) if config is not None else None


def _layers(cfg: TrainConfig) -> tuple[str, list[int]] | None:
    h = cfg.harvest
    if "layers" in h.model_fields_set and h.layers is not None:
        return f"harvest.layers={h.layers}", list(h.layers)
    if "layer" in h.model_fields_set and h.layer is not None:
        return f"harvest.layer={h.layer}", [h.layer]
    return None


def _contradiction(setting: str, root: object, holds: str) -> ConfigError:
    return ConfigError(
        f"{setting} contradicts the harvest in {root}, which holds {holds} (its {META_FILE}); "
        "train with the harvest's values (leave the field unset to take them from the harvest) "
        "or give a harvest of what you want its own harvest.cache_dir"
    )


def adopt_harvest(cfg: TrainConfig, meta: dict[str, Any]) -> SiteSpec:
    """Check ``cfg`` against a harvest's manifest, fill the fields ``cfg`` leaves unset from it (in
    place), and return the harvest's hookpoints."""
    root = cfg.harvest.cache_dir
    model, h = cfg.model, cfg.harvest
    if meta.get("model") is not None:
        if "id" in model.model_fields_set and model.id is not None and model.id != meta["model"]:
            raise _contradiction(f"model.id={model.id}", root, f"activations of {meta['model']}")
        if model.id is None:
            model.id = meta["model"]
    # An unset revision stays unset (the harvest's resolved commit is recorded in the card from the
    # harvest itself); setting it here would change the config's fingerprint and block every resume.
    if meta.get("model_revision") is not None and model.revision not in (None, meta["model_revision"]):
        raise _contradiction(f"model.revision={model.revision}", root, f"revision {meta['model_revision']}")
    if meta.get("targets") is not None:
        # A harvest of several dictionaries: each run (all of them, or any one) reads its own targets'
        # hookpoints, which the pipeline matches by name against the harvest's target list.
        return SiteSpec(list(meta.get("layers") or []), [], None, None)
    if meta.get("site") is not None:
        if "site" in h.model_fields_set and h.site != meta["site"]:
            raise _contradiction(f"harvest.site={h.site}", root, f"site {meta['site']}")
        h.site = meta["site"]
    if meta.get("site_out") is not None and cfg.site_out != meta["site_out"]:
        if h.site_out is not None:
            raise _contradiction(f"harvest.site_out={h.site_out}", root, f"output site {meta['site_out']}")
        h.site_out = meta["site_out"]  # only when the default differs: the checkpoint fingerprint stays put
    layers = list(meta.get("layers") or [])
    given = _layers(cfg)
    if given is not None and layers and given[1] != layers:
        raise _contradiction(given[0], root, f"layers {layers}")
    if layers and given is None:
        if kind(cfg.dictionary.type).per_layer_decoders:
            h.layers = layers
        elif len(layers) == 1:
            h.layer = layers[0]
    reconstructs = meta.get("reconstructs_input")
    if reconstructs is not None and reconstructs != kind(cfg.dictionary.type).reconstructs_input:
        what = "one site (an SAE's input and target)" if reconstructs else "an input and a separate output site"
        raise _contradiction(f"dictionary.type={cfg.dictionary.type}", root, what)
    _check_key(cfg, root)
    spec = SiteSpec(
        layers,
        [Hookpoint.parse(text) for text in meta.get("hookpoints_in") or []],
        [Hookpoint.parse(text) for text in meta["hookpoints_out"]] if meta.get("hookpoints_out") else None,
        None,
    )
    expected = check_sites(cfg) if model.id and spec.inputs else None
    if expected is not None and [str(x) for x in expected.inputs] != [str(x) for x in spec.inputs]:
        raise _contradiction(
            f"model.id={model.id} harvest.site={h.site} (hookpoints {[str(x) for x in expected.inputs]})",
            root,
            f"hookpoints {[str(x) for x in spec.inputs]}",
        )
    return spec


def _check_key(cfg: TrainConfig, root: object) -> None:
    """``output.key``'s model, site and layer must describe the harvested data."""
    from scope_hub.keys import parse_key

    if not cfg.output.key:
        return
    try:
        key = parse_key(cfg.output.key)
    except KeyParseError:
        return  # the push reports a malformed key with its own message
    h = cfg.harvest
    sites = {h.site, "mlp"} if not kind(cfg.dictionary.type).reconstructs_input else {h.site}
    if cfg.model.id and not Path(cfg.model.id).exists() and key.model != cfg.model.id:  # a folder: any name
        raise _contradiction(f"output.key={cfg.output.key}", root, f"activations of {cfg.model.id}")
    if key.site not in sites:
        raise _contradiction(f"output.key={cfg.output.key}", root, f"site {h.site}")
    layers = h.layers if kind(cfg.dictionary.type).per_layer_decoders else [h.layer]
    if isinstance(key.layer, int) and layers and layers != [None] and [key.layer] != list(layers):
        raise _contradiction(f"output.key={cfg.output.key}", root, f"layers {list(layers)}")


def check_harvest_folder(cfg: TrainConfig) -> None:
    """Without ``model.id`` a run can only read a finished harvest; say what the folder holds instead."""
    root = cfg.harvest.cache_dir
    if cfg.model.id or not root:
        return
    folder = Path(root)
    meta = read_meta(folder)
    if not folder.is_dir():
        problem = "does not exist"
    elif meta is None:
        problem = "is empty (no harvest in it)" if not any(folder.iterdir()) else f"holds no harvest (no {META_FILE})"
    elif not meta.get("complete"):
        problem = f"holds an unfinished harvest ({len(meta.get('shards', []))} shard(s) so far)"
    else:
        return
    raise ConfigError(
        f"no data: harvest.cache_dir={root} {problem}; harvest into it first (set model.id and data, e.g. "
        "data.corpus=stdlib-docstrings, optionally with --harvest-only), or point harvest.cache_dir at a "
        "finished harvest"
    )
