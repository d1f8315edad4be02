"""The activation-function strategy every dictionary kind delegates to."""

from __future__ import annotations

from typing import ClassVar

import torch


class Activation:
    """Maps pre-activations ``[..., d_sae]`` to sparse features.

    Subclasses live one per file and are listed in
    :data:`scope_hub.dictionaries.kinds.ACTIVATIONS`.
    """

    name: ClassVar[str]
    uses_threshold: ClassVar[bool] = False
    """True when the dictionary stores a per-latent ``threshold`` tensor for it."""

    def __init__(self, k: int | None = None) -> None:
        self.k = k

    def __call__(self, pre: torch.Tensor, threshold: torch.Tensor | None, training: bool) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})" if self.k else f"{type(self).__name__}()"
