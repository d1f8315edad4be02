"""Crosscoder: one set of latents reading and writing several layers at once."""

from __future__ import annotations

import torch

from scope_hub.dictionaries.base import Dictionary
from scope_hub.metadata import DictionaryConfig
from scope_hub.tensor_layout import TensorSpec, crosscoder_specs


class Crosscoder(Dictionary):
    """``pre = sum_l x_l @ w_enc[l] + b_enc; f = act(pre); y_l = f @ w_dec[:, l] + b_dec[l]``.

    As Gemma Scope 2's ``crosscoder/`` folders: latents shared across the
    concatenated residual streams of ``config.layers``. Inputs/outputs stack the
    layers on axis -2: ``[..., n_layers, d_in]``. ``w_enc`` is stored as
    ``[n_layers, d_in, d_sae]`` and ``w_dec`` as ``[d_sae, n_layers, d_out]``.

    Example:
        >>> import torch
        >>> from scope_hub.metadata import DictionaryConfig
        >>> cc = Crosscoder(DictionaryConfig(type="crosscoder", architecture="relu", d_in=4, d_sae=8,
        ...                                  layers=[1, 3]))
        >>> cc.w_enc.shape, cc.w_dec.shape
        (torch.Size([2, 4, 8]), torch.Size([8, 2, 4]))
    """

    type = "crosscoder"

    @classmethod
    def tensor_specs(cls, config: DictionaryConfig) -> list[TensorSpec]:
        return crosscoder_specs(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self._normalize_in(x.to(self.w_enc.dtype))
        pre = torch.einsum("...ld,lds->...s", x, self.w_enc) + self.b_enc
        threshold = self.threshold if self.activation.uses_threshold else None
        return self.activation(pre, threshold, self.training)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("...s,sld->...ld", features.to(self.w_dec.dtype), self.w_dec) + self.b_dec
        return self._denormalize_out(y)
