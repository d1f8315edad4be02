"""Difference-of-means directions in the residual stream, and interventions along them.

:func:`mean_difference` reads the residual stream at one position per conversation
(default: the answer position) at every layer boundary and returns
``mean(set A) - mean(set B)`` per layer (Arditi et al. 2024's refusal direction when A is
harmful and B harmless requests). Index ``L`` is ``resid_pre`` of layer ``L``; the last
index is the last layer's output (before the final norm).

Interventions, as context managers over the underlying transformers model (they compose
with ScopedModel modes and apply at every ``generate`` step):

* :func:`ablate_direction` projects the unit direction out of every write to the residual
  stream (embeddings/``resid_pre`` of every layer, each attention and MLP contribution, the
  last layer's output), so no later layer can read it;
* :func:`add_direction` adds ``alpha`` x the (unnormalised) direction at one layer's
  ``resid_pre`` at every position.

Example:
    >>> import torch
    >>> from scope_hub.testing.tiny_models import tiny_llama
    >>> from tests.analysis.helpers import chat_tokenizer
    >>> model, tok = tiny_llama(), chat_tokenizer()
    >>> dirs = mean_difference(model, tok, ["Hi?", "Yo!"], ["Bye.", "Ok."])
    >>> dirs.directions.shape  # 3 layers -> 4 boundaries, d_model 64
    torch.Size([4, 64])
    >>> ids = tok("hello", return_tensors="pt").input_ids
    >>> with ablate_direction(model, dirs.directions[2]):
    ...     out = model(ids).logits
    >>> out.shape
    torch.Size([1, 6, 260])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scope_hub.analysis.chat import ChatBatch, Conversation, render_chat
from scope_hub.errors import ConfigError
from scope_hub.hookpoints import Hookpoint, adapter_for
from scope_hub.hooks import capture, hook, stop_after
from scope_hub.scoped_model import ScopedModel

__all__ = [
    "MeanDifference",
    "ablate_direction",
    "add_direction",
    "base_model",
    "batches",
    "boundary_hookpoints",
    "mean_difference",
    "mean_residuals",
    "residuals",
]


def base_model(model: Any) -> Any:
    """The transformers model inside a ScopedModel (or the model itself)."""
    return model.model if isinstance(model, ScopedModel) else model


def boundary_hookpoints(model: Any) -> list[Hookpoint]:
    """``resid_pre`` of every layer, then the last layer's output: ``n_layers + 1`` points."""
    adapter = adapter_for(base_model(model))
    points = [adapter.hookpoint("resid_pre", layer) for layer in range(adapter.n_layers)]
    return [*points, Hookpoint(adapter.layer_module(adapter.n_layers - 1), "output")]


