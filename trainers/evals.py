"""Evaluation of a finished dictionary: L0, FVU, dead/dense latents (per layer for CLTs), delta LM loss.

Metrics use the dictionary's *inference* path (``Dictionary.encode``/``forward``
in eval mode: BatchTopK with its learned threshold) on raw activations, so they
describe exactly what users load. Definitions:

* L0: mean number of nonzero features per token (CLTs: mean over layers);
* FVU: ``sum ||t - y||^2 / sum ||t - mean(t)||^2`` over tokens (CLTs: all layers
  pooled; per-layer values in ``per_layer``);
* dead fraction: latents never active on the evaluation tokens;
* dense fraction: latents active on more than 10% of them;
* delta LM loss: next-token cross-entropy with the dictionary's output spliced
  in at its hookpoint minus the clean loss (and the same with the exact error
  added back, which must be ~0: a check that the splice is right).

Example:
    >>> import torch
    >>> from scope_hub.dictionaries import SAE
    >>> from scope_hub.metadata import DictionaryConfig
    >>> sae = SAE(DictionaryConfig(type="sae", architecture="relu", d_in=4, d_sae=4))
    >>> with torch.no_grad():
    ...     _ = sae.w_enc.copy_(torch.eye(4)), sae.w_dec.copy_(torch.eye(4)), sae.b_enc.zero_(), sae.b_dec.zero_()
    >>> x = torch.rand(10, 1, 4)
    >>> m = evaluate(sae, [(x, x)])
    >>> round(m.fvu, 6), m.l0, m.dead_fraction
    (0.0, 4.0, 0.0)
    >>> torch.equal(sae.feature_stats.max, x.amax((0, 1)))  # per-feature statistics, for steering units
    True
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from scope_hub.dictionaries import Dictionary
from scope_hub.feature_stats import FeatureStatsAccumulator
from scope_hub.kinds import kind
from scope_hub.metadata import Metrics

DENSE_FRACTION = 0.1
"""A latent active on more than this fraction of tokens counts as dense."""


class _Accumulator:
    """Running sums for one layer's metrics (float64)."""

    def __init__(self, d_sae: int) -> None:
        self.tokens = 0
        self.active_total = 0.0
        self.active_per_latent = torch.zeros(d_sae, dtype=torch.float64)
        self.sq_error = 0.0
        self.sum_t: torch.Tensor | None = None
        self.sum_t2 = 0.0

    def add(self, f: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        active = f != 0
        self.tokens += f.shape[0]
        self.active_total += float(active.sum())
        self.active_per_latent += active.sum(0).double()
        t64 = t.double()
        self.sq_error += float((t64 - y.double()).pow(2).sum())
        self.sum_t = t64.sum(0) if self.sum_t is None else self.sum_t + t64.sum(0)
        self.sum_t2 += float(t64.pow(2).sum())

    def variance(self) -> float:
        return self.sum_t2 - float(self.sum_t.pow(2).sum()) / max(self.tokens, 1)

    def metrics(self) -> dict[str, float]:
        freq = self.active_per_latent / max(self.tokens, 1)
        return {
            "l0": self.active_total / max(self.tokens, 1),
            "fvu": self.sq_error / max(self.variance(), 1e-30),
            "dead_fraction": float((freq == 0).double().mean()),
            "dense_fraction": float((freq > DENSE_FRACTION).double().mean()),
        }


def _features_and_outputs(dictionary: Dictionary, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[b, L, d_sae]`` and outputs ``[b, L, d_out]`` for inputs ``[b, L, d_in]``."""
    if kind(dictionary.config.type).per_layer_decoders:
        f = dictionary.encode(x)
        return f, dictionary.forward(x)
    x0 = x[:, 0]
    f = dictionary.encode(x0)
    y = dictionary.decode(f)
    if hasattr(dictionary, "skip"):
        y = y + dictionary.skip(x0)
    return f.unsqueeze(1), y.unsqueeze(1)


class Evaluation:
    """Running L0/FVU/dead/dense of one dictionary, fed batch by batch (several dictionaries can share
    each harvested batch); :func:`evaluate` is the one-call form."""

    def __init__(self, dictionary: Dictionary, chunk: int = 1024) -> None:
        self.dictionary, self.chunk = dictionary, chunk
        self.accs: list[_Accumulator] | None = None
        self.stats: FeatureStatsAccumulator | None = None

    @torch.no_grad()
    def add(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Accumulate raw ``(x [b, L, d_in], target [b, L, d_out])``."""
        was_training = self.dictionary.training
        self.dictionary.eval()
        try:
            for lo in range(0, x.shape[0], self.chunk):
                xs, ts = x[lo : lo + self.chunk].float(), t[lo : lo + self.chunk].float()
                f, y = _features_and_outputs(self.dictionary, xs)
                self.accs = self.accs or [_Accumulator(self.dictionary.d_sae) for _ in range(f.shape[1])]
                for i, acc in enumerate(self.accs):
                    acc.add(f[:, i], y[:, i], ts[:, i])
                clt = kind(self.dictionary.config.type).per_layer_decoders
                self.stats = self.stats or FeatureStatsAccumulator(self.dictionary.d_sae, f.shape[1] if clt else None)
                self.stats.add(f if clt else f[:, 0], site=None if clt else ts[:, 0])
        finally:
            self.dictionary.train(was_training)

    def metrics(self) -> Metrics:
        """The metrics of everything added; the per-feature statistics go to ``dictionary.feature_stats``."""
        accs = self.accs
        if accs is None or self.stats is None:
            raise ValueError("evaluate() got no batches")
        self.dictionary.feature_stats = self.stats.result()
        per_layer = [acc.metrics() for acc in accs]
        total_error = sum(a.sq_error for a in accs)
        total_var = sum(a.variance() for a in accs)
        metrics = Metrics(
            l0=sum(m["l0"] for m in per_layer) / len(per_layer),
            fvu=total_error / max(total_var, 1e-30),
            dead_fraction=sum(m["dead_fraction"] for m in per_layer) / len(per_layer),
            dense_fraction=sum(m["dense_fraction"] for m in per_layer) / len(per_layer),
            eval_tokens=accs[0].tokens,
        )
        if len(per_layer) > 1:
            layers = self.dictionary.config.layers or list(range(len(per_layer)))
            metrics.per_layer = {str(layer): m for layer, m in zip(layers, per_layer)}
        return metrics


def evaluate(
    dictionary: Dictionary, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], chunk: int = 1024
) -> Metrics:
    """L0, FVU, dead and dense fractions over raw ``(x [b, L, d_in], target [b, L, d_out])`` batches.

    The same pass measures each feature's activation statistics (max, mean when active,
    frequency, and the output site's mean norm) and keeps them on ``dictionary.feature_stats``;
    :func:`trainers.publish.save_and_publish` stores them beside the weights, where
    ``ScopedModel.steer(..., unit="max")`` finds them.
    """
    evaluation = Evaluation(dictionary, chunk)
    for x, t in batches:
        evaluation.add(x, t)
    return evaluation.metrics()
