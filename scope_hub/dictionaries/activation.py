"""The activation-function strategy every dictionary kind delegates to."""

from __future__ import annotations

from typing import ClassVar

import torch

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
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})" if self.k else f"{type(self).__name__}()"
