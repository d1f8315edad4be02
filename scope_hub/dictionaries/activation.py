"""The activation-function strategy every dictionary kind delegates to."""

from __future__ import annotations

from typing import ClassVar

import torch

from scope_hub.errors import ConfigError
from scope_hub.kinds import architecture


class Activation:
    """Maps pre-activations ``[..., d_sae]`` to sparse features.

    Subclasses live one per file and are listed in
    :data:`scope_hub.kinds.ARCHITECTURES`.
    """

    name: ClassVar[str]

    @property
    def uses_threshold(self) -> bool:
        """True when the dictionary stores a per-latent ``threshold`` tensor for it (from :mod:`scope_hub.kinds`)."""
        return architecture(self.name).stores_threshold

    def __init__(self, k: int | None = None) -> None:
        self.k = k

    def __call__(self, pre: torch.Tensor, threshold: torch.Tensor | None, training: bool) -> torch.Tensor:
        raise NotImplementedError  # abstract: every registered activation defines it

    @property
    def active(self) -> int:
        """``k``, for activations that need it (the config validator guarantees it is set)."""
        if self.k is None:
            raise ConfigError(f"architecture {self.name} needs k (active latents per token)", field="k")
        return self.k

    @staticmethod
    def required(threshold: torch.Tensor | None) -> torch.Tensor:
        """The threshold tensor of an activation that stores one (the dictionary always passes it)."""
        if threshold is None:
            raise ConfigError("this activation needs the dictionary's threshold tensor", field="threshold")
        return threshold

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})" if self.k else f"{type(self).__name__}()"
