"""Refusal analysis: direction, the features that align with it and carry it, and interventions.

The pipeline (:func:`analyze_refusal`), after Arditi et al. 2024 ("Refusal in language
models is mediated by a single direction"):

1. **direction**: difference of mean residuals, harmful minus harmless training prompts,
   at the answer position of every layer boundary (:mod:`scope_hub.analysis.direction`);
2. **layer choice**: for each candidate layer, the refusal score's change on harmful prompts
   when its direction is ablated everywhere, and on harmless prompts when it is added at
   that layer; the chosen layer maximises ``addition - ablation`` (most causal both ways);
3. **features** (with a dictionary): decoder cosine with the direction, activation x
   gradient of the refusal score on harmful prompts (spliced with the error term), and the
   measured score change when each candidate feature is ablated;
4. **held-out effect**: refusal score (and, with ``generate_tokens``, string-matched refusal
   rate of greedy answers) on held-out harmful and harmless prompts, plain and under each
   intervention: direction ablated / added, top features ablated / steered.

Example:
    >>> from scope_hub.testing.tiny_models import tiny_llama
    >>> from tests.analysis.helpers import chat_tokenizer
    >>> report = analyze_refusal(tiny_llama(), chat_tokenizer(), harmful=["Bomb?", "Poison?"],
    ...     harmless=["Cake?", "Tea?"], heldout_harmful=["Gun?"], heldout_harmless=["Pie?"],
    ...     score=RefusalScore(refusal=("No",), compliance=("Ok",)), layers=[1, 2])
    >>> report.layer in (1, 2), [r.name for r in report.interventions]
    (True, ['baseline', 'ablate direction', 'add direction'])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scope_hub.analysis.attribution import (
    ablation_effects,
    decoder_alignment,
    feature_attribution,
)
from scope_hub.analysis.chat import ChatBatch, Conversation
from scope_hub.analysis.direction import (
    MeanDifference,
    ablate_direction,
    add_direction,
    batches,
    mean_difference,
)
from scope_hub.analysis.prompts import load_prompts
from scope_hub.analysis.scores import (
    REFUSAL_MARKERS,
    RefusalScore,
    generate_answers,
    refusal_rate,
)
from scope_hub.analysis.tables import markdown_table
from scope_hub.errors import ConfigError
from scope_hub.scoped_model import ScopedModel

__all__ = [
    "LayerEffect",
    "RefusalFeature",
    "RefusalReport",
    "SteeringResult",
    "analyze_refusal",
    "direction_effects",
    "measure_interventions",
    "refusal_features",
    "refusal_scores",
]

Intervention = Callable[[], Any]
"""A zero-argument factory of a context manager (a fresh one per use)."""


@torch.no_grad()
def refusal_scores(
    model: Any, tokenizer: Any, prompts: Sequence[Conversation], score: RefusalScore, batch_size: int = 16
) -> torch.Tensor:
    """[len(prompts)] refusal scores, batched."""
    return torch.cat(
        [score(model, tokenizer, batch).float().cpu() for batch in batches(tokenizer, prompts, batch_size)]
    )


@dataclass
class LayerEffect:
    """What one layer's direction does to the refusal score (mean change)."""

    layer: int
    norm: float
    ablation_delta: float
    """On harmful prompts, with the direction projected out everywhere (negative = less refusal)."""
    addition_delta: float
    """On harmless prompts, with the direction added at this layer (positive = more refusal)."""


