"""TopK activation: keep the k largest of ``relu(pre)`` per token."""

from __future__ import annotations

import torch

from scope_hub.dictionaries.activation import Activation


class TopK(Activation):
    """Exactly (at most) ``k`` active latents per token."""

    name = "topk"

    def __call__(self, pre: torch.Tensor, threshold: torch.Tensor | None, training: bool) -> torch.Tensor:
        values, indices = self.top(pre)
        return torch.zeros_like(pre).scatter_(-1, indices, values)

    def top(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices) of the k largest ``relu(pre)`` per token, largest first."""
        values, indices = pre.topk(self.active, dim=-1, sorted=True)
        return torch.relu(values), indices
