"""JumpReLU activation (Gemma Scope): ``f = (pre > threshold) * relu(pre)``."""

from __future__ import annotations

import torch

from scope_hub.dictionaries.activation import Activation


class JumpReLU(Activation):
    """Per-latent learned threshold; latents below it are exactly zero."""

    name = "jumprelu"

    def __call__(self, pre: torch.Tensor, threshold: torch.Tensor | None, training: bool) -> torch.Tensor:
        return torch.relu(pre) * (pre > self.required(threshold))
