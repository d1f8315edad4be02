"""Single-layer sparse autoencoder: reads and reconstructs one site."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scope_hub.dictionaries.base import Dictionary
from scope_hub.dictionaries.sparse import SparseFeatures
from scope_hub.dictionaries.topk import TopK
from scope_hub.metadata import DictionaryConfig
from scope_hub.serialization import TensorSpec

PARAMS_FILE = "params.safetensors"


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


def single_layer_specs(config: DictionaryConfig, file: str, prefix: str, d_dec: tuple[int, ...] = ()) -> list[TensorSpec]:
    """Tensor specs shared by every single-site encoder (SAE, transcoders, CLT layers)."""
    from scope_hub.dictionaries.kinds import ACTIVATIONS

    d_in, d_sae, d_out = config.d_in, config.d_sae, config.d_out
    specs = [
        TensorSpec(file, "w_enc", (d_in, d_sae), f"{prefix}w_enc", 1),
        TensorSpec(file, "b_enc", (d_sae,), f"{prefix}b_enc", 0),
    ]
    if ACTIVATIONS[config.architecture].uses_threshold:
        specs.append(TensorSpec(file, "threshold", (d_sae,), f"{prefix}threshold", 0))
    specs += [
        TensorSpec(file, "w_dec", (d_sae, *d_dec, d_out), f"{prefix}w_dec", 0),
        TensorSpec(file, "b_dec", (d_out,), f"{prefix}b_dec", None),
    ]
    if config.affine_skip:
        specs.append(TensorSpec(file, "affine_skip_connection", (d_in, d_out), f"{prefix}affine_skip_connection", None))
    return specs
