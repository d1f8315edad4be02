"""Which output logits a graph explains, and the vectors that read them.

Following circuit-tracer, a logit node is the **demeaned** logit
``logit_v - mean_w logit_w`` (pre-softcap), read from the final-norm output by
the vector ``W_U[v] - mean_w W_U[w]``; subtracting the mean removes the part
every logit shares, which carries no information about the choice of token.
By default the targets are the most likely next tokens until their
probabilities add up to ``desired_logit_prob`` (at most ``max_n_logits``).

Example:
    >>> import torch
    >>> logits = torch.tensor([3.0, 2.0, -1.0, 0.0])
    >>> salient_tokens(logits, max_n_logits=3, desired_logit_prob=0.9).tolist()
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scope_hub.errors import ConfigError


@dataclass
class LogitTargets:
    """The logit nodes of a graph."""

    token_ids: torch.Tensor
    """Vocabulary ids ``[K]``."""
    probabilities: torch.Tensor
    """The model's softmax probability of each ``[K]`` (the weights of pruning)."""
    vectors: torch.Tensor
    """Demeaned unembedding rows ``[K, d]`` (injected at the final-norm output)."""
    bias: torch.Tensor
    """Demeaned output bias ``[K]`` (zeros when the unembedding has none)."""
    labels: list[str]
    """Decoded token strings."""

    def __len__(self) -> int:
        return int(self.token_ids.numel())

    def values(self, final_last: torch.Tensor) -> torch.Tensor:
        """Demeaned logits ``[K]`` of a final-norm output at the last position ``[d]``."""
        return self.vectors.to(final_last.dtype) @ final_last + self.bias.to(final_last.dtype)


def salient_tokens(logits: torch.Tensor, max_n_logits: int = 10, desired_logit_prob: float = 0.95) -> torch.Tensor:
    """Most likely tokens until their cumulative probability reaches ``desired_logit_prob`` (at most ``max_n_logits``)."""
    probs = torch.softmax(logits.double(), dim=-1)
    top = probs.topk(min(max_n_logits, probs.numel()))
    cumulative = top.values.cumsum(0)
    n = int((cumulative < desired_logit_prob).sum().item()) + 1
    return top.indices[: min(n, top.indices.numel())]


def logit_targets(
    model: nn.Module,
    logits: torch.Tensor,
    tokenizer: object | None = None,
    targets: Sequence[int | str] | torch.Tensor | None = None,
    *,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
) -> LogitTargets:
    """Build the logit nodes from the model's last-position ``logits`` ``[V]``.

    ``targets``: token ids, or strings (each must encode to exactly one token), or
    None for the salient tokens.
    """
    ids = (
        salient_tokens(logits, max_n_logits, desired_logit_prob) if targets is None else _target_ids(targets, tokenizer)
    )
    if ids.numel() == 0:
        raise ConfigError("no logit targets: pass targets= or raise desired_logit_prob / max_n_logits")
    vectors, bias = demeaned_unembedding(model, ids)
    probs = torch.softmax(logits.double(), dim=-1)[ids].float()
    labels = [_decode(tokenizer, int(i)) for i in ids]
    return LogitTargets(ids.long(), probs, vectors, bias, labels)


def demeaned_unembedding(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``W_U[ids] - mean(W_U)`` ``[K, d]``, demeaned output bias ``[K]``) of the model's unembedding."""
    hf_model: Any = model  # a transformers PreTrainedModel; nn.Module's typing does not know its methods
    unembed = hf_model.get_output_embeddings()
    weight = unembed.weight.detach()
    if ids.numel() and (int(ids.max()) >= weight.shape[0] or int(ids.min()) < 0):
        raise ConfigError(f"target token ids must lie in [0, {weight.shape[0]}); got {ids.tolist()}")
    vectors = weight[ids] - weight.mean(0, keepdim=True)
    bias = getattr(unembed, "bias", None)
    if isinstance(bias, torch.Tensor):
        return vectors, bias.detach()[ids] - bias.detach().mean()
    return vectors, torch.zeros(ids.numel(), dtype=weight.dtype, device=weight.device)


def _target_ids(targets: Sequence[int | str] | torch.Tensor, tokenizer: Any) -> torch.Tensor:
    if isinstance(targets, torch.Tensor):
        return targets.reshape(-1).long()
    ids = []
    for t in targets:
        if isinstance(t, str):
            if tokenizer is None:
                raise ConfigError("string targets need a tokenizer")
            encoded = tokenizer.encode(t, add_special_tokens=False)
            if len(encoded) != 1:
                raise ConfigError(
                    f"target {t!r} encodes to {len(encoded)} tokens {encoded}; give one token (or its id)"
                )
            ids.append(encoded[0])
        else:
            ids.append(int(t))
    return torch.tensor(ids, dtype=torch.long)


def _decode(tokenizer: Any, token_id: int) -> str:
    return str(tokenizer.decode([token_id])) if tokenizer is not None else f"<{token_id}>"
