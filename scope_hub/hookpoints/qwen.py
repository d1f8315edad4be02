"""Qwen 2 / 2.5 and Qwen 3 (dense): Llama-style pre-norm blocks with the same module names.

Qwen 3 adds q/k norms inside attention and decouples head_dim, which changes
nothing here but the attn_out width (heads x head_dim).

Example:
    >>> from transformers import Qwen3Config
    >>> ad = QwenAdapter(Qwen3Config(hidden_size=64, num_attention_heads=4, head_dim=32, num_hidden_layers=2))
    >>> str(ad.hookpoint("attn_out", 0)), ad.site_width("attn_out")
    ('model.layers.0.self_attn.o_proj.input', 128)
"""

from __future__ import annotations

from scope_hub.hookpoints.base import HookpointAdapter
from scope_hub.hookpoints.llama import PRE_NORM_SITES


class QwenAdapter(HookpointAdapter):
    """Qwen2ForCausalLM (``qwen2``) and Qwen3ForCausalLM (``qwen3``); MoE variants are not covered."""

    family = "qwen"
    model_types = ("qwen2", "qwen3")
    layers_path = "model.layers"
    final_norm_path = "model.norm"
    site_templates = PRE_NORM_SITES
    mlp_modules = ("mlp",)
    attn_residual_template = ("self_attn", "output")
