"""Single-layer sparse autoencoder: reads and reconstructs one site."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scope_hub.dictionaries.base import Dictionary
from scope_hub.dictionaries.sparse import SparseFeatures
from scope_hub.dictionaries.topk import TopK
from scope_hub.metadata import DictionaryConfig
from scope_hub.tensor_layout import PARAMS_FILE, TensorSpec, single_layer_specs


class SAE(Dictionary):
    """``pre = x @ w_enc + b_enc; f = act(pre); y = f @ w_dec + b_dec`` (Gemma Scope 2 math).

    Example:
        >>> import torch
        >>> from scope_hub.metadata import DictionaryConfig
        >>> sae = SAE(DictionaryConfig(type="sae", architecture="topk", k=2, d_in=4, d_sae=8))
        >>> _ = torch.nn.init.normal_(sae.w_enc), torch.nn.init.zeros_(sae.b_enc)
        >>> _ = torch.nn.init.normal_(sae.w_dec), torch.nn.init.zeros_(sae.b_dec)
        >>> f = sae.encode(torch.randn(3, 5, 4))
        >>> f.shape, bool(((f != 0).sum(-1) <= 2).all())
        (torch.Size([3, 5, 8]), True)
    """

    type = "sae"

    @classmethod
    def tensor_specs(cls, config: DictionaryConfig) -> list[TensorSpec]:
        return single_layer_specs(config, PARAMS_FILE, prefix="")

    # w_enc, b_enc, threshold, w_dec, b_dec are plain parameters (Gemma Scope 2 names).

    @property
    def W_enc(self) -> torch.Tensor:
        """``w_enc`` [d_in, d_sae] under SAELens's name (same layout)."""
        return self.w_enc

    @property
    def W_dec(self) -> torch.Tensor:
        """``w_dec`` [d_sae, d_out] under SAELens's name (same layout)."""
        return self.w_dec

    def _threshold(self) -> torch.Tensor | None:
        return self.threshold if self.activation.uses_threshold else None

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``x @ w_enc + b_enc`` (after input normalization)."""
        x = self._normalize_in(x.to(self.w_enc.dtype))
        return x @ self.w_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.encode_pre(x), self._threshold(), self.training)

    def encode_sparse(self, x: torch.Tensor) -> SparseFeatures:
        """Active latents per token as (indices, values), padded per token to the max count."""
        pre = self.encode_pre(x)
        if isinstance(self.activation, TopK):
            values, indices = self.activation.top(pre)
            return SparseFeatures(indices, values, self.d_sae)
        return SparseFeatures.from_dense(self.activation(pre, self._threshold(), self.training))

    def decode(self, features: torch.Tensor | SparseFeatures) -> torch.Tensor:
        return self._denormalize_out(decode_linear(features, self.w_dec) + self.b_dec)


def decode_linear(features: torch.Tensor | SparseFeatures, w_dec: torch.Tensor) -> torch.Tensor:
    """``features @ w_dec`` for dense features, or a gather of k decoder rows for sparse ones."""
    if isinstance(features, SparseFeatures):
        lead, k = features.indices.shape[:-1], features.indices.shape[-1]
        out = F.embedding_bag(
            features.indices.reshape(-1, k),
            w_dec,
            per_sample_weights=features.values.reshape(-1, k).to(w_dec.dtype),
            mode="sum",
        )
        return out.reshape(*lead, w_dec.shape[-1])
    return features.to(w_dec.dtype) @ w_dec
