"""Freezing a transformers model's nonlinear bookkeeping: attention patterns and norm scales.

The local replacement model of "Circuit Tracing" (Ameisen et al., 2025) treats
every attention softmax pattern and every LayerNorm/RMSNorm denominator as a
constant taken from the original forward; what is left between feature
activations and downstream pre-activations is linear. This module does that
for any transformers model whose attention goes through ``AttentionInterface``:

* **record** (batch 1): run the real model once, storing each attention layer's
  pattern and each norm's per-token scale;
* **replay** (batch ``B`` copies of the prompt): attention outputs become
  ``pattern @ V`` with the stored pattern, norms become ``x * scale * weight``
  with the stored scale, so autograd sees a linear map (plus constants).

Patterns are replayed from the record rather than recomputed so that ``B``
copies share one ``[heads, T, T]`` tensor (GQA groups are folded into a single
``bmm`` instead of materialising ``repeat_kv``).

Example:
    >>> import torch
    >>> from scope_hub.testing.tiny_models import tiny_gemma3
    >>> model, ids = tiny_gemma3().double(), torch.tensor([[257, 104, 105, 33]])
    >>> state = FrozenState()
    >>> with frozen(model, state, "record"), torch.no_grad():
    ...     ref = model(ids).logits
    >>> with frozen(model, state, "replay"), torch.no_grad():
    ...     again = model(ids.expand(3, -1)).logits
    >>> bool(torch.allclose(again, ref.expand(3, -1, -1), atol=1e-10)), len(state.patterns)
    (True, 3)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scope_hub.errors import UnsupportedModelError

ATTN_IMPLEMENTATION = "scope_hub_frozen"
"""Name registered in transformers' AttentionInterface (and its mask interface) for frozen attention."""


@dataclass
class FrozenState:
    """What a record pass stores and a replay pass reuses."""

    patterns: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    """Attention module -> softmax pattern ``[1, heads, T_q, T_k]`` (detached)."""
    norm_scales: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    """Norm module -> per-token inverse scale, broadcastable over the norm's input (detached)."""
    norm_kinds: dict[nn.Module, tuple[str, bool]] = field(default_factory=dict)
    """Norm module -> (``rms`` | ``layer``, whether the gain is ``1 + weight`` as in Gemma)."""


_ACTIVE: list[tuple[FrozenState, str]] = []  # innermost frozen() context; attention reads it


# --- attention ----------------------------------------------------------------------------------


