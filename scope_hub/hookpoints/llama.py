"""Llama-style decoders: Llama, Mistral, SmolLM2 (a Llama), SmolLM3.

Pre-norm blocks: ``h = x + attn(input_layernorm(x)); out = h + mlp(post_attention_layernorm(h))``,
so mlp_in is post_attention_layernorm's output and mlp_out the MLP's output.

Example:
    >>> from transformers import LlamaConfig
    >>> str(LlamaAdapter(LlamaConfig(num_hidden_layers=4)).hookpoint("mlp_out", 2))
    'model.layers.2.mlp.output'
"""

from __future__ import annotations

from scope_hub.hookpoints.base import IO, HookpointAdapter

PRE_NORM_SITES: dict[str, tuple[str, IO]] = {
    "resid_pre": ("", "input"),
    "resid_post": ("", "output"),
    "attn_out": ("self_attn.o_proj", "input"),
    "mlp_in": ("post_attention_layernorm", "output"),
    "mlp_out": ("mlp", "output"),
}


class LlamaAdapter(HookpointAdapter):
    """LlamaForCausalLM, MistralForCausalLM, SmolLM3ForCausalLM (identical module names)."""

    family = "llama"
    model_types = ("llama", "mistral", "smollm3")
    layers_path = "model.layers"
    final_norm_path = "model.norm"
    site_templates = PRE_NORM_SITES
    mlp_modules = ("mlp",)
    attn_residual_template = ("self_attn", "output")
