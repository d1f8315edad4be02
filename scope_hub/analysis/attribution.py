"""Which dictionary features align with a direction, and which carry a metric.

* :func:`decoder_alignment`: cosine between every decoder row and a direction;
* :func:`feature_attribution`: activation x gradient of a metric with respect to each
  feature at each position. The dictionary is spliced in **with its error term**, so the
  forward is numerically the bare model's while gradients flow through the features
  (linear attribution: the first-order change of the metric if that feature were zeroed);
* :func:`ablation_effects`: the metric's actual change when a feature is zeroed (its decoder
  contribution removed, error term kept), one forward per feature.

Only single-site dictionaries (SAE, transcoder, skip transcoder) are supported: a CLT's or
crosscoder's features span several layers.

Example:
    >>> import torch
    >>> from scope_hub.analysis.chat import render_chat
    >>> from scope_hub.scoped_model import ScopedModel
    >>> from scope_hub.testing.tiny_models import tiny_llama
    >>> from tests.analysis.helpers import chat_tokenizer
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> sae = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=32, site="resid_post", layer=1))
    >>> sm = ScopedModel.from_pretrained(tiny_llama(), dictionaries={"sae": sae})
    >>> batch = render_chat(chat_tokenizer(), ["Hi?"])
    >>> answer_logit = lambda out: out.logits[:, -1, 65]
    >>> result = feature_attribution(sm, "sae", batch, lambda sm_, b: answer_logit(sm_(**b.model_inputs())))
    >>> result.scores.shape, result.attribution.shape
    (torch.Size([1]), torch.Size([1, 31, 32]))
    >>> decoder_alignment(sae, sae.w_dec[3].detach(), top_k=1)[0][0]
    3
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scope_hub.analysis.chat import ChatBatch
from scope_hub.dictionaries import Crosscoder, CrossLayerTranscoder, Dictionary
from scope_hub.errors import ConfigError
from scope_hub.hooks import hook
from scope_hub.scoped_model import ModeContext, ScopedModel

__all__ = [
    "Attribution",
    "Metric",
    "ablate_at",
    "ablation_effects",
    "decoder_alignment",
    "decoder_directions",
    "dictionary_hookpoints",
    "feature_attribution",
    "output_hookpoint",
    "spliced_capture",
]

Metric = Callable[[ScopedModel, ChatBatch], torch.Tensor]
"""Runs the scoped model on a batch and returns one differentiable value per row.