def _eager_of(module: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    # Every transformers model file defines its own eager_attention_forward (softcap, sinks ...).
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise UnsupportedModelError(
            f"{type(module).__name__} has no eager_attention_forward in {type(module).__module__}; "
            "its attention patterns cannot be recorded for attribution"
        )
    return eager


def _replay_attention(pattern: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``pattern @ value`` for ``B`` batch copies sharing one pattern; returns ``[B, T, H, D]``."""
    _, n_heads, t_q, t_k = pattern.shape
    batch, n_kv, _, dim = value.shape
    groups = n_heads // n_kv  # repeat_kv order: head h reads kv head h // groups
    p = pattern.to(value.dtype).reshape(n_kv, groups * t_q, t_k)
    v = value.permute(1, 2, 0, 3).reshape(n_kv, t_k, batch * dim)
    out = torch.bmm(p, v).reshape(n_kv, groups, t_q, batch, dim)
    return out.permute(3, 2, 0, 1, 4).reshape(batch, t_q, n_heads, dim)


def frozen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """AttentionInterface function: eager attention that records, or replays, its pattern."""
    if not _ACTIVE:
        return _eager_of(module)(module, query, key, value, attention_mask, **kwargs)
    state, mode = _ACTIVE[-1]
    if mode == "record":
        out, weights = _eager_of(module)(module, query, key, value, attention_mask, **kwargs)
        state.patterns[module] = weights.detach()
        return out, weights
    pattern = state.patterns.get(module)
    if pattern is None or pattern.shape[-2] != value.shape[-2] or pattern.shape[-1] != value.shape[-2]:
        raise UnsupportedModelError("replay saw an attention call the record pass did not; use the same prompt")
    return _replay_attention(pattern, value), None


def _register_attention() -> None:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError as exc:  # pragma: no cover - transformers < 4.53
        raise UnsupportedModelError(
            f"attribution needs transformers' AttentionInterface ({exc}); upgrade transformers"
        ) from None
    AttentionInterface.register(ATTN_IMPLEMENTATION, frozen_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)  # eager's additive float mask


@contextlib.contextmanager
def _attention_implementation(model: nn.Module) -> Iterator[None]:
    _register_attention()
    config: Any = model.config  # a transformers PretrainedConfig
    old = config._attn_implementation
    config._attn_implementation = ATTN_IMPLEMENTATION  # the setter propagates to sub-configs
    try:
        yield
    finally:
        config._attn_implementation = old


# --- norms --------------------------------------------------------------------------------------


def norm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every LayerNorm / RMSNorm in ``model`` (by class: ``nn.LayerNorm`` or a name ending in ``RMSNorm``)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")
    ]


def _eps(module: nn.Module) -> float:
    for attr in ("eps", "variance_epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise UnsupportedModelError(f"{type(module).__name__} has no eps / variance_epsilon attribute")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # fp64 stays fp64 (so tests reach fp64 precision); half precisions compute in fp32 like transformers.
    return torch.promote_types(x.dtype, torch.float32)


def _inverse_scale(module: nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
    x = x.to(_compute_dtype(x))
    if kind == "layer":
        return torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + _eps(module))
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + _eps(module))


def _apply_norm(module: nn.Module, kind: str, plus_one: bool, x: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """The norm with its denominator ``inv`` held fixed: linear (affine) in ``x``."""
    xc = x.to(_compute_dtype(x))
    if kind == "layer":
        xc = xc - xc.mean(-1, keepdim=True)  # centring is linear; only the scale is frozen
    y = xc * inv
    weight = getattr(module, "weight", None)
    if weight is not None:
        y = y * ((1.0 + weight.to(y.dtype)) if plus_one else weight.to(y.dtype))
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


def _identify_norm(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> tuple[str, bool]:
    """Which formula reproduces this norm's output: checked, so a mis-read norm fails loudly."""
    kind = "layer" if isinstance(module, nn.LayerNorm) else "rms"
    inv = _inverse_scale(module, kind, x)
    tol = 1e-4 if out.dtype in (torch.float32, torch.float64) else 2e-2
    scale = out.detach().abs().max().clamp(min=1e-6)
    for plus_one in (False, True):
        y = _apply_norm(module, kind, plus_one, x, inv)
        if float((y - out).abs().max() / scale) <= tol:
            return kind, plus_one
    raise UnsupportedModelError(
        f"{type(module).__name__} is not a plain LayerNorm/RMSNorm (x * rsqrt(mean x^2 + eps) * w or (1 + w)); "
        "attribution cannot freeze its scale"
    )


def _recording_hook(state: FrozenState) -> Callable[..., torch.Tensor]:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
            raise UnsupportedModelError(f"{type(module).__name__} was called without a tensor input")
        kind, plus_one = _identify_norm(module, x.detach(), output)
        state.norm_kinds[module] = (kind, plus_one)
        state.norm_scales[module] = _inverse_scale(module, kind, x.detach())
        # Recomputed in the input dtype, as replay does, so both passes agree to the last bit.
        return _apply_norm(module, kind, plus_one, x, state.norm_scales[module])

    return hook


def _replaying_forward(state: FrozenState, module: nn.Module) -> Callable[..., torch.Tensor]:
    kind, plus_one = state.norm_kinds[module]
    inv = state.norm_scales[module]
    weight = getattr(module, "weight", None)
    if weight is None:
        factor = inv
    else:
        gain = weight.detach().to(inv.dtype)
        factor = inv * (1.0 + gain if plus_one else gain)
    bias = getattr(module, "bias", None)
    bias = bias.detach() if isinstance(bias, torch.Tensor) else None

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # One multiply by the precomputed (1 / scale) x gain: a single saved constant per norm.
        xc = x - x.mean(-1, keepdim=True) if kind == "layer" else x
        y = xc * factor.to(x.dtype)
        return y if bias is None else y + bias.to(x.dtype)

    return forward


# --- context managers ---------------------------------------------------------------------------


@contextlib.contextmanager
def frozen(model: nn.Module, state: FrozenState, mode: str) -> Iterator[FrozenState]:
    """Run ``model`` recording (``mode="record"``) or replaying (``"replay"``) patterns and norm scales.

    Recording hooks are prepended, so they run before any scope-hub hook at the
    same module; replaying swaps the norms' ``forward`` for the frozen formula
    (the real one would be computed for nothing).
    """
    if mode not in ("record", "replay"):
        raise ValueError(f"mode must be 'record' or 'replay', got {mode!r}")
    norms = [m for _, m in norm_modules(model)]
    with contextlib.ExitStack() as stack:
        if mode == "record":
            state.patterns.clear()
            state.norm_scales.clear()
            state.norm_kinds.clear()
            for m in norms:
                stack.callback(m.register_forward_hook(_recording_hook(state), prepend=True).remove)
        else:
            missing = [m for m in norms if m not in state.norm_scales]
            if missing:
                raise UnsupportedModelError(f"replay found {len(missing)} norms the record pass never ran")
            forwards = {m: _replaying_forward(state, m) for m in norms}
            forwards.update({p: _unused_projection(p) for p in _query_key_projections(state)})
            stack.enter_context(_patched_forwards(forwards))
        _ACTIVE.append((state, mode))
        stack.callback(_ACTIVE.pop)
        stack.enter_context(_attention_implementation(model))
        yield state


def _query_key_projections(state: FrozenState) -> list[nn.Linear]:
    """Separate query and key projections of the recorded attention layers (fused ones, as GPT-2's, stay)."""
    found = []
    for attention in state.patterns:
        for name in ("q_proj", "k_proj"):
            projection = getattr(attention, name, None)
            if isinstance(projection, nn.Linear):
                found.append(projection)
    return found


def _unused_projection(projection: nn.Linear) -> Callable[..., torch.Tensor]:
    # Replay reads the recorded pattern, never queries or keys: computing them for every prompt
    # copy would cost as much as the value and output projections together (measured ~4% of a
    # graph build on Gemma 3 270M). Zeros keep the shapes the attention module expects.
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], projection.out_features)

    return forward


@contextlib.contextmanager
def _patched_forwards(forwards: dict[nn.Module, Callable[..., Any]]) -> Iterator[None]:
    """Give each module an instance-level ``forward``; restore exactly what was there in ``finally``."""
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for module, forward in forwards.items():
            saved.append((module, module.__dict__.get("forward")))
            module.forward = forward
        yield
    finally:
        for module, old in saved:
            if old is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = old


@contextlib.contextmanager
def skipped(model: nn.Module, paths: Iterable[str]) -> Iterator[None]:
    """Modules at ``paths`` return zeros shaped like their input instead of running.

    The replay pass overwrites the MLP block's output anyway; skipping the MLP
    itself saves most of the forward's FLOPs and memory.
    """
    with _patched_forwards({model.get_submodule(p): _zeros_like_input for p in paths}):
        yield


def _zeros_like_input(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.zeros_like(x)


@contextlib.contextmanager
def parameters_frozen(model: nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on every parameter inside the block (so autograd saves no weight-grad inputs)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
