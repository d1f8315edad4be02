"""Gemma 3 (text-only ``Gemma3ForCausalLM`` and multimodal ``Gemma3ForConditionalGeneration``).

Hookpoints follow Gemma Scope 2 exactly (DESIGN.md section 5). Gemma wraps
both blocks in "sandwich" norms, so the attention and MLP contributions to the
residual stream are the *outputs of the post norms*, and mlp_in is the
pre-feedforward norm's output, not post_attention_layernorm's.

Example:
    >>> from transformers import Gemma3TextConfig
    >>> ad = Gemma3Adapter(Gemma3TextConfig(num_hidden_layers=18))
    >>> str(ad.hookpoint("mlp_out", 12))
    'model.layers.12.post_feedforward_layernorm.output'
"""

from __future__ import annotations

from typing import Any

from scope_hub.hookpoints.base import IO, HookpointAdapter

GEMMA_SITES: dict[str, tuple[str, IO]] = {
    "resid_pre": ("", "input"),
    "resid_post": ("", "output"),
    "attn_out": ("self_attn.o_proj", "input"),
    "mlp_in": ("pre_feedforward_layernorm", "output"),
    "mlp_out": ("post_feedforward_layernorm", "output"),
}


# Parallel to Gemma2Adapter on purpose: one adapter per model_type, the same Gemma module layout.
class Gemma3Adapter(HookpointAdapter):
    """Gemma3ForCausalLM (model_type ``gemma3_text``), e.g. Gemma 3 270M and 1B."""

    family = "gemma3"
    model_types = ("gemma3_text",)
    layers_path = "model.layers"
    final_norm_path = "model.norm"
    site_templates = GEMMA_SITES
    mlp_modules = ("mlp", "post_feedforward_layernorm")
    attn_residual_template = ("post_attention_layernorm", "output")


class Gemma3MultimodalAdapter(Gemma3Adapter):
    """Gemma3ForConditionalGeneration (model_type ``gemma3``, 4B and up): text layers sit under language_model."""

    family = "gemma3-multimodal"
    model_types = ("gemma3",)
    layers_path = "model.language_model.layers"
    final_norm_path = "model.language_model.norm"

    @classmethod
    def text_config(cls, config: Any) -> Any:
        return config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
