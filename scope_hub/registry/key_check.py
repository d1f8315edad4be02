"""Does a registry key agree with the config.json pushed under it?

Loading a key hooks whatever its config.json says, so a key that contradicts its config
(``layer_6`` on a layer-12 dictionary) would publish a dictionary under a false name.
:func:`check_key_matches` refuses such a push, naming each field, both values and the key the
config implies. What counts as agreeing:

* model: compared only when config.json names a Hub-style id, not a local model folder
  (a dictionary trained on a local copy is published under the Hub id of its model);
* site: equal, or key site ``mlp`` for a dictionary reading ``mlp_in`` and writing ``mlp_out``
  (transcoders and CLTs, as Gemma Scope 2's ``transcoder/`` and ``clt/`` folders are keyed);
* layer: an integer matches ``layer`` (or a one-element ``layers``), ``5-9-12`` matches
  ``layers`` [5, 9, 12], ``all`` matches any ``layers`` (a CLT over every layer of its model);
* width: the published ``width_label``, the exact ``d_sae``, or Gemma Scope's label for it:
  thousands (``k``) or millions (``m``), truncated (16384 -> ``16k``, 262144 -> ``262k``);
* type: equal. The variant is a free label and is not compared.

Fields config.json leaves empty (a bare ``{"type": "sae", ...}``) are not compared.

Example:
    >>> from scope_hub.keys import parse_key
    >>> config = DictionaryConfig(type="sae", architecture="relu", d_in=4, d_sae=16384,
    ...                           model="google/gemma-3-270m", site="resid_post", layer=12)
    >>> key = parse_key("google/gemma-3-270m:resid_post/layer_6/width_16k/sae")
    >>> key_mismatches(config, key)
    ['layer: the key says 6, config.json says 12']
    >>> str(matching_key(config, key))
    'google/gemma-3-270m:resid_post/layer_12/width_16k/sae'
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from scope_hub.errors import ConfigError, KeyParseError
from scope_hub.keys import DictionaryKey, width_label
from scope_hub.kinds import kind
from scope_hub.metadata import DictionaryConfig

MLP_SITE = "mlp"
"""Key site of a dictionary reading ``mlp_in`` and writing ``mlp_out``."""


def width_matches(label: str, d_sae: int) -> bool:
    """Whether width label ``label`` (``16k``, ``1m``, ``3000``) names ``d_sae`` latents.

    Example:
        >>> width_matches("16k", 16384), width_matches("16384", 16384), width_matches("1k", 16384)
        (True, True, False)
    """
    if label.isdigit():
        return int(label) == d_sae
    unit = {"k": 1000, "m": 1_000_000}.get(label[-1:])
    return unit is not None and label[:-1].isdigit() and int(label[:-1]) == d_sae // unit


def _local_model(model: str) -> bool:
    """A local model folder rather than a Hub id (``/data/gemma``, ``./model``, an existing folder)."""
    return (
        model.startswith(("/", ".", "~"))
        or "\\" in model
        or ":" in model
        or model.count("/") > 1
        or Path(model).expanduser().is_dir()
    )


def _site_of(config: DictionaryConfig) -> str | None:
    """The key site config.json implies (None: it names none)."""
    if config.site is None:
        return None
    if not kind(config.type).reconstructs_input and (config.site, config.site_out) == ("mlp_in", "mlp_out"):
        return MLP_SITE
    return config.site


def _site_matches(site: str, config: DictionaryConfig) -> bool:
    return config.site is None or site == config.site or (site == MLP_SITE and _site_of(config) == MLP_SITE)


def _layer_of(config: DictionaryConfig) -> str | None:
    if config.layers:
        return "-".join(map(str, config.layers))
    return None if config.layer is None else str(config.layer)


def _layer_matches(key: DictionaryKey, config: DictionaryConfig) -> bool:
    if config.layers:
        return key.layer == "all" or key.layers == list(config.layers)
    return config.layer is None or key.layers == [config.layer]


def key_mismatches(config: DictionaryConfig, key: DictionaryKey) -> list[str]:
    """One ``'field: the key says X, config.json says Y'`` per field where ``key`` contradicts ``config``."""
    found = []
    if config.model and not _local_model(config.model) and key.model != config.model:
        found.append(f"model: the key says {key.model}, config.json says {config.model}")
    if not _site_matches(key.site, config):
        shown = config.site if config.site_out in (None, config.site) else f"{config.site} -> {config.site_out}"
        found.append(f"site: the key says {key.site}, config.json says {shown}")
    if not _layer_matches(key, config):
        found.append(f"layer: the key says {key.layer}, config.json says {_layer_of(config)}")
    if key.width != config.width_label and not width_matches(key.width, config.d_sae):
        label = config.width_label or width_label(config.d_sae)
        found.append(f"width: the key says {key.width}, config.json says d_sae {config.d_sae} (width_{label})")
    if key.type != config.type:
        found.append(f"type: the key says {key.type}, config.json says {config.type}")
    return found


def matching_key(config: DictionaryConfig, key: DictionaryKey) -> DictionaryKey:
    """``key`` with every field config.json contradicts replaced by what config.json says."""
    model = config.model if config.model and not _local_model(config.model) else key.model
    # A mismatch implies config.json names the field (a missing field matches any key), so the
    # config's value is never None where it replaces the key's.
    config_site, config_layer = _site_of(config), _layer_of(config)
    site = config_site if config_site is not None and not _site_matches(key.site, config) else key.site
    layer = config_layer if config_layer is not None and not _layer_matches(key, config) else key.layer
    width = key.width
    if key.width != config.width_label and not width_matches(key.width, config.d_sae):
        width = config.width_label or width_label(config.d_sae)
    return replace(key, model=model, site=site, layer=layer, width=width, type=config.type, ref=None)


def check_key_matches(config: DictionaryConfig, key: DictionaryKey, where: str) -> None:
    """Raise :class:`ConfigError` if ``key`` contradicts ``config`` (read from ``where``)."""
    problems = key_mismatches(config, key)
    if not problems:
        return
    try:
        fix = f"push it as {matching_key(config, key)} (fix the key)"
    except KeyParseError:  # config.json's model is no valid key model
        fix = "fix the key"
    raise ConfigError(
        f"key {key.unpinned()} does not match {where}: {'; '.join(problems)}; {fix}, "
        "or edit config.json if the key is right"
    )
