"""Base vs instruction-tuned: one dictionary, two models, which features shift.

The same dictionary is attached to two models of one architecture (e.g. Gemma 3 270M and
270M-IT) and run over the same texts. Per feature: firing frequency (fraction of tokens
where it is active) and mean activation when active, in each model; features are ranked
by ``|log2(freq_b / freq_a)|`` (smoothed by one token) and by ``|log2(mean_b / mean_a)|``
among features active on at least ``min_frequency`` of tokens in both models (a mean over a
handful of activations is noise). The
reconstruction quality of the dictionary on each model is its FVU (fraction of variance
unexplained) at its own site: ``sum |target - recon|^2 / sum |target - mean(target)|^2`` over
real tokens — the usual test of whether a base-model dictionary transfers to the IT model.

Example:
    >>> from scope_hub.testing.tiny_models import tiny_llama
    >>> from tests.analysis.helpers import chat_tokenizer
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> sae = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=16, site="resid_post", layer=1))
    >>> report = compare_models(tiny_llama(0), tiny_llama(0), sae, chat_tokenizer(), ["Some text here."], window=8)
    >>> report.fvu_a == report.fvu_b, report.by_frequency[0].log2_freq_ratio
    (True, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scope_hub.analysis.activations import iter_window_features, text_windows
from scope_hub.analysis.attribution import dictionary_hookpoints
from scope_hub.analysis.tables import markdown_table
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ConfigError
from scope_hub.hooks import capture
from scope_hub.scoped_model import ScopedModel

__all__ = ["FeatureDiff", "FeatureStats", "ModelDiffReport", "compare_models", "feature_stats"]

_NAME = "dictionary"


@dataclass
class FeatureStats:
    """Per-feature statistics of one dictionary on one model over a corpus."""

    frequency: torch.Tensor
    """[d_sae] fraction of real tokens where the feature is active."""
    mean_active: torch.Tensor
    """[d_sae] mean activation over the tokens where it is active (0 if never)."""
    fvu: float
    """Fraction of variance unexplained at the dictionary's output site."""
    n_tokens: int


@torch.no_grad()
def feature_stats(
    scoped: ScopedModel, name: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 16
) -> FeatureStats:
    """Frequency, magnitude and FVU of attached dictionary ``name`` over token windows."""
    dictionary = scoped.dictionaries[name]
    points = list(dictionary_hookpoints(scoped, name))
    count = total = target_sum = None
    sq_error = sq_target = 0.0
    n = 0
    with capture(scoped.model, points) as acts:
        for rows, feats in iter_window_features(scoped, name, input_ids, attention_mask, batch_size):
            real = attention_mask[rows].bool()
            f = feats[real]
            x, target = acts[points[0]][real].float(), acts[points[1]][real].float()
            count = _add(count, (f > 0).sum(0))
            total = _add(total, f.sum(0))
            target_sum = _add(target_sum, target.sum(0))
            sq_error += float(((target - dictionary(x).float()) ** 2).sum())
            sq_target += float((target**2).sum())
            n += len(f)
    if count is None or total is None or target_sum is None or n == 0:
        raise ConfigError("no real tokens in the given windows (every attention_mask entry is 0); pass some text")
    variance = sq_target - float((target_sum**2).sum()) / n  # sum over tokens of |target - mean|^2
    mean_active = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    return FeatureStats(count.float() / n, mean_active, sq_error / max(variance, 1e-12), n)