def direction_effects(
    model: Any,
    tokenizer: Any,
    diff: MeanDifference,
    harmful: Sequence[Conversation],
    harmless: Sequence[Conversation],
    *,
    layers: Sequence[int],
    score: RefusalScore,
    alpha: float = 1.0,
    batch_size: int = 16,
) -> list[LayerEffect]:
    """Ablation and addition effect of each candidate layer's direction."""
    base_harmful = refusal_scores(model, tokenizer, harmful, score, batch_size).mean()
    base_harmless = refusal_scores(model, tokenizer, harmless, score, batch_size).mean()
    n_layers = diff.directions.shape[0] - 1
    if any(not 0 <= layer < n_layers for layer in layers):
        raise ConfigError(
            f"candidate layers must lie in 0..{n_layers - 1} (a direction is added at resid_pre of the layer)"
        )
    effects = []
    for layer in layers:
        with ablate_direction(model, diff.directions[layer]):
            ablated = refusal_scores(model, tokenizer, harmful, score, batch_size).mean()
        with add_direction(model, diff.directions[layer], layer, alpha):
            added = refusal_scores(model, tokenizer, harmless, score, batch_size).mean()
        effects.append(
            LayerEffect(layer, float(diff.norms[layer]), float(ablated - base_harmful), float(added - base_harmless))
        )
    return effects


@dataclass
class RefusalFeature:
    """One candidate feature: how it aligns with the direction and carries the score."""

    feature: int
    cosine: float
    """Decoder row vs refusal direction."""
    attribution: float
    """Activation x gradient of the score, summed over positions, mean over harmful prompts."""
    ablation_delta: float
    """Measured mean score change on harmful prompts when the feature is zeroed."""


def refusal_features(
    scoped: ScopedModel,
    name: str,
    tokenizer: Any,
    harmful: Sequence[Conversation],
    direction: torch.Tensor,
    *,
    score: RefusalScore,
    top_k: int = 10,
    positions: Sequence[str] | None = None,
) -> list[RefusalFeature]:
    """Candidates = top ``top_k`` by decoder cosine and by attribution; each measured by ablation.

    ``positions``: roles whose positions count for attribution (default: every real token).
    Sorted by attribution, highest first.
    """
    batch = _one_batch(tokenizer, harmful)
    metric = _score_metric(score, tokenizer)
    result = feature_attribution(scoped, name, batch, metric)
    totals = result.totals(batch.role_mask(*positions) if positions else None)
    aligned = decoder_alignment(scoped.dictionaries[name], direction, top_k)
    cosine = dict(aligned)
    candidates = list(dict.fromkeys([f for f, _ in aligned] + totals.topk(min(top_k, len(totals))).indices.tolist()))
    _, deltas = ablation_effects(scoped, name, candidates, batch, metric)
    all_cos = _cosines(scoped, name, direction)
    rows = [
        RefusalFeature(f, cosine.get(f, float(all_cos[f])), float(totals[f]), d) for f, d in zip(candidates, deltas)
    ]
    return sorted(rows, key=lambda r: -r.attribution)


def _cosines(scoped: ScopedModel, name: str, direction: torch.Tensor) -> torch.Tensor:
    w = scoped.dictionaries[name].w_dec.detach().float()
    return torch.nn.functional.cosine_similarity(w, direction.float().to(w.device)[None], dim=-1)


def _score_metric(score: RefusalScore, tokenizer: Any) -> Callable[[ScopedModel, ChatBatch], torch.Tensor]:
    return lambda scoped, batch: score(scoped, tokenizer, batch)


def _one_batch(tokenizer: Any, prompts: Sequence[Conversation]) -> ChatBatch:
    return next(batches(tokenizer, prompts, batch_size=len(prompts)))


def _carriers(features: list[RefusalFeature], top: int = 3) -> list[int]:
    # Features whose ablation lowers the score by at least a quarter of the strongest one's effect.
    strongest = min(f.ablation_delta for f in features)
    if strongest >= 0:
        return [features[0].feature]
    ranked = sorted((f for f in features if f.ablation_delta <= 0.25 * strongest), key=lambda f: f.ablation_delta)
    return [f.feature for f in ranked[:top]]


@dataclass
class SteeringResult:
    """Held-out refusal under one intervention."""

    name: str
    harmful_score: float
    harmless_score: float
    harmful_rate: float | None = None
    harmless_rate: float | None = None
    examples: list[str] = field(default_factory=list)
    """First greedy answers to held-out harmful prompts (when generating)."""


