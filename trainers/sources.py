"""Activation sources: where training batches come from.

A source answers ``batch(step, batch_size, rank, world)`` with this rank's slice
of global batch ``step`` as ``(x [b, L, d_in], target [b, L, d_out])``. A batch
is a pure function of (seed, step), which is what makes resume-after-kill and
data-parallel runs reproduce a single uninterrupted run. Held-out evaluation
tokens come from :meth:`ActivationSource.eval_batches`.

Implementations: :class:`SyntheticSource` (planted dictionaries) here;
:class:`trainers.harvest_shards.ShardSource` (a harvest on disk) and
:class:`trainers.streaming.StreamingSource` (harvest on the fly).

Example:
    >>> from trainers.synthetic import PlantedDictionary
    >>> src = SyntheticSource(PlantedDictionary.create(n_atoms=16, d_in=8), seed=0)
    >>> x, t = src.batch(3, 10, rank=1, world=2)
    >>> x.shape, torch.equal(x, src.batch(3, 10)[0][5:])
    (torch.Size([5, 1, 8]), True)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from scope_hub.kinds import SAE
from trainers.synthetic import PlantedDictionary


class ActivationSource:
    """Base class: shapes, provenance and the batch protocol."""

    n_layers: int = 1
    d_in: int
    d_out: int
    reconstructs_input: bool = True
    """True when the target is the input itself (SAEs): then ``target is x``."""

    def describe(self) -> dict[str, Any]:
        """Provenance: ``{"dataset": ..., "dataset_sha256": ...}``."""
        return {}

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of global batch ``step`` (rows ``rank*b:(rank+1)*b``, ``b = batch_size // world``)."""
        raise NotImplementedError

    def eval_batches(self, tokens: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Held-out ``(x, target)`` batches totalling about ``tokens`` rows."""
        raise NotImplementedError


def rank_slice(batch_size: int, rank: int, world: int) -> slice:
    """Rows of a global batch that belong to ``rank``; the batch must split evenly."""
    if batch_size % world:
        raise ValueError(f"train.batch_size={batch_size} must be divisible by the number of ranks ({world})")
    per_rank = batch_size // world
    return slice(rank * per_rank, (rank + 1) * per_rank)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator seeded by (seed, step, stream) alone: batch ``step`` never depends on history."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


class SyntheticSource(ActivationSource):
    """Fresh samples of a :class:`PlantedDictionary` for every step."""

    def __init__(self, planted: PlantedDictionary, seed: int = 0, noise: float = 0.0) -> None:
        self.planted, self.seed, self.noise = planted, seed, noise
        self.n_layers = planted.n_layers
        self.d_in = planted.enc_atoms[0].shape[1]
        self.d_out = planted.dec_atoms[0].shape[-1]
        self.reconstructs_input = planted.kind == SAE

    def describe(self) -> dict[str, Any]:
        return {"dataset": f"synthetic:{self.planted.kind}:atoms={self.planted.probabilities.numel()}"}

    def _sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, t = self.planted.sample(n, gen, self.noise)
        if self.n_layers == 1:
            x = x.unsqueeze(1)
            t = x if self.reconstructs_input else t.unsqueeze(1)
        return x, t

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        x, t = self._sample(batch_size, step_generator(self.seed, step))
        rows = rank_slice(batch_size, rank, world)
        mine = x[rows]
        return (mine, mine) if self.reconstructs_input else (mine, t[rows])

    def eval_batches(self, tokens: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(max(1, -(-tokens // batch_size))):
            yield self._sample(
                min(batch_size, tokens - i * batch_size) or batch_size, step_generator(self.seed, i, stream=1)
            )
