"""Cross-layer transcoder (CLT): one encoder per layer; layer i decodes into every layer j >= i."""

from __future__ import annotations

import torch
from torch import nn

from scope_hub.dictionaries.base import Dictionary
from scope_hub.metadata import DictionaryConfig
from scope_hub.tensor_layout import TensorSpec, clt_layer_file, clt_specs

layer_file = clt_layer_file


class CrossLayerTranscoder(Dictionary):
    """Per source layer i: ``f_i = act(x_i @ w_enc_i + b_enc_i)``; the output at layer j is
    ``y_j = sum_{i <= j} f_i @ w_dec_i[:, j - i] + b_dec_j (+ x_j @ affine_skip_connection_j)``.

    ``w_dec_i`` has shape ``[d_sae, n_layers - i, d_out]`` (its decoders to layers i..n-1),
    never summed. Inputs and outputs stack layers on axis -2: ``[..., n_layers, d]``;
    ``d_sae`` counts latents per layer.

    Example:
        >>> import torch
        >>> from scope_hub.metadata import DictionaryConfig
        >>> clt = CrossLayerTranscoder(DictionaryConfig(
        ...     type="clt", architecture="relu", d_in=4, d_sae=8, layers=[0, 1, 2]))
        >>> [tuple(clt.w_dec(i).shape) for i in range(3)]
        [(8, 3, 4), (8, 2, 4), (8, 1, 4)]
    """

    type = "clt"

    def _make_holders(self, config: DictionaryConfig) -> None:
        self.per_layer = nn.ModuleList(nn.Module() for _ in range(config.n_layers))

    @classmethod
    def tensor_specs(cls, config: DictionaryConfig) -> list[TensorSpec]:
        return clt_specs(config)

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    def w_enc(self, i: int) -> torch.Tensor:
        return self._param(f"per_layer.{i}.w_enc")

    def w_dec(self, i: int) -> torch.Tensor:
        """Decoders of source layer ``i`` to layers i..n-1: ``[d_sae, n_layers - i, d_out]``."""
        return self._param(f"per_layer.{i}.w_dec")

    def b_dec(self, j: int) -> torch.Tensor:
        return self._param(f"per_layer.{j}.b_dec")

    def encode_layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Features ``[..., d_sae]`` of source layer ``i`` from its input ``[..., d_in]``."""
        x = self._normalize_in(x.to(self.w_enc(i).dtype))
        pre = x @ self.w_enc(i) + self._param(f"per_layer.{i}.b_enc")
        threshold = self._param(f"per_layer.{i}.threshold") if self.activation.uses_threshold else None
        return self.activation(pre, threshold, self.training)

    def decode_layer(self, j: int, features: list[torch.Tensor]) -> torch.Tensor:
        """Output at layer ``j`` from the features of layers ``0..j`` (``features[i]``, i <= j)."""
        out = self.b_dec(j)
        for i in range(j + 1):
            out = out + features[i].to(out.dtype) @ self.w_dec(i)[:, j - i]
        return self._denormalize_out(out)

    def skip_layer(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """The affine skip path at layer ``j`` (zero when the CLT has none)."""
        if not self.config.affine_skip:
            return torch.zeros((), dtype=self.b_dec(j).dtype, device=self.b_dec(j).device)
        x = self._normalize_in(x.to(self.b_dec(j).dtype))
        return self._denormalize_out(x @ self._param(f"per_layer.{j}.affine_skip_connection"))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.encode_layer(i, x[..., i, :]) for i in range(self.n_layers)], dim=-2)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        # One matmul per source layer into all its target layers, then accumulate.
        n, d_out = self.n_layers, self.config.d_out
        out = torch.stack([self.b_dec(j) for j in range(n)]).expand(*features.shape[:-2], n, d_out).clone()
        for i in range(n):
            w = self.w_dec(i).reshape(self.d_sae, (n - i) * d_out)
            contribution = features[..., i, :].to(w.dtype) @ w
            out[..., i:, :] += contribution.reshape(*features.shape[:-2], n - i, d_out)
        return self._denormalize_out(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.decode(self.encode(x))
        if self.config.affine_skip:
            y = y + torch.stack([self.skip_layer(j, x[..., j, :]) for j in range(self.n_layers)], dim=-2)
        return y.to(x.dtype)