def _add(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total + value


@dataclass
class FeatureDiff:
    """One feature's shift from model A to model B."""

    feature: int
    freq_a: float
    freq_b: float
    mean_a: float
    """Mean activation when active, model A."""
    mean_b: float
    log2_freq_ratio: float
    """log2((freq_b + 1/n) / (freq_a + 1/n)); positive = fires more in B."""
    log2_magnitude_ratio: float
    """log2(mean_b / mean_a) for features active on >= min_frequency of tokens in both (0 otherwise)."""


@dataclass
class ModelDiffReport:
    """Features whose frequency or magnitude shift most, and FVU on both models."""

    fvu_a: float
    fvu_b: float
    n_tokens: int
    by_frequency: list[FeatureDiff]
    by_magnitude: list[FeatureDiff]

    def to_markdown(self, names: tuple[str, str] = ("A", "B")) -> str:
        a, b = names

        def table(rows: list[FeatureDiff]) -> str:
            return markdown_table(
                [
                    "feature",
                    f"freq {a}",
                    f"freq {b}",
                    f"mean {a}",
                    f"mean {b}",
                    "log2 freq ratio",
                    "log2 magnitude ratio",
                ],
                [
                    [r.feature, r.freq_a, r.freq_b, r.mean_a, r.mean_b, r.log2_freq_ratio, r.log2_magnitude_ratio]
                    for r in rows
                ],
                digits=4,
            )

        return "\n".join(
            [
                f"FVU on {a}: {self.fvu_a:.4f}; on {b}: {self.fvu_b:.4f} ({self.n_tokens} tokens each)",
                "\n## Largest frequency shifts",
                table(self.by_frequency),
                "\n## Largest magnitude shifts",
                table(self.by_magnitude),
            ]
        )


def compare_models(
    model_a: Any,
    model_b: Any,
    dictionary: Dictionary,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    window: int = 64,
    batch_size: int = 16,
    top_k: int = 10,
    min_frequency: float = 0.01,
) -> ModelDiffReport:
    """Run ``dictionary`` on both models over ``texts`` and rank the features that shift most.

    The models must share an architecture and tokenizer (a base model and its fine-tune).
    """
    config_a, config_b = getattr(model_a, "config", None), getattr(model_b, "config", None)
    if getattr(config_a, "hidden_size", None) != getattr(config_b, "hidden_size", None) or getattr(
        config_a, "model_type", None
    ) != getattr(config_b, "model_type", None):
        raise ConfigError("compare_models needs two models of one architecture (same model_type and hidden_size)")
    ids, mask = text_windows(tokenizer, texts, window)
    stats: list[FeatureStats] = []
    for model in (model_a, model_b):
        scoped = ScopedModel(model.model if isinstance(model, ScopedModel) else model)
        scoped.attach({_NAME: dictionary})
        try:
            stats.append(feature_stats(scoped, _NAME, ids, mask, batch_size))
        finally:
            scoped.detach()
    stats_a, stats_b = stats
    return _report(stats_a, stats_b, top_k, min_frequency)


def _report(a: FeatureStats, b: FeatureStats, top_k: int, min_frequency: float) -> ModelDiffReport:
    smooth = 1.0 / a.n_tokens
    freq_ratio = torch.log2((b.frequency + smooth) / (a.frequency + smooth))
    both = (a.frequency >= min_frequency) & (b.frequency >= min_frequency) & (a.mean_active > 0) & (b.mean_active > 0)
    mag_ratio = torch.where(
        both, torch.log2(b.mean_active.clamp_min(1e-12) / a.mean_active.clamp_min(1e-12)), torch.zeros_like(freq_ratio)
    )

    def rows(order: torch.Tensor) -> list[FeatureDiff]:
        return [
            FeatureDiff(
                int(f),
                float(a.frequency[f]),
                float(b.frequency[f]),
                float(a.mean_active[f]),
                float(b.mean_active[f]),
                _clean(freq_ratio[f]),
                _clean(mag_ratio[f]),
            )
            for f in order[:top_k]
        ]

    return ModelDiffReport(
        a.fvu,
        b.fvu,
        a.n_tokens,
        rows(freq_ratio.abs().argsort(descending=True, stable=True)),
        rows(mag_ratio.abs().argsort(descending=True, stable=True)),
    )


def _clean(value: torch.Tensor) -> float:
    v = float(value)
    return 0.0 if math.isclose(v, 0.0, abs_tol=1e-12) else v
