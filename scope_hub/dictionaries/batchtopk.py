"""BatchTopK activation: k·batch largest over the batch in training, a global threshold at inference."""

from __future__ import annotations

import torch

from scope_hub.dictionaries.activation import Activation


class BatchTopK(Activation):
    """Training keeps the ``k * n_tokens`` largest ``relu(pre)`` over the whole batch.

    At inference the dictionary behaves as JumpReLU with one global threshold
    (learned during training, stored in every slot of ``threshold``), so each
    token's sparsity no longer depends on its batch.
    """

    name = "batchtopk"

    def __call__(self, pre: torch.Tensor, threshold: torch.Tensor | None, training: bool) -> torch.Tensor:
        if not training:
            return torch.relu(pre) * (pre > self.required(threshold))
        flat = torch.relu(pre).reshape(-1)
        n_tokens = flat.numel() // pre.shape[-1]
        keep = min(self.active * n_tokens, flat.numel())
        values, indices = flat.topk(keep, sorted=False)
        return torch.zeros_like(flat).scatter_(0, indices, values).reshape(pre.shape)