The prompt forward must be the first forward it runs (features are read from it)."""


def decoder_directions(dictionary: Dictionary) -> torch.Tensor:
    """[d_sae, d_out] what each feature adds to its output site per unit of activation."""
    if isinstance(dictionary, (CrossLayerTranscoder, Crosscoder)):
        raise ConfigError(f"{type(dictionary).__name__} features span several layers; use an SAE or (skip) transcoder")
    norm = dictionary.config.normalization
    scale = norm.scale_out if norm.kind == "constant_scale" else 1.0
    return dictionary.w_dec.detach().float() / scale


def decoder_alignment(dictionary: Dictionary, direction: torch.Tensor, top_k: int = 10) -> list[tuple[int, float]]:
    """The ``top_k`` features whose decoder row has the highest cosine with ``direction``.

    Returns ``(feature, cosine)`` pairs, highest first. Use ``-direction`` for the most
    anti-aligned ones.
    """
    w = decoder_directions(dictionary)
    if direction.shape != (w.shape[1],):
        raise ConfigError(f"direction has shape {tuple(direction.shape)}; the decoder writes width {w.shape[1]}")
    cos = torch.nn.functional.cosine_similarity(w, direction.float().to(w.device)[None], dim=-1)
    values, index = cos.topk(min(top_k, len(cos)))
    return [(int(i), float(v)) for i, v in zip(index, values)]


def spliced_capture(scoped: ScopedModel, name: str, cache: dict[str, Any]) -> ModeContext:
    """A mode splicing ``name`` with its error term and recording its live features in ``cache``.

    The recorded tensor is the one the forward decodes (not a detached copy), so gradients
    of anything downstream can be taken with respect to it.
    """
    _single_site(scoped, name)
    return scoped.capture(name, into=cache)


@dataclass
class Attribution:
    """Per-position, per-feature attribution of a metric."""

    attribution: torch.Tensor
    """[batch, seq, d_sae] activation x gradient (zero at padding)."""
    activations: torch.Tensor
    """[batch, seq, d_sae] feature activations (zero at padding)."""
    scores: torch.Tensor
    """[batch] the metric's values."""

    def totals(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[d_sae] attribution summed over positions (``mask`` [batch, seq] picks them), mean over rows."""
        attr = self.attribution if mask is None else self.attribution * mask[..., None].to(self.attribution.dtype)
        return attr.sum(1).mean(0)


def feature_attribution(scoped: ScopedModel, name: str, batch: ChatBatch, metric: Metric) -> Attribution:
    """Activation x gradient of ``metric`` for every feature of dictionary ``name`` at every position."""
    _single_site(scoped, name)
    cache = _KeepFirst()  # later forwards (e.g. opener continuations) must not replace the prompt's features
    with torch.enable_grad(), spliced_capture(scoped, name, cache):
        scores = metric(scoped, batch)
        features = cache.get(name)
        if features is None:
            raise ConfigError("the metric ran no forward of the scoped model")
        if not features.requires_grad:
            raise ConfigError("features carry no gradient: is the model in torch.inference_mode()?")
        (grad,) = torch.autograd.grad(scores.sum(), features, allow_unused=True)
    grad = torch.zeros_like(features) if grad is None else grad
    mask = batch.attention_mask[..., None].to(features.dtype)
    acts = features.detach() * mask
    return Attribution(acts * grad.detach(), acts, scores.detach())


class _KeepFirst(dict):
    """A capture dict that keeps the first value written under each name."""

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self:
            super().__setitem__(key, value)


@torch.no_grad()
def ablation_effects(
    scoped: ScopedModel, name: str, features: Sequence[int], batch: ChatBatch, metric: Metric
) -> tuple[float, list[float]]:
    """Baseline mean metric, and its mean change when each of ``features`` is ablated alone."""
    _single_site(scoped, name)
    baseline = float(metric(scoped, batch).mean())
    effects = []
    for feature in features:
        with scoped.ablate(name, int(feature)):
            effects.append(float(metric(scoped, batch).mean()) - baseline)
    return baseline, effects


def dictionary_hookpoints(scoped: ScopedModel, name: str) -> tuple[str, str]:
    """``(reads, writes)``: the hookpoints single-site dictionary ``name`` is attached at."""
    _single_site(scoped, name)
    # The hookpoints ScopedModel resolved keep analyses on exactly the sites the modes hook.
    reads, writes = scoped.hookpoints(name)
    return reads[0], writes[0]


def output_hookpoint(scoped: ScopedModel, name: str) -> str:
    """Where single-site dictionary ``name`` writes (``model.layers.6.output`` ...)."""
    return dictionary_hookpoints(scoped, name)[1]


@contextlib.contextmanager
def ablate_at(scoped: ScopedModel, name: str, activations: torch.Tensor, selected: torch.Tensor) -> Iterator[None]:
    """Zero chosen features at chosen positions only (error term kept), for inputs of this exact shape.

    ``activations`` [batch, seq, d_sae] are the features of the run being edited (e.g.
    :attr:`Attribution.activations`) and ``selected`` a same-shaped bool mask of the
    (row, position, feature) entries to remove. A feature's value at a position does not
    depend on edits at that same site, so subtracting their decoder contributions is exact.
    """
    removed = (activations * selected.to(activations.dtype)) @ decoder_directions(scoped.dictionaries[name])
    hookpoint = output_hookpoint(scoped, name)

    def subtract(act: torch.Tensor) -> torch.Tensor:
        if act.shape != removed.shape:  # e.g. a later generation step: leave it alone
            return act
        return act - removed.to(act.device, act.dtype)

    with hook(scoped.model, hookpoint, subtract):
        yield


def _single_site(scoped: ScopedModel, name: str) -> Dictionary:
    dictionary = scoped.dictionaries.get(name)
    if dictionary is None:
        raise ConfigError(f"no dictionary named {name!r} is attached; attached: {sorted(scoped.dictionaries)}")
    decoder_directions(dictionary)  # raises for multi-layer kinds
    return dictionary