def batches(
    tokenizer: Any, conversations: Sequence[Conversation], batch_size: int = 16, **kwargs: Any
) -> Iterator[ChatBatch]:
    """Render ``conversations`` in chunks of ``batch_size`` (keyword arguments go to render_chat)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(conversations), batch_size):
        yield render_chat(tokenizer, conversations[start : start + batch_size], **kwargs)


@torch.no_grad()
def residuals(
    model: Any, tokenizer: Any, conversations: Sequence[Conversation], *, selector: str = "answer", batch_size: int = 16
) -> torch.Tensor:
    """[len(conversations), n_layers + 1, d_model] residual stream at ``selector``, every layer boundary."""
    if not conversations:
        raise ConfigError("residuals needs at least one conversation")
    inner = base_model(model)
    points = boundary_hookpoints(inner)
    rows = []
    for batch in batches(tokenizer, conversations, batch_size):
        with capture(inner, points) as acts, stop_after(inner, points[-1]):
            inner(**batch.model_inputs())
        rows.append(torch.stack([batch.gather(acts[str(p)], selector).float().cpu() for p in points], 1))
    return torch.cat(rows)


def mean_residuals(
    model: Any, tokenizer: Any, conversations: Sequence[Conversation], *, selector: str = "answer", batch_size: int = 16
) -> torch.Tensor:
    """[n_layers + 1, d_model] mean residual stream at ``selector`` over ``conversations``."""
    return residuals(model, tokenizer, conversations, selector=selector, batch_size=batch_size).mean(0)


@dataclass
class MeanDifference:
    """Per-layer ``mean(A) - mean(B)`` of the residual stream, with the means it came from."""

    directions: torch.Tensor
    """[n_layers + 1, d_model]; index L = resid_pre of layer L, last = last layer's output."""
    mean_a: torch.Tensor
    mean_b: torch.Tensor
    selector: str

    def unit(self, layer: int) -> torch.Tensor:
        """The direction at ``layer``, normalised to unit length."""
        d = self.directions[layer]
        return d / d.norm().clamp_min(1e-12)

    @property
    def norms(self) -> torch.Tensor:
        """[n_layers + 1] length of each layer's direction."""
        return self.directions.norm(dim=-1)

    def separation(self, resid_a: torch.Tensor, resid_b: torch.Tensor) -> torch.Tensor:
        """[n_layers + 1] accuracy of telling held-out A from B by projection on each layer's direction.

        ``resid_a``/``resid_b`` come from :func:`residuals`; the threshold is the midpoint of the
        training means' projections, so 1.0 = perfectly separated, ~0.5 = chance.
        """
        units = self.directions / self.norms[:, None].clamp_min(1e-12)
        midpoint = ((self.mean_a + self.mean_b) / 2 * units).sum(-1)
        above_a = ((resid_a * units).sum(-1) > midpoint).float().sum(0)
        below_b = ((resid_b * units).sum(-1) <= midpoint).float().sum(0)
        return (above_a + below_b) / (len(resid_a) + len(resid_b))


def mean_difference(
    model: Any,
    tokenizer: Any,
    set_a: Sequence[Conversation],
    set_b: Sequence[Conversation],
    *,
    selector: str = "answer",
    batch_size: int = 16,
) -> MeanDifference:
    """Difference of mean residuals (A minus B) at every layer boundary, read at ``selector``."""
    mean_a = mean_residuals(model, tokenizer, set_a, selector=selector, batch_size=batch_size)
    mean_b = mean_residuals(model, tokenizer, set_b, selector=selector, batch_size=batch_size)
    return MeanDifference(mean_a - mean_b, mean_a, mean_b, selector)


def _residual_writes(model: Any) -> list[Hookpoint]:
    # Every tensor that enters or is added to the residual stream, plus each layer boundary
    # (a boundary also catches anything written by hooks or modules outside attn/MLP).
    adapter = adapter_for(model)
    writes = boundary_hookpoints(model)
    for layer in range(adapter.n_layers):
        writes += [adapter.attn_residual(layer), adapter.hookpoint("mlp_out", layer)]
    return writes


@contextlib.contextmanager
def ablate_direction(model: Any, direction: torch.Tensor) -> Iterator[None]:
    """Project ``direction`` out of the residual stream everywhere inside the block."""
    inner = base_model(model)
    unit = _as_unit(direction, inner)

    def project(x: torch.Tensor) -> torch.Tensor:
        u = unit.to(x.dtype)
        return x - (x @ u)[..., None] * u

    with contextlib.ExitStack() as stack:
        for point in _residual_writes(inner):
            stack.enter_context(hook(inner, point, project))
        yield


@contextlib.contextmanager
def add_direction(model: Any, direction: torch.Tensor, layer: int, alpha: float = 1.0) -> Iterator[None]:
    """Add ``alpha * direction`` to ``resid_pre`` of ``layer`` at every position inside the block."""
    inner = base_model(model)
    point = adapter_for(inner).hookpoint("resid_pre", layer)
    delta = (alpha * direction.detach()).to(next(inner.parameters()).device)
    with hook(inner, point, lambda x: x + delta.to(x.dtype)):
        yield


def _as_unit(direction: torch.Tensor, model: Any) -> torch.Tensor:
    norm = direction.norm()
    if direction.dim() != 1 or not torch.isfinite(norm) or norm == 0:
        raise ConfigError(f"a direction must be a finite, non-zero vector; got shape {tuple(direction.shape)}")
    return (direction.detach() / norm).to(next(model.parameters()).device)
