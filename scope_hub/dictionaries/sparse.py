"""Sparse feature activations: per token, the indices and values of active latents."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SparseFeatures(NamedTuple):
    """Active latents per token, padded to the same count ``K`` per token.

    ``indices`` and ``values`` have shape ``[..., K]``; padding slots hold
    value 0 (and any valid index), so they contribute nothing when decoded.

    Example:
        >>> import torch
        >>> dense = torch.tensor([[0.0, 2.0, 0.0, 1.0]])
        >>> sparse = SparseFeatures.from_dense(dense)
        >>> sparse.indices.tolist(), sparse.values.tolist()
        ([[1, 3]], [[2.0, 1.0]])
        >>> torch.equal(sparse.to_dense(), dense)
        True
    """

    indices: torch.Tensor
    """Latent indices, int64, ``[..., K]``."""
    values: torch.Tensor
    """Activation values, ``[..., K]`` (0 in padding slots)."""
    d_sae: int
    """Number of latents of the dictionary (the dense width)."""

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> SparseFeatures:
        """Largest-first active latents of a dense ``[..., d_sae]`` tensor."""
        k = int((dense != 0).sum(-1).max().item()) if dense.numel() else 0
        values, indices = dense.abs().topk(max(k, 1), dim=-1, sorted=True)
        values = dense.gather(-1, indices)
        return cls(indices, values, dense.shape[-1])

    def to_dense(self) -> torch.Tensor:
        """Scatter back to a dense ``[..., d_sae]`` tensor."""
        out = self.values.new_zeros(*self.values.shape[:-1], self.d_sae)
        return out.scatter_add_(-1, self.indices, self.values)

    def active_mask(self) -> torch.Tensor:
        """Boolean ``[..., K]``: which slots hold a nonzero activation."""
        return self.values != 0
