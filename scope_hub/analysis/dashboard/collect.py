"""Streaming per-feature statistics for dashboards: top contexts, histogram, density.

:class:`FeatureCollector` takes batches of ``(token ids [B, T], features [B, T, F], mask)``
from anywhere (a ScopedModel over texts, a harvest cache, arrays you computed) and keeps,
per feature, in bounded memory:

* the ``top_k`` sequences by the feature's maximum, each as a token window around that
  maximum with the feature's activation on every token of the window;
* a histogram of its non-zero activations on fixed log-spaced bins (8 per decade from
  1e-3 to 1e4; streaming needs fixed bins and activation scales differ by orders of
  magnitude between dictionaries — the page shows only the occupied range);
* count, sum and maximum of its activations (density = active tokens / real tokens).

Example:
    >>> import torch
    >>> c = FeatureCollector(d_sae=3, top_k=2, before=1, after=1)
    >>> ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    >>> f = torch.zeros(2, 3, 3); f[0, 1, 0] = 2.0; f[1, 2, 0] = 5.0; f[1, 0, 2] = 0.5
    >>> stats = c.update(ids, f).result()
    >>> [round(d, 3) for d in stats.density.tolist()], stats.top_values[0].tolist()
    ([0.333, 0.0, 0.167], [5.0, 2.0])
    >>> stats.contexts(0)[0]  # (max, tokens, activations, index of the max in the window)
    (5.0, [9, 10], [0.0, 5.0], 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scope_hub.errors import ShapeMismatchError

__all__ = ["BIN_EDGES", "CollectedStats", "FeatureCollector", "collect_from_arrays"]

BIN_EDGES = torch.logspace(-3, 4, 57)
"""Histogram bin edges (8 per decade); values below 1e-3 fall in the first bin, above 1e4 in the last."""


@dataclass
class CollectedStats:
    """What a :class:`FeatureCollector` gathered."""

    n_tokens: int
    count: torch.Tensor
    """[F] tokens where the feature is active."""
    total: torch.Tensor
    """[F] sum of activations."""
    maximum: torch.Tensor
    """[F] largest activation."""
    histogram: torch.Tensor
    """[F, len(BIN_EDGES) - 1] counts of non-zero activations per bin."""
    top_values: torch.Tensor
    """[F, k] maxima of the top sequences, descending (0 = empty slot)."""
    top_tokens: torch.Tensor
    """[F, k, W] token windows (-1 = outside the sequence)."""
    top_acts: torch.Tensor
    """[F, k, W] activations on those windows."""
    center: int
    """Index of the maximum inside each window."""

    @property
    def density(self) -> torch.Tensor:
        """[F] fraction of real tokens where the feature is active."""
        return self.count.float() / max(self.n_tokens, 1)

    @property
    def mean_active(self) -> torch.Tensor:
        """[F] mean activation where active (0 if never)."""
        return torch.where(self.count > 0, self.total / self.count.clamp_min(1), torch.zeros_like(self.total))

    def contexts(self, feature: int) -> list[tuple[float, list[int], list[float], int]]:
        """Top contexts of ``feature``: ``(max, token ids, activations, index of max)``, padding trimmed."""
        out = []
        for value, tokens, acts in zip(self.top_values[feature], self.top_tokens[feature], self.top_acts[feature]):
            if value <= 0:
                continue
            keep = tokens >= 0
            first = int(keep.nonzero()[0])
            out.append((float(value), tokens[keep].tolist(), acts[keep].tolist(), self.center - first))
        return out


class FeatureCollector:
    """Accumulates :class:`CollectedStats` batch by batch (see module docstring)."""

    def __init__(self, d_sae: int, top_k: int = 10, before: int = 12, after: int = 4) -> None:
        self.d_sae, self.top_k, self.before, self.after = d_sae, top_k, before, after
        width = before + after + 1
        self.n_tokens = 0
        self.count = torch.zeros(d_sae, dtype=torch.long)
        self.total = torch.zeros(d_sae, dtype=torch.float64)
        self.maximum = torch.zeros(d_sae)
        self.histogram = torch.zeros(d_sae, len(BIN_EDGES) - 1, dtype=torch.long)
        self.top_values = torch.zeros(d_sae, top_k)
        self.top_tokens = torch.full((d_sae, top_k, width), -1, dtype=torch.long)
        self.top_acts = torch.zeros(d_sae, top_k, width)

    def update(
        self, token_ids: torch.Tensor, features: torch.Tensor, mask: torch.Tensor | None = None
    ) -> FeatureCollector:
        """Add one batch: ``token_ids`` [B, T], ``features`` [B, T, F], ``mask`` [B, T] (True = real token)."""
        if token_ids.dim() != 2 or features.shape[:2] != token_ids.shape or features.shape[2] != self.d_sae:
            raise ShapeMismatchError(
                f"expected token ids [B, T] and features [B, T, {self.d_sae}]; got "
                f"{tuple(token_ids.shape)} and {tuple(features.shape)}"
            )
        mask = torch.ones_like(token_ids, dtype=torch.bool) if mask is None else mask.bool()
        feats = features.detach().float().cpu() * mask[..., None]
        token_ids = token_ids.cpu().masked_fill(~mask, -1)
        self._moments(feats, mask)
        self._top(token_ids, feats)
        return self

    def _moments(self, feats: torch.Tensor, mask: torch.Tensor) -> None:
        flat = feats[mask]  # [n, F]
        self.n_tokens += len(flat)
        active = flat > 0
        self.count += active.sum(0)
        self.total += flat.sum(0, dtype=torch.float64)
        if len(flat):
            self.maximum = torch.maximum(self.maximum, flat.max(0).values)
        rows, cols = active.nonzero(as_tuple=True)
        bins = (torch.bucketize(flat[rows, cols], BIN_EDGES) - 1).clamp(0, len(BIN_EDGES) - 2)
        self.histogram.view(-1).index_add_(0, cols * (len(BIN_EDGES) - 1) + bins, torch.ones_like(bins))

    def _top(self, token_ids: torch.Tensor, feats: torch.Tensor) -> None:
        batch, length, _ = feats.shape
        best, where = feats.max(1)  # [B, F] per-sequence maximum and its position
        offsets = torch.arange(-self.before, self.after + 1)
        pos = where[..., None] + offsets  # [B, F, W]
        inside = (pos >= 0) & (pos < length)
        pos = pos.clamp(0, length - 1)
        rows = torch.arange(batch)[:, None, None].expand_as(pos)
        tokens = token_ids[rows, pos].masked_fill(~inside, -1)
        acts = feats[rows, pos, torch.arange(self.d_sae)[None, :, None].expand_as(pos)] * inside
        values = torch.cat([self.top_values, best.T], 1)  # [F, k + B]
        keep = values.topk(self.top_k, dim=1).indices  # [F, k]
        all_tokens = torch.cat([self.top_tokens, tokens.transpose(0, 1)], 1)
        all_acts = torch.cat([self.top_acts, acts.transpose(0, 1)], 1)
        index = keep[..., None].expand(-1, -1, all_tokens.shape[-1])
        self.top_values = values.gather(1, keep)
        self.top_tokens, self.top_acts = all_tokens.gather(1, index), all_acts.gather(1, index)

    def result(self) -> CollectedStats:
        """The statistics gathered so far."""
        return CollectedStats(
            self.n_tokens,
            self.count,
            self.total.float(),
            self.maximum,
            self.histogram,
            self.top_values,
            self.top_tokens,
            self.top_acts,
            self.before,
        )


def collect_from_arrays(
    token_ids: torch.Tensor,
    features: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    top_k: int = 10,
    batch_size: int = 64,
    before: int = 12,
    after: int = 4,
) -> CollectedStats:
    """Stats from token ids [N, T] and their features [N, T, F] (dense) already in memory."""
    collector = FeatureCollector(features.shape[-1], top_k, before, after)
    for start in range(0, len(token_ids), batch_size):
        rows = slice(start, start + batch_size)
        collector.update(token_ids[rows], features[rows], None if mask is None else mask[rows])
    return collector.result()
