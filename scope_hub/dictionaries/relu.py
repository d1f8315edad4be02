"""ReLU activation (the original "standard" SAE, trained with an L1 penalty)."""

from __future__ import annotations

import torch

from scope_hub.dictionaries.activation import Activation


class ReLU(Activation):
    """``f = relu(pre)``."""

    name = "relu"

    def __call__(self, pre: torch.Tensor, threshold: torch.Tensor | None, training: bool) -> torch.Tensor:
        return torch.relu(pre)
