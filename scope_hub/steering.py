"""Steering strengths in units a researcher can reason about.

``ScopedModel.steer(name, feature, alpha, unit=...)`` adds ``amount`` to the feature's
activation, i.e. ``amount`` x its decoder row at the output site, where ``amount`` is

* ``unit="activation"`` (the default): ``alpha`` itself, in the units the feature's
  activations have (what ``run_with_cache`` reports);
* ``unit="max"``: ``alpha`` x the largest activation of the feature recorded on the
  dictionary's evaluation tokens (``alpha=2`` pushes it to twice anything seen);
* ``unit="mean"``: ``alpha`` x its mean activation when it fires (a typical firing);
* ``unit="norm"``: the amount whose decoder row has ``alpha`` x the mean L2 norm of the
  output site's activation (``alpha=0.5``: a vector half as long as the residual stream's
  typical norm; not for cross-layer transcoders, which write several sites).

The last three read :class:`~scope_hub.feature_stats.FeatureStats`, which training writes
beside the weights; without them only ``"activation"`` works, and the error says how to
record them.

Example:
    >>> import torch
    >>> from scope_hub.feature_stats import FeatureStats
    >>> stats = FeatureStats(max=torch.tensor([4.0, 8.0]), mean_active=torch.tensor([1.0, 2.0]),
    ...                      frequency=torch.tensor([0.1, 0.2]), tokens=100, site_norm=30.0)
    >>> w_dec = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # decoder rows: norms 5 and 1
    >>> steering_amounts("sae", w_dec, 1.0, stats, (0, 1), None, 2.0, "max")
    [8.0, 16.0]
    >>> steering_amounts("sae", w_dec, 1.0, stats, (0,), None, 0.5, "norm")
    [3.0]
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from scope_hub.attachment import FeatureEdit, normalize_positions
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ArgumentError, ConfigError, FeatureIndexError
from scope_hub.feature_stats import FILE, FeatureStats, FeatureStatsAccumulator
from scope_hub.kinds import kind

UNITS: tuple[str, ...] = ("activation", "max", "mean", "norm")
"""Accepted values of ``unit=``; the default is ``"activation"``."""


def steering_amounts(
    name: str,
    w_dec: torch.Tensor,
    scale_out: float,
    stats: FeatureStats | None,
    features: tuple[int, ...],
    layer: int | None,
    alpha: float,
    unit: str,
) -> list[float]:
    """The activation amount to add to each of ``features`` for ``alpha`` in ``unit`` (see the module docstring).

    ``w_dec``: the dictionary's decoder ``[d_sae, d_out]`` (used by ``"norm"``); ``scale_out``:
    the constant its outputs are divided by at the site (1 without normalization).
    """
    if unit not in UNITS:
        raise ConfigError(f"unit={unit!r}: use one of {', '.join(UNITS)} (default 'activation')")
    if unit == "activation":
        return [float(alpha)] * len(features)
    if stats is None:
        raise ConfigError(
            f"{name} has no feature statistics ({FILE} beside its weights), so unit={unit!r} has no scale; "
            "steer with unit='activation', or measure them: sm.measure_feature_stats(name, input_ids) "
            "(training records them automatically)"
        )
    if unit == "norm":
        if layer is not None or stats.site_norm is None:
            raise ConfigError(
                f"{name}: unit='norm' needs one output site and its recorded norm "
                f"({'a cross-layer transcoder writes several' if layer is not None else 'not in its statistics'}); "
                "use unit='max' or 'mean'"
            )
        norms = w_dec[list(features)].detach().float().norm(dim=-1) / scale_out
        return [float(alpha * stats.site_norm / n) if n > 0 else 0.0 for n in norms.tolist()]
    table = stats.max if unit == "max" else stats.mean_active
    row = table if layer is None else table[layer]
    values = [float(row[f]) for f in features]
    silent = [f for f, v in zip(features, values) if v <= 0]
    if silent:
        raise ConfigError(
            f"{name}: feature {silent[0]} never fired on the {stats.tokens} tokens its statistics were measured "
            f"on, so its {unit} activation is 0; steer it with unit='activation' or unit='norm'"
        )
    return [float(alpha) * v for v in values]


def feature_edits(
    name: str,
    dictionary: Dictionary,
    stats: FeatureStats | None,
    feature: Any,
    op: str,
    value: float,
    positions: Any,
    unit: str = "activation",
) -> tuple[FeatureEdit, ...]:
    """The edits of ``steer``/``clamp``/``ablate`` on ``feature`` (an int, ints, or ``(layer, ...)`` for a CLT),
    checked against the dictionary's width and layers; ``unit`` scales ``value`` per feature."""
    config = dictionary.config
    layer = None
    if kind(config.type).per_layer_decoders:
        if not (isinstance(feature, tuple) and len(feature) == 2):
            raise ArgumentError(
                f"{name} is a cross-layer transcoder: name features as (layer_index, feature or "
                f"features), e.g. (3, 17) for feature 17 of its 4th layer; got {feature!r}",
                argument="feature",
                value=feature,
            )
        layer, feature = feature
    feats: tuple[int, ...]
    try:
        feats = (operator.index(feature),)
    except TypeError:  # several features; each counts once
        try:
            feats = tuple(dict.fromkeys(operator.index(f) for f in feature))
        except TypeError:
            raise ArgumentError(
                f"{name}: features are integers (or a list of them), got {feature!r}", argument="feature", value=feature
            ) from None
    bad = [f for f in feats if not 0 <= f < config.d_sae]
    if bad or (layer is not None and not 0 <= layer < len(config.layers or ())):
        missing = f"layer index {layer} of {len(config.layers or ())}" if not bad else f"feature {bad[0]}"
        raise FeatureIndexError(
            f"{name} has no {missing}: features are 0..{config.d_sae - 1}"
            + ("" if layer is None else f", layer indices 0..{len(config.layers or ()) - 1}"),
            name=name,
            index=bad[0] if bad else layer,
            size=config.d_sae if bad else len(config.layers or ()),
        )
    where = normalize_positions(positions)
    if unit == "activation":
        return (FeatureEdit(features=feats, op=op, value=float(value), layer=layer, positions=where),)
    norm = config.normalization
    scale_out = norm.scale_out if norm.kind == "constant_scale" else 1.0
    amounts = steering_amounts(name, dictionary.w_dec, scale_out, stats, feats, layer, value, unit)
    return tuple(
        FeatureEdit(features=(f,), op=op, value=a, layer=layer, positions=where) for f, a in zip(feats, amounts)
    )


def stats_of(
    dictionary: Dictionary, features: torch.Tensor, site: torch.Tensor | None, attention_mask: torch.Tensor | None
) -> FeatureStats:
    """Statistics of ``features`` ``[batch, seq, (layers,) d_sae]`` over the unpadded tokens; ``site``: the output
    site's activations ``[batch, seq, d]`` of the same forward (None: no ``site_norm``)."""
    config = dictionary.config
    keep = torch.ones(features.shape[:2], dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    keep = keep.to(features.device)
    accumulator = FeatureStatsAccumulator(
        config.d_sae, len(config.layers or ()) if kind(config.type).per_layer_decoders else None
    )
    accumulator.add(features[keep], site=None if site is None else site[keep.to(site.device)])
    return accumulator.result()