def measure_interventions(
    model: Any,
    tokenizer: Any,
    harmful: Sequence[Conversation],
    harmless: Sequence[Conversation],
    interventions: dict[str, Intervention],
    *,
    score: RefusalScore,
    generate_tokens: int = 0,
    batch_size: int = 16,
    markers: Sequence[str] = REFUSAL_MARKERS,
) -> list[SteeringResult]:
    """Refusal score (and rate, when ``generate_tokens`` > 0) on held-out prompts per intervention.

    The rate counts greedy answers containing one of ``markers`` (see :func:`~scope_hub.analysis.scores.is_refusal`).
    """
    results = []
    for label, make in {"baseline": contextlib.nullcontext, **interventions}.items():
        with make():
            result = SteeringResult(
                label,
                float(refusal_scores(model, tokenizer, harmful, score, batch_size).mean()),
                float(refusal_scores(model, tokenizer, harmless, score, batch_size).mean()),
            )
            if generate_tokens > 0:
                answers_h = _answers(model, tokenizer, harmful, generate_tokens, batch_size)
                answers_l = _answers(model, tokenizer, harmless, generate_tokens, batch_size)
                result.harmful_rate = refusal_rate(answers_h, markers)
                result.harmless_rate = refusal_rate(answers_l, markers)
                result.examples = answers_h[:3]
        results.append(result)
    return results


def _answers(model: Any, tokenizer: Any, prompts: Sequence[Conversation], tokens: int, batch_size: int) -> list[str]:
    return [a for b in batches(tokenizer, prompts, batch_size) for a in generate_answers(model, tokenizer, b, tokens)]


@dataclass
class RefusalReport:
    """Everything :func:`analyze_refusal` measured."""

    diff: MeanDifference
    effects: list[LayerEffect]
    layer: int
    features: list[RefusalFeature]
    interventions: list[SteeringResult]
    model_name: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    """Prompts per set: harmful, harmless, heldout_harmful, heldout_harmless."""
    score_mode: str = ""

    @property
    def direction(self) -> torch.Tensor:
        """The chosen layer's (unnormalised) refusal direction."""
        return self.diff.directions[self.layer]

    def to_markdown(self) -> str:
        """The report as Markdown: a header (model, prompt counts, score mode), then tables.

        Refusal rates read "n/a" unless greedy answers were generated (``generate_tokens``).
        """
        n = self.counts
        parts = [
            f"# Refusal report: {self.model_name or 'model'}",
            "",
            f"Prompts: {n.get('harmful', '?')} harmful / {n.get('harmless', '?')} harmless (direction), "
            f"{n.get('heldout_harmful', '?')} / {n.get('heldout_harmless', '?')} held out. "
            f"Score: {self.score_mode or '?'} (refusal-opener minus compliance-opener log-prob at the answer; "
            f"higher = more refusal). Candidate layers: {', '.join(str(e.layer) for e in self.effects)}.\n",
            "## Refusal direction by layer",
            markdown_table(
                ["layer", "norm", "ablate: Δscore harmful", "add: Δscore harmless"],
                [[e.layer, e.norm, e.ablation_delta, e.addition_delta] for e in self.effects],
            ),
            f"\nChosen layer: {self.layer}",
        ]
        if self.features:
            parts += [
                "\n## Features",
                markdown_table(
                    ["feature", "decoder cos", "attribution", "ablate: Δscore"],
                    [[f.feature, f.cosine, f.attribution, f.ablation_delta] for f in self.features],
                ),
            ]
        parts += [
            "\n## Held-out interventions",
            markdown_table(
                ["intervention", "score harmful", "score harmless", "refusal rate harmful", "refusal rate harmless"],
                [
                    [r.name, r.harmful_score, r.harmless_score, _rate(r.harmful_rate), _rate(r.harmless_rate)]
                    for r in self.interventions
                ],
            ),
        ]
        return "\n".join(parts)


def _rate(rate: float | None) -> float | str:
    return NO_RATE if rate is None else rate


NO_RATE = "n/a (run with --generate N)"
"""Refusal-rate cell when no answers were generated (Python: ``generate_tokens=N``)."""


