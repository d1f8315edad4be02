"""Site -> hookpoint resolution, one adapter per model family.

``ADAPTERS`` maps ``config.model_type`` to an adapter class; add a family by
writing one small file (see docs/hookpoints.md) and one line here, then run the
reusable suite :class:`scope_hub.testing.AdapterSuite` on a tiny model of it.

Example:
    >>> from transformers import Gemma3TextConfig
    >>> cfg = Gemma3TextConfig(num_hidden_layers=18, hidden_size=640, num_attention_heads=4, head_dim=256)
    >>> str(resolve_hookpoint(cfg, "attn_out", 12))
    'model.layers.12.self_attn.o_proj.input'
    >>> adapter_for(cfg).site_width("attn_out")
    1024
"""

from __future__ import annotations

from typing import Any

from scope_hub.errors import UnsupportedModelError
from scope_hub.hookpoints.base import SITES, Hookpoint, HookpointAdapter, MLPBlock, linear_width
from scope_hub.hookpoints.gemma2 import Gemma2Adapter
from scope_hub.hookpoints.gemma3 import Gemma3Adapter, Gemma3MultimodalAdapter
from scope_hub.hookpoints.gpt2 import GPT2Adapter
from scope_hub.hookpoints.gpt_neox import GPTNeoXAdapter
from scope_hub.hookpoints.llama import LlamaAdapter
from scope_hub.hookpoints.qwen import QwenAdapter

__all__ = [
    "ADAPTERS",
    "SITES",
    "Hookpoint",
    "HookpointAdapter",
    "MLPBlock",
    "adapter_for",
    "linear_width",
    "resolve_hookpoint",
    "supported_model_types",
]

ADAPTERS: dict[str, type[HookpointAdapter]] = {
    model_type: adapter
    for adapter in (
        Gemma3Adapter,
        Gemma3MultimodalAdapter,
        Gemma2Adapter,
        LlamaAdapter,
        QwenAdapter,
        GPT2Adapter,
        GPTNeoXAdapter,
    )
    for model_type in adapter.model_types
}
"""``config.model_type`` -> adapter class."""


def supported_model_types() -> list[str]:
    """Sorted ``model_type`` values that have an adapter.

    Example:
        >>> "gemma3_text" in supported_model_types()
        True
    """
    return sorted(ADAPTERS)


def adapter_for(model_or_config: Any) -> HookpointAdapter:
    """The hookpoint adapter for a transformers model or config.

    Given a model, also checks that the expected module paths exist in it, so a
    renamed module in a new transformers release fails here, not mid-forward.

    Example:
        >>> from transformers import GPT2Config
        >>> adapter_for(GPT2Config(n_layer=3)).n_layers
        3
    """
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    adapter_cls = ADAPTERS.get(model_type) if isinstance(model_type, str) else None
    if adapter_cls is None:
        raise UnsupportedModelError(
            f"no hookpoint adapter for model_type {model_type!r} ({type(model_or_config).__name__}); "
            f"supported: {', '.join(supported_model_types())} (add one in scope_hub/hookpoints/, see docs/hookpoints.md)"
        )
    adapter = adapter_cls(config)
    if model_or_config is not config:
        adapter.validate(model_or_config)
    return adapter


def resolve_hookpoint(model_or_config: Any, site: str, layer: int) -> Hookpoint:
    """The hookpoint of ``site`` at ``layer`` for a transformers model or config.

    Example:
        >>> from transformers import LlamaConfig
        >>> str(resolve_hookpoint(LlamaConfig(num_hidden_layers=4), "resid_post", 3))
        'model.layers.3.output'
    """
    return adapter_for(model_or_config).hookpoint(site, layer)