def analyze_refusal(
    model: Any,
    tokenizer: Any,
    *,
    harmful: Sequence[Conversation] | None = None,
    harmless: Sequence[Conversation] | None = None,
    heldout_harmful: Sequence[Conversation] | None = None,
    heldout_harmless: Sequence[Conversation] | None = None,
    dictionary: str | None = None,
    layers: Sequence[int] | None = None,
    score: RefusalScore | None = None,
    top_k: int = 10,
    steer_alpha: float | None = None,
    alpha: float = 1.0,
    generate_tokens: int = 0,
    batch_size: int = 16,
    markers: Sequence[str] = REFUSAL_MARKERS,
    model_name: str | None = None,
) -> RefusalReport:
    """Run the whole refusal pipeline; prompt sets default to the shipped ones.

    ``dictionary``: name of a dictionary attached to ``model`` (a ScopedModel) for the feature
    steps; ``layers``: candidate layers (default: every layer up to 80% depth, as in Arditi
    et al.); ``steer_alpha``: also steer the top feature by this amount on held-out prompts;
    ``model_name``: for the report header (default: the model config's ``name_or_path``).
    Harmful and harmless sets are averaged separately, so their sizes may differ (the shipped
    sets are matched line by line in form only so that the difference isolates harmfulness).
    """
    score = score or RefusalScore()
    given = {
        "harmful": harmful,
        "harmless": harmless,
        "heldout_harmful": heldout_harmful,
        "heldout_harmless": heldout_harmless,
    }
    empty = [name for name, prompts in given.items() if prompts is not None and len(prompts) == 0]
    if empty:  # an empty set is a mistake upstream (a filter that kept nothing), not a request for the defaults
        raise ConfigError(f"{', '.join(empty)}: no prompts; pass some, or None for the shipped set")
    harmful = list(harmful if harmful is not None else load_prompts("harmful_train"))
    harmless = list(harmless if harmless is not None else load_prompts("harmless_train"))
    heldout_harmful = list(heldout_harmful if heldout_harmful is not None else load_prompts("harmful_test"))
    heldout_harmless = list(heldout_harmless if heldout_harmless is not None else load_prompts("harmless_test"))
    diff = mean_difference(model, tokenizer, harmful, harmless, batch_size=batch_size)
    candidates = list(layers) if layers is not None else list(range(1, int(0.8 * (diff.directions.shape[0] - 1)) + 1))
    effects = direction_effects(
        model, tokenizer, diff, harmful, harmless, layers=candidates, score=score, alpha=alpha, batch_size=batch_size
    )
    layer = max(effects, key=lambda e: e.addition_delta - e.ablation_delta).layer
    direction = diff.directions[layer]
    interventions: dict[str, Intervention] = {
        "ablate direction": lambda: ablate_direction(model, direction),
        "add direction": lambda: add_direction(model, direction, layer, alpha),
    }
    features: list[RefusalFeature] = []
    if dictionary is not None:
        if not isinstance(model, ScopedModel):
            raise ConfigError("pass a ScopedModel with the dictionary attached to analyse features")
        features = refusal_features(model, dictionary, tokenizer, harmful, direction, score=score, top_k=top_k)
        carriers = _carriers(features)
        interventions[f"ablate features {carriers}"] = lambda: model.ablate(dictionary, carriers)
        if steer_alpha is not None:
            top = features[0].feature
            interventions[f"steer feature {top} by {steer_alpha:g}"] = lambda: model.steer(dictionary, top, steer_alpha)
    results = measure_interventions(
        model,
        tokenizer,
        heldout_harmful,
        heldout_harmless,
        interventions,
        score=score,
        generate_tokens=generate_tokens,
        batch_size=batch_size,
        markers=markers,
    )
    counts = {
        "harmful": len(harmful),
        "harmless": len(harmless),
        "heldout_harmful": len(heldout_harmful),
        "heldout_harmless": len(heldout_harmless),
    }
    name = model_name if model_name is not None else _model_name(model)
    return RefusalReport(diff, effects, layer, features, results, name, counts, score.mode)


def _model_name(model: Any) -> str:
    inner = model.model if isinstance(model, ScopedModel) else model
    return str(getattr(getattr(inner, "config", None), "name_or_path", "") or type(inner).__name__)
